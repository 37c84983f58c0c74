"""N MiniGrid environments stepped in lock-step in one process, with same-step auto-reset.

Written here rather than with gymnasium's SyncVectorEnv because every step must also carry
each environment's perception and episode id, and merging per-env info dicts costs a large
share of a MiniGrid step (which is ~0.1 ms).
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from habitat_bridge.minigrid.fast_view import install as install_fast_view
from habitat_bridge.minigrid.observation import MemoryMapObservation
from habitat_bridge.minigrid.tasks import register_tasks
from habitat_bridge.vector_env import VectorEnv
from llm_teacher_common.perception import Perception

OBSERVATION_MODES = ('memory_map', 'egocentric')


def make_env(task: str, observation: str = 'memory_map', render: bool = False,
             fast_view: bool = True) -> gym.Env:
    """One environment of `task` (any registered MiniGrid id) with the chosen observation.

    Every step's info carries "success": the paper's tasks set it themselves; for a standard
    MiniGrid id it is "terminated with a positive reward" (reached the goal, not lava).

    :param fast_view: compute MiniGrid's egocentric view with habitat_bridge.minigrid.fast_view
        (the same image, several times faster); False keeps MiniGrid's own, for comparison.

    :raises ValueError: unknown task id or observation mode, naming what is allowed.
    """
    if observation not in OBSERVATION_MODES:
        raise ValueError(f'observation mode {observation!r} is not one of {OBSERVATION_MODES}')
    register_tasks()
    if task not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith('MiniGrid-'))
        raise ValueError(f'unknown task id {task!r}; registered MiniGrid ids are: {", ".join(known)}')
    env = gym.make(task, render_mode='rgb_array' if render else None)
    if fast_view:
        install_fast_view(env)
    env = MemoryMapObservation(_Success(env))
    if observation == 'egocentric':
        env = _Egocentric(env)
    return env


class _Success(gym.Wrapper):
    """info["success"] on every step, for MiniGrid ids that do not set it."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info.setdefault('success', bool(terminated and reward > 0))
        return obs, reward, terminated, truncated, info


class _Egocentric(gym.ObservationWrapper):
    """MiniGrid's own egocentric view (V, V, 3); the memory map underneath keeps the perception."""

    def __init__(self, env: MemoryMapObservation):
        super().__init__(env)
        size = env.unwrapped.agent_view_size
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.perception = env.perception

    def observation(self, observation):
        return self.env.last_view


class MiniGridVecEnv(VectorEnv):
    """N environments of one MiniGrid task (see habitat_bridge.vector.VectorEnv).

    perceive=False leaves the perception lists out of each step (a fifth of the step's cost):
    for training without a teacher and for evaluation.
    """

    def __init__(self, task: str, num_envs: int, observation: str = 'memory_map',
                 render_env: int | None = None, perceive: bool = True):
        super().__init__(num_envs, perceive)
        self.task = task
        self.envs = [make_env(task, observation, render=(i == render_env)) for i in range(num_envs)]
        self.observation_space = self.envs[0].observation_space
        self.num_actions = int(self.envs[0].action_space.n)

    def _reset_one(self, i: int, seed: int | None) -> np.ndarray:
        return self.envs[i].reset(seed=seed)[0]

    def _step_one(self, i: int, action: int):
        obs, reward, terminated, truncated, info = self.envs[i].step(action)
        return obs, reward, terminated, truncated, info['success']

    def _perception(self, i: int) -> Perception:
        return self.envs[i].perception()

    def _mission(self, i: int) -> str:
        return self.envs[i].unwrapped.mission

    def render(self, index: int = 0) -> np.ndarray:
        """RGB frame (H, W, 3) of env `index` (created with render_env=index)."""
        return self.envs[index].render()
