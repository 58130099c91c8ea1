"""The teacher side: loading and compatibility checks, placement under DDP/DeepSpeed/FSDP, the cheaper
forward and its fidelity, several teachers, and the teacher-output cache."""
