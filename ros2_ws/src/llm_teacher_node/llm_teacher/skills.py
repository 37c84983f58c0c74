"""Option skills: an option and what the robot knows -> an action; and the teacher's policy

    pi_T(a|s) = sum_o p(o | text(s)) * pi_o(a|s)

Skills plan on the robot's memory map (cells seen this episode), not on the simulator's state:
they never step onto a cell that is unseen, a wall, or lava (unless made lava-blind, like the
paper's teacher, for the ablation that reproduces it).
"""
from __future__ import annotations

import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.constants import OBJECT_TO_IDX, STATE_TO_IDX

from habitat_bridge.minigrid.observation import UNSEEN
from habitat_bridge.minigrid.planning import HEADING_VECTORS, plan, plan_to
from llm_teacher.options import Option

NUM_ACTIONS = len(Actions)
_WALKABLE = np.zeros(256, bool)  # object index -> walkable? (lookups: np.isin is slow on small grids)
_WALKABLE[[OBJECT_TO_IDX[t] for t in ('empty', 'floor', 'goal')]] = True
_WALKABLE_LAVA_BLIND = _WALKABLE.copy()
_WALKABLE_LAVA_BLIND[OBJECT_TO_IDX['lava']] = True
_DROP_ONTO = (OBJECT_TO_IDX['empty'], OBJECT_TO_IDX['floor'])  # MiniGrid drops only onto a free cell
_DOOR, _OPEN = OBJECT_TO_IDX['door'], STATE_TO_IDX['open']


def passable_cells(memory_map: np.ndarray, avoid_lava: bool = True) -> np.ndarray:
    """Known cells the robot may stand on: floor, goals, open doors, and its own cell (and lava,
    with avoid_lava False: the paper's teacher, which is never told about lava, walks into it)."""
    cells = memory_map[..., 0]
    walkable = _WALKABLE if avoid_lava else _WALKABLE_LAVA_BLIND
    passable = walkable[cells] | ((cells == _DOOR) & (memory_map[..., 2] == _OPEN))
    passable |= memory_map[..., 3] > 0
    return passable


def agent_pose(memory_map: np.ndarray) -> tuple[int, int, int]:
    x, y = np.argwhere(memory_map[..., 3] > 0)[0]
    return int(x), int(y), int(memory_map[x, y, 3]) - 1


class SkillContext:
    """One robot's state for running skills: the map, its passable cells, its pose."""

    def __init__(self, memory_map: np.ndarray, avoid_lava: bool = True):
        self.map = memory_map
        self.passable = passable_cells(memory_map, avoid_lava)
        self.pose = agent_pose(memory_map)
        x, y, h = self.pose
        dx, dy = HEADING_VECTORS[h]
        self.front = (x + dx, y + dy)

    def front_is(self, cell: tuple[int, int]) -> bool:
        return self.front == cell

    def front_free(self) -> bool:
        fx, fy = self.front
        width, height = self.passable.shape
        return 0 <= fx < width and 0 <= fy < height and self.map[fx, fy, 0] in _DROP_ONTO


def skill_action(option: Option, context: SkillContext, objects) -> int | None:
    """The action option `option` takes now; `objects` are the perceived objects (with grid cells).

    None when the option has nothing left to do here: explore with no reachable unseen cell, or
    go to a target the robot already faces. (A no-op action instead would let a greedy policy
    that imitates the teacher stand still or spin forever.)
    """
    if option.verb == 'explore':
        return explore(context)
    if option.verb == 'drop':
        return int(Actions.drop) if context.front_free() else int(Actions.left)
    targets = [(o.grid_x, o.grid_y) for o in objects if o.type == option.type and o.color == option.color]
    if not targets:
        return explore(context)
    x, y, _ = context.pose
    target = min(targets, key=lambda c: abs(c[0] - x) + abs(c[1] - y))
    final = {'pick up': Actions.pickup, 'open': Actions.toggle}.get(option.verb)
    if final is not None and context.front_is(target):
        return int(final)
    face = option.type != 'goal'  # a goal is reached by standing on it
    path = plan_to(context.passable, context.pose, target, face=face)
    if path is None:  # not reachable through known cells yet
        return explore(context)
    return path[0] if path else None


def explore(context: SkillContext) -> int | None:
    """Towards the nearest pose that faces an unseen cell (a frontier); None when none is reachable."""
    width, height = context.passable.shape
    unseen = context.map[..., 0] == UNSEEN

    def faces_unseen(x: int, y: int, h: int) -> bool:
        dx, dy = HEADING_VECTORS[h]
        fx, fy = x + dx, y + dy
        return 0 <= fx < width and 0 <= fy < height and unseen[fx, fy]

    path = plan(context.passable, context.pose, faces_unseen)
    if path is None:
        return None
    return path[0] if path else int(Actions.left)  # facing the frontier already: look around


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
