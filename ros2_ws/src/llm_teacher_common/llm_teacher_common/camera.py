"""The camera observation a student sees, built by one function wherever frames come from: the
training simulators (EmbodiedVecEnv) and a robot's own sensor topics (robot_policy_node).

Encoding "rgbd" (uint8, shape (H, W, 4)): the camera's rgb, and depth in channel 3 quantised to
DEPTH_STEP_M (0..255 is 0..10.2 m; farther reads as 10.2 m). One uint8 tensor keeps rollout
storage, StepBatch messages and the exported policy the same as for grid worlds. "rgb" drops the
depth channel. "rgbd_map" is rgbd here (the vector env puts the map crop beside it).

Invalid depth (NaN, +-inf, <= 0: no return, too close, or an error; REP-117/118) reads as 0, the
nearest value, "something at the lens": never as open space. The simulators render finite,
positive depth everywhere, so a policy never saw "unknown"; of the values it knows, the one least
likely to send it forward is the honest stand-in. (A robot whose depth image is mostly invalid is
stopped before any policy sees it: student_deploy.robot_control.CameraPolicy.)
"""
from __future__ import annotations

import cv2
import numpy as np

from llm_teacher_common.families import FAMILIES
from llm_teacher_common.map_crop import MAP_CHANNELS

# camera rgb + depth as a 4th channel, rgb alone, or rgbd with the robot's map crop beside it (map_crop)
EMBODIED_OBSERVATIONS = FAMILIES['embodied'].observations
DEPTH_STEP_M = 0.04
FAR = 255
INVALID_DEPTH = 0  # the encoding of NaN, inf and <= 0 readings: nearest, not far (see above)


def valid_depth(depth: np.ndarray) -> np.ndarray:
    """True where a depth image (metres) holds a measurement: finite and > 0."""
    depth = np.asarray(depth, np.float32)
    return np.isfinite(depth) & (depth > 0)


def invalid_depth_fraction(depth: np.ndarray) -> float:
    """The fraction of a depth image's pixels without a measurement (1.0 for an empty image)."""
    return 1.0 - float(valid_depth(depth).mean()) if np.size(depth) else 1.0


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """Metres (float) -> uint8 steps of DEPTH_STEP_M, saturating at FAR (255); NaN, inf and
    readings <= 0 read as INVALID_DEPTH (0: near)."""
    depth = np.asarray(depth, np.float32)
    steps = np.rint(np.where(valid_depth(depth), depth, INVALID_DEPTH * DEPTH_STEP_M) / DEPTH_STEP_M)
    return np.clip(steps, 0, FAR).astype(np.uint8)


def decode_depth(channel: np.ndarray) -> np.ndarray:
    """uint8 depth channel -> metres (float32)."""
    return channel.astype(np.float32) * DEPTH_STEP_M


def observation_channels(observation: str) -> int:
    """Channels of an embodied observation: the camera's (camera_channels) and, for "rgbd_map", the
    map crop's."""
    return camera_channels(observation) + (MAP_CHANNELS if observation in FAMILIES['embodied'].map_observations else 0)


def camera_channels(observation: str) -> int:
    if observation not in EMBODIED_OBSERVATIONS:
        raise ValueError(f'observation mode {observation!r} is not one of {EMBODIED_OBSERVATIONS}')
    return 3 if observation == 'rgb' else 4


def camera_observation(rgb: np.ndarray, depth: np.ndarray | None, observation: str = 'rgbd',
                       size: tuple[int, int] | None = None) -> np.ndarray:
    """The student's observation (H, W, C) uint8 of one camera frame.

    :param rgb: (h, w, 3) uint8, red first.
    :param depth: (h, w) metres (float); may be None for observation "rgb".
    :param size: (height, width) the policy was trained on; frames of another size are resized
        (rgb with area averaging, depth with nearest neighbour so no depth is invented at edges).
    :raises ValueError: unknown observation mode, wrong or empty shapes, or rgb and depth of
        different sizes (never cv2.error: an empty image is refused before resizing).
    """
    channels = camera_channels(observation)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or not rgb.size:
        raise ValueError(f'rgb must be (height, width, 3) uint8 of at least one pixel, got {rgb.shape} {rgb.dtype}')
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise ValueError(f'size must be (height, width) > 0, got {size}')
    if size is not None and tuple(rgb.shape[:2]) != tuple(size):
        rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    if channels == 3:
        return np.ascontiguousarray(rgb)
    if depth is None or depth.ndim != 2 or not depth.size:
        raise ValueError(f'observation "rgbd" needs an (height, width) depth image of at least one pixel, got '
                         f'{None if depth is None else depth.shape}')
    if size is not None and tuple(depth.shape) != tuple(size):
        depth = cv2.resize(np.asarray(depth, np.float32), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    if depth.shape != rgb.shape[:2]:
        raise ValueError(f'rgb {rgb.shape[:2]} and depth {depth.shape} differ in size; give `size` to resize both')
    return np.concatenate([rgb, encode_depth(depth)[..., None]], axis=-1)
