"""Property-based fuzzing (Hypothesis) of every subscription of every node, through DDS, into the
running node processes (issue 33): random and adversarial field values (sizes, stamps, encodings,
NaN/inf, huge declared dimensions with short data, empty arrays, non-unit quaternions, unknown
frames). Each node stays alive and answers its parameter service after the fuzz, its memory stays
bounded, and a deploy node's last cmd_vel is a zero Twist; a node the harness can give a valid set
of inputs (a map policy's) acts on one after the fuzz, and gets one beside many fuzzed messages,
so those reach its policy. Deterministic: Hypothesis is derandomized (a fixed seed per strategy), and
the sender waits for the node to take each few messages (a parameter-service round trip) before
sending more, so what the node receives does not depend on this machine's speed.

benchmarks/fuzz_nodes.py runs the same harness long (10,000 messages per subscription).
"""
from __future__ import annotations

import math
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import Point, Pose, PoseArray, Quaternion, TransformStamped, Twist
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from llm_teacher_msgs.msg import ActionBatch, PerceptionBatch, StepBatch, SuggestionBatch, TeacherStatus, TrainingStatus
from nav_msgs.msg import OccupancyGrid, Odometry
from rcl_interfaces.srv import ListParameters
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from ros_helpers import spin_until
from sensor_msgs.msg import Image
from std_msgs.msg import Header, Int32, String
from tf2_msgs.msg import TFMessage

from habitat_bridge.embodied import sensors
from habitat_bridge.embodied.types import Pose as RobotPose
from llm_teacher_common.launch_runner import executable_path
from llm_teacher_common.messages import occupancy_grid_msg, rgb_image_msg
from llm_teacher_common.perception import OccupancyGrid as Grid
from student_policy.checkpoints import export_policy
from student_policy.networks import ActorCritic

CI_EXAMPLES = 150  # per subscription; the benchmark sends 10,000
PING_EVERY = 4  # messages between two round trips to the node: below every subscription's queue depth (5)
RSS_GROWTH_MB = 300  # what a node may grow by during a fuzz (a learner's first rollout storage included)
GRID_SHAPE, CAMERA_SHAPE, MAP_SHAPE = (10, 10, 4), (64, 64, 4), (32, 32, 8)  # MAP_SHAPE: rgbd + the map crop
# The map entry's frames: not robot_sim_node's map and odom, whose /tf reaches every node of the test.
MAP_FRAME, ODOM_FRAME = 'fuzz_map', 'fuzz_odom'

# --- strategies: one per message type, adversarial values mixed with values deep enough to pass
# the first checks (stamps near the node's clock, sizes that match their data).

INT32, UINT32, UINT64 = (st.integers(-2 ** 31, 2 ** 31 - 1), st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 64 - 1))
SMALL = st.integers(0, 12)
FLOAT32 = st.floats(width=32)  # NaN, +-inf, subnormals, +-3.4e38 included
FLOAT64 = st.floats()
TEXT = st.one_of(st.text(max_size=24), st.sampled_from(['', 'rgb8', 'bgr8', 'rgba8', '32FC1', '16UC1', 'memory_map',
                                                        'gridworld', 'embodied', 'key', 'door', 'yellow', 'locked']))
COUNT = st.one_of(SMALL, UINT32)  # a sane count, or a huge declared one


@dataclass
class Stamp:
    """A header stamp: `offset_s` from the node's clock when sent (None: the raw sec/nanosec)."""
    offset_s: float | None = None
    sec: int = 0
    nanosec: int = 0


STAMPS = st.one_of(st.builds(Stamp, offset_s=st.one_of(st.just(0.0), st.floats(-2.0, 2.0))),
                   st.builds(Stamp, sec=INT32, nanosec=UINT32))


@dataclass
class Fuzzed:
    """A message to send and the stamp to give it; `partner`: a valid image with the same stamp
    for the other camera topic (so fuzzed frames also reach the pairing and the policy)."""
    message: object
    stamp: Stamp
    partner: bool = False
    kind: str = ''


def byte_data(size_hint: int):
    """Data exactly `size_hint` long (deep enough to pass size checks; random bytes from a drawn
    seed, as Hypothesis's own buffer is a few kB), or short, or empty."""
    exact = st.integers(0, 2 ** 32 - 1).map(lambda seed: np.random.default_rng(seed).bytes(size_hint)) \
        if size_hint <= 200_000 else st.just(b'')
    return st.one_of(exact, st.binary(max_size=64))


