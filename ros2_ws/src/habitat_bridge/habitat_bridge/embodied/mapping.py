"""The robot's occupancy map, built from its depth camera and odometry: what a mapping stack on a
real robot publishes (nav_msgs/OccupancyGrid on `map`), and what the teacher's skills plan on.

Cells hold -1 (unknown), 0 (free) or 100 (occupied), as nav_msgs/OccupancyGrid does; index
[i, j] is the cell whose centre is origin + ((i + 0.5) * resolution, (j + 0.5) * resolution) in the
map frame. Each depth image is cast as rays, one per image column: the floor up to the nearest
obstacle in that column is free, the obstacle's cells are occupied. Occupied stays occupied:
views from other angles graze the edges of obstacles, and a map whose cells flicker would make a
planner on it dither. The exception is an object the robot picks up: its cells, in front of the
robot, become unknown again.

The camera misses what is low and near (MiniWorld's: the floor within 2.6 m, a key within 2 m),
and marks that floor free. Odometry catches it, as a bumper would: when the robot was told to move
and did not, something stopped it, and the cell where it is (ahead, or behind when backing; ahead
too when a turn is refused, which only an object held in front causes) is marked occupied.
"""
from __future__ import annotations

import math

import numpy as np

from habitat_bridge.embodied.types import CameraSpec, Pose
from llm_teacher_common.perception import BUMP_AHEAD, FREE, OCCUPIED, UNKNOWN, OccupancyGrid
from llm_teacher_common.transform2d import Transform2D

OBSTACLE_BAND = 0.1, 2.0  # m above the floor: a depth point in this band is an obstacle (not floor, not ceiling)
CARRIED = 1.8, 0.8  # m ahead and to either side where a held object hangs
MAX_RANGE = 6.0  # m: a column with nothing nearer is free this far
ROBOT_FRONT = 0.4  # m: nothing that stops the robot is nearer its centre (MiniWorld: its radius)
PICKED_UP = 1.0, 0.75  # m ahead, and round that point: where an object just picked up was


