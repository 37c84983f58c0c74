"""The result of stepping N environments in lock-step: what a vector env returns, what a step batch
carries, and what the learner stores."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llm_teacher_common.perception import Perception


@dataclass
class VecStep:
    """One lock-step of N environments. Arrays have N rows."""

    observations: np.ndarray  # uint8 (N, *obs_shape): after auto-reset, the new episode's first
    rewards: np.ndarray  # float32
    terminated: np.ndarray  # bool
    truncated: np.ndarray  # bool
    success: np.ndarray  # bool: the episode that ended here succeeded
    episode_ids: np.ndarray  # uint64: episode each observation belongs to
    perceptions: list[Perception]  # empty when the vector env was made with perceive=False
    missions: list[str]  # what each env's episode asks for, in words ("go to the red ball")