@st.composite
def images(draw):
    encoding = draw(st.one_of(st.sampled_from(['rgb8', 'bgr8', 'rgba8', 'bgra8', '32FC1', '16UC1']), TEXT))
    height, width = draw(COUNT), draw(COUNT)
    sizes = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, '32FC1': 4, '16UC1': 2}
    row = width * sizes.get(encoding, 1)
    step = draw(st.one_of(st.just(row), UINT32)) if row < 2 ** 32 else draw(UINT32)
    if encoding == '32FC1' and draw(st.booleans()) and 0 < height * width <= 50_000 and step == row:
        depth = np.asarray(draw(st.lists(FLOAT32, min_size=1, max_size=8)), np.float32)
        data = np.resize(depth, height * width).tobytes()  # NaN, inf, <= 0 depth
    else:
        data = draw(byte_data(step * height))
    msg = Image(height=height, width=width, encoding=encoding, step=step, data=data,
                is_bigendian=draw(st.integers(0, 255)))
    msg.header.frame_id = draw(TEXT)
    return Fuzzed(msg, draw(STAMPS), draw(st.booleans()), f'Image {"ok-size" if len(data) >= step * height else "short"}')


@st.composite
def step_batches(draw, shape=GRID_SHAPE):
    n = draw(st.one_of(st.integers(0, 4), UINT32))
    obs_shape = draw(st.one_of(st.just(list(shape)), st.just(list(CAMERA_SHAPE)), st.lists(COUNT, max_size=5)))
    size = n * math.prod(obs_shape) if obs_shape else n
    per_env = st.integers(0, 6) if n > 6 else st.just(n)
    msg = StepBatch(seq=draw(UINT64), epoch=draw(st.one_of(st.just(0), UINT64)), num_envs=n,
                    num_actions=draw(st.one_of(st.just(7), COUNT)), group=draw(st.one_of(st.just(0), COUNT)),
                    num_groups=draw(st.one_of(st.just(1), COUNT)), obs_shape=obs_shape, obs_encoding=draw(TEXT),
                    observations=draw(byte_data(size)))
    msg.rewards = draw(st.lists(FLOAT32, min_size=draw(per_env), max_size=6))
    msg.terminated = draw(st.lists(st.booleans(), min_size=draw(per_env), max_size=6))
    msg.truncated = draw(st.lists(st.booleans(), min_size=draw(per_env), max_size=6))
    msg.success = draw(st.lists(st.booleans(), min_size=draw(per_env), max_size=6))
    msg.episode_ids = draw(st.lists(UINT64, min_size=draw(per_env), max_size=6))
    exact = len(msg.observations) == size and n <= 6
    return Fuzzed(msg, draw(STAMPS), kind=f'StepBatch {"ok-size" if exact else "bad-size"}')


@st.composite
def action_batches(draw):
    msg = ActionBatch(seq=draw(st.one_of(SMALL, UINT64)), epoch=draw(UINT64), group=draw(st.one_of(SMALL, UINT32)),
                      actions=draw(st.lists(st.one_of(st.integers(-1, 8), INT32), max_size=20)),
                      action_probs=draw(st.lists(FLOAT32, max_size=20)))
    return Fuzzed(msg, draw(STAMPS), kind='ActionBatch')


@st.composite
def suggestion_batches(draw):
    """Parallel arrays for n environments of num_actions actions and m options, each of that length
    or of another; half the batches' action_probs rows are distributions (deep enough to attach)."""
    n, m = draw(st.integers(0, 6)), draw(st.integers(0, 8))
    num_actions = draw(st.one_of(st.just(7), st.integers(0, 9), UINT32))

    def array(elements, size: int) -> list:
        return draw(st.one_of(st.lists(elements, min_size=size, max_size=size), st.lists(elements, max_size=8)))

    if num_actions == 7 and draw(st.booleans()):
        action_probs = np.random.default_rng(draw(UINT32)).dirichlet(np.ones(7), n).ravel().tolist()
    else:
        action_probs = array(FLOAT32, n * num_actions if n * num_actions <= 64 else 0)
    msg = SuggestionBatch(seq=draw(st.one_of(SMALL, UINT64)), epoch=draw(st.one_of(st.just(0), UINT64)),
                          group=draw(st.one_of(st.just(0), UINT32)), source=draw(TEXT), num_actions=num_actions,
                          valid=array(st.booleans(), n), action_probs=action_probs, cache_hit=array(st.booleans(), n),
                          latency_ms=array(FLOAT32, n), option_env=array(st.one_of(st.integers(0, n), UINT32), m),
                          options=array(TEXT, m), option_probs=array(FLOAT32, m))
    fits = len(msg.valid) == len(msg.cache_hit) == len(msg.latency_ms) == n and len(action_probs) == n * num_actions
    return Fuzzed(msg, draw(STAMPS), kind=f'SuggestionBatch {"ok-size" if fits else "bad-size"}')


