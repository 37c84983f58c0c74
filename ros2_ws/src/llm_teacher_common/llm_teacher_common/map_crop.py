"""The robot's occupancy map as a policy input: an egocentric crop of it, rotated to the heading, at
two scales, with where the object the mission names was last perceived marked (what a detector
that reads the mission, and remembers, gives a robot). The embodied observation "rgbd_map" is the
camera's rgbd with these channels beside it (habitat_bridge.embodied.vector), because a camera
student cannot copy skills that plan on the map from the camera alone (docs/results.md, "Can a
camera student imitate its teacher?").
"""
from __future__ import annotations

import math

import numpy as np

from llm_teacher_common.perception import OCCUPIED, UNKNOWN, OccupancyGrid, Perception
from llm_teacher_common.transform2d import Transform2D

CROP_RESOLUTIONS = (0.25, 0.5)  # m per cell: 48 cells see 12 m and 24 m square round the robot
TARGET_MARK = 0.5  # m: the radius of the named object's mark
MAP_CHANNELS = 2 * len(CROP_RESOLUTIONS)  # occupancy and the target's mark, at each scale


def map_crop(perception: Perception, cells: int, mark_target: bool = False) -> np.ndarray:
    """(cells, cells, 2) uint8 egocentric occupancy at two scales (CROP_RESOLUTIONS): the robot at
    the centre facing up (row 0 is ahead, column 0 is its left); unknown 0, free 128, occupied 255.
    mark_target: two more channels, 255 within TARGET_MARK of where the object the mission names
    was last perceived (what a detector that reads the mission, and remembers, would give)."""
    return egocentric_crop(perception.occupancy, (perception.x, perception.y, perception.heading), cells,
                           named_positions(perception) if mark_target else None)


def named_positions(perception: Perception, named: bool = True) -> list[tuple[float, float]]:
    """Map-frame (x, y) of the perceived objects the mission names (named=False: of the others)."""
    robot = Transform2D(perception.x, perception.y, perception.heading)
    return [robot.to_parent(o.forward, o.left)
            for o in perception.objects if (f'{o.color} {o.type}' in perception.mission) == named]


def egocentric_crop(grid: OccupancyGrid, pose: tuple[float, float, float], cells: int,
                    targets: list[tuple[float, float]] | None = None) -> np.ndarray:
    """map_crop from a map, the robot's map-frame pose (x, y, yaw) and, when given (a list, even
    empty), the map-frame positions to mark: what a robot's mapper, localiser and detector give."""
    layers = [_crop(grid, pose, cells, r) for r in CROP_RESOLUTIONS]
    if targets is not None:
        robot = Transform2D(*pose)
        offsets = cells / 2 - np.arange(cells) - 0.5
        for resolution in CROP_RESOLUTIONS:
            forward, left = np.meshgrid(offsets * resolution, offsets * resolution, indexing='ij')
            mark = np.zeros((cells, cells), bool)
            for tx, ty in targets:
                target_forward, target_left = robot.from_parent(tx, ty)
                mark |= np.hypot(forward - target_forward, left - target_left) <= max(TARGET_MARK, resolution)
            layers.append((mark * 255).astype(np.uint8)[..., None])
    return np.concatenate(layers, axis=-1)


def _crop(grid: OccupancyGrid, pose: tuple[float, float, float], cells: int, resolution: float) -> np.ndarray:
    """One scale: each crop cell takes the most telling of the map cells under it (occupied over
    free over unknown), so a one-cell wall survives a coarser scale."""
    sub = max(1, math.ceil(resolution / grid.resolution - 1e-9))  # samples per crop cell, per axis: none skips a map cell
    fine = cells * sub
    offsets = (fine / 2 - np.arange(fine) - 0.5) * (resolution / sub)
    forward, left = np.meshgrid(offsets, offsets, indexing='ij')
    x, y = Transform2D(*pose).to_parent(forward, left)
    i = np.floor((x - grid.origin[0]) / grid.resolution).astype(int)
    j = np.floor((y - grid.origin[1]) / grid.resolution).astype(int)
    inside = (i >= 0) & (i < grid.cells.shape[0]) & (j >= 0) & (j < grid.cells.shape[1])
    values = np.full((fine, fine), UNKNOWN, np.int16)
    values[inside] = grid.cells[i[inside], j[inside]]
    encoded = np.where(values == UNKNOWN, 0, np.where(values == OCCUPIED, 255, 128)).astype(np.uint8)
    return encoded.reshape(cells, sub, cells, sub).max(axis=(1, 3))[..., None]
