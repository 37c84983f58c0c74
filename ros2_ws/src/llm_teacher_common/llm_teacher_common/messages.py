"""Conversions between ROS messages and plain Python / numpy: step, perception and suggestion
batches, occupancy grids, and camera images (no rclpy import, no simulator)."""
from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from builtin_interfaces.msg import Time
from llm_teacher_msgs import msg
from nav_msgs.msg import OccupancyGrid as OccupancyGridMsg
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from llm_teacher_common.perception import OccupancyGrid, PerceivedObject, Perception
from llm_teacher_common.steps import VecStep

_NOTHING = PerceivedObject('')  # what a robot that carries nothing carries, in a perception batch
_OBJECT_FIELDS = ('object_type', 'object_color', 'object_state', 'object_forward', 'object_left', 'object_grid_x',
                  'object_grid_y', 'object_visible')  # PerceivedObject's fields, in its order


def step_batch_msg(step: VecStep, seq: int, stamp: Time, obs_encoding: str, num_actions: int,
                   frame_id: str = 'map', group: int = 0, num_groups: int = 1, epoch: int = 0) -> msg.StepBatch:
    """Step batch `seq` of env group `group`; its episode ids are made unique across groups."""
    out = msg.StepBatch()
    out.header.stamp = stamp
    out.header.frame_id = frame_id
    out.seq, out.epoch = seq, epoch
    out.num_envs = len(step.rewards)
    out.num_actions = num_actions
    out.group, out.num_groups = group, num_groups
    out.obs_shape = list(step.observations.shape[1:])
    out.obs_encoding = obs_encoding
    out.observations = step.observations.tobytes()
    out.rewards = step.rewards.tolist()
    out.terminated = step.terminated.tolist()
    out.truncated = step.truncated.tolist()
    out.success = step.success.tolist()
    out.episode_ids = (step.episode_ids * num_groups + group).tolist()
    out.missions = step.missions
    return out


def perception_batch_msg(perceptions: list[Perception], seq: int, stamp: Time,
                         frame_id: str = 'map', epoch: int = 0) -> msg.PerceptionBatch:
    """What the N environments of step batch `seq` perceive (with their maps where they have them),
    as PerceptionBatch's parallel arrays.

    :raises ValueError: perceptions of more than one task family.
    """
    families = {p.task_family for p in perceptions}
    if len(families) > 1:
        raise ValueError(f'one perception batch holds one task family, got {sorted(families)}')
    carried = [p.carrying or _NOTHING for p in perceptions]
    objects = [o for p in perceptions for o in p.objects]
    # array.array fields skip the generated setters' per-element checks
    out = msg.PerceptionBatch(
        seq=seq, epoch=epoch, task_family=families.pop() if families else '',
        pose_x=array.array('d', [p.x for p in perceptions]), pose_y=array.array('d', [p.y for p in perceptions]),
        pose_theta=array.array('d', [p.heading for p in perceptions]),
        carrying_type=[c.type for c in carried], carrying_color=[c.color for c in carried],
        object_env=array.array('I', [env for env, p in enumerate(perceptions) for _ in p.objects]),
        object_type=[o.type for o in objects], object_color=[o.color for o in objects],
        object_state=[o.state for o in objects],
        object_forward=array.array('d', [o.forward for o in objects]),
        object_left=array.array('d', [o.left for o in objects]),
        object_grid_x=array.array('i', [o.grid_x for o in objects]),
        object_grid_y=array.array('i', [o.grid_y for o in objects]),
        object_visible=[bool(o.visible) for o in objects])
    out.header.stamp = stamp
    out.header.frame_id = frame_id
    if perceptions and perceptions[0].occupancy is not None:
        out.maps = [occupancy_grid_msg(p.occupancy) for p in perceptions]
    return out


def index_in_batch(env: int, group: int, batch_size: int) -> int | None:
    """Where the sim's environment `env` is in a batch (of `batch_size`) of env group `group`
    (see StepBatch), or None when it is in another group."""
    env_group, index = divmod(env, max(batch_size, 1))
    return index if env_group == group else None


def top_suggestion(batch: msg.SuggestionBatch, env: int) -> tuple[str, float] | None:
    """The teacher's most likely option for the sim's environment `env` and its probability, e.g.
    ('go to the yellow key', 0.82); None when `env` is in another group's batch, has no answer or
    the batch is malformed. Reads recordings made before the parallel arrays too."""
    if hasattr(batch, 'suggestions'):
        return _top_of_nested(batch, env)
    index = index_in_batch(env, batch.group, len(batch.valid))
    if index is None or index >= len(batch.valid) or not batch.valid[index]:
        return None
    try:
        read = suggestions_from_msg(batch)
    except ValueError:
        return None  # malformed: nothing to show
    mine = np.flatnonzero(read.option_env == index)
    probs = read.option_probs[mine].astype(np.float64)
    if not len(probs) or not np.isfinite(probs).all():
        return None
    best = int(mine[np.argmax(probs)])
    return read.options[best], float(read.option_probs[best])


