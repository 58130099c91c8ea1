"""The trainers: one base over `transformers.Trainer`, the distillation and mutual-learning families on it."""
