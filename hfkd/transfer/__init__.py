"""Transfer sets: data made for the teacher to label (TinyBERT-style augmentation)."""
