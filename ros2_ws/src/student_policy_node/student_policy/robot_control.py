"""The deployed student on a robot, as plain classes (no rclpy): pair rgb and depth frames by
stamp, build the observation the student was trained on, choose an action, and turn it into a
bounded velocity command. robot_policy_node is the ROS shell around them.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from llm_teacher_common.camera import camera_observation, observation_channels
from llm_teacher_common.commands import MOTIONS, velocity_for_action
from student_policy.inference import Policy, choose_actions


@dataclass
class FramePair:
    """An rgb frame and the depth frame taken with it; `stamp_ns` is the rgb frame's."""

    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray | None


class StampPairer:
    """Approximate-time pairing of two streams (as message_filters' ApproximateTimeSynchronizer,
    which has no PyPI wheel): each new frame is matched with the other stream's frame nearest in
    stamp, within `slop_s`; a pair is given once, and never one older than the last given."""

    def __init__(self, slop_s: float, queue_size: int = 5):
        if slop_s < 0:
            raise ValueError(f'slop must be >= 0 s, got {slop_s}')
        self.slop_ns = int(slop_s * 1e9)
        self.rgb: deque[tuple[int, np.ndarray]] = deque(maxlen=queue_size)
        self.depth: deque[tuple[int, np.ndarray]] = deque(maxlen=queue_size)
        self.last_stamp_ns = -1

    def add_rgb(self, stamp_ns: int, rgb: np.ndarray) -> FramePair | None:
        self.rgb.append((stamp_ns, rgb))
        return self._match(stamp_ns, rgb, self.depth, rgb_first=True)

    def add_depth(self, stamp_ns: int, depth: np.ndarray) -> FramePair | None:
        self.depth.append((stamp_ns, depth))
        return self._match(stamp_ns, depth, self.rgb, rgb_first=False)

    def _match(self, stamp_ns: int, frame: np.ndarray, others: deque, rgb_first: bool) -> FramePair | None:
        if not others:
            return None
        other_stamp, other = min(others, key=lambda item: abs(item[0] - stamp_ns))
        if abs(other_stamp - stamp_ns) > self.slop_ns:
            return None
        pair = FramePair(stamp_ns, frame, other) if rgb_first else FramePair(other_stamp, other, frame)
        if pair.stamp_ns <= self.last_stamp_ns:
            return None
        self.last_stamp_ns = pair.stamp_ns
        return pair


def motion_mask(action_set: str, num_actions: int) -> np.ndarray:
    """True for the actions that move the base (a robot cannot pick up or toggle)."""
    return np.array([MOTIONS[action_set][a] != (0, 0) for a in range(num_actions)])


class CameraPolicy:
    """An exported camera policy driving a base: frames in, (action, probabilities, Twist) out.

    :param observation: the encoding the policy was trained on ('rgbd' or 'rgb').
    :param action_set: what the action indices mean (llm_teacher_common.commands.MOTIONS).
    :param motion_only: give the actions that do not move the base (pick up, drop, toggle, done)
        no probability; a base cannot carry them out, and a stopped robot sees the same frame again.
    :param step_length, turn_angle: metres and radians one forward and one turn action make.
    :param step_duration: seconds one action takes (the control period).
    :param max_linear, max_angular: limits (m/s, rad/s) the velocity command is clipped to.
    :raises ValueError: the policy does not fit these settings (both sides named), or a bad value.
    """

    def __init__(self, policy: Policy, observation: str = 'rgbd', action_set: str = 'miniworld',
                 greedy: bool = True, motion_only: bool = True, step_length: float = 0.15,
                 turn_angle: float = 0.2617994, step_duration: float = 0.1, max_linear: float = 2.0,
                 max_angular: float = 3.0, seed: int = 0):
        if action_set not in MOTIONS:
            raise ValueError(f'unknown action set {action_set!r}; known: {", ".join(MOTIONS)}')
        channels = observation_channels(observation)
        info = policy.info
        if info is None:
            raise ValueError(f'{policy.path} carries no description of its inputs (exported before policy.json '
                             f'existed): export it again with student_policy.checkpoints.export_policy')
        if info.encoder != 'image' or len(info.obs_shape) != 3 or info.obs_shape[2] != channels:
            raise ValueError(f'{policy.path} takes observations of shape {tuple(info.obs_shape)} ({info.encoder} '
                             f'encoder, task {info.task or "unknown"}), but this node gives {observation!r} camera '
                             f'images with {channels} channels: set observation to what the policy was trained on')
        if info.num_actions != len(MOTIONS[action_set]):
            raise ValueError(f'{policy.path} chooses among {info.num_actions} actions, but action set '
                             f'{action_set!r} has {len(MOTIONS[action_set])}: set action_set to the one it was '
                             f'trained with ({", ".join(f"{k}: {len(v)}" for k, v in MOTIONS.items())})')
        for name, value in (('max_linear', max_linear), ('max_angular', max_angular), ('step_duration', step_duration)):
            if value <= 0:
                raise ValueError(f'{name} must be > 0, got {value}')
        self.policy, self.observation, self.action_set, self.greedy = policy, observation, action_set, greedy
        self.size = tuple(info.obs_shape[:2])
        self.mask = motion_mask(action_set, info.num_actions) if motion_only else np.ones(info.num_actions, bool)
        self.motion = dict(action_set=action_set, step_length=step_length, turn_angle=turn_angle,
                           step_duration=step_duration)
        self.max_linear, self.max_angular = max_linear, max_angular
        self.generator = torch.Generator().manual_seed(seed)

    def observe(self, pair: FramePair) -> np.ndarray:
        """The (H, W, C) uint8 observation of a frame pair, resized to the policy's input."""
        return camera_observation(pair.rgb, pair.depth, self.observation, self.size)

    def act(self, obs: np.ndarray) -> tuple[int, np.ndarray]:
        """(action, probabilities over all actions) for one observation.

        :raises FloatingPointError: the policy gave non-finite logits (the caller stops the robot).
        """
        logits = self.policy(obs[None])[0]
        if not torch.isfinite(logits).all():
            raise FloatingPointError(f'the policy gave non-finite logits {logits.tolist()}')
        logits = logits.masked_fill(torch.from_numpy(~self.mask), float('-inf'))
        action = int(choose_actions(logits[None], self.greedy, self.generator)[0])
        return action, torch.softmax(logits, -1).numpy()

    def velocity(self, action: int) -> tuple[float, float]:
        """(linear.x, angular.z) that carry out `action` in one control period, within the limits."""
        linear, angular = velocity_for_action(action, **self.motion)
        return (float(np.clip(linear, -self.max_linear, self.max_linear)),
                float(np.clip(angular, -self.max_angular, self.max_angular)))