def obstacle_points(depth: np.ndarray, camera: CameraSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, left) in base_link of every depth pixel, and which of them are obstacles."""
    height, width = depth.shape
    focal = camera.focal_length_px
    rows, cols = np.mgrid[0:height, 0:width]
    left = -(cols - (width - 1) / 2) * depth / focal
    above_floor = camera.height_m - (rows - (height - 1) / 2) * depth / focal
    obstacle = (above_floor > OBSTACLE_BAND[0]) & (above_floor < OBSTACLE_BAND[1]) & (depth < MAX_RANGE)
    return depth + camera.forward_m, left, obstacle


class OccupancyMapper:
    """An occupancy grid of `size` metres square centred on where the episode starts."""

    def __init__(self, camera: CameraSpec, size: float = 32.0, resolution: float = 0.25):
        self.camera, self.resolution = camera, resolution
        self.cells_per_side = int(round(size / resolution))
        self.grid: OccupancyGrid | None = None
        self._pose: Pose | None = None  # at the last update: odometry says whether the robot moved
        self._carrying = False

    def reset(self, pose: Pose) -> None:
        self._pose, self._carrying = pose, False
        half = self.cells_per_side * self.resolution / 2
        self.grid = OccupancyGrid(np.full((self.cells_per_side,) * 2, UNKNOWN, np.int8),
                                  (pose.x - half, pose.y - half), self.resolution)

    def update(self, depth: np.ndarray, pose: Pose, carrying: bool = False,
               motion: tuple[float, float] = (0.0, 0.0)) -> OccupancyGrid:
        """Add one depth image taken at `pose`; `carrying`: the robot holds an object in front of
        its camera, which is not part of the world; `motion`: (metres forward, radians left) the
        robot was told to move since the last update."""
        last, self._pose = self._pose, pose
        stalled = last is not None and any(motion) and (
            math.hypot(pose.x - last.x, pose.y - last.y) < abs(motion[0]) / 3 + 1e-3
            and abs(math.remainder(pose.yaw - last.yaw, math.tau)) < abs(motion[1]) / 3 + 1e-3)
        if carrying and not self._carrying:
            self._forget_picked_up(pose)
        self._carrying = carrying
        forward, left, obstacle = obstacle_points(depth, self.camera)
        hidden = np.zeros(depth.shape[1], bool)  # columns the held object hides: nothing known beyond it
        if carrying:
            held = obstacle & (forward < CARRIED[0]) & (np.abs(left) < CARRIED[1])
            obstacle &= ~held
            hidden = held.any(axis=0)
        # Per column, the nearest obstacle (or MAX_RANGE): the floor before it is free.
        nearest = np.where(obstacle, forward, MAX_RANGE).min(axis=0)
        width = depth.shape[1]
        bearings = self._bearings(width)
        steps = np.arange(0.0, MAX_RANGE, self.resolution / 2)
        along = steps[None, :] * np.ones((width, 1))
        reach = (along < (nearest[:, None] / np.cos(bearings)[:, None] - self.resolution)) & ~hidden[:, None]
        free_f = (along * np.cos(bearings)[:, None])[reach]
        free_l = (along * np.sin(bearings)[:, None])[reach]
        self._mark(np.append(free_f, 0.0), np.append(free_l, 0.0), pose, FREE)  # and where the robot stands
        self._mark(forward[obstacle], left[obstacle], pose, OCCUPIED)
        if stalled:
            self._mark_bump(pose, backwards=motion[0] < 0)
        grid = self.grid
        return OccupancyGrid(grid.cells.copy(), grid.origin, grid.resolution)  # a snapshot: the map changes

    def _mark_bump(self, pose: Pose, backwards: bool) -> None:
        """Mark what stopped the robot: BUMP_AHEAD ahead (behind), or, if that is marked already (a
        planner that sent the robot on did not keep off it), the next cell on the way there, down
        to the robot's front: a bump again at the same place changes the map again."""
        grid = self.grid
        own = grid.cell_of(pose.x, pose.y)
        facing = Transform2D(pose.x, pose.y, pose.yaw + math.pi * backwards)
        for ahead in np.arange(BUMP_AHEAD, ROBOT_FRONT, -grid.resolution / 2):
            cell = grid.cell_of(*facing.to_parent(ahead, 0.0))
            if cell == own:
                return
            if grid.cells[cell] != OCCUPIED:
                grid.cells[cell] = OCCUPIED
                return

    def _forget_picked_up(self, pose: Pose) -> None:
        """Occupied cells where an object was just picked up from were the object's (left occupied,
        they would stand in the robot's way, and look like something it bumped into)."""
        grid = self.grid
        x, y = pose.on_map(PICKED_UP[0], 0.0)
        i, j = np.nonzero(grid.cells == OCCUPIED)
        cx, cy = grid.centre_of(i, j)
        near = np.hypot(cx - x, cy - y) < PICKED_UP[1]
        grid.cells[i[near], j[near]] = UNKNOWN

    def _bearings(self, width: int) -> np.ndarray:
        return np.arctan(-(np.arange(width) - (width - 1) / 2) / self.camera.focal_length_px)

    def _mark(self, forward: np.ndarray, left: np.ndarray, pose: Pose, value: int) -> None:
        x, y = pose.on_map(forward, left)
        grid = self.grid
        i = np.floor((x - grid.origin[0]) / grid.resolution).astype(int)
        j = np.floor((y - grid.origin[1]) / grid.resolution).astype(int)
        inside = (i >= 0) & (i < grid.cells.shape[0]) & (j >= 0) & (j < grid.cells.shape[1])
        i, j = i[inside], j[inside]
        if value == FREE:  # occupied stays occupied
            keep = grid.cells[i, j] != OCCUPIED
            i, j = i[keep], j[keep]
        grid.cells[i, j] = value
