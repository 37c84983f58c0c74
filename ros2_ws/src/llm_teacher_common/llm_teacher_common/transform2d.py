"""The 2D rigid transform (turn by a yaw, then move) that places a robot, a map or a map's origin.

Frames follow REP-103: x forward (east), y left (north), yaw counter-clockwise from x, in radians.
A frame's pose in its parent is also the transform of what is given in the frame into the parent:
base_link in map (a robot's pose), odom in map (a localiser's map -> odom), a map's origin.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

Coordinate = float | np.ndarray  # one point's, or a whole grid's at once (the crop's cell centres)


class Transform2D(NamedTuple):
    """A frame's pose (x, y, yaw) in its parent; the poses it composes are (x, y, yaw) tuples."""

    x: float
    y: float
    yaw: float

    def to_parent(self, x: Coordinate, y: Coordinate) -> tuple[Coordinate, Coordinate]:
        """The parent's (x, y) of the point (x, y) given in this frame (for base_link: forward, left)."""
        cos, sin = math.cos(self.yaw), math.sin(self.yaw)
        return self.x + cos * x - sin * y, self.y + sin * x + cos * y

    def from_parent(self, x: Coordinate, y: Coordinate) -> tuple[Coordinate, Coordinate]:
        """This frame's (x, y) of the point (x, y) given in the parent: to_parent undone. The offset
        is taken first: a point near the frame keeps its precision however far both are from the parent's origin."""
        dx, dy, cos, sin = x - self.x, y - self.y, math.cos(self.yaw), math.sin(self.yaw)
        return cos * dx + sin * dy, -sin * dx + cos * dy

    def compose(self, pose: tuple[float, float, float]) -> Transform2D:
        """The parent's pose of `pose` given in this frame (map -> odom composed with the odometry
        gives the robot in the map)."""
        return Transform2D(*self.to_parent(pose[0], pose[1]), self.yaw + pose[2])