def _top_of_nested(batch, env: int) -> tuple[str, float] | None:
    """top_suggestion of a recorded batch of the layout before #35 (one nested Suggestion per env)."""
    # getattr: recordings made before env groups existed have no `group` field (all were group 0)
    index = index_in_batch(env, getattr(batch, 'group', 0), len(batch.suggestions))
    if index is None or index >= len(batch.suggestions) or not batch.suggestions[index].valid:
        return None
    suggestion = batch.suggestions[index]
    probs = np.asarray(suggestion.option_probs, np.float64)
    if not len(probs) or len(probs) != len(suggestion.options) or not np.isfinite(probs).all():
        return None  # malformed: nothing to show
    best = int(np.argmax(probs))
    return suggestion.options[best], float(suggestion.option_probs[best])


def suggestion_batch_msg(suggestions: Sequence, seq: int, stamp: Time, num_actions: int, source: str,
                         epoch: int = 0, group: int = 0) -> msg.SuggestionBatch:
    """The teacher's answer to step batch (`epoch`, `seq`) of env group `group`, as SuggestionBatch's
    parallel arrays. `suggestions` holds one llm_teacher.teacher.Suggestion per environment (valid,
    options, option_probs, action_probs, cache_hit, latency_ms); `num_actions` is the step batch's.

    :raises ValueError: a valid suggestion whose action_probs are not `num_actions` long, or one
        whose options and option_probs differ in length.
    """
    n = len(suggestions)
    probs = np.zeros((n, num_actions), np.float32)
    for i, s in enumerate(suggestions):
        if len(s.options) != len(s.option_probs):
            raise ValueError(f'suggestion batch {seq}: environment {i} has {len(s.options)} options and '
                             f'{len(s.option_probs)} option_probs')
        if s.valid:
            if len(s.action_probs) != num_actions:
                raise ValueError(f'suggestion batch {seq}: environment {i} has {len(s.action_probs)} action_probs, '
                                 f'but the step batch has {num_actions} actions')
            probs[i] = s.action_probs
    # array.array fields skip the generated setters' per-element checks
    out = msg.SuggestionBatch(
        seq=seq, epoch=epoch, group=group, source=source, num_actions=num_actions,
        valid=[bool(s.valid) for s in suggestions], action_probs=array.array('f', probs.tobytes()),
        cache_hit=[bool(s.cache_hit) for s in suggestions],
        latency_ms=array.array('f', [s.latency_ms for s in suggestions]),
        option_env=array.array('I', [env for env, s in enumerate(suggestions) for _ in s.options]),
        options=[o for s in suggestions for o in s.options],
        option_probs=array.array('f', [p for s in suggestions for p in s.option_probs]))
    out.header.stamp = stamp
    return out


@dataclass
class Suggestions:
    """The N suggestions of a suggestion batch as arrays (views of the message's where it can)."""

    valid: np.ndarray  # (N,) bool
    action_probs: np.ndarray  # (N, num_actions) float32, zeros where not valid
    cache_hit: np.ndarray  # (N,) bool
    latency_ms: np.ndarray  # (N,) float32
    option_env: np.ndarray  # (M,) whose option each is
    options: list[str]  # (M,)
    option_probs: np.ndarray  # (M,) float32


