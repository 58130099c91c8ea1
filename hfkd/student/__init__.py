"""Students built from the teacher (`create_student`): copied layers, pruned (`prune.py`) or narrower fresh
models; fake int8 of their linear layers for quantization-aware distillation (`quantization.py`)."""

from hfkd.models import find_layer_stack
from hfkd.student.create import STUDENT_INIT_KEY, TEACHER_LAYERS_KEY, create_student, hidden_size, num_layers

__all__ = ["STUDENT_INIT_KEY", "TEACHER_LAYERS_KEY", "create_student", "find_layer_stack", "hidden_size", "num_layers"]
