"""What an embodied simulator backend gives the bridge node: plain numpy and dataclasses, no ROS.
The types every backend shares; embodied.backend.make_backend builds one.

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
from llm_teacher_common.transform2d import Coordinate, Transform2D


@dataclass
class Pose:
    x: float
    y: float
    yaw: float

    def relative(self, x: float, y: float) -> tuple[float, float]:
        """(forward, left) in base_link of the map point (x, y)."""
        return Transform2D(self.x, self.y, self.yaw).from_parent(x, y)

    def on_map(self, forward: Coordinate, left: Coordinate) -> tuple[Coordinate, Coordinate]:
        """The map (x, y) of the point (forward, left) in base_link: relative undone."""
        return Transform2D(self.x, self.y, self.yaw).to_parent(forward, left)


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


def visible_in_depth(forward: float, left: float, up: float, depth: np.ndarray, camera: CameraSpec,
                     radius: float = 0.3, across: tuple[float, ...] = (0.0,)) -> bool:
    """Whether an object (its centre in base_link metres; `up` above the floor) is in view and not
    hidden: some point of it projects inside the image and the depth there reaches it (less its
    radius). What a robot's detector with a depth camera tells; `across`: points to try, as
    fractions of `radius` to the object's left of its centre."""
    z = forward - camera.forward_m
    if z <= 0.05:
        return False
    height, width = depth.shape
    focal = camera.focal_length_px
    row = round((height - 1) / 2 - (up - camera.height_m) * focal / z)
    if not 0 <= row < height:
        return False
    for fraction in across:
        col = round((width - 1) / 2 - (left + fraction * radius) * focal / z)
        if 0 <= col < width and depth[row, col] >= z - radius - 0.05:
            return True
    return False


def vfov_deg(hfov_deg: float, width: int, height: int) -> float:
    """Vertical field of view of a pinhole camera with square pixels, from its horizontal one."""
    return math.degrees(2 * math.atan(math.tan(math.radians(hfov_deg) / 2) * height / width))
