"""The deployed student on a robot, as plain classes (no rclpy): check what arrives (stamps,
sizes, parameters), pair rgb and depth frames by stamp, build the observation the student was
trained on, choose an action, turn it into a bounded velocity command, and decide when the robot
must stop. robot_policy_node and policy_node are the ROS shells around them (docs/safety.md).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from llm_teacher_common.camera import camera_observation, invalid_depth_fraction, observation_channels
from llm_teacher_common.commands import MOTIONS, velocity_for_action
from llm_teacher_common.embodied_skills import CELL, EmbodiedSkills
from llm_teacher_common.families import FAMILIES
from llm_teacher_common.map_crop import CROP_RESOLUTIONS, egocentric_crop, named_positions
from llm_teacher_common.options import OPTION_HOLD, mission_options, mission_roles, named_objects
from llm_teacher_common.perception import FREE, OCCUPIED, UNKNOWN, OccupancyGrid, PerceivedObject, Perception
from llm_teacher_common.transform2d import Transform2D
from student_deploy.inference import Policy, choose_actions

NS = 1_000_000_000


def checked_number(name: str, value: float, low: float = 0.0, high: float = math.inf,
                   low_inclusive: bool = False) -> float:
    """`value` when it is a finite number in (low, high] ([low, high] with `low_inclusive`).

    A plain `value <= 0` check lets NaN through (NaN compares false with everything), and an
    infinite limit or age is a check that never fires: both are refused here.

    :raises ValueError: quoting the parameter, its value and the allowed range.
    """
    value = float(value)
    above = value >= low if low_inclusive else value > low
    if not (math.isfinite(value) and above and value <= high):
        bound = f'{"[" if low_inclusive else "("}{low:g}, {high:g}{"]" if math.isfinite(high) else ")"}'
        raise ValueError(f'{name} must be a finite number in {bound}, got {value!r}')
    return value


def stamp_ns(sec: int, nanosec: int) -> int:
    """Nanoseconds of a builtin_interfaces/Time (sec, nanosec).

    :raises ValueError: a negative time, or nanosec outside 0..999999999 (rclpy's Time.from_msg
        raises on the first outside any handler of ours, which ended the node).
    """
    if not 0 <= nanosec < NS or sec < 0:
        raise ValueError(f'stamp {sec} s {nanosec} ns is not a valid time (sec >= 0, nanosec < 1e9)')
    return sec * NS + nanosec


class SensorWatchdog:
    """When a robot must stop because what it sees is not fresh (as nav2's collision monitor's
    `source_timeout`).

    Input is refused when stamped before `max_age_s` ago or more than `max_skew_s` ahead of the
    node's clock (a camera clock ahead would otherwise make one frame look fresh for ever). The
    freshness of accepted input is its stamp, but never later than when it arrived, so a frame
    stamped slightly ahead does not keep the robot going longer: checked every control period,
    `stale()` stops the robot within max_age_s + one period of the last good input.
    """

    def __init__(self, max_age_s: float, max_skew_s: float):
        self.max_age_ns = int(checked_number('max_sensor_age', max_age_s) * NS)
        self.max_skew_ns = int(checked_number('max_clock_skew', max_skew_s, 0.0, max_age_s, low_inclusive=True) * NS)
        self.fresh_ns: int | None = None

    def check(self, stamp: int, now_ns: int) -> None:
        """:raises ValueError: `stamp` (ns) is too old or too far in the future to act on."""
        self.check_not_ahead(stamp, now_ns)
        if now_ns - stamp > self.max_age_ns:
            raise ValueError(f'stamped {(now_ns - stamp) / NS:.3f} s ago, older than max_sensor_age '
                             f'{self.max_age_ns / NS:g} s')

    def check_not_ahead(self, stamp: int, now_ns: int) -> None:
        """:raises ValueError: `stamp` (ns) is more than max_clock_skew ahead of the node's clock (for
        input that may be older than max_sensor_age, as a map, but must not look fresh for ever)."""
        if stamp > now_ns + self.max_skew_ns:
            raise ValueError(f'stamped {(stamp - now_ns) / NS:.3f} s ahead of this node\'s clock (more than '
                             f'max_clock_skew {self.max_skew_ns / NS:g} s): is the sensor\'s clock synchronised?')

    def fed(self, stamp: int, now_ns: int) -> None:
        """Input stamped `stamp` (checked) was acted on at `now_ns`."""
        fresh = min(stamp, now_ns)
        self.fresh_ns = fresh if self.fresh_ns is None else max(self.fresh_ns, fresh)

    def stale(self, now_ns: int) -> bool:
        return self.fresh_ns is None or now_ns - self.fresh_ns > self.max_age_ns


class VelocityCommands:
    """Discrete actions as bounded velocities (linear.x m/s, angular.z rad/s): the velocity that
    carries an action out in one control period (llm_teacher_common.commands), clipped to
    max_linear / max_angular.

    :raises ValueError: an unknown action set, or a value that is not a finite number > 0.
    """

    def __init__(self, action_set: str = 'miniworld', step_length: float = 0.15, turn_angle: float = 0.2617994,
                 step_duration: float = 0.1, max_linear: float = 0.5, max_angular: float = 1.5):
        if action_set not in MOTIONS:
            raise ValueError(f'unknown action set {action_set!r}; known: {", ".join(MOTIONS)}')
        self.motion = dict(action_set=action_set, step_length=checked_number('step_length', step_length),
                           turn_angle=checked_number('turn_angle', turn_angle),
                           step_duration=checked_number('step_duration', step_duration))
        self.max_linear = checked_number('max_linear', max_linear)
        self.max_angular = checked_number('max_angular', max_angular)

    def velocity(self, action: int) -> tuple[float, float]:
        """(linear.x, angular.z) that carry out `action` in one control period, within the limits."""
        linear, angular = velocity_for_action(action, **self.motion)
        return (float(np.clip(linear, -self.max_linear, self.max_linear)),
                float(np.clip(angular, -self.max_angular, self.max_angular)))


def checked_actions(logits: torch.Tensor, mask: np.ndarray | None, greedy: bool,
                    generator: torch.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(actions (B,), probabilities (B, A)) of a policy's logits (B, A), only among the actions
    `mask` allows.

    :raises FloatingPointError: non-finite logits (the caller stops the robot).
    """
    if not torch.isfinite(logits).all():
        raise FloatingPointError(f'the policy gave non-finite logits {logits[~torch.isfinite(logits)][:5].tolist()}')
    if mask is not None:
        logits = logits.masked_fill(torch.from_numpy(~mask), float('-inf'))
    return choose_actions(logits, greedy, generator), torch.softmax(logits, -1).numpy()


