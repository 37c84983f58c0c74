"""What an embodied simulator backend gives the bridge node: plain numpy and dataclasses, no ROS.

Poses are in the world ("map") frame of REP-103/105: x and y on the floor, z up, yaw counter-
clockwise from x. Object positions in a `Perception` are relative to the robot's base_link
(forward, left) in metres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from llm_teacher_common.perception import Perception


@dataclass
class Pose:
    x: float
    y: float
    yaw: float

    def relative(self, x: float, y: float) -> tuple[float, float]:
        """(forward, left) in base_link of the map point (x, y)."""
        dx, dy, cos, sin = x - self.x, y - self.y, math.cos(self.yaw), math.sin(self.yaw)
        return cos * dx + sin * dy, -sin * dx + cos * dy


@dataclass
class CameraSpec:
    """The robot's camera: resolution, vertical field of view, and where it sits on base_link."""

    width: int
    height: int
    vfov_deg: float
    height_m: float
    forward_m: float = 0.0

    @property
    def focal_length_px(self) -> float:
        """Pinhole focal length in pixels from the vertical field of view (square pixels)."""
        return (self.height / 2) / math.tan(math.radians(self.vfov_deg) / 2)


@dataclass
class EmbodiedStep:
    rgb: np.ndarray
    """(H, W, 3) uint8."""
    depth: np.ndarray
    """(H, W) float32, metres along the optical axis."""
    pose: Pose
    perception: Perception
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict = field(default_factory=dict)


class EmbodiedBackend(Protocol):
    action_set: str
    """key of llm_teacher_common.commands.MOTIONS for this simulator's discrete actions."""
    camera: CameraSpec
    num_actions: int
    step_length: float
    """metres moved by one forward action."""
    turn_angle: float
    """radians turned by one turn action."""

    def reset(self, seed: int | None = None) -> EmbodiedStep: ...

    def step(self, action: int) -> EmbodiedStep: ...

    def close(self) -> None: ...
