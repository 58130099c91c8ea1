"""`hfkd.io.staged`: a SIGKILL at every step of a folder write leaves the old set or the new one."""

import os

import pytest

from hfkd.io import recover, staged
from killpoint import assert_old_or_new, run_killed, snapshot

WRITE = r'''
import os, sys
from hfkd.io import staged
with staged(sys.argv[1] if len(sys.argv) > 1 else os.environ["TARGET"]) as folder:
    for name in ("a.txt", "b.txt"):
        open(os.path.join(folder, name), "w").write("new " + name)
    os.makedirs(os.path.join(folder, "peer1"))
    open(os.path.join(folder, "peer1", "w.bin"), "w").write("new peer")
'''


def old_set(folder):
    (folder / "peer1").mkdir(parents=True)
    for name, text in (("a.txt", "old a"), ("b.txt", "old b"), ("peer1/w.bin", "old peer"), ("keep.txt", "mine")):
        (folder / name).write_text(text)
    return snapshot(folder)


# Steps of this write: 1 staging -> commit, 2 a.txt, 3 b.txt, 4 peer1 aside, 5 peer1 in.
@pytest.mark.parametrize("kill_at, expected", [("1:1", "old"), ("1:2", "new"), ("1:3", "new"),
                                               ("1:aside", "new"), ("1:5", "new")])
def test_a_kill_at_any_step_leaves_the_old_or_the_new_set(tmp_path, monkeypatch, kill_at, expected):
    target = tmp_path / "out"
    old = old_set(target)
    monkeypatch.setenv("TARGET", str(target))
    new = run_killed(WRITE, kill_at, tmp_path)
    recover(target)
    assert assert_old_or_new(target, old, new) == expected
    assert (target / "keep.txt").read_text() == "mine"  # entries the write does not name are kept


def test_a_failing_write_leaves_the_folder_untouched(tmp_path):
    target = tmp_path / "out"
    old = old_set(target)
    with pytest.raises(RuntimeError), staged(target) as folder:
        open(os.path.join(folder, "a.txt"), "w").write("half")
        raise RuntimeError("boom")
    assert snapshot(target) == old and not [n for n in os.listdir(target) if n.startswith(".hfkd-")]


def test_leftovers_of_a_running_process_are_left_alone(tmp_path):
    live = tmp_path / f".hfkd-staging-{os.getppid()}-abcd1234"
    live.mkdir()
    recover(tmp_path)
    assert live.is_dir()
