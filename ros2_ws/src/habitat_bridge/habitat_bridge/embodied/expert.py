"""A privileged scripted expert for the embodied MiniWorld tasks: used by tests and as the
benchmark's upper bound only, never by the student or the teacher (it reads the true world).

It plans on a grid over the rooms: each cell's clearance (distance to the nearest wall or
obstacle) decides whether the robot fits and how much a path there costs, so paths keep to the
middle of doorways. One Dijkstra pass from the goal cells gives every cell's cost-to-go; the
robot steers towards the cell a few steps down that field (turn to its bearing, move forward).
At the end of a stage it faces the object and picks it up, or carries it until it touches the
other object and drops it.
"""
from __future__ import annotations

import heapq
import math

import numpy as np

from llm_teacher_common.commands import BACK, DROP, FORWARD, PICKUP, TURN_LEFT, TURN_RIGHT

CELL = 0.2  # m per grid cell
LOOKAHEAD = 3  # cells down the cost-to-go field the robot steers towards
MARGIN = 0.05  # m of clearance beyond the robot's radius a cell needs to be used at all
COMFORT = 0.5  # m of clearance below which a cell costs more (keeps paths off walls)
NEIGHBOURS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]


def bearing_error(agent, point) -> float:
    """Signed angle (rad, + = to the left) from the robot's heading to (x, z) `point`."""
    bearing = math.atan2(-(point[1] - agent.pos[2]), point[0] - agent.pos[0])  # MiniWorld: dir_vec = (cos, 0, -sin)
    return math.remainder(bearing - agent.dir, math.tau)