def batch_observations(data: bytes, num_envs: int, obs_shape, policy_shape: tuple[int, ...] | None) -> np.ndarray:
    """The (num_envs, *obs_shape) uint8 observations of a StepBatch, checked against the policy.

    :raises ValueError: no environments, a shape that is not the policy's, or a buffer whose size
        is not num_envs x the observation size.
    """
    shape = tuple(int(n) for n in obs_shape)
    if policy_shape is not None and shape != tuple(policy_shape):
        raise ValueError(f'observations of shape {shape}, but the policy takes {tuple(policy_shape)}')
    if num_envs <= 0 or not shape or min(shape) <= 0:
        raise ValueError(f'{num_envs} environments of shape {shape}: nothing to act on')
    size = num_envs * math.prod(shape)
    if len(data) != size:
        raise ValueError(f'{len(data)} observation bytes for {num_envs} x {shape} ({size} bytes)')
    return np.frombuffer(data, np.uint8).reshape(num_envs, *shape)


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
        self.slop_ns = int(checked_number('slop', slop_s, low_inclusive=True) * NS)
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


def yaw_of(z: float, w: float, x: float = 0.0, y: float = 0.0) -> float:
    """Yaw (rad) of a quaternion (x, y, z, w): the heading of a base on the ground.

    :raises ValueError: a quaternion that is not finite or whose length is far from 1.
    """
    norm = x * x + y * y + z * z + w * w
    if not (math.isfinite(norm) and abs(norm - 1.0) < 0.01):
        raise ValueError(f'quaternion ({x}, {y}, {z}, {w}) is not a unit quaternion')
    return math.atan2(2.0 * (w * z + x * y), w * w + x * x - y * y - z * z)


def named_target(mission: str) -> tuple[str, str]:
    """(type, colour) of the one object `mission` names.

    :raises ValueError: a mission that names none or several.
    """
    named = named_objects(mission)
    if len(named) != 1:
        raise ValueError(f'the mission {mission[:200]!r} names {len(named)} objects: the skills on a robot read '
                         f'unlabelled target points, so they run missions that name one ("go to the red ball")')
    return named[0]


