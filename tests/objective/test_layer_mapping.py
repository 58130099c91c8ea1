import pytest

from hfkd import resolve_layer_mapping


def test_uniform_tinybert_rule():
    # 0-based student layer i <-> teacher layer (i+1)*k-1, i.e. hidden states (i+1) <-> (i+1)*k
    assert resolve_layer_mapping("uniform", 3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert resolve_layer_mapping("uniform", 4, 12) == [(1, 3), (2, 6), (3, 9), (4, 12)]


def test_last_and_embeddings():
    assert resolve_layer_mapping("last", 3, 6) == [(3, 6)]
    assert resolve_layer_mapping("last", 3, 6, include_embeddings=True) == [(0, 0), (3, 6)]


def test_skip_uses_copied_teacher_layers():
    assert resolve_layer_mapping("skip", 3, 6, student_teacher_layers=[0, 2, 4]) == [(1, 1), (2, 3), (3, 5)]
    with pytest.raises(ValueError, match="hfkd_teacher_layers"):
        resolve_layer_mapping("skip", 3, 6)
    with pytest.raises(ValueError, match="does not have"):
        resolve_layer_mapping("skip", 2, 6, student_teacher_layers=[0, 6])


def test_explicit_pairs_validated():
    assert resolve_layer_mapping([[1, 3], [2, 6]], 2, 6) == [(1, 3), (2, 6)]
    with pytest.raises(ValueError, match=r"\[3, 6\] is out of range.*0\.\.2"):
        resolve_layer_mapping([[3, 6]], 2, 6)
    with pytest.raises(ValueError, match=r"0\.\.6 for the teacher"):
        resolve_layer_mapping([[1, 7]], 2, 6)
    with pytest.raises(ValueError, match="twice"):
        resolve_layer_mapping([[1, 2], [1, 3]], 2, 6)


def test_uniform_needs_deeper_teacher():
    with pytest.raises(ValueError, match="at least as deep"):
        resolve_layer_mapping("uniform", 4, 2)
