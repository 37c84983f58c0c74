"""Option skills: an option and what the robot knows -> an action; and the teacher's policy

    pi_T(a|s) = sum_o p(o | text(s)) * pi_o(a|s)

Skills plan on the robot's memory map (cells seen this episode), not on the simulator's state:
they never step onto a cell that is unseen, a wall, or lava (unless made lava-blind, like the
paper's teacher, for the ablation that reproduces it).

A skill's action is the first action of the shortest path that breadth-first search over poses
finds (habitat_bridge.minigrid.planning.plan: moves tried left, right, forward, so of all shortest
paths to the goal poses it takes the first in that order). The skills get it from the number of
actions from every pose to the nearest goal pose, counted backwards from the goals: the first
action is the first of left, right, forward that brings that number down by one. That count does
not depend on where the robot stands, only on the map's passable cells (and, for explore, its
unseen ones), which stay the same over most steps; so it is kept (`planning.steps_to_goals`, LRU) and a
step costs a lookup, where searching forwards each step cost ~100 us a skill.
"""
from __future__ import annotations

import functools
from array import array

import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.constants import OBJECT_TO_IDX, STATE_TO_IDX

from habitat_bridge.minigrid.observation import UNSEEN
from habitat_bridge.minigrid.planning import HEADING_VECTORS, steps_to_goals
from llm_teacher.options import Option

NUM_ACTIONS = len(Actions)
_WALKABLE = np.zeros(256, bool)  # object index -> walkable? (lookups: np.isin is slow on small grids)
_WALKABLE[[OBJECT_TO_IDX[t] for t in ('empty', 'floor', 'goal')]] = True
_WALKABLE_LAVA_BLIND = _WALKABLE.copy()
_WALKABLE_LAVA_BLIND[OBJECT_TO_IDX['lava']] = True
_DROP_ONTO = (OBJECT_TO_IDX['empty'], OBJECT_TO_IDX['floor'])  # MiniGrid drops only onto a free cell
_DOOR, _OPEN = OBJECT_TO_IDX['door'], STATE_TO_IDX['open']
_LEFT, _RIGHT, _FORWARD = int(Actions.left), int(Actions.right), int(Actions.forward)
HERE = -1  # SkillContext.first_action_to*: the robot is where the path would take it
# Step counts kept by each of the two kinds (frontier, target): 16 envs use ~4 at a time (explore and a
# target or two each); each takes 2 bytes a pose (~800 B on a 10x10 grid).
FIELD_CACHE_SIZE = 2048


def passable_cells(memory_map: np.ndarray, avoid_lava: bool = True) -> np.ndarray:
    """Known cells the robot may stand on: floor, goals, open doors, and its own cell (and lava,
    with avoid_lava False: the paper's teacher, which is never told about lava, walks into it)."""
    cells = memory_map[..., 0]
    walkable = _WALKABLE if avoid_lava else _WALKABLE_LAVA_BLIND
    passable = walkable[cells] | ((cells == _DOOR) & (memory_map[..., 2] == _OPEN))
    passable |= memory_map[..., 3] > 0
    return passable


def agent_pose(memory_map: np.ndarray) -> tuple[int, int, int]:
    """(x, y, heading) of the robot: the first cell (x-major) whose channel 3 is set."""
    headings = memory_map[..., 3]
    x, y = divmod(int((headings > 0).argmax()), headings.shape[1])
    if not headings[x, y]:
        raise ValueError('the memory map has no robot (channel 3 is 0 everywhere)')
    return int(x), int(y), int(headings[x, y]) - 1


class SkillContext:
    """One robot's state for running skills: the map, its passable cells, its pose."""

    def __init__(self, memory_map: np.ndarray, avoid_lava: bool = True):
        self.map = memory_map
        self.passable = passable_cells(memory_map, avoid_lava)
        self.pose = agent_pose(memory_map)
        x, y, h = self.pose
        dx, dy = HEADING_VECTORS[h]
        self.front = (x + dx, y + dy)
        self._passable_key = self.passable.tobytes()

    def front_is(self, cell: tuple[int, int]) -> bool:
        return self.front == cell

    def free_to_drop(self, heading: int, beside_a_door: bool = True) -> bool:
        """Whether the cell next to the robot towards `heading` is free to drop onto (and, with
        beside_a_door False, has no door next to it)."""
        dx, dy = HEADING_VECTORS[heading % 4]
        x, y = self.pose[0] + dx, self.pose[1] + dy
        width, height = self.passable.shape
        if not (0 <= x < width and 0 <= y < height and self.map[x, y, 0] in _DROP_ONTO):
            return False
        return beside_a_door or not any(0 <= x + ax < width and 0 <= y + ay < height
                                        and self.map[x + ax, y + ay, 0] == _DOOR for ax, ay in HEADING_VECTORS)

    def first_action_to(self, target: tuple[int, int], face: bool) -> int | None:
        """The first action of planning.plan_to(passable, pose, target, face)'s path: HERE when
        that path is empty, None when there is none."""
        return self._first_action(_steps_to_target(self._passable_key, self.passable.shape, target, face))

    def first_action_to_frontier(self) -> int | None:
        """The first action of planning.plan's path to a pose facing an unseen cell: HERE when
        that path is empty, None when there is none."""
        unseen = (self.map[..., 0] == UNSEEN).tobytes()
        return self._first_action(_steps_to_frontier(self._passable_key, self.passable.shape, unseen))

    def _first_action(self, steps: array) -> int | None:
        """Of left, right and forward (plan's order), the first that brings the robot a step
        closer to the goal poses of `steps` (planning.steps_to_goals)."""
        x, y, h = self.pose
        here = (x * self.passable.shape[1] + y) * 4
        remaining = steps[here + h]
        if remaining <= 0:
            return None if remaining < 0 else HERE
        if steps[here + (h - 1) % 4] == remaining - 1:
            return _LEFT
        if steps[here + (h + 1) % 4] == remaining - 1:
            return _RIGHT
        return _FORWARD  # the one move left: some move brings it closer