def robot_perception(mission: str, grid: OccupancyGrid, pose: tuple[float, float, float],
                     targets: list[tuple[float, float]], obstacles: list[tuple[float, float]] = ()) -> Perception:
    """What the skills (llm_teacher_common.embodied_skills) read, from what a robot's own topics
    give: its map, its pose (x, y, yaw) on it, the points where its detector last saw the object
    the mission names, each taken as that object (a PoseArray carries no labels: so an option-level
    robot runs missions that name one object), and those of the other objects, which the skills
    only keep off. It carries nothing: no gripper here.

    :raises ValueError: a mission that does not name exactly one object (named_target), or a map
        whose cells are not the skills' (embodied_skills.CELL).
    """
    if abs(grid.resolution - CELL) > 1e-6:
        raise ValueError(f'map resolution {grid.resolution:g} m: the skills plan on {CELL:g} m cells, as in training '
                         f'(their distances are counted in cells); publish the map at {CELL:g} m')
    (kind, color), robot = named_target(mission), Transform2D(*pose)
    objects = [PerceivedObject(kind, color, forward=forward, left=left)
               for forward, left in (robot.from_parent(x, y) for x, y in targets)]
    objects += [PerceivedObject('', forward=forward, left=left)
                for forward, left in (robot.from_parent(x, y) for x, y in obstacles)]
    return Perception(mission, objects, None, *pose, task_family='embodied', occupancy=grid)


def seen_through_topics(perception: Perception) -> Perception:
    """The perception robot_policy_node rebuilds (robot_perception) from what robot_sim_node publishes
    of a simulator's `perception`: its map, pose, targets (the objects the mission names) and
    obstacles (the others); what an option-level policy's skills read on the simulated robot."""
    p = perception
    return robot_perception(p.mission, p.occupancy, (p.x, p.y, p.heading), named_positions(p),
                            named_positions(p, named=False))