@st.composite
def occupancy_grids(draw):
    width, height = draw(COUNT), draw(COUNT)
    msg = OccupancyGrid()
    msg.info.width, msg.info.height, msg.info.resolution = width, height, draw(FLOAT32)
    msg.info.origin.position.x, msg.info.origin.position.y = draw(FLOAT64), draw(FLOAT64)
    msg.data = draw(st.one_of(st.lists(st.integers(-128, 127), min_size=width * height, max_size=width * height)
                              if width * height <= 400 else st.just([]), st.lists(st.integers(-128, 127), max_size=16)))
    return msg


@st.composite
def perception_batches(draw):
    """Parallel arrays for n environments and m objects, each of that length or of another."""
    n, m = draw(st.integers(0, 4)), draw(st.integers(0, 6))

    def array(elements, size: int) -> list:
        return draw(st.one_of(st.lists(elements, min_size=size, max_size=size), st.lists(elements, max_size=6)))

    msg = PerceptionBatch(
        seq=draw(st.one_of(SMALL, UINT64)), epoch=draw(st.one_of(st.just(0), UINT64)), task_family=draw(TEXT),
        pose_x=array(FLOAT64, n), pose_y=array(FLOAT64, n), pose_theta=array(FLOAT64, n),
        carrying_type=array(TEXT, n), carrying_color=array(TEXT, n),
        object_env=array(st.one_of(st.integers(0, n), UINT32), m), object_type=array(TEXT, m),
        object_color=array(TEXT, m), object_state=array(TEXT, m), object_forward=array(FLOAT64, m),
        object_left=array(FLOAT64, m), object_grid_x=array(INT32, m), object_grid_y=array(INT32, m),
        object_visible=array(st.booleans(), m), maps=draw(st.lists(occupancy_grids(), max_size=3)))
    return Fuzzed(msg, draw(STAMPS), kind='PerceptionBatch')


@st.composite
def training_statuses(draw):
    msg = TrainingStatus(frames=draw(UINT64), updates=draw(UINT64), episodes=draw(UINT64),
                         sim_restarts=draw(UINT32), rejected_step_batches=draw(UINT32))
    for name in ('fps', 'mean_return', 'success_rate', 'teacher_weight', 'teacher_coverage', 'policy_loss',
                 'value_loss', 'entropy', 'distill_loss'):
        setattr(msg, name, draw(FLOAT32))
    return Fuzzed(msg, draw(STAMPS), kind='TrainingStatus')


@st.composite
def teacher_statuses(draw):
    msg = TeacherStatus(source=draw(TEXT), requests=draw(UINT64), cache_hits=draw(UINT64), llm_calls=draw(UINT64),
                        llm_errors=draw(UINT64), parse_failures=draw(UINT64), pending=draw(UINT32),
                        mean_latency_ms=draw(FLOAT32))
    return Fuzzed(msg, draw(STAMPS), kind='TeacherStatus')


@st.composite
def twists(draw):
    msg = Twist()
    for part in (msg.linear, msg.angular):
        part.x, part.y, part.z = draw(FLOAT64), draw(FLOAT64), draw(FLOAT64)
    return Fuzzed(msg, Stamp(), kind='Twist')


def strings():
    missions = st.sampled_from(['go to the red ball', 'go to the', 'go to the green key', '42', ' ', 'GO TO THE RED BALL!'])
    return st.builds(lambda v: Fuzzed(String(data=v), Stamp(), kind='String'), st.one_of(missions, TEXT))


def int32s():
    return st.builds(lambda v: Fuzzed(Int32(data=v), Stamp(), kind='Int32'), st.one_of(st.integers(-2, 9), INT32))