def skill_action(option: Option, context: SkillContext, objects) -> int | None:
    """The action option `option` takes now; `objects` are the perceived objects (with grid cells).

    None when the option has nothing left to do here: explore with no reachable unseen cell, or
    go to a target the robot already faces. (A no-op action instead would let a greedy policy
    that imitates the teacher stand still or spin forever.)
    """
    if option.verb == 'explore':
        return explore(context)
    if option.verb == 'drop':
        return drop(context)
    targets = [(o.grid_x, o.grid_y) for o in objects if o.type == option.type and o.color == option.color
               and not (option.verb == 'open' and o.state == 'open')]  # toggling an open door shuts it
    if not targets:
        return explore(context)
    x, y, _ = context.pose
    target = min(targets, key=lambda c: abs(c[0] - x) + abs(c[1] - y))
    final = {'pick up': Actions.pickup, 'open': Actions.toggle}.get(option.verb)
    if final is not None and context.front_is(target):
        return int(final)
    face = option.type != 'goal'  # a goal is reached by standing on it
    action = context.first_action_to(target, face)
    if action is None:  # not reachable through known cells yet
        return explore(context)
    return None if action == HERE else action


def drop(context: SkillContext) -> int:
    """Drop onto the free cell in front if no door is next to it, else turn towards such a cell
    beside the robot (a key dropped inside a doorway blocks the door for good: the robot can
    neither stand there to open it nor, its hands full of the right key, pick that one up); with
    none, onto any free cell in front, else turn left to find one."""
    h = context.pose[2]
    for beside_a_door in (False, True):
        if context.free_to_drop(h, beside_a_door):
            return int(Actions.drop)
        if context.free_to_drop(h + 1, beside_a_door) and not context.free_to_drop(h - 1, beside_a_door):
            return int(Actions.right)
        if any(context.free_to_drop(h + turn, beside_a_door) for turn in (-1, 2)):
            return int(Actions.left)
    return int(Actions.left)


def explore(context: SkillContext) -> int | None:
    """Towards the nearest pose that faces an unseen cell (a frontier); None when none is reachable."""
    action = context.first_action_to_frontier()
    return int(Actions.left) if action == HERE else action  # facing the frontier already: look around


@functools.lru_cache(maxsize=FIELD_CACHE_SIZE)
def _steps_to_frontier(passable: bytes, shape: tuple[int, int], unseen: bytes) -> array:
    """steps_to_goals for the poses that face an unseen cell."""
    width, height = shape
    around = np.zeros((width + 2, height + 2), bool)  # unseen, and a border of cells off the grid
    around[1:-1, 1:-1] = np.frombuffer(unseen, bool).reshape(shape)
    faces = np.empty((width, height, 4), bool)
    for h, (dx, dy) in enumerate(HEADING_VECTORS):
        faces[..., h] = around[1 + dx:1 + dx + width, 1 + dy:1 + dy + height]
    return steps_to_goals(passable, shape, np.flatnonzero(faces).tolist())


@functools.lru_cache(maxsize=FIELD_CACHE_SIZE)
def _steps_to_target(passable: bytes, shape: tuple[int, int], target: tuple[int, int], face: bool) -> array:
    """steps_to_goals for the poses that face `target` (face True) or stand on it."""
    width, height = shape
    tx, ty = target
    if not face:
        cells = [(tx, ty, h) for h in range(4)]
    else:
        cells = [(tx - dx, ty - dy, h) for h, (dx, dy) in enumerate(HEADING_VECTORS)]
    goals = [(x * height + y) * 4 + h for x, y, h in cells if 0 <= x < width and 0 <= y < height]
    return steps_to_goals(passable, shape, goals)


def teacher_policy(option_probs: dict[Option, float], memory_map: np.ndarray, objects,
                   avoid_lava: bool = True) -> np.ndarray:
    """pi_T(a|s): the option distribution pushed through the skills, as (NUM_ACTIONS,) float32.

    Options with nothing left to do here give their probability to the others (renormalised);
    if none can act, the robot turns left to look around.
    """
    context = SkillContext(memory_map, avoid_lava)
    probs = np.zeros(NUM_ACTIONS, np.float32)
    for option, p in option_probs.items():
        action = skill_action(option, context, objects) if p > 0 else None
        if action is not None:
            probs[action] += p
    if probs.sum() == 0:
        probs[Actions.left] = 1.0
    return probs / probs.sum()
