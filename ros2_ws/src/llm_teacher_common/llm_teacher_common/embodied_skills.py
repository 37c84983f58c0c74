"""Option skills of an embodied robot: geometric controllers on its perception and occupancy map.

The skills read what a real robot has: the perceived objects (class, colour, position relative to
base_link, in metres), its pose, and the occupancy grid its mapping stack builds from the depth
camera and odometry (habitat_bridge.embodied.mapping, which also marks what the robot bumps into).
They never read the simulator's state, and keep none of their own: one perception is one answer.

- go to <object>: a shortest path over known free cells (kept a robot radius off obstacles, less
  where only a tighter gap leads on, through unknown cells where no known way does) to within
  reach of the object; steer to a point a little way down it (turn to its bearing, move); the
  last bit straight at it. Carrying, up to where the way to it is clear of other objects, then
  line up and push what it holds against it.
- pick up <object>: go to it, face it, pick up.
- drop <object>: put down what the robot carries (it holds it in front); the object the mission
  says to move only next to the one it names to put it by (nothing to do elsewhere: a drop on the
  way was a sampled teacher's usual failure on PutNext).
- explore: the same path following, to the nearest frontier (free cell next to unknown ones).
As on MiniGrid, the planning is on what the robot has seen, so the teacher is only as good as
its map: a target behind an unmapped wall is reached by exploring first.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from llm_teacher_common.commands import BACK, DROP, FORWARD, NUM_EMBODIED_ACTIONS, PICKUP, TURN_LEFT, TURN_RIGHT
from llm_teacher_common.perception import BUMP_AHEAD, FREE, OCCUPIED, UNKNOWN, OccupancyGrid, Perception
from llm_teacher_common.transform2d import Transform2D
from llm_teacher_common.options import Option, mission_roles

ROBOT_RADIUS = 0.45  # m kept between the robot's centre and mapped obstacles
# MiniWorld: the robot's radius is 0.4 m, objects' 0.42-0.6 m; a held one hangs 1.05 * (0.57 m +
# its radius) ahead, so it touches a target 1.9-2.4 m from the robot.
GOAL_REACH = 1.0  # m from a target's centre the map plans to
SIGHT = 1.1  # m: nearer a target than this nothing fits between, so the robot goes straight at it
# Carrying, the robot lines up with the target from CARRY_SIGHT (where turning cannot swing the held
# object into it), then pushes straight on. Nearer than CARRY_TURN it does not turn: a target less
# than CARRY_OFFSET to the side of its way is one the held object will hit; it backs off from another.
CARRY_SIGHT, CARRY_TURN, CARRY_OFFSET = 3.0, 2.4, 0.7
CARRY_CLEARANCE = 0.5  # m more kept off obstacles while carrying, where the map allows
HELD_AT, HELD_RADIUS = 1.15, 0.55  # m: where a held object hangs ahead of the robot, and its footprint
# m between the way a held object is pushed and other objects' centres: more than a turn needs
# (HELD_RADIUS + OBJECT_RADIUS), so that lining up on a clear way never swings it into one.
CLEAR_WAY = 1.25
REACH = 1.3  # m: pick up works to here straight ahead (MiniWorld: an object touching a 0.48 m circle 0.6 m ahead)
NEXT_TO = 2.6  # m: carrying, a target nearer than this that the robot is blocked against has the held object next to it
OBJECT_RADIUS = 0.5  # m: the footprint assumed for a perceived object
TARGET_FOOTPRINT = 0.8  # m round a target within which its own mapped cells do not keep the robot off it
LOOKAHEAD = 3  # cells down the path the robot steers towards
FRONTIER_MIN = 6  # cells: nearer frontiers are the blind ring round the robot, which turning reveals
TURN_COST = 1.0  # cells of path a 45-degree turn is worth, when choosing the first move
# m per map cell the skills were tuned on (habitat_bridge.embodied.mapping's): their counts of cells
# (LOOKAHEAD, FRONTIER_MIN, TURN_COST, the clearances' rounding) mean other distances on another map.
CELL = 0.25
FACING = math.radians(10)  # bearing error under which the robot moves on rather than turns
NEIGHBOURS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]


def _shift(mask: np.ndarray, di: int, dj: int) -> np.ndarray:
    """mask moved by (di, dj) cells, False where it moved in from outside."""
    out = np.zeros_like(mask)
    w, h = mask.shape
    out[max(di, 0):w + min(di, 0), max(dj, 0):h + min(dj, 0)] = mask[max(-di, 0):w - max(di, 0), max(-dj, 0):h - max(dj, 0)]
    return out


def _neighbours(mask: np.ndarray, moves) -> np.ndarray:
    """Cells one move away from a cell of `mask`."""
    out = np.zeros_like(mask)
    for di, dj in moves:
        out |= _shift(mask, di, dj)
    return out


def _grow(mask: np.ndarray) -> np.ndarray:
    """`mask` and the cells one 8-connected move from it: one row pass, one column pass (this is
    what the planner's wavefront spends its time in, so it is done in place, without shifts)."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    out = rows.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def _dilate(mask: np.ndarray, cells: int) -> np.ndarray:
    for _ in range(cells):
        mask = _grow(mask)
    return mask


def steps_to(goal: np.ndarray, passable: np.ndarray, until: tuple[int, int] | None = None, limit: int = 400) -> np.ndarray:
    """Cells (8-connected moves) from passable cells to the nearest goal cell; inf if none. With
    `until`, it stops once that cell has its distance (every cell nearer the goal has one too)."""
    distance = np.full(goal.shape, np.inf)
    frontier = goal & passable
    distance[frontier] = 0
    for k in range(1, limit):
        frontier = _grow(frontier) & passable & np.isinf(distance)
        if not frontier.any():
            break
        distance[frontier] = k
        if until is not None and frontier[until]:
            break
    return distance


def _on_map(perception: Perception, forward: float, left: float) -> tuple[float, float]:
    """The map point `forward` ahead of the robot and `left` of it."""
    return Transform2D(perception.x, perception.y, perception.heading).to_parent(forward, left)


def blocked_ahead(perception: Perception, ahead: float = BUMP_AHEAD) -> bool:
    """The map has an obstacle where one stops the robot: it bumped into something there (or
    stands against a mapped one). A negative `ahead`: behind it."""
    grid = perception.occupancy
    i, j = grid.cell_of(*_on_map(perception, ahead, 0.0))
    return 0 <= i < grid.cells.shape[0] and 0 <= j < grid.cells.shape[1] and grid.cells[i, j] == OCCUPIED


def delivered(perception: Perception, kind: str, color: str) -> bool:
    """What the robot carries is next to the nearest perceived <color> <kind>: pushed against it.
    (Sizes are not perceived, so a distance alone cannot tell: a held box touches a big target
    2.4 m from the robot, and is still 0.5 m short of a small one at 2.3 m.)"""
    targets = [o for o in perception.objects if o.type == kind and o.color == color]
    if perception.carrying is None or not targets:
        return False
    target = min(targets, key=lambda o: math.hypot(o.forward, o.left))
    ahead = abs(math.atan2(target.left, target.forward)) < math.pi / 4
    return math.hypot(target.forward, target.left) <= NEXT_TO and ahead and blocked_ahead(perception)


class EmbodiedSkills:
    """Skills for a robot that turns `turn_angle` per turn action (MiniWorld's default: 15 degrees)."""

    def __init__(self, turn_angle: float = math.radians(15)):
        self.turn_angle = turn_angle

    def action(self, option: Option, perception: Perception) -> int | None:
        """The action `option` takes now, or None when it has nothing left to do here."""
        if option.verb == 'drop':
            moved, next_to = mission_roles(perception.mission)
            held = perception.carrying
            if held is not None and (held.type, held.color) == moved and next_to is not None \
                    and not delivered(perception, next_to[0], next_to[1]):
                return None  # the object the mission moves is put down next to its target, nowhere else
            return DROP
        carrying = perception.carrying is not None
        if option.verb == 'go to' and carrying and delivered(perception, option.type, option.color):
            # Arrived with the object the mission moves at the one to put it by: the go-to ends in its drop.
            moved, next_to = mission_roles(perception.mission)
            held = (perception.carrying.type, perception.carrying.color)
            return DROP if (held, (option.type, option.color)) == (moved, next_to) else None
        if carrying and blocked_ahead(perception) and not blocked_ahead(perception, -BUMP_AHEAD):
            return BACK  # what it holds ran into something: room to turn comes from backing off
        targets = [o for o in perception.objects if o.type == option.type and o.color == option.color]
        if option.verb == 'explore' or not targets:
            return self.explore(perception)
        target = min(targets, key=lambda o: math.hypot(o.forward, o.left))
        distance, bearing = math.hypot(target.forward, target.left), math.atan2(target.left, target.forward)
        grid = perception.occupancy
        tx, ty = _on_map(perception, target.forward, target.left)
        cx, cy = grid.centre_of(*np.indices(grid.cells.shape))
        to_target = np.hypot(cx - tx, cy - ty)
        robot = grid.cell_of(perception.x, perception.y)
        if carrying:  # line up where the way to the target is clear, then push the held object against it
            goal = (to_target <= CARRY_SIGHT) & self._clear_way(perception, target, cx, cy)
            if goal[robot] or distance <= CARRY_SIGHT and self._clear_way(perception, target, perception.x,
                                                                             perception.y):
                if distance < CARRY_TURN:
                    return BACK if abs(target.left) > CARRY_OFFSET else FORWARD  # (going straight keeps the offset)
                return self.turn(perception, bearing > 0) if abs(bearing) > self.turn_angle / 2 else FORWARD
        else:
            goal = to_target <= GOAL_REACH
            if distance <= SIGHT or goal[robot]:  # the last bit by sight
                if abs(bearing) > self.turn_angle / 2:
                    return self.turn(perception, bearing > 0)
                return PICKUP if option.verb == 'pick up' and distance <= REACH else FORWARD
        levels = self.passable(perception, target=(tx, ty))
        for passable in levels[:-1]:
            action = self.follow(perception, passable, goal & passable, target=(tx, ty))
            if action is not None:
                return action
        # The last level runs through unknown cells, and a target seen afar can lie off the part of
        # the map planned on (the known part): then head for the cells nearest it.
        through_unknown = levels[-1]
        if not (goal & through_unknown).any():
            others = through_unknown.copy()
            others[robot] = False
            goal = others & (to_target <= to_target[others].min(initial=np.inf) + grid.resolution)
        action = self.follow(perception, through_unknown, goal & through_unknown, target=(tx, ty))
        return action if action is not None else self.explore(perception)  # not reachable yet

    def explore(self, perception: Perception) -> int:
        """Towards the nearest frontier; with none reachable, turn to look around."""
        touches_unknown = _neighbours(perception.occupancy.cells == UNKNOWN, ((1, 0), (-1, 0), (0, 1), (0, -1)))
        for passable in self.passable(perception):
            action = self.follow(perception, passable, passable & touches_unknown, min_steps=FRONTIER_MIN)
            if action is not None:
                return action
        return TURN_LEFT

    def follow(self, perception: Perception, passable: np.ndarray, goal: np.ndarray, min_steps: int = 0,
               target: tuple[float, float] | None = None) -> int | None:
        """Steer down the shortest path to `goal` (by `target`, a map point, if it has one); None
        when no goal cell is reachable."""
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
            # Stuck recovery: a path that grazes what the robot bumped into (marked ahead of it)
            # would have it push on; backing off, it comes back on another line, and its next bump
            # is marked somewhere else. (The target's own cells ahead are where it is going.)
            ax, ay = _on_map(perception, BUMP_AHEAD, 0.0)
            at_target = target is not None and math.hypot(ax - target[0], ay - target[1]) <= TARGET_FOOTPRINT
            if blocked_ahead(perception) and not at_target:
                return BACK
            return FORWARD
        return self.turn(perception, error > 0)

    def turn(self, perception: Perception, left: bool) -> int:
        """Turn left or right; carrying, back off first if the held object would swing into
        something (the simulator refuses such a turn, and the robot would try it forever), or with
        no room behind, turn the other way if that is clear."""
        if perception.carrying is None:
            return TURN_LEFT if left else TURN_RIGHT
        if self._held_clear(perception, perception.heading + (self.turn_angle if left else -self.turn_angle)):
            return TURN_LEFT if left else TURN_RIGHT
        if not blocked_ahead(perception, -BUMP_AHEAD):
            return BACK
        return TURN_RIGHT if left else TURN_LEFT

    def _clear_way(self, perception: Perception, target, x, y):
        """Whether a held object pushed straight from (x, y) (map points) to `target` passes clear
        of the other perceived objects."""
        tx, ty = _on_map(perception, target.forward, target.left)
        clear = np.ones(np.shape(x), bool)
        for obj in perception.objects:
            if obj is target:
                continue
            ox, oy = _on_map(perception, obj.forward, obj.left)
            dx, dy = tx - x, ty - y
            along = np.clip(((ox - x) * dx + (oy - y) * dy) / np.maximum(dx * dx + dy * dy, 1e-9), 0, 1)
            clear &= np.hypot(x + along * dx - ox, y + along * dy - oy) >= CLEAR_WAY
        return clear

    def _held_clear(self, perception: Perception, heading: float) -> bool:
        """Nothing mapped or perceived where the held object would hang with the robot at `heading`."""
        hx, hy = Transform2D(perception.x, perception.y, heading).to_parent(HELD_AT, 0.0)
        for obj in perception.objects:
            ox, oy = _on_map(perception, obj.forward, obj.left)
            if math.hypot(ox - hx, oy - hy) < HELD_RADIUS + OBJECT_RADIUS:
                return False
        grid = perception.occupancy
        reach = math.ceil(HELD_RADIUS / grid.resolution)
        i, j = grid.cell_of(hx, hy)
        window = grid.cells[max(i - reach, 0):i + reach + 1, max(j - reach, 0):j + reach + 1]
        wi, wj = np.nonzero(window == OCCUPIED)
        cx, cy = grid.centre_of(wi + max(i - reach, 0), wj + max(j - reach, 0))
        return not np.any(np.hypot(cx - hx, cy - hy) < HELD_RADIUS)

    def passable(self, perception: Perception, target: tuple[float, float] | None = None) -> list[np.ndarray]:
        """Masks of passable cells, most clearance first: known free cells a robot radius away from
        mapped obstacles and perceived objects (carrying, first more: what it holds sticks out);
        then one cell less (a gap the cell-rounded clearance closes, such as an object near a
        doorway); then that plus, round the robot, free cells with no clearance: the way out for a
        robot that has none left (the map grew a wall next to it, or it bumped into something).
        The robot's own cell always (it stands there). `target`: a map point the robot is going
        to, whose own footprint does not keep it off; last, then, the cells passable if unknown
        ones were free, the way to a target seen afar."""
        grid = perception.occupancy
        blocked = grid.cells == OCCUPIED
        cx, cy = grid.centre_of(*np.indices(grid.cells.shape))
        for obj in perception.objects:
            ox, oy = _on_map(perception, obj.forward, obj.left)
            blocked |= np.hypot(cx - ox, cy - oy) <= OBJECT_RADIUS
        if target is not None:
            blocked &= np.hypot(cx - target[0], cy - target[1]) > TARGET_FOOTPRINT
        free = grid.cells == FREE
        clearance = math.ceil(ROBOT_RADIUS / grid.resolution)
        tight = _dilate(blocked, clearance - 1)
        i, j = grid.cell_of(perception.x, perception.y)
        escape = np.zeros_like(free)
        escape[max(i - clearance, 0):i + clearance + 1, max(j - clearance, 0):j + clearance + 1] = True
        escape &= free & ~blocked
        roomy = free & ~_dilate(tight, 1)
        levels = [roomy, free & ~tight, free & ~tight | escape]
        if perception.carrying is not None:  # first, room for what it holds out in front
            levels.insert(0, free & ~_dilate(tight, 1 + math.ceil(CARRY_CLEARANCE / grid.resolution)))
        if target is not None:
            levels.append((free | (grid.cells == UNKNOWN)) & ~_dilate(tight, 1))
        for passable in levels:
            passable[i, j] = True
        return levels

    def policy(self, option_probs: dict[Option, float], perception: Perception) -> np.ndarray:
        """pi_T(a|s) over the embodied actions from the option distribution.

        :raises ValueError: no occupancy map, or the robot off it (a robot's map may not hold the
            floor under it: planning on the map's known part would read cells from its far side).
        """
        grid = perception.occupancy
        if not isinstance(grid, OccupancyGrid):
            raise ValueError('the embodied teacher needs the robot\'s occupancy map in its perception')
        known = grid.cropped_to_known()
        for grid in (known, grid):  # the known part, unless the robot stands off it
            i, j = grid.cell_of(perception.x, perception.y)
            if 0 <= i < grid.cells.shape[0] and 0 <= j < grid.cells.shape[1]:
                break
        else:
            raise ValueError(f'the robot at ({perception.x:g}, {perception.y:g}) is off its map (origin '
                             f'{grid.origin}, {grid.cells.shape} cells of {grid.resolution:g} m): the skills cannot plan')
        perception = dataclasses.replace(perception, occupancy=grid)
        probs = np.zeros(NUM_EMBODIED_ACTIONS, np.float32)
        for option, p in option_probs.items():
            action = self.action(option, perception) if p > 0 else None
            if action is not None:
                probs[action] += p
        if probs.sum() == 0:
            probs[TURN_LEFT] = 1.0
        return probs / probs.sum()

    def motion(self, option: Option, perception: Perception) -> int:
        """The one action `option` takes now (turn left, the policy's fallback, where it has nothing
        left to do): what an option-level student's choice becomes, in training and on a robot."""
        return int(np.argmax(self.policy({option: 1.0}, perception)))