class MapInput:
    """The map crop a map policy reads beside the camera (observation rgbd_map,
    llm_teacher_common.map_crop), built from a robot's own topics: the mapper's occupancy grid, the
    odometry (the pose at each frame's stamp, within `slop_s`), map -> odom from /tf (the
    localiser's correction; none is needed where the map is built in the odometry frame) and where
    the objects the mission names were last seen (a detector's points in the map frame).

    The policy learnt on a map built as the robot goes (unknown where it has not looked): a mapper
    that keeps publishing (slam_toolbox, a costmap), not a map server's finished map, which is both
    unlike training and never fresh.

    A map, targets or obstacles message the node refused (`refuse`) ends the crop until a valid one
    comes: the one held before came from the source now publishing nonsense, so acting on it is not safe.

    :param cells: cells across the crop (the camera's pixels across: the policy's input).
    :param max_map_age_s: the map, and a localiser's map -> odom, may be this much older than a frame.
    """

    FINEST_MAP = 0.02  # m per cell: a finer map makes each crop sample too many cells for the control rate
    MAX_TRANSFORMS = 64  # /tf edges kept: a flood of frame names does not grow the node
    # Targets a message may hold: each costs a full-crop distance per scale (10,000 took 0.21 s of
    # the node's one thread, watchdog included). Refused, not cut: which to keep would be a guess,
    # and one dropped is a wrong observation; a detector of the objects one mission names sends few.
    MAX_TARGETS = 64
    MAX_MAP_TILT = 1e-3  # |(x, y)| of the map origin's quaternion (about 0.1 deg of roll or pitch)

    def __init__(self, cells: int, slop_s: float, max_map_age_s: float, queue_size: int = 50):
        self.cells = cells
        self.slop_ns = int(checked_number('slop', slop_s, low_inclusive=True) * NS)
        self.max_map_age_ns = int(checked_number('max_map_age', max_map_age_s) * NS)
        self.grid: OccupancyGrid | None = None
        self.map_frame, self.map_stamp_ns = '', 0
        self.odom_frame = ''
        self.poses: deque[tuple[int, float, float, float]] = deque(maxlen=queue_size)  # base in odom
        self.transforms: dict[tuple[str, str], tuple[int | None, float, float, float]] = {}  # stamp (None: static), x, y, yaw
        self.targets_frame, self.targets = '', []
        self.obstacles_frame, self.obstacles = '', []
        self.map_yaw = 0.0  # of the map's origin: its cells' axes in the map frame
        self.refused: dict[str, str] = {}  # 'map', 'targets' or 'obstacles': why the last one was refused

    def add_map(self, stamp: int, frame: str, grid: OccupancyGrid,
                origin_rotation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)) -> None:
        """Take a map, its cells read as a map server reads them (REP-149's -1 unknown, 0-100
        occupancy: >= 65 occupied, <= 25 free, else unknown).

        :param origin_rotation: the quaternion (x, y, z, w) of the map's origin
            (OccupancyGrid.info.origin.orientation): its yaw turns the cells' axes in the map frame, as
            the yaw of Nav2's map_server origin [x, y, yaw] does.
        :raises ValueError: no cells, values outside -1..100, a resolution that is not finite or
            finer than FINEST_MAP, an origin that is not finite, or an origin rotation that is not a
            unit quaternion or tilts the map (roll or pitch).
        """
        if grid.cells.size == 0:
            raise ValueError('the map has no cells')
        if checked_number('map resolution', grid.resolution) < self.FINEST_MAP:
            raise ValueError(f'map resolution {grid.resolution:g} m is finer than {self.FINEST_MAP:g} m: publish the '
                             f'map coarser (the policy reads 0.25 m and 0.5 m cells)')
        if not all(math.isfinite(v) for v in grid.origin):
            raise ValueError(f'map origin {grid.origin} is not finite')
        qx, qy, qz, qw = origin_rotation
        try:
            yaw = yaw_of(qz, qw, qx, qy)
        except ValueError as err:
            raise ValueError(f'map origin orientation: {err} (publish one, e.g. w = 1 for an unturned map)') from err
        if math.hypot(qx, qy) > self.MAX_MAP_TILT:
            raise ValueError(f'map origin orientation ({qx}, {qy}, {qz}, {qw}) rolls or pitches the map: only a '
                             f'rotation about z (yaw) can be read; publish the map level (x = y = 0)')
        cells = grid.cells.astype(np.int16)
        if cells.min() < -1 or cells.max() > 100:
            raise ValueError(f'map cells range {cells.min()}..{cells.max()}, outside -1 (unknown) .. 100 (occupied)')
        cells = np.where(cells >= 65, OCCUPIED, np.where((cells >= 0) & (cells <= 25), FREE, UNKNOWN)).astype(np.int8)
        self.grid, self.map_frame, self.map_stamp_ns = OccupancyGrid(cells, grid.origin, grid.resolution), frame, stamp
        self.map_yaw = yaw
        self.refused.pop('map', None)

    def add_odom(self, stamp: int, frame: str, x: float, y: float, yaw: float) -> None:
        """:raises ValueError: a pose that is not finite."""
        if not all(math.isfinite(v) for v in (x, y, yaw)):
            raise ValueError(f'odometry pose ({x}, {y}, yaw {yaw}) is not finite')
        self.odom_frame = frame
        self.poses.append((stamp, x, y, yaw))

    def add_transform(self, parent: str, child: str, x: float, y: float, yaw: float, stamp: int | None = None) -> None:
        """A /tf edge (stamp None: /tf_static's, which does not age)."""
        if not all(math.isfinite(v) for v in (x, y, yaw)):
            return
        if (parent, child) not in self.transforms and len(self.transforms) >= self.MAX_TRANSFORMS:
            self.transforms.pop(next(iter(self.transforms)))
        self.transforms[(parent, child)] = (stamp, x, y, yaw)

    def set_targets(self, frame: str, points: list[tuple[float, float]]) -> None:
        """Where the objects the mission names were last seen (an empty list: none yet), in the
        map's frame (checked when the crop is built).

        :raises ValueError: more than MAX_TARGETS points, or points that are not finite.
        """
        self.targets_frame, self.targets = frame, _checked_points('target', points, self.MAX_TARGETS)
        self.refused.pop('targets', None)

    def set_obstacles(self, frame: str, points: list[tuple[float, float]]) -> None:
        """Where the other objects were last seen, in the map's frame: the skills of an option-level
        policy keep off them (a low object the mapper misses, such as a key).

        :raises ValueError: more than MAX_TARGETS points, or points that are not finite.
        """
        self.obstacles_frame, self.obstacles = frame, _checked_points('obstacle', points, self.MAX_TARGETS)
        self.refused.pop('obstacles', None)

    def refuse(self, what: str, reason: str) -> None:
        """A `what` ('map', 'targets' or 'obstacles') message was refused for `reason`: no crop until
        a valid one comes."""
        self.refused[what] = reason

    def forget(self) -> None:
        """A new episode (mission, the robot carried elsewhere): the targets seen no longer hold."""
        self.targets_frame, self.targets = '', []
        self.obstacles_frame, self.obstacles = '', []
        self.refused.pop('targets', None)
        self.refused.pop('obstacles', None)

    def pose_at(self, stamp: int) -> tuple[float, float, float] | None:
        """The base's map-frame pose (x, y, yaw) at `stamp`: the odometry nearest in stamp (within
        slop) composed with map -> odom (not older than max_map_age); None while either is missing.
        Unchecked here: huge but finite odometry and map -> odom may give one that is not (crop refuses it)."""
        parts = self._pose_parts(stamp)
        if parts is None:
            return None
        odometry, correction = parts
        return Transform2D(*correction).compose(odometry)

    def _pose_parts(self, stamp: int) -> tuple[tuple[float, float, float], tuple[float, float, float]] | None:
        """(odometry, map -> odom) pose_at composes, each (x, y, yaw); map -> odom is the identity
        where the map is in the odometry frame."""
        near = [pose for pose in self.poses if abs(pose[0] - stamp) <= self.slop_ns]
        if not near or not self.map_frame:
            return None
        odometry = min(near, key=lambda pose: abs(pose[0] - stamp))[1:]
        if self.map_frame == self.odom_frame:
            return odometry, (0.0, 0.0, 0.0)
        correction = self.transforms.get((self.map_frame, self.odom_frame))
        if correction is None or correction[0] is not None and stamp - correction[0] > self.max_map_age_ns:
            return None
        return odometry, correction[1:]

    def waiting_for(self, stamp: int) -> str:
        """What is still missing to build the crop of a frame stamped `stamp` ('' nothing)."""
        if self.grid is None:
            return 'a map (nav_msgs/OccupancyGrid on `map`)'
        if not any(abs(pose[0] - stamp) <= self.slop_ns for pose in self.poses):
            return f'odometry (nav_msgs/Odometry on `odom`) stamped within {self.slop_ns / NS:g} s of the frames'
        if self.pose_at(stamp) is None:
            return f'the transform {self.map_frame} -> {self.odom_frame} on /tf (at most max_map_age old)'
        return ''

    def crop(self, stamp: int) -> np.ndarray:
        """(cells, cells, MAP_CHANNELS) uint8 crop for a frame stamped `stamp`.

        :raises ValueError: as `placed`.
        """
        return self.view(stamp)[0]

    def view(self, stamp: int, mission: str | None = None) -> tuple[np.ndarray, Perception | None]:
        """The crop for a frame stamped `stamp` and, given the `mission` of an option-level policy,
        what its skills read from the same placement: the map, the pose on it, the targets as the
        one object `mission` names and the obstacles (robot_perception); None without one.

        :raises ValueError: as `placed`, and as robot_perception.
        """
        pose, targets, obstacles = self.placed(stamp)
        crop = egocentric_crop(self.grid, pose, self.cells, targets)
        return crop, None if mission is None else robot_perception(mission, self.grid, pose, targets, obstacles)

    def placed(self, stamp: int) -> tuple[tuple[float, float, float], list[tuple[float, float]],
                                          list[tuple[float, float]]]:
        """The robot's pose (x, y, yaw), the targets and the obstacles (x, y) at a frame stamped
        `stamp`, along the map's own axes (those of self.grid's cells).

        :raises ValueError: the last map, targets or obstacles were refused, something is missing
            (waiting_for), the map is older than max_map_age, the targets or obstacles are in another
            frame than the map, the pose is not finite or so far off the map that no crop cell is on
            it, or a point is too far from the robot to place.
        """
        if self.refused:
            refused = '; '.join(f'the last {what} message was refused ({why})' for what, why in self.refused.items())
            raise ValueError(f'{refused}: the robot stays stopped until a valid one comes')
        parts = self._pose_parts(stamp)  # resolved once a frame; None exactly where waiting_for names something
        if parts is None:
            raise ValueError(f'no map input yet: waiting for {self.waiting_for(stamp)}')
        if stamp - self.map_stamp_ns > self.max_map_age_ns:
            raise ValueError(f'the map is {(stamp - self.map_stamp_ns) / NS:.2f} s older than the frames '
                             f'(max_map_age {self.max_map_age_ns / NS:g} s): is the mapper running?')
        for what, points, frame in (('target', self.targets, self.targets_frame),
                                    ('obstacle', self.obstacles, self.obstacles_frame)):
            if points and frame != self.map_frame:
                raise ValueError(f'{what} points are in frame {frame!r}, the map in {self.map_frame!r}: '
                                 f'publish them in the map frame')
        odometry, correction = parts
        pose = Transform2D(*correction).compose(odometry)
        if not all(math.isfinite(v) for v in pose):
            raise ValueError(f'odometry {_pose_text(odometry)} behind {self.map_frame} -> {self.odom_frame} '
                             f'{_pose_text(correction)} gives the map-frame pose {_pose_text(pose)}, which is not '
                             f'finite: is the odometry or the localiser publishing nonsense?')
        # The crop reads cells along the map's own axes: a turned origin turns the robot and the
        # targets about it the other way instead, which leaves what the robot sees as it was.
        on_grid, targets, obstacles = pose, self.targets, self.obstacles
        if self.map_yaw:
            ox, oy = self.grid.origin
            origin = Transform2D(ox, oy, self.map_yaw)

            def unturned(x: float, y: float) -> tuple[float, float]:
                along, across = origin.from_parent(x, y)
                return ox + along, oy + across

            on_grid = (*unturned(pose[0], pose[1]), pose[2] - self.map_yaw)
            targets = [unturned(x, y) for x, y in self.targets]
            obstacles = [unturned(x, y) for x, y in self.obstacles]
        self._check_on_map(pose, on_grid)
        for what, points, placed in (('target', self.targets, targets), ('obstacle', self.obstacles, obstacles)):
            for (x, y), (gx, gy) in zip(points, placed):
                if not (math.isfinite(gx - on_grid[0]) and math.isfinite(gy - on_grid[1])):
                    raise ValueError(f'{what} point ({x:g}, {y:g}) is too far from the robot {_pose_text(pose)} in '
                                     f'{self.map_frame!r} to place on the crop: is the detector publishing '
                                     f'nonsense?')
        return on_grid, targets, obstacles

    def _check_on_map(self, pose: tuple[float, float, float], on_grid: tuple[float, float, float]) -> None:
        """:raises ValueError: the robot (`on_grid`: its pose along the map's axes) is so far off the
        map that no cell of the crop is on it; what the policy would see then is only unknown, and
        such a pose is far more likely wrong than true (and far enough, its cell indices overflow)."""
        ox, oy = self.grid.origin
        width, height = (n * self.grid.resolution for n in self.grid.cells.shape)
        x, y = on_grid[0] - ox, on_grid[1] - oy
        off = math.hypot(max(-x, 0.0, x - width), max(-y, 0.0, y - height))
        reach = self.cells * max(CROP_RESOLUTIONS) / math.sqrt(2)  # half the crop's diagonal, coarsest scale
        if not off <= reach:
            raise ValueError(f'the robot {_pose_text(pose)} in {self.map_frame!r} is {off:.3g} m off the map, '
                             f'farther than the crop reaches ({reach:g} m): is map -> odom (or the odometry) right?')


