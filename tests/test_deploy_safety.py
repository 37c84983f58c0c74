"""A deploy node trusts nothing (issue 33, docs/safety.md): stamps, sizes, encodings, depth readings,
logits and parameters are checked, and the robot stops within max_sensor_age + one control period
of the last good frame whatever arrives after it. Unit checks of student_deploy.robot_control and
the conversions, then the real nodes as processes over DDS."""
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from geometry_msgs.msg import Twist
from llm_teacher_msgs.msg import ActionBatch, StepBatch
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from ros_helpers import spin_until
from sensor_msgs.msg import Image

from llm_teacher_common.camera import DEPTH_STEP_M, FAR, camera_observation, encode_depth
from llm_teacher_common.messages import MAX_IMAGE_PIXELS, depth_from_image, rgb_from_image, rgb_image_msg
from student_policy.checkpoints import export_policy
from student_deploy.inference import load_policy
from student_policy.networks import ActorCritic
from student_deploy.robot_control import (CameraPolicy, FramePair, SensorWatchdog, StampPairer, VelocityCommands,
                                          batch_observations, checked_actions, stamp_ns)

CONFIG = Path(__file__).resolve().parent.parent / 'config'
TASK = 'MiniWorld-GoToObject-v0'
NS = 1_000_000_000


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    torch.manual_seed(3)
    return export_policy(tmp_path_factory.mktemp('safety') / 'policy.pt', ActorCritic((64, 64, 4), 8, encoder='image'), TASK)


@pytest.fixture(scope='module')
def grid_policies(tmp_path_factory):
    """A grid policy, and one whose logits are all NaN (weights set to NaN, as a broken export)."""
    folder = tmp_path_factory.mktemp('grid')
    torch.manual_seed(0)
    good = export_policy(folder / 'policy.pt', ActorCritic((10, 10, 4), 7, encoder='grid'))
    broken = ActorCritic((10, 10, 4), 7, encoder='grid')
    with torch.no_grad():
        for weight in broken.parameters():
            weight.fill_(float('nan'))
    return good, export_policy(folder / 'nan_policy.pt', broken)