def segment_distances(points: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Distance of each (x, z) point (P, 2) to the nearest of `segments` (S, 2, 2)."""
    if len(segments) == 0:
        return np.full(len(points), np.inf)
    a, b = segments[None, :, 0], segments[None, :, 1]
    ab, ap = b - a, points[:, None] - a
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1).min(1)


class EmbodiedExpert:
    """`act(world)` -> the next action for MiniWorld-GoToObject-v0 or MiniWorld-PutNext-v0."""

    def __init__(self):
        self._field_key = None
        self._field = None
        self._last = None  # (pose, action) of the previous call: to notice a blocked move
        self._careful = 0  # steps left of steering to the very next cell after a blocked move

    def act(self, world) -> int:
        pose = (*world.agent.pos[[0, 2]].round(4), round(world.agent.dir, 4))
        action = self._act(world)
        if self._last is not None and self._last == (pose, action) and action in (TURN_LEFT, TURN_RIGHT, FORWARD):
            # The same motion from the same pose did nothing: what the robot carries bumps into
            # something. Back off a step; the next plan starts from there.
            action, self._careful = BACK, 8
        self._careful = max(self._careful - 1, 0)
        self._last = (pose, action)
        return action

    def _act(self, world) -> int:
        agent = world.agent
        if hasattr(world, 'target'):  # GoToObject: being near the target ends the episode
            return self._go_to(world, world.target, world.target.radius + agent.radius + world.max_forward_step)
        red, yellow, carried = world.red_box, world.yellow_box, agent.carrying
        if carried is None:
            # pickup tests a circle of 1.2 radii, 1.5 radii ahead of the robot
            reach = 2.7 * agent.radius + red.radius - 0.1
            return self._go_to(world, red, reach) if self._distance(agent, red) > reach else self._face(agent, red, PICKUP)
        gap = np.linalg.norm(carried.pos[[0, 2]] - yellow.pos[[0, 2]]) - carried.radius - yellow.radius
        if gap < world.max_forward_step:  # `near` allows 1.1 forward steps
            return DROP
        # Steer the carried box, held ahead of the robot, to the yellow one: plan for the box.
        return self._go_to(world, yellow, carried.radius + yellow.radius + 0.5 * world.max_forward_step, body=carried)

    @staticmethod
    def _distance(body, entity) -> float:
        return float(np.linalg.norm(entity.pos[[0, 2]] - body.pos[[0, 2]]))

    @staticmethod
    def _face(agent, entity, then: int, tolerance: float = math.radians(8)) -> int:
        error = bearing_error(agent, entity.pos[[0, 2]])
        if abs(error) <= tolerance:
            return then
        return TURN_LEFT if error > 0 else TURN_RIGHT

    def _go_to(self, world, target, reach: float, body=None) -> int:
        """Steer `body` (the robot, or the box it carries) to within `reach` of `target`."""
        body = body or world.agent
        origin, cost = self._cost_to_go(world, target, reach, body)
        i, j = np.floor((body.pos[[0, 2]] - origin) / CELL).astype(int)
        i, j = np.clip(i, 0, cost.shape[0] - 1), np.clip(j, 0, cost.shape[1] - 1)
        if not np.isfinite(cost[i, j]):  # pressed against a wall: the nearest usable cell first
            candidates = [(cost[a, b], a, b) for a in range(i - 3, i + 4) for b in range(j - 3, j + 4)
                          if 0 <= a < cost.shape[0] and 0 <= b < cost.shape[1] and np.isfinite(cost[a, b])]
            if not candidates:
                return self._face(world.agent, target, FORWARD)
            _, i, j = min(candidates)
        # A carried box is held ~1 m ahead: steer the robot to a point well beyond it.
        lookahead = 1 if self._careful else LOOKAHEAD if body is world.agent else 3 * LOOKAHEAD
        for _ in range(lookahead):  # walk down the field
            best = min(((cost[i + di, j + dj], i + di, j + dj) for di, dj in NEIGHBOURS
                        if 0 <= i + di < cost.shape[0] and 0 <= j + dj < cost.shape[1]), default=None)
            if best is None or not best[0] < cost[i, j]:
                break
            _, i, j = best
        if cost[i, j] == 0 and self._distance(body, target) <= reach:
            return self._face(world.agent, target, FORWARD)
        waypoint = origin + (np.array([i, j]) + 0.5) * CELL
        error = bearing_error(world.agent, waypoint)
        turn = TURN_LEFT if error > 0 else TURN_RIGHT
        undo = body is not world.agent and self._last is not None and {self._last[1], turn} == {TURN_LEFT, TURN_RIGHT}
        # Going straight beats undoing the last turn: turning swings a carried box, which moves the
        # waypoint, and left-right-left would never end.
        if abs(error) <= math.radians(8) or (undo and abs(error) < math.radians(30)):
            return FORWARD
        return turn

    def _cost_to_go(self, world, target, reach: float, body):
        """(grid origin, cost-to-go) for `body` to come within `reach` of `target`;
        cached while the world's obstacles, the target and what the robot carries stay the same."""
        agent, carried = world.agent, world.agent.carrying
        obstacles = [e for e in world.entities if e is not agent and e is not carried and e is not target]
        key = (id(world), id(target), id(carried), round(reach, 3),
               tuple(np.round(np.concatenate([e.pos[[0, 2]] for e in obstacles] or [np.zeros(0)]), 2)))
        if key == self._field_key:
            return self._field
        rooms = world.rooms
        lo = np.array([min(r.min_x for r in rooms), min(r.min_z for r in rooms)])
        hi = np.array([max(r.max_x for r in rooms), max(r.max_z for r in rooms)])
        shape = tuple(np.ceil((hi - lo) / CELL).astype(int))
        ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing='ij')
        centres = lo + (np.stack([ii, jj], -1).reshape(-1, 2) + 0.5) * CELL
        clear = segment_distances(centres, world.wall_segs[:, :, [0, 2]])
        for entity in obstacles:
            clear = np.minimum(clear, np.linalg.norm(centres - entity.pos[[0, 2]], axis=1) - entity.radius)
        radius = max(body.radius, agent.radius)  # the robot follows where the box it carries went
        usable = clear >= radius + MARGIN
        inside = np.array([any(r.point_inside(np.array([x, 0.0, z])) for r in rooms) for x, z in centres])
        usable &= inside
        step_cost = 1.0 + 4.0 * np.clip((radius + COMFORT - clear) / COMFORT, 0, None)
        goal = usable & (np.linalg.norm(centres - target.pos[[0, 2]], axis=1) <= reach)
        cost = np.full(len(centres), np.inf)
        cost[goal] = 0.0
        heap = [(0.0, int(k)) for k in np.flatnonzero(goal)]
        usable, step_cost = usable.reshape(shape), step_cost.reshape(shape)
        cost = cost.reshape(shape)
        while heap:
            c, k = heapq.heappop(heap)
            i, j = divmod(k, shape[1])
            if c > cost[i, j]:
                continue
            for di, dj in NEIGHBOURS:
                a, b = i + di, j + dj
                if 0 <= a < shape[0] and 0 <= b < shape[1] and usable[a, b]:
                    new = c + math.hypot(di, dj) * step_cost[a, b]
                    if new < cost[a, b]:
                        cost[a, b] = new
                        heapq.heappush(heap, (new, a * shape[1] + b))
        self._field_key, self._field = key, (lo, cost)
        return self._field