# A map policy's inputs. Half of them are deep: in the frame the node expects, stamped now, with a
# unit (or nearly unit) quaternion, so that their values (positions near the map or absurd, cells,
# resolutions) reach the map crop and the policy; the other half may be anything.
FRAME_IDS = st.one_of(st.sampled_from([MAP_FRAME, ODOM_FRAME, 'map', 'odom', 'base_link', '']), TEXT)
METRES = st.one_of(st.floats(-10.0, 10.0), FLOAT64)


@st.composite
def quaternions(draw, deep: bool = False) -> Quaternion:
    kind = draw(st.sampled_from(['yaw', 'scaled'] if deep else ['yaw', 'scaled', 'any']))
    if kind == 'yaw':
        return sensors.yaw_quaternion(draw(st.floats(-4.0, 4.0)))
    if kind == 'scaled':  # a yaw quaternion a little too long or short (or zero): round the 1% tolerance
        q = sensors.yaw_quaternion(draw(st.floats(-4.0, 4.0)))
        scale = draw(st.sampled_from([0.0, 0.99, 0.995, 1.004, 1.006, 1.01]))
        return Quaternion(z=q.z * scale, w=q.w * scale)
    return Quaternion(x=draw(FLOAT64), y=draw(FLOAT64), z=draw(FLOAT64), w=draw(FLOAT64))


def frame_and_stamp(draw, deep: bool, frame: str) -> tuple[str, Stamp]:
    return (frame, Stamp(0.0)) if deep else (draw(FRAME_IDS), draw(STAMPS))


@st.composite
def maps(draw):
    """A mapper's grid: REP-149 cells (-1, 0..100) or any int8, exactly width x height of them or
    not, resolutions a map has or NaN, inf, 0, negative, subnormal."""
    deep = draw(st.booleans())
    frame, stamp = frame_and_stamp(draw, deep, MAP_FRAME)
    size = st.integers(1, 20) if deep else COUNT
    width, height = draw(size), draw(size)
    cells = st.sampled_from([-1, 0, 25, 50, 65, 100]) if deep else st.integers(-128, 127)
    exact = st.lists(cells, min_size=width * height, max_size=width * height) if width * height <= 400 else st.just([])
    data = draw(exact if deep else st.one_of(exact, st.lists(cells, max_size=16)))
    msg = OccupancyGrid(header=Header(frame_id=frame), data=data)
    msg.info.width, msg.info.height = width, height
    msg.info.resolution = draw(st.one_of(st.sampled_from([0.02, 0.05, 0.25, 1.0, 1e6]), FLOAT32))
    msg.info.origin.position.x, msg.info.origin.position.y = draw(METRES), draw(METRES)
    msg.info.origin.orientation = draw(quaternions(deep))
    return Fuzzed(msg, stamp, draw(st.booleans()),
                  f'OccupancyGrid {"ok-size" if len(data) == width * height else "bad-size"}')


@st.composite
def odometries(draw):
    deep = draw(st.booleans())
    frame, stamp = frame_and_stamp(draw, deep, ODOM_FRAME)
    msg = Odometry(header=Header(frame_id=frame), child_frame_id=draw(FRAME_IDS))
    position = msg.pose.pose.position
    position.x, position.y, position.z = draw(METRES), draw(METRES), draw(METRES)
    msg.pose.pose.orientation = draw(quaternions(deep))
    msg.twist.twist.linear.x, msg.twist.twist.angular.z = draw(FLOAT64), draw(FLOAT64)
    return Fuzzed(msg, stamp, draw(st.booleans()), f'Odometry {"deep" if deep else "any"}')


@st.composite
def transforms(draw, deep: bool) -> TransformStamped:
    parent, child = (MAP_FRAME, ODOM_FRAME) if deep else (draw(FRAME_IDS), draw(FRAME_IDS))
    out = TransformStamped(header=Header(frame_id=parent), child_frame_id=child)
    translation = out.transform.translation
    translation.x, translation.y, translation.z = draw(METRES), draw(METRES), draw(METRES)
    out.transform.rotation = draw(quaternions(deep))
    return out


@st.composite
def tf_messages(draw):
    """A few transforms, or a flood of edges (more than MapInput keeps) under new frame names."""
    deep, flood = draw(st.booleans()), not draw(st.integers(0, 9))
    if flood:
        seed = draw(st.integers(0, 2 ** 16))
        edges = [sensors._transform(f'flood_{seed}_{i}', ODOM_FRAME, Time().to_msg()) for i in range(80)]
    else:
        edges = draw(st.lists(transforms(deep), max_size=4))
    return Fuzzed(TFMessage(transforms=edges), Stamp(0.0) if deep else draw(STAMPS), draw(st.booleans()),
                  f'TFMessage {"flood" if flood else "deep" if deep else "any"}')


