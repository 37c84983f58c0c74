"""How discrete actions map to velocity commands (geometry_msgs/Twist on cmd_vel), and back.

A discrete action takes one control period of `step_duration` seconds. Its velocity command is
the one that, held for that period, does what the action does (REP-103: x forward, z up, so a
positive angular.z turns left):

    forward:    linear.x = +step_length / step_duration   (MiniGrid: one cell)
    backward:   linear.x = -step_length / step_duration   (action sets that have it)
    turn left:  angular.z = +turn_angle / step_duration    (MiniGrid: pi/2)
    turn right: angular.z = -turn_angle / step_duration
    pick up, drop, toggle, done: zero velocity (they are not motions)
"""
from __future__ import annotations

import math

# The embodied simulators' discrete actions: MiniWorld's, which the Habitat backends share.
TURN_LEFT, TURN_RIGHT, FORWARD, BACK, PICKUP, DROP, TOGGLE, DONE = range(8)
NUM_EMBODIED_ACTIONS = 8

# Per action set, the motion of each action index: (forward steps, left turns).
MOTIONS = {
    # minigrid.core.actions.Actions: left, right, forward, pickup, drop, toggle, done
    'minigrid': [(0, 1), (0, -1), (1, 0), (0, 0), (0, 0), (0, 0), (0, 0)],
    # miniworld Actions: turn_left, turn_right, move_forward, move_back, pickup, drop, toggle, done
    'miniworld': [(0, 1), (0, -1), (1, 0), (-1, 0), (0, 0), (0, 0), (0, 0), (0, 0)],
}


def velocity_for_action(action: int, action_set: str = 'minigrid', step_length: float = 0.5,
                        turn_angle: float = math.pi / 2, step_duration: float = 1.0) -> tuple[float, float]:
    """(linear.x m/s, angular.z rad/s) that carry out `action` in `step_duration` seconds.

    :raises ValueError: unknown action set, an action it does not have, or a non-positive duration.
    """
    if action_set not in MOTIONS:
        raise ValueError(f'unknown action set {action_set!r}; known: {", ".join(MOTIONS)}')
    motions = MOTIONS[action_set]
    if not 0 <= action < len(motions):
        raise ValueError(f'action {action} is outside the {action_set} action set (0..{len(motions) - 1})')
    if step_duration <= 0:
        raise ValueError(f'step_duration must be > 0 s, got {step_duration}')
    forward, left = motions[action]
    return forward * step_length / step_duration, left * turn_angle / step_duration


def action_for_velocity(linear_x: float, angular_z: float, action_set: str = 'minigrid', step_length: float = 0.5,
                        turn_angle: float = math.pi / 2, step_duration: float = 1.0) -> int | None:
    """The discrete motion nearest to a velocity command held for `step_duration`, or None when
    the command is closer to standing still (under half a step and half a turn).

    The inverse of velocity_for_action for motions: a joystick or a deployed policy drives a
    simulator that only has discrete actions. A non-finite command is None (stand still).
    """
    if action_set not in MOTIONS:
        raise ValueError(f'unknown action set {action_set!r}; known: {", ".join(MOTIONS)}')
    steps = linear_x * step_duration / step_length
    turns = angular_z * step_duration / turn_angle
    if not (math.isfinite(steps) and math.isfinite(turns)) or abs(steps) < 0.5 and abs(turns) < 0.5:
        return None  # a command that is no number stands still
    # More than a step or a turn per period is still that motion (and 1e300 squared overflows)
    steps, turns = max(-2.0, min(2.0, steps)), max(-2.0, min(2.0, turns))
    moving = [(i, m) for i, m in enumerate(MOTIONS[action_set]) if m != (0, 0)]
    return min(moving, key=lambda im: (im[1][0] - steps) ** 2 + (im[1][1] - turns) ** 2)[0]