def start(module, path, *params, rate=None, namespace=None):
    args = ['--ros-args', '-p', f'policy_path:={path}'] + (['-r', f'__ns:={namespace}'] if namespace else [])
    if rate is not None:
        args += ['-p', f'control_rate_hz:={rate}']
    for param in params:
        args += ['-p', param]
    return subprocess.Popen([sys.executable, '-m', f'student_deploy.{module}', *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stop(process):
    if process.poll() is None:
        process.send_signal(2)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.stdout.read()


def image(height, width, encoding, step, data, sec=1, nanosec=0):
    msg = Image(height=height, width=width, encoding=encoding, step=step, data=data)
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    return msg


# Plain classes: each check that was missing (issue 33), shown on the piece that now makes it.

@pytest.mark.parametrize('make, name', [
    (lambda v: VelocityCommands(max_linear=v), 'max_linear'),
    (lambda v: VelocityCommands(max_angular=v), 'max_angular'),
    (lambda v: VelocityCommands(step_length=v), 'step_length'),
    (lambda v: VelocityCommands(turn_angle=v), 'turn_angle'),
    (lambda v: VelocityCommands(step_duration=v), 'step_duration'),
    (lambda v: SensorWatchdog(v, 0.0), 'max_sensor_age'),
    (lambda v: SensorWatchdog(0.5, v), 'max_clock_skew'),
    (lambda v: StampPairer(v), 'slop'),
])
@pytest.mark.parametrize('value', [float('nan'), float('inf'), -float('inf'), 0.0, -1.0])
def test_parameters_that_are_not_finite_positive_numbers_are_refused(make, name, value):
    if name in ('max_clock_skew', 'slop') and value == 0.0:
        make(value)  # 0 s: exact stamps only, allowed
        return
    with pytest.raises(ValueError, match=rf'{name} must be a finite number in [\[(]'):
        make(value)


def test_the_default_speed_limit_applies(exported):
    """The YAML's limits are below what the simulator's steps ask for at the default rate, so they clip."""
    config = yaml.safe_load((CONFIG / 'robot_policy_node.yaml').read_text())['robot_policy_node']['ros__parameters']
    rate = config['control_rate_hz']
    forward, turn = config['step_length'] * rate, config['turn_angle'] * rate
    assert config['max_linear'] < forward and config['max_angular'] < turn
    controller = CameraPolicy(load_policy(exported), step_duration=1 / rate, max_linear=config['max_linear'],
                              max_angular=config['max_angular'])
    assert controller.velocity(2) == (config['max_linear'], 0.0) and controller.velocity(1) == (0.0, -config['max_angular'])


def test_stamps_in_the_future_negative_or_old_are_refused_and_fresh_ones_bound_the_stop():
    with pytest.raises(ValueError, match='not a valid time'):
        stamp_ns(-1, 0)
    with pytest.raises(ValueError, match='not a valid time'):
        stamp_ns(1, NS)
    watchdog = SensorWatchdog(max_age_s=0.5, max_skew_s=0.05)
    now = 100 * NS
    assert watchdog.stale(now)  # nothing seen yet
    with pytest.raises(ValueError, match='ahead of this node'):
        watchdog.check(now + NS, now)  # a camera clock 1 s ahead
    with pytest.raises(ValueError, match='older than max_sensor_age'):
        watchdog.check(now - NS, now)
    watchdog.check(now + NS // 50, now)  # 20 ms ahead: within the skew allowed
    watchdog.fed(now + NS // 50, now)
    # Fresh from when it arrived, not from its stamp: the stop comes max_sensor_age after arrival.
    assert not watchdog.stale(now + NS // 2) and watchdog.stale(now + NS // 2 + 1)


def test_empty_oversized_short_and_unknown_images_are_refused_with_value_errors():
    for bad, message in [
        (image(0, 0, 'rgb8', 0, b''), 'size must be 1..'),
        (image(10, 0, 'rgb8', 0, b''), 'size must be 1..'),
        (image(4096, 4097, 'rgb8', 3 * 4097, b''), 'size must be 1..'),
        (image(2 ** 31, 2 ** 31, 'rgb8', 3, b'\x00' * 3), 'size must be 1..'),  # huge declared size, short data
        (image(2, 2, 'rgb8', 6, b'\x00' * 11), 'too few for its size'),
        (image(2, 2, 'rgb8', 2 ** 32 - 1, b'\x00' * 12), 'too few for its size'),
        (image(1, 1, 'mono16', 2, b'\x00\x00'), 'not supported'),
        (image(1, 1, '', 3, b'\x00' * 3), 'not supported'),
    ]:
        with pytest.raises(ValueError, match=message):
            rgb_from_image(bad)
    assert MAX_IMAGE_PIXELS >= 1920 * 1080 * 4  # a 4K camera passes
    with pytest.raises(ValueError, match='size must be 1..'):
        depth_from_image(image(0, 5, '32FC1', 20, b''))
    # and the observation refuses empty arrays before cv2.resize could raise cv2.error
    for rgb, depth in [(np.zeros((0, 4, 3), np.uint8), np.ones((0, 4), np.float32)),
                       (np.zeros((4, 4, 3), np.uint8), np.ones((0, 0), np.float32))]:
        with pytest.raises(ValueError, match='at least one pixel'):
            camera_observation(rgb, depth, 'rgbd', (64, 64))


def test_invalid_depth_reads_near_and_a_mostly_invalid_depth_image_stops_the_robot(exported):
    valid = np.array([0.01, 0.02, 0.3, 1.5, 9.99, 10.2, 10.22, 50.0], np.float32)
    # Valid readings encode exactly as before (the simulators' observations are unchanged) ...
    assert encode_depth(valid).tolist() == np.clip(np.rint(valid / DEPTH_STEP_M), 0, FAR).astype(np.uint8).tolist()
    # ... and NaN, +-inf, 0 and negative read as 0 (something at the lens), never as far open space.
    assert encode_depth(np.array([np.nan, np.inf, -np.inf, 0.0, -2.0], np.float32)).tolist() == [0] * 5
    controller = CameraPolicy(load_policy(exported))
    rgb = np.zeros((48, 64, 3), np.uint8)
    depth = np.full((48, 64), 2.0, np.float32)
    depth[:20] = np.nan  # 42% invalid: acted on
    assert controller.observe(FramePair(0, rgb, depth)).shape == (64, 64, 4)
    depth[:30] = np.inf  # 62% invalid
    with pytest.raises(ValueError, match='62% of the depth image is invalid'):
        controller.observe(FramePair(0, rgb, depth))


def test_observations_that_do_not_fit_and_non_finite_logits_are_refused():
    with pytest.raises(ValueError, match='17 observation bytes for 4 x \\(10, 10, 4\\)'):
        batch_observations(b'\x00' * 17, 4, [10, 10, 4], (10, 10, 4))
    with pytest.raises(ValueError, match='but the policy takes'):
        batch_observations(b'\x00' * 400, 1, [4, 10, 10], (10, 10, 4))
    with pytest.raises(ValueError, match='nothing to act on'):
        batch_observations(b'', 0, [10, 10, 4], None)
    assert batch_observations(b'\x01' * 800, 2, [10, 10, 4], (10, 10, 4)).shape == (2, 10, 10, 4)
    with pytest.raises(FloatingPointError, match='non-finite logits'):
        checked_actions(torch.tensor([[0.0, float('nan')]]), None, True)


# The real nodes, as processes, over DDS.

def test_the_deploy_nodes_refuse_bad_parameters_at_start_up(exported, grid_policies):
    cases = [('robot_policy_node', exported, 'max_linear:=.nan', r'max_linear must be a finite number in \(0, inf\), got nan'),
             ('robot_policy_node', exported, 'step_length:=.nan', 'step_length must be a finite number'),
             ('robot_policy_node', exported, 'max_sensor_age:=.inf', r'max_sensor_age must be a finite number in \(0, inf\), got inf'),
             ('robot_policy_node', exported, 'control_rate_hz:=0.0', r'control_rate_hz must be a finite number in \(0, 1000\]'),
             ('robot_policy_node', exported, 'slop:=-0.1', r'slop must be a finite number in \[0, inf\)'),
             ('robot_policy_node', exported, 'max_clock_skew:=5.0', r'max_clock_skew must be a finite number in \[0, 0.5\]'),
             ('robot_policy_node', exported, 'max_invalid_depth:=1.5', r'max_invalid_depth must be a finite number in \[0, 1\]'),
             ('policy_node', grid_policies[0], 'max_angular:=-.inf', 'max_angular must be a finite number'),
             ('policy_node', grid_policies[0], 'step_duration:=.nan', 'step_duration must be a finite number')]
    processes = [start(node, path, param) for node, path, param, _ in cases]  # side by side: one start-up's time
    try:
        for process, (node, _, param, message) in zip(processes, cases):
            out, _ = process.communicate(timeout=120)
            assert process.returncode != 0 and re.search(message, out), (param, out[-2000:])
    finally:  # a node that accepted a bad value keeps running: never leave one behind
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


class Camera:
    """This test as the robot's camera driver, and the watcher of what the node commands."""

    def __init__(self, ros_node):
        self.node, self.twists, self.actions, self.arrived = ros_node, [], [], []
        ros_node.create_subscription(Twist, 'cmd_vel', self.on_twist, 100)
        ros_node.create_subscription(ActionBatch, 'policy_action', self.actions.append, 100)
        self.rgb_pub = ros_node.create_publisher(Image, 'camera/image_raw', qos_profile_sensor_data)
        self.depth_pub = ros_node.create_publisher(Image, 'camera/depth/image_raw', qos_profile_sensor_data)
        self.rng = np.random.default_rng(1)

    def on_twist(self, twist):
        self.twists.append(twist)
        self.arrived.append(time.monotonic())

    def now_ns(self):
        return self.node.get_clock().now().nanoseconds

    def publish(self, stamp_ns=None, depth=None):
        stamp = Time(nanoseconds=self.now_ns() if stamp_ns is None else stamp_ns).to_msg()
        self.rgb_pub.publish(rgb_image_msg(self.rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), stamp, 'camera'))
        depth = self.rng.uniform(0.3, 5, (48, 64)).astype(np.float32) if depth is None else depth
        self.depth_pub.publish(image(48, 64, '32FC1', 256, depth.tobytes(), stamp.sec, stamp.nanosec))

    def publish_raw(self, rgb: Image, depth: Image):
        self.rgb_pub.publish(rgb)
        self.depth_pub.publish(depth)

    def drive(self, what):
        """Fresh pairs until the node moves the robot."""
        count = len(self.actions)
        end = time.monotonic() + 30
        while len(self.actions) == count:
            assert time.monotonic() < end, f'no action on fresh frames ({what})'
            self.last_good = time.monotonic()
            self.publish()
            self.spin(0.1)
        # cmd_vel and policy_action are two topics: the Twist of that action may come a moment later
        spin_until(self.node, lambda: self.twists[-1] != Twist(), 5, f'motion on fresh frames ({what})')

    def spin(self, seconds):
        end = time.monotonic() + seconds
        spin_until(self.node, lambda: time.monotonic() > end, seconds + 5, 'time to pass')

    def stops_within(self, seconds, what):
        """Seconds from the last good pair to the first zero Twist after it (waiting up to
        `seconds` + 10 for one that is still the last word)."""
        since = self.last_good
        spin_until(self.node, lambda: self.twists[-1] == Twist() and self.arrived[-1] > since, seconds + 10, what)
        first_zero = next(t for tw, t in zip(self.twists, self.arrived) if t > since and tw == Twist())
        return first_zero - since


def test_robot_node_stops_within_max_sensor_age_whatever_arrives(exported, ros_node):
    """Future stamps, negative stamps, empty, short, huge-declared and wrongly encoded images, a
    blinded depth camera: the node lives, acts on the next good pair, and stops in time."""
    max_age, rate = 0.5, 20.0
    bound = max_age + 1 / rate
    camera = Camera(ros_node)
    process = start('robot_policy_node', exported, 'max_linear:=10.0', 'max_angular:=10.0', rate=rate)
    try:
        spin_until(ros_node, lambda: camera.rgb_pub.get_subscription_count() and camera.depth_pub.get_subscription_count()
                   and camera.twists, 60, 'robot_policy_node up (subscribed, watchdog publishing)')
        # A pair stamped 1 h ahead (a camera clock ahead): refused, then normal pairs still act,
        # and stopping the frames stops the robot in time (before: never, and no Twist at all).
        camera.drive('before the future pair')
        camera.publish(stamp_ns=camera.now_ns() + 3600 * NS)
        camera.drive('after a pair stamped 1 h ahead')
        delays = [camera.stops_within(bound, 'a zero Twist after a future-stamped pair')]
        # Everything malformed, each after a good pair: the node stays alive and stops in time.
        nan_depth = np.full((48, 64), np.nan, np.float32)
        stamp = lambda: Time(nanoseconds=camera.now_ns()).to_msg()  # noqa: E731
        malformed = [
            (image(48, 64, 'rgb8', 192, b'\x00' * 9216, sec=-5), image(48, 64, '32FC1', 256, b'\x00' * 12288, sec=-5)),
            (image(0, 0, 'rgb8', 0, b'', stamp().sec, stamp().nanosec), image(0, 0, '32FC1', 0, b'', stamp().sec, stamp().nanosec)),
            (image(2 ** 20, 2 ** 20, 'rgb8', 3 * 2 ** 20, b'\x00' * 99, stamp().sec), image(48, 64, '32FC1', 256, b'', stamp().sec)),
            (image(48, 64, 'yuv422', 128, b'\x00' * 6144, stamp().sec), image(48, 64, '64FC1', 512, b'\x00' * 24576, stamp().sec)),
            (image(48, 64, 'rgb8', 192, b'\x00' * 9216, stamp().sec, 2 ** 32 - 1), image(48, 64, '32FC1', 256, b'\x00' * 12288, stamp().sec, 2 ** 32 - 1)),
        ]
        for rgb, depth in malformed:
            camera.drive('before a malformed pair')
            camera.publish_raw(rgb, depth)
            delays.append(camera.stops_within(bound, f'a zero Twist after a malformed pair ({rgb.encoding}, {rgb.height}x{rgb.width})'))
        # A blinded depth camera: the robot stops at once, not after max_sensor_age.
        camera.drive('before a blinded depth camera')
        camera.publish(depth=nan_depth)
        blinded = camera.stops_within(bound, 'a zero Twist on an all-NaN depth image')
        assert process.poll() is None
    finally:
        out = stop(process)
    assert 'of the depth image is invalid' in out and 'ahead of this node' in out, out[-3000:]
    # The delivery of the zero Twist adds DDS latency and this machine's scheduling to the bound.
    assert max(delays) < bound + 0.4, delays
    assert blinded < bound, blinded
    assert camera.twists[-1] == Twist()  # shutdown


def test_policy_node_survives_what_it_receives_and_stops_the_robot(grid_policies, ros_node):
    good, nan_policy = grid_policies
    twists, actions = [], []
    ros_node.create_subscription(Twist, 'cmd_vel', twists.append, 100)
    ros_node.create_subscription(ActionBatch, 'action_batch', actions.append, 100)
    pub = ros_node.create_publisher(StepBatch, 'step_batch', 10)
    broken_pub = ros_node.create_publisher(StepBatch, '/broken/step_batch', 10)
    broken_actions = []
    ros_node.create_subscription(ActionBatch, '/broken/action_batch', broken_actions.append, 10)

    def batch(seq, n=2, shape=(10, 10, 4), data=None, sec=None):
        msg = StepBatch(seq=seq, num_envs=n, num_actions=7, obs_shape=list(shape),
                        observations=bytes(n * math.prod(shape)) if data is None else data)
        msg.header.stamp = ros_node.get_clock().now().to_msg()
        if sec is not None:
            msg.header.stamp.sec = sec
        return msg

    process = start('policy_node', good, 'greedy:=true', 'step_duration:=0.1', 'max_sensor_age:=0.3')
    broken = start('policy_node', nan_policy, 'greedy:=true', 'step_duration:=0.1', 'max_sensor_age:=0.3',
                   namespace='/broken')
    try:
        spin_until(ros_node, lambda: pub.get_subscription_count() and broken_pub.get_subscription_count(), 60,
                   'both policy_nodes subscribing')
        broken_pub.publish(batch(0))
        for seq, msg in enumerate([batch(0, data=b'\x00' * 17), batch(1, n=2 ** 31, data=bytes(800)), batch(2, shape=(4, 10, 10)),
                                   batch(3, shape=()), batch(4, n=0), batch(5, sec=2 ** 31 - 1)]):
            pub.publish(msg)
        pub.publish(batch(6))
        spin_until(ros_node, lambda: any(a.seq == 6 for a in actions), 30, 'the answer to the good batch after the bad ones')
        # Malformed batches are not answered; one stamped in 2038 is answered but moves nothing.
        assert sorted({a.seq for a in actions}) == [5, 6], [a.seq for a in actions]
        assert process.poll() is None and broken.poll() is None
        moved = len(twists)
        spin_until(ros_node, lambda: len(twists) > moved and twists[-1] == Twist(), 5, 'a zero Twist once batches stop')
    finally:
        out, broken_out = stop(process), stop(broken)
    assert process.returncode in (0, -2) and broken.returncode in (0, -2), (out[-2000:], broken_out[-2000:])
    assert '17 observation bytes' in out and 'ahead of this node' in out  # the first of each (throttled)
    assert 'non-finite logits' in broken_out and not broken_actions, broken_out[-2000:]
    assert twists[-1] == Twist()  # shutdown
