"""One way to get N environments of any task: MiniGrid ids on the grid; MiniWorld-* and Habitat-*
ids embodied."""
from __future__ import annotations



def is_embodied(task: str) -> bool:
    return task.startswith(('MiniWorld-', 'Habitat-'))


def default_observation(task: str) -> str:
    return 'rgbd' if is_embodied(task) else 'memory_map'


def make_vec_env(task: str, num_envs: int, observation: str = '', **kwargs):
    """A MiniGridVecEnv, or an EmbodiedVecEnv for embodied ids; kwargs go to its constructor.
    observation '' is the task's default (memory_map; rgbd for embodied robots)."""
    kwargs['observation'] = observation or default_observation(task)
    if is_embodied(task):
        from habitat_bridge.embodied.vector import EmbodiedVecEnv
        return EmbodiedVecEnv(task, num_envs, **kwargs)
    from habitat_bridge.minigrid.vector import MiniGridVecEnv
    return MiniGridVecEnv(task, num_envs, **kwargs)
