"""N embodied robots (MiniWorld, or habitat-sim where it is installed) stepped in lock-step in one
process, as training and the teacher see them.

The same interface as `habitat_bridge.minigrid.vector.MiniGridVecEnv` (reset/step -> VecStep with
auto-reset and perceptions), so the PPO loop, the teacher and the study run on either.

Observations: `llm_teacher_common.camera.camera_observation` of each camera frame, the function a
deployed robot node builds its observations with; "rgbd_map" puts the robot's map crop
(`llm_teacher_common.map_crop`, as many cells as the camera has pixels) beside the rgbd channels.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from habitat_bridge.embodied.backend import make_backend
from habitat_bridge.embodied.types import EmbodiedStep
from habitat_bridge.vector_env import VectorEnv
from llm_teacher_common.camera import camera_observation, observation_channels
from llm_teacher_common.families import FAMILIES
from llm_teacher_common.map_crop import map_crop


class EmbodiedVecEnv(VectorEnv):
    """N robots of one embodied task (see habitat_bridge.vector.VectorEnv)."""

    def __init__(self, task: str, num_envs: int, observation: str = 'rgbd', width: int = 64, height: int = 64,
                 max_episode_steps: int | None = None, render_env: int | None = None, perceive: bool = True):
        """render_env and perceive are MiniGridVecEnv's: every robot here renders its camera anyway;
        perceive=False also spares the backends their perception and map (where they can)."""
        channels = observation_channels(observation)
        self.with_map = observation in FAMILIES['embodied'].map_observations
        if self.with_map and width != height:
            raise ValueError(f'observation {observation!r} needs a square camera (its map crop has as many cells '
                             f'as the camera has pixels), got {width}x{height}')
        super().__init__(num_envs, perceive)
        self.task, self.observation = task, observation
        self.envs = [make_backend(task, width, height, max_episode_steps) for _ in range(num_envs)]
        self.perceive = perceive  # again, now that the backends exist
        self.camera = self.envs[0].camera
        self.num_actions = self.envs[0].num_actions
        self.observation_space = gym.spaces.Box(0, 255, (height, width, channels), np.uint8)
        self._last: list[EmbodiedStep | None] = [None] * num_envs

    @property
    def perceive(self) -> bool:
        return self._perceive

    @perceive.setter
    def perceive(self, value: bool) -> None:
        """batch_sim_node perceives only while a teacher listens: the backends follow (they keep
        their maps for an observation that holds one)."""
        self._perceive = value
        for env in getattr(self, 'envs', ()):
            env.perceive = value or self.with_map

    def encode(self, step: EmbodiedStep) -> np.ndarray:
        camera = camera_observation(step.rgb, step.depth, self.observation)
        if not self.with_map:
            return camera
        return np.concatenate([camera, map_crop(step.perception, camera.shape[1], mark_target=True)], axis=-1)

    def _reset_one(self, i: int, seed: int | None) -> np.ndarray:
        self._last[i] = self.envs[i].reset(seed=seed)
        return self.encode(self._last[i])

    def _step_one(self, i: int, action: int):
        step = self._last[i] = self.envs[i].step(action)
        return self.encode(step), step.reward, step.terminated, step.truncated, step.info['success']

    def _perception(self, i: int):
        return self._last[i].perception

    def _mission(self, i: int) -> str:
        return self._last[i].perception.mission

    def render(self, index: int = 0) -> np.ndarray:
        return self._last[index].rgb
