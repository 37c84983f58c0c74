"""One way to get N environments of any task, by its family (llm_teacher_common.families):
MiniGrid ids on the grid; MiniWorld-* and Habitat-* ids embodied."""
from __future__ import annotations

from llm_teacher_common.families import family_of_task


def is_embodied(task: str) -> bool:
    return family_of_task(task).name == 'embodied'


def default_observation(task: str) -> str:
    return family_of_task(task).observations[0]


def make_vec_env(task: str, num_envs: int, observation: str = '', **kwargs):
    """A MiniGridVecEnv, or an EmbodiedVecEnv for embodied ids; kwargs go to its constructor.
    observation '' is the task's default (memory_map; rgbd for embodied robots)."""
    kwargs['observation'] = observation or default_observation(task)
    if is_embodied(task):
        from habitat_bridge.embodied.vector import EmbodiedVecEnv
        return EmbodiedVecEnv(task, num_envs, **kwargs)
    from habitat_bridge.minigrid.vector import MiniGridVecEnv
    return MiniGridVecEnv(task, num_envs, **kwargs)
