"""What a robot perceives, as plain types: the objects it has seen, what it carries, its pose, and
its occupancy map. Simulators fill them; the teacher reads them; messages.py converts them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Occupancy cell values, as nav_msgs/OccupancyGrid has them.
UNKNOWN, FREE, OCCUPIED = -1, 0, 100
# m from the robot's centre where its map marks what stopped it (a commanded move odometry did
# not show): the mapper (habitat_bridge.embodied.mapping) writes it, the skills read it.
BUMP_AHEAD = 0.6


@dataclass
class OccupancyGrid:
    cells: np.ndarray  # int8 (W, H)
    origin: tuple[float, float]  # map-frame position of cell [0, 0]'s corner
    resolution: float  # m per cell

    def cell_of(self, x: float, y: float) -> tuple[int, int]:
        return int((x - self.origin[0]) // self.resolution), int((y - self.origin[1]) // self.resolution)

    def cropped_to_known(self, margin: int = 2) -> 'OccupancyGrid':
        """The part of the map round its known cells (and `margin` unknown ones): planning on it
        gives the same paths at a fraction of the cost."""
        known = np.argwhere(self.cells != UNKNOWN)
        if not len(known):
            return self
        lo = np.maximum(known.min(axis=0) - margin, 0)
        hi = np.minimum(known.max(axis=0) + margin + 1, self.cells.shape)
        origin = (self.origin[0] + lo[0] * self.resolution, self.origin[1] + lo[1] * self.resolution)
        return OccupancyGrid(self.cells[lo[0]:hi[0], lo[1]:hi[1]], origin, self.resolution)

    def centre_of(self, i, j):
        return (self.origin[0] + (np.asarray(i) + 0.5) * self.resolution,
                self.origin[1] + (np.asarray(j) + 0.5) * self.resolution)


@dataclass
class PerceivedObject:
    """One perceived object; forward/left are in cells, in the robot's frame (REP-103)."""

    type: str
    color: str = ''
    state: str = ''
    forward: float = 0.0
    left: float = 0.0
    grid_x: int = -1
    grid_y: int = -1
    visible: bool = False

    @property
    def name(self) -> str:
        """How a person names it: 'yellow key', 'blue door', 'lava'."""
        return f'{self.color} {self.type}' if self.color and self.type != 'lava' else self.type


@dataclass
class Perception:
    """What one robot perceives: the mission, objects seen this episode, what it carries, its pose."""

    mission: str
    objects: list[PerceivedObject] = field(default_factory=list)
    carrying: PerceivedObject | None = None
    x: float = 0.0
    y: float = 0.0
    heading: float = 0
    """grid worlds: 0 east, 1 south, 2 west, 3 north; embodied: yaw in radians (REP-103)."""
    task_family: str = 'gridworld'
    occupancy: OccupancyGrid | None = None
    """embodied: the robot's map, built from depth and odometry."""