def suggestions_from_msg(batch: msg.SuggestionBatch) -> Suggestions:
    """The arrays of a suggestion batch, checked to fit together (its values are not checked: the
    student counts a row that is not a distribution as no suggestion, lockstep.suggestion_arrays).

    :raises ValueError: arrays whose lengths do not match (N = len(valid) for the per-environment
        ones, N x num_actions for action_probs, the options' count for the per-option ones), an
        option of no environment.
    """
    n, a, m = len(batch.valid), batch.num_actions, len(batch.option_env)
    wrong = [f'{name} has {len(getattr(batch, name))}' for name in ('cache_hit', 'latency_ms')
             if len(getattr(batch, name)) != n]
    if len(batch.action_probs) != n * a:
        wrong.append(f'action_probs has {len(batch.action_probs)}, not {n} x {a}')
    wrong += [f'{name} has {len(getattr(batch, name))}' for name in ('options', 'option_probs')
              if len(getattr(batch, name)) != m]
    if wrong:
        raise ValueError(f'suggestion batch {batch.seq} for {n} environments, {a} actions and {m} options: '
                         f'{", ".join(wrong)}')
    option_env = np.asarray(batch.option_env, np.int64)
    if m and option_env.max() >= n:
        raise ValueError(f'suggestion batch {batch.seq}: an option of environment {option_env.max()}, '
                         f'but there are {n}')
    return Suggestions(np.asarray(batch.valid, bool), np.asarray(batch.action_probs, np.float32).reshape(n, a),
                       np.asarray(batch.cache_hit, bool), np.asarray(batch.latency_ms, np.float32), option_env,
                       list(batch.options), np.asarray(batch.option_probs, np.float32))


def observations_from_msg(batch: msg.StepBatch) -> np.ndarray:
    """The uint8 observation tensor (N, *obs_shape) of a step batch, without copying."""
    return np.frombuffer(batch.observations, np.uint8).reshape(batch.num_envs, *batch.obs_shape)


def perception_msg(p: Perception) -> msg.Perception:
    out = msg.Perception(task_family=p.task_family, mission=p.mission,
                         objects=[_object_msg(o) for o in p.objects])
    if p.carrying is not None:
        out.carrying = _object_msg(p.carrying)
    out.pose.x, out.pose.y, out.pose.theta = p.x, p.y, float(p.heading)
    return out


def occupancy_grid_msg(grid: OccupancyGrid) -> OccupancyGridMsg:
    """nav_msgs/OccupancyGrid (row-major from the origin, x fastest) of a robot's map."""
    out = OccupancyGridMsg()
    out.header.frame_id = 'map'
    width, height = grid.cells.shape
    out.info.resolution = float(grid.resolution)
    out.info.width, out.info.height = width, height
    out.info.origin.position.x, out.info.origin.position.y = map(float, grid.origin)
    out.info.origin.orientation.w = 1.0
    out.data = array.array('b', np.ascontiguousarray(grid.cells.T).tobytes())
    return out


def occupancy_grid_from_msg(m: OccupancyGridMsg) -> OccupancyGrid:
    cells = np.frombuffer(bytes(m.data), np.int8).reshape(m.info.height, m.info.width).T.copy()
    return OccupancyGrid(cells, (m.info.origin.position.x, m.info.origin.position.y), m.info.resolution)


def perceptions_from_msg(batch: msg.PerceptionBatch, missions: list[str]) -> list[Perception]:
    """Every environment's perception of a perception batch, with its robot's map where it has one;
    `missions` are the step batch's (same seq), one per environment.

    :raises ValueError: arrays whose lengths do not match (N for the per-environment ones, the
        objects' count for the per-object ones), an object of no environment, a pose that is not finite.
    """
    n = len(missions)
    per_env = {'pose_x': batch.pose_x, 'pose_y': batch.pose_y, 'pose_theta': batch.pose_theta,
               'carrying_type': batch.carrying_type, 'carrying_color': batch.carrying_color}
    if batch.maps:
        per_env['maps'] = batch.maps
    m = len(batch.object_env)
    per_object = [getattr(batch, name) for name in _OBJECT_FIELDS]  # PerceivedObject's field order
    wrong = [f'{name} has {len(v)}' for name, v in per_env.items() if len(v) != n]
    wrong += [f'{name} has {len(v)}' for name, v in zip(_OBJECT_FIELDS, per_object) if len(v) != m]
    if wrong:
        raise ValueError(f'perception batch {batch.seq} for {n} environments and {m} objects: {", ".join(wrong)}')
    if m and max(batch.object_env) >= n:
        raise ValueError(f'perception batch {batch.seq}: an object of environment {max(batch.object_env)}, '
                         f'but there are {n}')
    poses = np.array([batch.pose_x, batch.pose_y, batch.pose_theta], np.float64).reshape(3, n)
    if not np.isfinite(poses).all():
        env = int(np.flatnonzero(~np.isfinite(poses).all(axis=0))[0])
        raise ValueError(f'perception batch {batch.seq}: pose {tuple(poses[:, env].tolist())} of environment {env} '
                         'is not finite')
    objects = [[] for _ in range(n)]
    for env, *fields in zip(batch.object_env, *per_object):
        objects[env].append(PerceivedObject(*fields))
    grid = batch.task_family == 'gridworld'
    perceptions = [
        Perception(mission=mission, objects=objects[i], task_family=batch.task_family,
                   carrying=PerceivedObject(batch.carrying_type[i], batch.carrying_color[i])
                   if batch.carrying_type[i] else None,
                   x=batch.pose_x[i], y=batch.pose_y[i],
                   heading=int(round(batch.pose_theta[i])) if grid else batch.pose_theta[i])
        for i, mission in enumerate(missions)]
    for perception, grid_msg in zip(perceptions, batch.maps):
        perception.occupancy = occupancy_grid_from_msg(grid_msg)
    return perceptions


