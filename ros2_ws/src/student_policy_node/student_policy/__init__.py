"""The student in training: policy networks, PPO with teacher distillation, checkpoints, the training node."""
