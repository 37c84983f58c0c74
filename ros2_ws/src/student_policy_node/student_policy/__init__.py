"""The student: policy networks, PPO with teacher distillation, checkpoints, the training and deploy nodes."""
