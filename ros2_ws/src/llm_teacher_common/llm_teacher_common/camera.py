"""The camera observation a student sees, built by one function wherever frames come from: the
training simulators (EmbodiedVecEnv) and a robot's own sensor topics (robot_policy_node).

Encoding "rgbd" (uint8, shape (H, W, 4)): the camera's rgb, and depth in channel 3 quantised to
DEPTH_STEP_M (0..255 is 0..10.2 m; farther, and invalid readings, read as 10.2 m). One uint8
tensor keeps rollout storage, StepBatch messages and the exported policy the same as for grid
worlds. "rgb" drops the depth channel.
"""
from __future__ import annotations

import cv2
import numpy as np

from llm_teacher_common.families import FAMILIES

EMBODIED_OBSERVATIONS = FAMILIES['embodied'].observations  # camera rgb + depth as a 4th channel, or rgb alone
DEPTH_STEP_M = 0.04
FAR = 255


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """Metres (float) -> uint8 steps of DEPTH_STEP_M, saturating at 255; NaN, inf and readings
    <= 0 (no return, REP-118) read as far."""
    depth = np.asarray(depth, np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    steps = np.rint(np.where(valid, depth, FAR * DEPTH_STEP_M) / DEPTH_STEP_M)
    return np.clip(steps, 0, FAR).astype(np.uint8)


def decode_depth(channel: np.ndarray) -> np.ndarray:
    """uint8 depth channel -> metres (float32)."""
    return channel.astype(np.float32) * DEPTH_STEP_M


def observation_channels(observation: str) -> int:
    if observation not in EMBODIED_OBSERVATIONS:
        raise ValueError(f'observation mode {observation!r} is not one of {EMBODIED_OBSERVATIONS}')
    return 4 if observation == 'rgbd' else 3


def camera_observation(rgb: np.ndarray, depth: np.ndarray | None, observation: str = 'rgbd',
                       size: tuple[int, int] | None = None) -> np.ndarray:
    """The student's observation (H, W, C) uint8 of one camera frame.

    :param rgb: (h, w, 3) uint8, red first.
    :param depth: (h, w) metres (float); may be None for observation "rgb".
    :param size: (height, width) the policy was trained on; frames of another size are resized
        (rgb with area averaging, depth with nearest neighbour so no depth is invented at edges).
    :raises ValueError: unknown observation mode, wrong shapes, or rgb and depth of different sizes.
    """
    channels = observation_channels(observation)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'rgb must be (height, width, 3) uint8, got {rgb.shape} {rgb.dtype}')
    if size is not None and tuple(rgb.shape[:2]) != tuple(size):
        rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    if channels == 3:
        return np.ascontiguousarray(rgb)
    if depth is None or depth.ndim != 2:
        raise ValueError(f'observation "rgbd" needs an (height, width) depth image, got '
                         f'{None if depth is None else depth.shape}')
    if size is not None and tuple(depth.shape) != tuple(size):
        depth = cv2.resize(np.asarray(depth, np.float32), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    if depth.shape != rgb.shape[:2]:
        raise ValueError(f'rgb {rgb.shape[:2]} and depth {depth.shape} differ in size; give `size` to resize both')
    return np.concatenate([rgb, encode_depth(depth)[..., None]], axis=-1)
