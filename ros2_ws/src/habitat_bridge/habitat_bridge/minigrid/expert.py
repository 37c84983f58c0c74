"""A scripted expert for door-key tasks: privileged (reads the full grid), used by tests and as an
upper bound in benchmarks; never by the student or the teacher."""
from __future__ import annotations

import numpy as np
from minigrid.core.actions import Actions
from minigrid.core.world_object import Door, Goal, Key
from minigrid.minigrid_env import MiniGridEnv

from habitat_bridge.minigrid.planning import plan_to


def passable_cells(env: MiniGridEnv) -> np.ndarray:
    """Cells the agent may stand on: empty floor, open doors and goals; never lava or walls."""
    passable = np.zeros((env.width, env.height), bool)
    for x in range(env.width):
        for y in range(env.height):
            cell = env.grid.get(x, y)
            passable[x, y] = cell is None or isinstance(cell, Goal) or (isinstance(cell, Door) and cell.is_open)
    return passable


class ScriptedExpert:
    """Opens a locked door: fetch the matching key, face the door, toggle; then reach a goal if any.

    Plans once per sub-goal over poses and follows the plan, replanning when the sub-goal changes.
    """

    def __init__(self):
        self._plan: list[int] = []
        self._subgoal = None

    def act(self, env: MiniGridEnv) -> int:
        env = env.unwrapped
        subgoal = self.subgoal(env)
        if subgoal is None:
            return int(Actions.done)
        (tx, ty), finish = subgoal
        if subgoal != self._subgoal or not self._plan:
            self._subgoal = subgoal
            pose = (*env.agent_pos, env.agent_dir)
            plan = plan_to(passable_cells(env), pose, (tx, ty), face=finish is not None)
            self._plan = (plan or []) + ([finish] if finish is not None else [])
            if not self._plan:
                return int(Actions.done)
        return self._plan.pop(0)

    @staticmethod
    def subgoal(env: MiniGridEnv):
        """What the expert is doing now: ((x, y), final action, or None to step onto the cell)."""
        pose = np.asarray(env.agent_pos)
        cells = [(x, y, env.grid.get(x, y)) for x in range(env.width) for y in range(env.height)]
        locked = [(x, y, c) for x, y, c in cells if isinstance(c, Door) and c.is_locked]

        def nearest(candidates):
            return min(candidates, key=lambda t: abs(t[0] - pose[0]) + abs(t[1] - pose[1]))

        if locked:
            carried = env.carrying
            openable = [t for t in locked if isinstance(carried, Key) and carried.color == t[2].color]
            if openable:
                x, y, _ = nearest(openable)
                return (x, y), int(Actions.toggle)
            colors = {c.color for _, _, c in locked}
            keys = [(x, y, c) for x, y, c in cells if isinstance(c, Key) and c.color in colors]
            if keys and carried is None:
                x, y, _ = nearest(keys)
                return (x, y), int(Actions.pickup)
            return None
        goals = [(x, y, c) for x, y, c in cells if isinstance(c, Goal)]
        if goals:
            x, y, _ = nearest(goals)
            return (x, y), None
        return None
