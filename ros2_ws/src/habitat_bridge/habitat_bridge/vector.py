"""One way to get N environments of any task: MiniGrid ids on the grid, MiniWorld ids embodied."""
from __future__ import annotations


def make_vec_env(task: str, num_envs: int, **kwargs):
    """A MiniGridVecEnv, or an EmbodiedVecEnv for MiniWorld-* ids; kwargs go to its constructor."""
    if task.startswith('MiniWorld-'):
        from habitat_bridge.embodied.vector import EmbodiedVecEnv
        return EmbodiedVecEnv(task, num_envs, **kwargs)
    from habitat_bridge.minigrid.vector import MiniGridVecEnv
    return MiniGridVecEnv(task, num_envs, **kwargs)