def _checked_points(what: str, points: list[tuple[float, float]], most: int) -> list[tuple[float, float]]:
    """:raises ValueError: more than `most` points, or points that are not finite (`what` names them)."""
    if len(points) > most:
        raise ValueError(f'{len(points)} {what} points, more than {most}: each costs the node time on every '
                         f'frame; publish only the objects last seen near the robot')
    bad = [point for point in points if not all(math.isfinite(v) for v in point)]
    if bad:
        raise ValueError(f'{what} points {bad[:4]} are not finite')
    return list(points)


def _pose_text(pose: tuple[float, float, float]) -> str:
    return f'({pose[0]:g}, {pose[1]:g}, yaw {pose[2]:g})'


@dataclass
class _GroupMemory:
    source: tuple[int, int]  # (epoch, num_envs) of the simulator it follows
    seq: int | None  # the last batch acted on
    before: torch.Tensor  # the state that batch was acted on from
    after: torch.Tensor  # the state the policy returned for it


class BatchStates:
    """A recurrent policy's state for each environment of the step batches a node answers, kept per
    env group: zeros where an episode starts (after an episode end a batch holds the next episode's
    first observation), for a new simulator (another epoch or number of environments) and after
    reset(); a batch sent again (same seq) is acted on from the same state, not one step further."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.groups: dict[int, _GroupMemory] = {}

    def before(self, group: int, epoch: int, seq: int | None, ended: np.ndarray) -> torch.Tensor:
        """The state to act on for batch `seq` (None: no seq, never a resend) of env group `group`,
        whose environments `ended` (bool, one per env) an episode."""
        memory = self.groups.get(group)
        if memory is None or memory.source != (epoch, len(ended)):
            zeros = self.policy.initial_state(len(ended))
            memory = self.groups[group] = _GroupMemory((epoch, len(ended)), None, zeros, zeros)
        elif seq is None or seq != memory.seq:
            memory.before = memory.after.masked_fill(torch.from_numpy(ended)[:, None], 0.0)
        memory.seq = seq
        return memory.before

    def after(self, group: int, state: torch.Tensor) -> None:
        """The state the policy returned for the batch of `group` just answered.

        :raises FloatingPointError: a non-finite state (kept out: the caller stops the robot).
        """
        if not torch.isfinite(state).all():
            raise FloatingPointError('the policy gave a non-finite state')
        self.groups[group].after = state

    def reset(self) -> None:
        self.groups.clear()


def motion_mask(action_set: str, num_actions: int) -> np.ndarray:
    """True for the actions that move the base (a robot cannot pick up or toggle)."""
    return np.array([MOTIONS[action_set][a] != (0, 0) for a in range(num_actions)])


class CameraPolicy:
    """An exported camera policy driving a base: frames in, (action, probabilities, Twist) out.

    A policy that chooses among its mission's options (an option-level student) needs the robot's
    map input (observation rgbd_map) and a mission that names one object to go to: the option it
    chooses becomes a motion through the skills on the robot's map (MapInput.view).

    :param observation: the encoding the policy was trained on ('rgbd', 'rgb' or 'rgbd_map').
    :param action_set: what the action indices mean (llm_teacher_common.commands.MOTIONS).
    :param motion_only: give the actions that do not move the base (pick up, drop, toggle, done)
        no probability; a base cannot carry them out, and a stopped robot sees the same frame again.
    :param step_length, turn_angle: metres and radians one forward and one turn action make.
    :param step_duration: seconds one action takes (the control period).
    :param max_linear, max_angular: limits (m/s, rad/s) the velocity command is clipped to.
    :param max_invalid_depth: largest fraction of invalid depth pixels (NaN, inf, <= 0) a frame
        may have to be acted on (observation 'rgbd'): a blinded depth camera stops the robot.
    :param option_hold: a policy that chooses options takes a new one every this many frames of an
        episode (from its first) and runs the one it holds in between.
    :raises ValueError: the policy does not fit these settings (both sides named), or a bad value.
    """

    def __init__(self, policy: Policy, observation: str = 'rgbd', action_set: str = 'miniworld',
                 greedy: bool = True, motion_only: bool = True, step_length: float = 0.15,
                 turn_angle: float = 0.2617994, step_duration: float = 0.1, max_linear: float = 0.5,
                 max_angular: float = 1.5, max_invalid_depth: float = 0.5, seed: int = 0,
                 option_hold: int = OPTION_HOLD):
        self.commands = VelocityCommands(action_set, step_length, turn_angle, step_duration, max_linear, max_angular)
        channels = observation_channels(observation)
        info = policy.info
        if info is None:
            raise ValueError(f'{policy.path} carries no description of its inputs (exported before policy.json '
                             f'existed): export it again with student_policy.checkpoints.export_policy')
        self.reads_map = observation in FAMILIES['embodied'].map_observations  # the map crop beside the camera
        self.chooses_options = info.chooses_options  # among its mission's options; the skills then act
        if self.chooses_options and not (self.reads_map and action_set == 'miniworld'):
            raise ValueError(f'{policy.path} chooses among the teacher\'s options (explore, go to ...), which the '
                             f'skills carry out on the robot\'s map with the embodied actions: set observation to '
                             f'rgbd_map (it reads map, odom, /tf and targets) and action_set to miniworld')
        encoder = FAMILIES['embodied'].encoder_of(observation)
        if info.encoder != encoder or len(info.obs_shape) != 3 or info.obs_shape[2] != channels:
            raise ValueError(f'{policy.path} takes observations of shape {tuple(info.obs_shape)} ({info.encoder} '
                             f'encoder, task {info.task or "unknown"}), but this node gives {observation!r} camera '
                             f'images with {channels} channels: set observation to what the policy was trained on')
        if not self.chooses_options and info.num_actions != len(MOTIONS[action_set]):
            raise ValueError(f'{policy.path} chooses among {info.num_actions} actions, but action set '
                             f'{action_set!r} has {len(MOTIONS[action_set])}: set action_set to the one it was '
                             f'trained with ({", ".join(f"{k}: {len(v)}" for k, v in MOTIONS.items())})')
        self.max_invalid_depth = checked_number('max_invalid_depth', max_invalid_depth, 0.0, 1.0, low_inclusive=True)
        self.policy, self.observation, self.action_set, self.greedy = policy, observation, action_set, greedy
        self.size = tuple(info.obs_shape[:2])
        self.moves_base = motion_mask(action_set, len(MOTIONS[action_set]))
        self.mask = (self.moves_base if motion_only and not self.chooses_options
                     else np.ones(info.num_actions, bool))
        self.skills = EmbodiedSkills(self.commands.motion['turn_angle'])
        if int(option_hold) != option_hold or option_hold < 1:
            raise ValueError(f'option_hold must be a whole number of frames >= 1, got {option_hold!r}')
        self.option_hold, self.frames_acted, self.held_option = int(option_hold), 0, 0
        self.generator = torch.Generator().manual_seed(seed)
        self.memory = BatchStates(policy)  # a recurrent policy's memory of this episode
        self.mission: str | None = None  # what the robot is asked to do (a policy that reads it)
        self._mission_tokens: torch.Tensor | None = None

    def set_mission(self, text: str) -> bool:
        """Take a mission; one other than the one before starts a new episode (the memory of a
        recurrent policy is reset). False when nothing changed.

        :raises ValueError: for a policy that reads the mission, one with no words or with words it
            never learnt (named); the robot then has no mission (it stays stopped) until a readable one comes.
        """
        if text == self.mission:
            return False
        self.clear_mission()
        if self.chooses_options:
            self._check_options(text)
        if self.policy.reads_mission:
            self._mission_tokens = self.policy.encode_missions([text])
        self.mission = text
        self.reset()
        return True

    def _check_options(self, mission: str) -> None:
        """:raises ValueError: a mission the skills cannot carry out on a base, or whose options are
        not as many as the policy chooses among."""
        if mission_roles(mission)[0] is not None:
            raise ValueError(f'the mission {mission[:200]!r} moves an object: a base driven by cmd_vel cannot pick '
                             f'it up; an option-level robot runs missions to go to one object')
        named_target(mission)
        if len(mission_options(mission)) != self.policy.info.num_actions:
            raise ValueError(f'the mission {mission[:200]!r} has {len(mission_options(mission))} options, but '
                             f'{self.policy.path} chooses among {self.policy.info.num_actions}')

    @property
    def waiting_for_mission(self) -> bool:
        """The robot must not move: the policy reads the mission, or chooses among its options, and
        has none it can use."""
        return (self.policy.reads_mission and self._mission_tokens is None
                or self.chooses_options and self.mission is None)

    def clear_mission(self) -> None:
        self.mission, self._mission_tokens = None, None

    def reset(self) -> None:
        """Forget what this episode saw (a recurrent policy): a new mission, the robot was moved,
        or the sensors went stale, so what it remembers no longer holds."""
        self.memory.reset()
        self.frames_acted = 0  # (an option-level policy chooses afresh)

    def observe(self, pair: FramePair, crop: np.ndarray | None = None) -> np.ndarray:
        """The (H, W, C) uint8 observation of a frame pair, resized to the policy's input (with the
        map crop at the frames' stamp beside it, MapInput.view, for a policy that reads the map).

        :raises ValueError: unusable frames, (observation 'rgbd') more than max_invalid_depth of the
            depth image invalid: too little is known of what is ahead to drive; no map crop.
        """
        if self.reads_map:
            if crop is None:
                raise ValueError('this policy reads the map crop beside the camera: give MapInput.view\'s crop')
            return np.concatenate([self._camera(pair), crop], axis=-1)
        return self._camera(pair)

    def _camera(self, pair: FramePair) -> np.ndarray:
        if self.observation != 'rgb' and pair.depth is not None:
            invalid = invalid_depth_fraction(pair.depth)
            if invalid > self.max_invalid_depth:
                raise ValueError(f'{invalid:.0%} of the depth image is invalid (NaN, inf or <= 0; '
                                 f'max_invalid_depth {self.max_invalid_depth:g}): is the depth camera blinded?')
        return camera_observation(pair.rgb, pair.depth, self.observation, self.size)

    def act(self, obs: np.ndarray, perception: Perception | None = None) -> tuple[int, np.ndarray]:
        """(action, probabilities over all actions) for one observation; the state moves on. A
        policy that chooses options: (the motion the chosen option's skill takes in `perception`,
        probabilities over the mission's options).

        :raises FloatingPointError: the policy gave non-finite logits or state (the caller stops the
            robot; the state is kept as it was).
        :raises ValueError: the policy reads the mission and none (or none it could read) came; an
            option's skill asks for what a base cannot do (the state is kept as it was).
        """
        if self.waiting_for_mission:
            raise ValueError('no mission yet: this policy needs one (std_msgs/String on the mission topic, '
                             'e.g. "go to the red ball") before it moves')
        logits, state = self.policy.step(obs[None], self.memory.before(0, 0, None, np.zeros(1, bool)),
                                         self._mission_tokens)
        actions, probs = checked_actions(logits, self.mask, self.greedy, self.generator)
        action = int(actions[0])
        if self.chooses_options:
            if perception is None:
                raise ValueError('a policy that chooses options needs the robot\'s perception for its skills '
                                 '(MapInput.view)')
            held = action if self.frames_acted % self.option_hold == 0 else self.held_option
            option = mission_options(self.mission)[held]
            motion = self.skills.motion(option, perception)
            if not self.moves_base[motion]:
                raise ValueError(f'the skill of {option.text!r} asks for action {motion}, which does not move a base')
            self.held_option, action = held, motion
        self.memory.after(0, state)
        self.frames_acted += 1
        return action, probs[0]

    def velocity(self, action: int) -> tuple[float, float]:
        """(linear.x, angular.z) that carry out `action` in one control period, within the limits."""
        return self.commands.velocity(action)
