"""Students built from the teacher (`create_student`): copied layers or narrower fresh models."""

from hfkd.models import find_layer_stack
from hfkd.student.create import STUDENT_INIT_KEY, TEACHER_LAYERS_KEY, create_student, hidden_size, num_layers

__all__ = ["STUDENT_INIT_KEY", "TEACHER_LAYERS_KEY", "create_student", "find_layer_stack", "hidden_size", "num_layers"]