def _object_msg(o: PerceivedObject) -> msg.PerceivedObject:
    out = msg.PerceivedObject(type=o.type, color=o.color, state=o.state,
                              grid_x=o.grid_x, grid_y=o.grid_y, visible=o.visible)
    out.position.x, out.position.y = o.forward, o.left
    return out


def rgb_image_msg(frame: np.ndarray, stamp: Time, frame_id: str) -> Image:
    """sensor_msgs/Image (rgb8) of an (H, W, 3) uint8 frame."""
    height, width = frame.shape[:2]
    return Image(header=Header(stamp=stamp, frame_id=frame_id), height=height, width=width, encoding='rgb8',
                 is_bigendian=0, step=width * 3, data=np.ascontiguousarray(frame, np.uint8).tobytes())


RGB_ENCODINGS = {'rgb8': (3, False), 'bgr8': (3, True), 'rgba8': (4, False), 'bgra8': (4, True)}
DEPTH_ENCODINGS = {'32FC1': (np.float32, 1.0), '16UC1': (np.uint16, 0.001)}  # REP-118: metres; millimetres
# Above a 16-megapixel frame an image is refused: cameras a policy runs on are far smaller, and
# converting such a frame would hold the node's one thread (and its watchdog) for long.
MAX_IMAGE_PIXELS = 4096 * 4096


def _pixels(m: Image, dtype, channels: int) -> np.ndarray:
    """The (H, W[, C]) pixels of an image, honouring its row stride and byte order.

    :raises ValueError: an empty image, one over MAX_IMAGE_PIXELS, or data too short for its size.
    """
    if not (0 < m.width * m.height <= MAX_IMAGE_PIXELS):
        raise ValueError(f'{m.encoding} image {m.width}x{m.height}: size must be 1..{MAX_IMAGE_PIXELS} pixels')
    itemsize = np.dtype(dtype).itemsize
    row = m.width * channels * itemsize
    if m.step < row or len(m.data) < m.step * m.height:
        raise ValueError(f'{m.encoding} image {m.width}x{m.height} has step {m.step} and {len(m.data)} bytes: '
                         f'too few for its size')
    rows = np.frombuffer(bytes(m.data), np.uint8, m.step * m.height).reshape(m.height, m.step)[:, :row]
    dtype = np.dtype(dtype).newbyteorder('>' if m.is_bigendian else '<')
    pixels = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder('='))
    return pixels.reshape(m.height, m.width, channels) if channels > 1 else pixels.reshape(m.height, m.width)


def rgb_from_image(m: Image) -> np.ndarray:
    """(H, W, 3) uint8, red first, of an rgb8, bgr8, rgba8 or bgra8 sensor_msgs/Image.

    :raises ValueError: another encoding, an empty or oversized image, or data too short for its size.
    """
    if m.encoding not in RGB_ENCODINGS:
        raise ValueError(f'colour image encoding {m.encoding!r} is not supported; use one of {", ".join(RGB_ENCODINGS)}')
    channels, reversed_ = RGB_ENCODINGS[m.encoding]
    pixels = _pixels(m, np.uint8, channels)[..., :3]
    return np.ascontiguousarray(pixels[..., ::-1] if reversed_ else pixels)


def depth_from_image(m: Image) -> np.ndarray:
    """(H, W) float32 metres of a 32FC1 (metres) or 16UC1 (millimetres) sensor_msgs/Image; a 16UC1
    0 (no return) becomes NaN, as 32FC1 marks it.

    :raises ValueError: another encoding, an empty or oversized image, or data too short for its size.
    """
    if m.encoding not in DEPTH_ENCODINGS:
        raise ValueError(f'depth image encoding {m.encoding!r} is not supported; use one of {", ".join(DEPTH_ENCODINGS)}')
    dtype, scale = DEPTH_ENCODINGS[m.encoding]
    raw = _pixels(m, dtype, 1)
    depth = raw.astype(np.float32) * np.float32(scale)
    if dtype is np.uint16:
        depth[raw == 0] = np.nan
    return depth
