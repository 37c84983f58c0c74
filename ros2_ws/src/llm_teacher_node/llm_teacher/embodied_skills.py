"""Option skills of an embodied robot: geometric controllers on its perception and occupancy map.

The skills read what a real robot has: the perceived objects (class, colour, position relative to
base_link, in metres), its pose, and the occupancy grid its mapping stack builds from the depth
camera (habitat_bridge.embodied.mapping). They never read the simulator's state.

- go to <object>: a shortest path over known free cells (kept a robot radius off obstacles) to
  within reach of the object; steer to a point a little way down it (turn to its bearing, move).
- pick up <object>: go to it, face it, pick up.
- drop <object>: put down what the robot carries (it holds it in front).
- explore: the same path following, to the nearest frontier (free cell next to unknown ones).
As on MiniGrid, the planning is on what the robot has seen, so the teacher is only as good as
its map: a target behind an unmapped wall is reached by exploring first.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from llm_teacher_common.perception import FREE, OCCUPIED, UNKNOWN, OccupancyGrid, Perception
from llm_teacher.options import Option

# MiniWorld's action indices (llm_teacher_common.commands.MOTIONS['miniworld']).
TURN_LEFT, TURN_RIGHT, FORWARD, BACK, PICKUP, DROP = 0, 1, 2, 3, 4, 5
NUM_EMBODIED_ACTIONS = 8

ROBOT_RADIUS = 0.45  # m kept between the robot's centre and mapped obstacles
REACH = 1.0  # m from the robot's centre to an object it can pick up (MiniWorld: 1.5 radii ahead, +1.2 radii)
APPROACH = 1.5  # m from an object within which the robot goes straight for it (the map plans up to here)
CARRY_EXTRA = 1.0  # m: while carrying, the held object is about this much nearer to things than the robot
OBJECT_RADIUS = 0.5  # m: the footprint assumed for a perceived object
LOOKAHEAD = 3  # cells down the path the robot steers towards
FRONTIER_MIN = 6  # cells: nearer frontiers are the blind ring round the robot, which turning reveals
TURN_COST = 1.0  # cells of path a 45-degree turn is worth, when choosing the first move
FACING = math.radians(10)  # bearing error under which the robot moves on rather than turns
NEIGHBOURS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]


def _shift(mask: np.ndarray, di: int, dj: int) -> np.ndarray:
    """mask moved by (di, dj) cells, False where it moved in from outside."""
    out = np.zeros_like(mask)
    w, h = mask.shape
    out[max(di, 0):w + min(di, 0), max(dj, 0):h + min(dj, 0)] = mask[max(-di, 0):w - max(di, 0), max(-dj, 0):h - max(dj, 0)]
    return out


def _neighbours(mask: np.ndarray, moves=NEIGHBOURS) -> np.ndarray:
    """Cells one move away from a cell of `mask`."""
    out = np.zeros_like(mask)
    for di, dj in moves:
        out |= _shift(mask, di, dj)
    return out


def _dilate(mask: np.ndarray, cells: int) -> np.ndarray:
    for _ in range(cells):
        mask = mask | _neighbours(mask)
    return mask


def steps_to(goal: np.ndarray, passable: np.ndarray, until: tuple[int, int] | None = None, limit: int = 400) -> np.ndarray:
    """Cells (8-connected moves) from passable cells to the nearest goal cell; inf if none. With
    `until`, it stops once that cell has its distance (every cell nearer the goal has one too)."""
    distance = np.full(goal.shape, np.inf)
    frontier = goal & passable
    distance[frontier] = 0
    for k in range(1, limit):
        frontier = _neighbours(frontier) & passable & np.isinf(distance)
        if not frontier.any():
            break
        distance[frontier] = k
        if until is not None and frontier[until]:
            break
    return distance


class EmbodiedSkills:
    """Skills for a robot that turns `turn_angle` per turn action (MiniWorld's default: 15 degrees)."""

    def __init__(self, turn_angle: float = math.radians(15)):
        self.turn_angle = turn_angle

    def action(self, option: Option, perception: Perception, passable: np.ndarray) -> int | None:
        """The action `option` takes now, or None when it has nothing left to do here."""
        grid = perception.occupancy
        if option.verb == 'drop':
            return DROP
        if option.verb == 'explore':
            return self.explore(perception, passable)
        targets = [o for o in perception.objects if o.type == option.type and o.color == option.color]
        if not targets:
            return self.explore(perception, passable)
        target = min(targets, key=lambda o: math.hypot(o.forward, o.left))
        distance, bearing = math.hypot(target.forward, target.left), math.atan2(target.left, target.forward)
        carrying = perception.carrying is not None
        if distance <= APPROACH + CARRY_EXTRA * carrying:  # close: the last bit by sight, not by map
            turn = TURN_LEFT if bearing > 0 else TURN_RIGHT
            if option.verb == 'go to' and carrying and distance <= REACH + CARRY_EXTRA:
                return None  # what it carries is next to the object: done
            if abs(bearing) > self.turn_angle / 2:
                return turn
            return PICKUP if option.verb == 'pick up' and distance <= REACH else FORWARD
        tx, ty = self._to_map(perception, target.forward, target.left)
        cx, cy = grid.centre_of(*np.indices(grid.cells.shape))
        goal = np.hypot(cx - tx, cy - ty) <= APPROACH - grid.resolution
        action = self.follow(perception, passable, goal)
        return action if action is not None else self.explore(perception, passable)  # not reachable yet

    def explore(self, perception: Perception, passable: np.ndarray) -> int:
        """Towards the nearest frontier; with none reachable, turn to look around."""
        touches_unknown = _neighbours(perception.occupancy.cells == UNKNOWN, ((1, 0), (-1, 0), (0, 1), (0, -1)))
        action = self.follow(perception, passable, passable & touches_unknown, min_steps=FRONTIER_MIN)
        return TURN_LEFT if action is None else action

    def follow(self, perception: Perception, passable: np.ndarray, goal: np.ndarray, min_steps: int = 0) -> int | None:
        """Steer down the shortest path to `goal`; None when no goal cell is reachable."""
        grid = perception.occupancy
        i, j = grid.cell_of(perception.x, perception.y)
        if min_steps:  # goals right under the robot are ones it cannot see from here: skip them
            near = np.zeros_like(goal)
            near[max(i - min_steps, 0):i + min_steps + 1, max(j - min_steps, 0):j + min_steps + 1] = True
            goal = goal & ~near
        distance = steps_to(goal, passable, until=(i, j))
        if not np.isfinite(distance[i, j]):
            return None
        # First move: fewest cells to go plus a cost for turning to it, so that of two near-equal
        # ways the robot keeps to the one it faces (choosing by distance alone, it dithers
        # between two frontiers as turning reveals cells on either side).
        def first_move_cost(move):
            di, dj = move
            turn = abs(math.remainder(math.atan2(dj, di) - perception.heading, math.tau))
            return distance[i + di, j + dj] + TURN_COST * turn / (math.pi / 4)
        moves = [(di, dj) for di, dj in NEIGHBOURS if 0 <= i + di < distance.shape[0] and 0 <= j + dj < distance.shape[1]
                 and distance[i + di, j + dj] < distance[i, j]]
        if moves:
            di, dj = min(moves, key=first_move_cost)
            i, j = i + di, j + dj
        for _ in range(LOOKAHEAD - 1):  # then walk down the field
            best = min(((distance[i + di, j + dj], i + di, j + dj) for di, dj in NEIGHBOURS
                        if 0 <= i + di < distance.shape[0] and 0 <= j + dj < distance.shape[1]))
            if not best[0] < distance[i, j]:
                break
            _, i, j = best
        x, y = grid.centre_of(i, j)
        error = math.remainder(math.atan2(y - perception.y, x - perception.x) - perception.heading, math.tau)
        if abs(error) <= FACING or distance[i, j] == 0 and math.hypot(x - perception.x, y - perception.y) < grid.resolution:
            return FORWARD
        return TURN_LEFT if error > 0 else TURN_RIGHT

    def passable(self, perception: Perception) -> np.ndarray:
        """Known free cells a robot radius away from mapped obstacles and perceived objects; the
        robot's own cell always (it stands there)."""
        grid = perception.occupancy
        blocked = grid.cells == OCCUPIED
        cx, cy = grid.centre_of(*np.indices(grid.cells.shape))
        for obj in perception.objects:
            ox, oy = self._to_map(perception, obj.forward, obj.left)
            blocked |= np.hypot(cx - ox, cy - oy) <= OBJECT_RADIUS
        passable = (grid.cells == FREE) & ~_dilate(blocked, math.ceil(ROBOT_RADIUS / grid.resolution))
        i, j = grid.cell_of(perception.x, perception.y)
        passable[i, j] = True
        return passable

    @staticmethod
    def _to_map(perception: Perception, forward: float, left: float) -> tuple[float, float]:
        cos, sin = math.cos(perception.heading), math.sin(perception.heading)
        return perception.x + cos * forward - sin * left, perception.y + sin * forward + cos * left

    def policy(self, option_probs: dict[Option, float], perception: Perception) -> np.ndarray:
        """pi_T(a|s) over the embodied actions from the option distribution."""
        if not isinstance(perception.occupancy, OccupancyGrid):
            raise ValueError('the embodied teacher needs the robot\'s occupancy map in its perception')
        perception = dataclasses.replace(perception, occupancy=perception.occupancy.cropped_to_known())
        passable = self.passable(perception)
        probs = np.zeros(NUM_EMBODIED_ACTIONS, np.float32)
        for option, p in option_probs.items():
            action = self.action(option, perception, passable) if p > 0 else None
            if action is not None:
                probs[action] += p
        if probs.sum() == 0:
            probs[TURN_LEFT] = 1.0
        return probs / probs.sum()
