"""Students: built from the teacher (`create_student`), and PEFT adapters (`hfkd.student.adapters`)."""

from hfkd.student.create import TEACHER_LAYERS_KEY, create_student, find_layer_stack, hidden_size, num_layers

__all__ = ["TEACHER_LAYERS_KEY", "create_student", "find_layer_stack", "hidden_size", "num_layers"]