@st.composite
def pose_arrays(draw):
    deep = draw(st.booleans())
    frame, stamp = frame_and_stamp(draw, deep, MAP_FRAME)
    points = draw(st.lists(st.tuples(METRES, METRES), max_size=8))
    msg = PoseArray(header=Header(frame_id=frame), poses=[Pose(position=Point(x=x, y=y)) for x, y in points])
    return Fuzzed(msg, stamp, draw(st.booleans()), f'PoseArray {"deep" if deep else "any"}')


def valid_map_inputs(stamp: TimeMsg) -> dict[str, object]:
    """What a map policy acts on, all stamped `stamp`, by topic: a walled map, the base in odometry
    behind a map -> odom correction, one target ahead, a black frame 1 m from a wall."""
    cells = np.zeros((20, 20), np.int8)
    cells[[0, -1], :] = cells[:, [0, -1]] = 100
    map_msg = occupancy_grid_msg(Grid(cells, (-2.5, -2.5), 0.25))
    map_msg.header = Header(stamp=stamp, frame_id=MAP_FRAME)
    odom = sensors.odometry_msg(RobotPose(0.5, 0.0, 0.3), (0.0, 0.0), stamp)
    odom.header.frame_id = ODOM_FRAME
    correction = sensors._transform(MAP_FRAME, ODOM_FRAME, stamp, (0.2, -0.1, 0.0), sensors.yaw_quaternion(0.1))
    targets = PoseArray(header=Header(stamp=stamp, frame_id=MAP_FRAME), poses=[Pose(position=Point(x=1.5, y=0.5))])
    return {'map': map_msg, '/tf': TFMessage(transforms=[correction]), 'targets': targets, 'odom': odom,
            'camera/image_raw': rgb_image_msg(np.zeros((48, 64, 3), np.uint8), stamp, 'camera'),
            'camera/depth/image_raw': sensors.depth_image_msg(np.ones((48, 64), np.float32), stamp)}


STRATEGIES = {Image: images, StepBatch: step_batches, ActionBatch: action_batches, SuggestionBatch: suggestion_batches,
              PerceptionBatch: perception_batches, TrainingStatus: training_statuses, TeacherStatus: teacher_statuses,
              Twist: twists, Int32: int32s, String: strings, OccupancyGrid: maps, Odometry: odometries,
              TFMessage: tf_messages, PoseArray: pose_arrays}
RECORDED = {'step_batch': StepBatch, 'action_batch': ActionBatch, 'perception_batch': PerceptionBatch,
            'suggestion_batch': SuggestionBatch, 'training_status': TrainingStatus, 'teacher_status': TeacherStatus,
            'image': Image}


def camera_mission_policy() -> ActorCritic:
    policy = ActorCritic(CAMERA_SHAPE, 8, encoder='image', mission=True)  # its missions are fuzzed too
    policy.encode_missions(['go to the red ball'], grow=True)
    return policy


@dataclass
class NodeUnderFuzz:
    """A node of the project as `ros2 run` starts it, in its own namespace, and what it subscribes to."""
    name: str  # of this entry (its namespace); the executable's unless `executable` is given
    package: str
    subscriptions: dict  # topic -> message class
    params: dict = field(default_factory=dict)
    deploy: bool = False  # commands motion: its last cmd_vel must be a zero Twist
    policy: Callable[[], ActorCritic] | None = None  # exported to runs/train/policy.pt in its working directory
    executable: str = ''
    valid_inputs: Callable[[TimeMsg], dict] | None = None  # stamp -> a valid message per topic: it must act on them
    queue_depths: dict = field(default_factory=dict)  # topic -> its subscription's depth, where below PING_EVERY

    @property
    def namespace(self) -> str:
        return f'/fuzz_{self.name}'

    @property
    def program(self) -> str:
        """The executable, which is also the ROS node's name."""
        return self.executable or self.name


