"""Shortest paths over MiniGrid poses (cell + heading): forwards from the robot (`plan`, the
expert's) and backwards from the goals to every pose (`steps_to_goals`, the skills': kept while
the map stays the same).

A pose is (x, y, heading) with heading 0 east, 1 south, 2 west, 3 north, as in MiniGrid.
Moves are MiniGrid's: turn left, turn right, forward onto a passable cell.
"""
from __future__ import annotations

import functools
from array import array
from collections import deque
from typing import Callable

import numpy as np
from minigrid.core.actions import Actions

# (dx, dy) of a step forward for each heading (MiniGrid's DIR_TO_VEC).
HEADING_VECTORS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def plan_to(passable: np.ndarray, start: tuple[int, int, int], target: tuple[int, int],
            face: bool) -> list[int] | None:
    """Shortest action sequence from `start` to `target`, or None when it cannot be reached.

    :param passable: bool array (width, height): cells the agent may stand on. Lava and walls
        must be False; the planner never steps onto a False cell.
    :param start: the agent's pose (x, y, heading).
    :param target: a cell.
    :param face: True to end next to `target` facing it (to pick it up or open it); False to
        end standing on it.
    :returns: MiniGrid actions (left, right, forward); [] when already there.
    """
    tx, ty = target

    def done(x: int, y: int, h: int) -> bool:
        if face:
            dx, dy = HEADING_VECTORS[h]
            return (x + dx, y + dy) == (tx, ty)
        return (x, y) == (tx, ty)

    return plan(passable, start, done)


def plan(passable: np.ndarray, start: tuple[int, int, int],
         is_goal: Callable[[int, int, int], bool]) -> list[int] | None:
    """Shortest action sequence (breadth-first over poses) to any pose where `is_goal(x, y, heading)`."""
    width, height = passable.shape
    start = tuple(int(v) for v in start)
    parents: dict[tuple[int, int, int], tuple[tuple[int, int, int], int] | None] = {start: None}
    queue = deque([start])
    while queue:
        pose = queue.popleft()
        x, y, h = pose
        if is_goal(x, y, h):
            actions = []
            while parents[pose] is not None:
                pose, action = parents[pose]
                actions.append(action)
            return actions[::-1]
        dx, dy = HEADING_VECTORS[h]
        moves = [((x, y, (h - 1) % 4), int(Actions.left)), ((x, y, (h + 1) % 4), int(Actions.right))]
        nx, ny = x + dx, y + dy
        if 0 <= nx < width and 0 <= ny < height and passable[nx, ny]:
            moves.append(((nx, ny, h), int(Actions.forward)))
        for nxt, action in moves:
            if nxt not in parents:
                parents[nxt] = (pose, action)
                queue.append(nxt)
    return None


def steps_to_goals(passable: bytes, shape: tuple[int, int], goals: list[int]) -> array:
    """The skills' planner (llm_teacher.skills): fewest MiniGrid actions (left, right, forward
    onto a passable cell) from every pose to any of `goals`, -1 where none can be reached;
    `passable` is a (width, height) bool array's bytes; poses indexed (x * height + y) * 4 + heading.

    Breadth-first from the goals over the moves reversed. Only poses on passable cells are
    counted: the robot's own cell, the only one it stands on that may not look passable, is
    marked passable (passable_cells).
    """
    before_of = poses_before(shape)
    steps = [-1] * len(before_of)  # a list: ~30% faster to index than an array
    queue = []
    for pose in goals:
        if passable[pose >> 2] and steps[pose] < 0:
            steps[pose] = 0
            queue.append(pose)
    for pose in queue:  # grows as it goes: first in, first out
        count = steps[pose] + 1
        for before in before_of[pose]:
            if before >= 0 and steps[before] < 0 and passable[before >> 2]:
                steps[before] = count
                queue.append(before)
    return array('h', steps)  # a quarter of a list's memory, kept


@functools.cache
def poses_before(shape: tuple[int, int]) -> tuple[tuple[int, int, int], ...]:
    """For every pose, the poses one action before it: turning left onto it, turning right onto
    it, and a step forward onto it (-1 when that would start off the grid)."""
    width, height = shape
    out = []
    for x in range(width):
        for y in range(height):
            cell = (x * height + y) * 4
            for h, (dx, dy) in enumerate(HEADING_VECTORS):
                bx, by = x - dx, y - dy
                forward = (bx * height + by) * 4 + h if 0 <= bx < width and 0 <= by < height else -1
                out.append((cell + (h + 1) % 4, cell + (h - 1) % 4, forward))
    return tuple(out)
