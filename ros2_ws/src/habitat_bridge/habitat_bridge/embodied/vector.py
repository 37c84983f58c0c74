"""N embodied robots (MiniWorld, or habitat-sim where it is installed) stepped in lock-step in one
process, as training and the teacher see them.

The same interface as `habitat_bridge.minigrid.vector.MiniGridVecEnv` (reset/step -> VecStep with
auto-reset and perceptions), so the PPO loop, the teacher and the study run on either.

Observations: `llm_teacher_common.camera.camera_observation` of each camera frame, the function a
deployed robot node builds its observations with.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from habitat_bridge.embodied.backend import EmbodiedStep
from llm_teacher_common.camera import camera_observation, observation_channels
from llm_teacher_common.steps import VecStep


def make_backend(task: str, width: int, height: int, max_episode_steps: int | None = None):
    """The backend of a task id: Habitat-PointNav-v0 on habitat-lab, other Habitat-* on habitat-sim,
    MiniWorld-* on MiniWorld."""
    from habitat_bridge.embodied import habitat_lab_backend
    if task in habitat_lab_backend.TASKS:
        return habitat_lab_backend.HabitatLabBackend(task, width, height, max_episode_steps)
    if task.startswith('Habitat-'):
        from habitat_bridge.embodied.habitat_backend import HabitatSimBackend
        return HabitatSimBackend(task, width, height, max_episode_steps)
    from habitat_bridge.embodied.miniworld_backend import MiniWorldBackend
    return MiniWorldBackend(task, width, height, max_episode_steps)


class EmbodiedVecEnv:
    """N robots of one embodied task; `reset(seed)` seeds robot i with seed + i."""

    def __init__(self, task: str, num_envs: int, observation: str = 'rgbd', width: int = 64, height: int = 64,
                 max_episode_steps: int | None = None, render_env: int | None = None, perceive: bool = True):
        """render_env and perceive are MiniGridVecEnv's: every robot here renders its camera anyway,
        and builds its map every step (perceive=False only leaves the perceptions out of each step)."""
        channels = observation_channels(observation)
        if num_envs < 1:
            raise ValueError(f'num_envs must be at least 1, got {num_envs}')
        self.task, self.num_envs, self.observation, self.perceive = task, num_envs, observation, perceive
        self.envs = [make_backend(task, width, height, max_episode_steps) for _ in range(num_envs)]
        self.camera = self.envs[0].camera
        self.num_actions = self.envs[0].num_actions
        self.observation_space = gym.spaces.Box(0, 255, (height, width, channels), np.uint8)
        self._next_episode_id = 0
        self._episode_ids = np.zeros(num_envs, np.uint64)
        self._last: list[EmbodiedStep] = []

    def encode(self, step: EmbodiedStep) -> np.ndarray:
        return camera_observation(step.rgb, step.depth, self.observation)

    def reset(self, seed: int | None = None) -> VecStep:
        self._last = [env.reset(seed=None if seed is None else seed + i) for i, env in enumerate(self.envs)]
        for i in range(self.num_envs):
            self._episode_ids[i] = self._new_episode_id()
        zeros = np.zeros(self.num_envs, bool)
        return VecStep(np.stack([self.encode(s) for s in self._last]), np.zeros(self.num_envs, np.float32), zeros,
                       zeros.copy(), zeros.copy(), self._episode_ids.copy(), self.perceptions())

    def step(self, actions: np.ndarray) -> VecStep:
        """Step every robot; one whose episode ends starts a new one (seeded by its own stream)."""
        n = self.num_envs
        rewards = np.zeros(n, np.float32)
        terminated, truncated, success = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        for i, env in enumerate(self.envs):
            step = env.step(int(actions[i]))
            rewards[i], terminated[i], truncated[i] = step.reward, step.terminated, step.truncated
            success[i] = step.info['success']
            if step.terminated or step.truncated:
                step = env.reset()
                self._episode_ids[i] = self._new_episode_id()
            self._last[i] = step
        return VecStep(np.stack([self.encode(s) for s in self._last]), rewards, terminated, truncated, success,
                       self._episode_ids.copy(), self.perceptions())

    def perceptions(self):
        return [step.perception for step in self._last] if self.perceive else []

    def render(self, index: int = 0) -> np.ndarray:
        return self._last[index].rgb

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def _new_episode_id(self) -> int:
        self._next_episode_id += 1
        return self._next_episode_id