NODES = [
    NodeUnderFuzz('robot_policy_node', 'student_deploy',
                  {'camera/image_raw': Image, 'camera/depth/image_raw': Image, 'mission': String},
                  {'control_rate_hz': 20.0, 'max_sensor_age': 0.3}, deploy=True, policy=camera_mission_policy),
    # A map policy: the subscriptions robot_policy_node makes only for one (the camera's are fuzzed above).
    NodeUnderFuzz('robot_policy_node_map', 'student_deploy',
                  {'map': OccupancyGrid, 'odom': Odometry, '/tf': TFMessage, '/tf_static': TFMessage,
                   'targets': PoseArray},
                  {'observation': 'rgbd_map', 'control_rate_hz': 100.0, 'max_sensor_age': 0.5}, deploy=True,
                  policy=lambda: ActorCritic(MAP_SHAPE, 8, encoder='image_map'),
                  executable='robot_policy_node', valid_inputs=valid_map_inputs, queue_depths={'map': 1}),
    NodeUnderFuzz('policy_node', 'student_deploy', {'step_batch': StepBatch},
                  {'step_duration': 0.1, 'max_sensor_age': 0.3}, deploy=True,
                  policy=lambda: ActorCritic(GRID_SHAPE, 7, encoder='grid')),
    NodeUnderFuzz('student_node', 'student_policy',
                  {'step_batch': StepBatch, 'suggestion_batch': SuggestionBatch, 'teacher_status': TeacherStatus},
                  {'num_steps': 8, 'minibatch_size': 8, 'eval_every': 10 ** 6, 'checkpoint_every': 10 ** 6}),
    NodeUnderFuzz('teacher_node', 'llm_teacher', {'step_batch': StepBatch, 'perception_batch': PerceptionBatch},
                  {'backend': 'openai', 'base_url': 'http://127.0.0.1:9', 'timeout_s': 1.0}),  # no server: no LLM load
    NodeUnderFuzz('batch_sim_node', 'habitat_bridge', {'action_batch': ActionBatch}, {'num_envs': 2, 'render_hz': 0.0}),
    NodeUnderFuzz('robot_sim_node', 'habitat_bridge', {'action': Int32, 'cmd_vel': Twist}, {'env': 'MiniWorld-GoToObject-v0'}),
    NodeUnderFuzz('recorder_node', 'llm_teacher', dict(RECORDED), {'step_every': 1, 'perceptions': True}),
    NodeUnderFuzz('visualization_node', 'llm_teacher',
                  {'suggestion_batch': SuggestionBatch, 'action_batch': ActionBatch, 'image': Image,
                   'training_status': TrainingStatus, 'teacher_status': TeacherStatus}, {'foxglove_port': 0}),
]


def rss_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def param_args(params: dict) -> list[str]:
    out = []
    for key, value in params.items():
        out += ['-p', f'{key}:={str(value).lower() if isinstance(value, bool) else value}']
    return out


