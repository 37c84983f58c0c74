"""The base of every vector env: N environments stepped in lock-step in one process."""
from __future__ import annotations

import numpy as np

from llm_teacher_common.perception import Perception
from llm_teacher_common.steps import VecStep


class VectorEnv:
    """N environments stepped in lock-step in one process, with same-step auto-reset: the base of
    MiniGridVecEnv and EmbodiedVecEnv. `reset(seed)` seeds env i with seed + i; an episode that
    ends is followed at once by a new one from that env's own random stream, and every step
    carries each env's episode id and (with perceive=True) its perception.

    Subclasses set self.envs and say how one env resets and steps (_reset_one, _step_one) and
    what it perceives (_perception) and is asked to do (_mission).
    """

    def __init__(self, num_envs: int, perceive: bool):
        if num_envs < 1:
            raise ValueError(f'num_envs must be at least 1, got {num_envs}')
        self.num_envs, self.perceive = num_envs, perceive
        self._next_episode_id = 0
        self._episode_ids = np.zeros(num_envs, np.uint64)

    def _reset_one(self, i: int, seed: int | None) -> np.ndarray:
        raise NotImplementedError

    def _step_one(self, i: int, action: int) -> tuple[np.ndarray, float, bool, bool, bool]:
        """(observation, reward, terminated, truncated, success) of one env's step."""
        raise NotImplementedError

    def _perception(self, i: int) -> Perception:
        raise NotImplementedError

    def _mission(self, i: int) -> str:
        raise NotImplementedError

    def reset(self, seed: int | None = None) -> VecStep:
        """Start a new episode everywhere: env i with seed + i, or its own random stream if None."""
        obs = [self._reset_one(i, None if seed is None else seed + i) for i in range(self.num_envs)]
        for i in range(self.num_envs):
            self._episode_ids[i] = self._new_episode_id()
        zeros = np.zeros(self.num_envs, bool)
        return VecStep(np.stack(obs), np.zeros(self.num_envs, np.float32), zeros, zeros.copy(), zeros.copy(),
                       self._episode_ids.copy(), self.perceptions(), self.missions())

    def step(self, actions: np.ndarray, reset_seeds: np.ndarray | None = None) -> VecStep:
        """Step every env with its action; an env whose episode ends is reset in the same step,
        from its own random stream, or with reset_seeds[i] when given (evaluation on fixed seeds)."""
        n = self.num_envs
        obs = [None] * n
        rewards = np.zeros(n, np.float32)
        terminated, truncated, success = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
        for i in range(n):
            obs[i], rewards[i], terminated[i], truncated[i], success[i] = self._step_one(i, int(actions[i]))
            if terminated[i] or truncated[i]:
                obs[i] = self._reset_one(i, None if reset_seeds is None else int(reset_seeds[i]))
                self._episode_ids[i] = self._new_episode_id()
        return VecStep(np.stack(obs), rewards, terminated, truncated, success, self._episode_ids.copy(),
                       self.perceptions(), self.missions())

    def perceptions(self) -> list[Perception]:
        return [self._perception(i) for i in range(self.num_envs)] if self.perceive else []

    def missions(self) -> list[str]:
        return [self._mission(i) for i in range(self.num_envs)]

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def _new_episode_id(self) -> int:
        self._next_episode_id += 1
        return self._next_episode_id
