"""MiniGrid: the paper's tasks, the memory-map observation, perception, planning, the expert."""
