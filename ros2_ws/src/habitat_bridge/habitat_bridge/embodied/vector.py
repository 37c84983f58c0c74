"""N embodied robots (MiniWorld, or habitat-sim where it is installed) stepped in lock-step in one
process, as training and the teacher see them.

The same interface as `habitat_bridge.minigrid.vector.MiniGridVecEnv` (reset/step -> VecStep with
auto-reset and perceptions), so the PPO loop, the teacher and the study run on either.

Observation encoding "rgbd" (uint8, shape (H, W, 4)): the camera's rgb, and depth in channel 3
quantised to DEPTH_STEP_M (`encode_depth` / `decode_depth`: 0..255 is 0..10.2 m; farther reads
as 10.2 m). One uint8 tensor keeps rollout storage, StepBatch messages and the exported policy
the same as for grid worlds. "rgb" drops the depth channel.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from habitat_bridge.embodied.backend import EmbodiedStep
from habitat_bridge.minigrid.vector import VecStep
from habitat_bridge.vector import EMBODIED_OBSERVATIONS
DEPTH_STEP_M = 0.04


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """Metres (float) -> uint8 steps of DEPTH_STEP_M, saturating at 255."""
    return np.clip(np.rint(depth / DEPTH_STEP_M), 0, 255).astype(np.uint8)


def decode_depth(channel: np.ndarray) -> np.ndarray:
    """uint8 depth channel -> metres (float32)."""
    return channel.astype(np.float32) * DEPTH_STEP_M


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
        if observation not in EMBODIED_OBSERVATIONS:
            raise ValueError(f'observation mode {observation!r} is not one of {EMBODIED_OBSERVATIONS}')
        if num_envs < 1:
            raise ValueError(f'num_envs must be at least 1, got {num_envs}')
        self.task, self.num_envs, self.observation, self.perceive = task, num_envs, observation, perceive
        self.envs = [make_backend(task, width, height, max_episode_steps) for _ in range(num_envs)]
        self.camera = self.envs[0].camera
        self.num_actions = self.envs[0].num_actions
        channels = 4 if observation == 'rgbd' else 3
        self.observation_space = gym.spaces.Box(0, 255, (height, width, channels), np.uint8)
        self._next_episode_id = 0
        self._episode_ids = np.zeros(num_envs, np.uint64)
        self._last: list[EmbodiedStep] = []

    def encode(self, step: EmbodiedStep) -> np.ndarray:
        if self.observation == 'rgb':
            return step.rgb
        return np.concatenate([step.rgb, encode_depth(step.depth)[..., None]], axis=-1)

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