def start_nodes(nodes: list[NodeUnderFuzz], workdir: Path) -> dict[str, tuple[subprocess.Popen, Path]]:
    """Every node as a process in `workdir`/<name> (where the deploy nodes find runs/train/policy.pt
    and the others write their runs); logs to files, never a pipe a busy node could fill."""
    started = {}
    for node in nodes:
        cwd = workdir / node.name
        (cwd / 'runs' / 'train').mkdir(parents=True, exist_ok=True)
        if node.policy is not None:
            export_policy(cwd / 'runs' / 'train' / 'policy.pt', node.policy())
        params = {**node.params, 'run_dir': str(cwd / 'runs' / 'train')} if node.name in ('student_node', 'recorder_node') \
            else dict(node.params)
        if node.name == 'teacher_node':
            params['cache_path'] = str(cwd / 'answers.sqlite')
        log = open(cwd / 'node.log', 'w')
        process = subprocess.Popen([executable_path(node.package, node.program), '--ros-args', '-r',
                                    f'__ns:={node.namespace}', *param_args(params)],
                                   cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'})
        log.close()
        started[node.name] = (process, cwd / 'node.log')
    return started


def stop_nodes(started: dict) -> None:
    for process, _ in started.values():
        if process.poll() is None:
            process.send_signal(2)
    for process, _ in started.values():
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class FuzzReport:
    node: str
    sent: Counter = field(default_factory=Counter)  # (topic, kind) -> messages
    died: str = ''  # the node's last log lines, when it died or stopped answering
    rss_mb: tuple[float, float] = (0.0, 0.0)  # before, after
    twists: int = 0
    non_finite_twists: int = 0
    last_twist_zero: bool | None = None
    actions: int = 0  # policy_action messages seen (nodes given valid inputs): the fuzz reached the policy
    not_acting: str = ''  # why, with the node's last log lines, when it did not act on valid inputs after the fuzz


class Fuzzer:
    """Sends Hypothesis-generated messages to one running node's subscriptions."""

    def __init__(self, ros_node, node: NodeUnderFuzz, process: subprocess.Popen, log: Path):
        self.ros, self.node, self.process, self.log = ros_node, node, process, log
        self.report = FuzzReport(node.name)
        # Transient local: what latched subscriptions (a map, /tf_static) take, and volatile ones accept.
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        kinds = {topic: type(msg) for topic, msg in node.valid_inputs(Time().to_msg()).items()} \
            if node.valid_inputs else {}
        kinds.update(node.subscriptions)
        self.publishers = {topic: ros_node.create_publisher(kind, topic if topic.startswith('/') else
                                                            f'{node.namespace}/{topic}', qos)
                           for topic, kind in kinds.items()}
        self.ping_client = ros_node.create_client(ListParameters, f'{node.namespace}/{node.program}/list_parameters')
        self.twists: list[Twist] = []
        if node.deploy:
            ros_node.create_subscription(Twist, f'{node.namespace}/cmd_vel', self.twists.append, 1000)
        self.actions: list[ActionBatch] = []
        if node.valid_inputs:
            ros_node.create_subscription(ActionBatch, f'{node.namespace}/policy_action', self.actions.append, 1000)

    def tail(self, lines: int = 40) -> str:
        return '\n'.join(self.log.read_text(errors='replace').splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def ping(self, timeout: float = 30.0) -> bool:
        """A parameter-service round trip: the node has taken what was sent before (its one thread
        answers services and subscriptions in turn), and is not stuck. False (and `report.died`
        says why) when it died or stopped answering."""
        future = self.ping_client.call_async(ListParameters.Request())
        try:
            spin_until(self.ros, lambda: future.done() or not self.alive(), timeout, f'{self.node.name} answering')
        except TimeoutError:
            self.report.died = f'{self.node.name} stopped answering (stuck on a message?):\n{self.tail()}'
            return False
        if not self.alive():
            self.report.died = f'{self.node.name} died (exit {self.process.returncode}):\n{self.tail()}'
            return False
        return True

    def wait_ready(self, timeout: float = 180.0) -> None:
        spin_until(self.ros, lambda: (self.ping_client.service_is_ready() and all(
            p.get_subscription_count() for p in self.publishers.values())) or not self.alive(), timeout,
            f'{self.node.name} up and subscribed')
        assert self.ping(), self.report.died

    def send(self, topic: str, fuzzed: Fuzzed) -> None:
        msg = fuzzed.message
        for header in [msg.header] if hasattr(msg, 'header') else [t.header for t in getattr(msg, 'transforms', ())]:
            if fuzzed.stamp.offset_s is not None:
                now = self.ros.get_clock().now().nanoseconds
                header.stamp = Time(nanoseconds=max(0, now + int(fuzzed.stamp.offset_s * 1e9))).to_msg()
            else:
                header.stamp.sec, header.stamp.nanosec = fuzzed.stamp.sec, fuzzed.stamp.nanosec
        self.publishers[topic].publish(msg)
        if fuzzed.partner and self.node.valid_inputs:  # the rest of a valid set, so the fuzzed one is acted on
            self.send_valid(skip={topic, '/tf', '/tf_static'} if topic.startswith('/tf') else {topic})
        elif fuzzed.partner and topic.startswith('camera/'):
            other = 'camera/depth/image_raw' if topic == 'camera/image_raw' else 'camera/image_raw'
            depth = other.startswith('camera/depth')
            data = np.ones((48, 64), np.float32).tobytes() if depth else bytes(48 * 64 * 3)  # 1 m away, black
            partner = Image(header=msg.header, height=48, width=64, encoding='32FC1' if depth else 'rgb8',
                            step=256 if depth else 192, data=data)
            self.publishers[other].publish(partner)
        self.report.sent[(topic, fuzzed.kind)] += 1

    def send_valid(self, skip: set[str] = frozenset()) -> TimeMsg:
        """A valid set of inputs stamped now (but those on the topics in `skip`); its stamp."""
        stamp = self.ros.get_clock().now().to_msg()
        for topic, msg in self.node.valid_inputs(stamp).items():
            if topic not in skip:
                self.publishers[topic].publish(msg)
        return stamp

    def acts_on_valid_inputs(self, tries: int = 10) -> bool:
        """The node acts (an action stamped as the frames) on a valid set of inputs; sent again
        while it does not, as a best-effort frame may be lost or reach it after max_sensor_age."""
        for _ in range(tries):
            stamp = self.send_valid()
            try:
                spin_until(self.ros, lambda: any(a.header.stamp == stamp for a in self.actions) or not self.alive(),
                           1.0, f'{self.node.name} acting')
            except TimeoutError:
                continue
            return self.alive()
        return False

    def fuzz(self, topic: str, examples: int) -> None:
        strategy = STRATEGIES[self.node.subscriptions[topic]]()
        count = [0]

        @settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def one(fuzzed):
            if self.report.died:
                return  # nothing more to learn; Hypothesis just runs out its examples
            self.send(topic, fuzzed)
            count[0] += 1
            if count[0] % min(PING_EVERY, self.node.queue_depths.get(topic, PING_EVERY)) == 0 or \
                    fuzzed.partner and self.node.valid_inputs:  # each valid set is taken before the next comes
                self.ping()

        one()
        if not self.report.died:
            self.ping()

    def run(self, examples: int) -> FuzzReport:
        self.wait_ready()
        before = rss_mb(self.process.pid)
        for topic in self.node.subscriptions:
            if not self.report.died:
                self.fuzz(topic, examples)
        if self.alive():
            self.report.rss_mb = (before, rss_mb(self.process.pid))
        self.report.actions = len(self.actions)
        if self.node.valid_inputs and not self.report.died and not self.acts_on_valid_inputs():
            self.report.not_acting = f'{self.node.name} did not act on valid inputs after the fuzz:\n{self.tail()}'
        if self.node.deploy and self.alive():
            # After the fuzz nothing new is sent, but a fresh valid message still in flight (DDS
            # redelivers) may move the robot once more; within max_sensor_age + one period the
            # watchdog must stop it again: the last word, a second after it first stopped, is a zero Twist.
            spin_until(self.ros, lambda: self.twists and self.twists[-1] == Twist(), 10, f'{self.node.name} stopping')
            end = time.monotonic() + 1.0
            spin_until(self.ros, lambda: time.monotonic() > end, 5, 'time to pass')
            self.report.last_twist_zero = self.twists[-1] == Twist()
        self.report.twists = len(self.twists)
        self.report.non_finite_twists = sum(not all(map(math.isfinite, (t.linear.x, t.linear.y, t.linear.z, t.angular.x,
                                                                        t.angular.y, t.angular.z))) for t in self.twists)
        return self.report


def fuzz_nodes(ros_node, nodes, workdir: Path, examples: int) -> list[FuzzReport]:
    started = start_nodes(nodes, workdir)
    try:
        return [Fuzzer(ros_node, node, *started[node.name]).run(examples) for node in nodes]
    finally:
        stop_nodes(started)


# Nodes whose fuzz found a crash that their owner is to fix (issue 33): reason per node.


@pytest.fixture(scope='module')
def reports(tmp_path_factory):
    import rclpy
    context = rclpy.Context()
    rclpy.init(context=context)
    driver = rclpy.create_node('fuzz_driver', context=context)
    try:
        yield {r.node: r for r in fuzz_nodes(driver, NODES, tmp_path_factory.mktemp('fuzz'), CI_EXAMPLES)}
    finally:
        driver.destroy_node()
        rclpy.shutdown(context=context)


@pytest.mark.parametrize('name', [n.name for n in NODES])
def test_fuzzed_messages_do_not_end_the_node(reports, name):
    report = reports[name]
    assert not report.died, report.died
    before, after = report.rss_mb
    assert after - before < RSS_GROWTH_MB, f'{name} grew from {before:.0f} to {after:.0f} MB'
    assert sum(report.sent.values()) >= CI_EXAMPLES * len(next(n for n in NODES if n.name == name).subscriptions)
    if report.last_twist_zero is not None:
        assert report.last_twist_zero and report.non_finite_twists == 0, report
    if next(n for n in NODES if n.name == name).valid_inputs:
        assert not report.not_acting, report.not_acting
        assert report.actions, f'{name}: no fuzzed message reached the policy (no action beside them): {report}'
