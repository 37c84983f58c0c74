"""A student that reads the robot's map beside its camera (observation rgbd_map), on a robot: the
crop robot_policy_node builds from a robot's own topics (nav_msgs/OccupancyGrid, Odometry, /tf,
the detector's targets) is the one it was trained on, and the node acts only on what it can trust."""
import math
import time

import numpy as np
import pytest
import torch
from geometry_msgs.msg import Point, Pose, PoseArray, Twist
from llm_teacher_msgs.msg import ActionBatch
from nav_msgs.msg import OccupancyGrid, Odometry
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
from rclpy.time import Time
from ros_helpers import robot_node, spin_until
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from habitat_bridge.embodied import sensors
from habitat_bridge.embodied.types import Pose as RobotPose
from habitat_bridge.embodied.vector import EmbodiedVecEnv
from llm_teacher_common.map_crop import named_positions
from llm_teacher_common.messages import occupancy_grid_from_msg, occupancy_grid_msg, rgb_image_msg
from llm_teacher_common.perception import OccupancyGrid as Grid
from student_deploy.inference import load_policy
from student_deploy.robot_control import MapInput, motion_mask, yaw_of
from student_policy.checkpoints import export_policy
from student_policy.networks import ActorCritic

TASK, SIZE = 'MiniWorld-GoToRedBall-v0', 48
MAP_TO_ODOM = (1.5, -2.0, 0.7)  # a localiser's correction: the odometry has drifted this much
ACTIONS = (0,) * 12  # a turn on the spot from seed 1: the red ball comes into view at the 4th


def in_odom(pose: RobotPose) -> tuple[float, float, float]:
    """The base's pose in the odometry frame, given MAP_TO_ODOM."""
    tx, ty, tyaw = MAP_TO_ODOM
    cos, sin = math.cos(tyaw), math.sin(tyaw)
    return cos * (pose.x - tx) + sin * (pose.y - ty), -sin * (pose.x - tx) + cos * (pose.y - ty), pose.yaw - tyaw


def test_the_map_crop_from_a_robots_topics_is_the_training_observation():
    """Map through nav_msgs/OccupancyGrid, pose as odometry behind a map -> odom correction, the
    ball where the detector last saw it: MapInput gives the map channels of EmbodiedVecEnv's rgbd_map."""
    envs = EmbodiedVecEnv(TASK, 1, observation='rgbd_map', width=SIZE, height=SIZE)
    envs.reset(seed=1)
    marked = 0
    for t, action in enumerate(ACTIONS):
        training = envs.step(np.array([action])).observations[0]
        step, stamp = envs._last[0], (t + 1) * 100_000_000
        robot = MapInput(SIZE, slop_s=0.01, max_map_age_s=1.0)
        assert robot.waiting_for(stamp).startswith('a map')
        robot.add_map(stamp, 'map', occupancy_grid_from_msg(occupancy_grid_msg(step.perception.occupancy)))
        assert robot.waiting_for(stamp).startswith('odometry')
        robot.add_odom(stamp, 'odom', *in_odom(step.pose))
        assert robot.waiting_for(stamp).startswith('the transform map -> odom on /tf')
        robot.add_transform('map', 'odom', *MAP_TO_ODOM, stamp=stamp)
        robot.set_targets('map', named_positions(step.perception))
        assert np.array_equal(robot.crop(stamp), training[..., 4:]), f'step {t}'
        marked += bool(training[..., 6:].any())
        robot.add_odom(stamp + 1_500_000_000, 'odom', *in_odom(step.pose))  # the mapper fell behind
        robot.add_transform('map', 'odom', *MAP_TO_ODOM, stamp=stamp + 1_500_000_000)
        with pytest.raises(ValueError, match=r'the map is 1.50 s older than the frames \(max_map_age 1 s\)'):
            robot.crop(stamp + 1_500_000_000)
    envs.close()
    assert marked >= 8  # the target's mark was part of what was compared
    later = stamp + 3_000_000_000
    robot.add_map(later, 'map', step.perception.occupancy)
    robot.add_odom(later, 'odom', *in_odom(step.pose))
    assert robot.waiting_for(later).startswith('the transform map -> odom')  # the localiser's last word aged
    robot.add_transform('map', 'odom', *MAP_TO_ODOM)  # from /tf_static: it does not age
    assert robot.crop(later).shape == (SIZE, SIZE, 4)
    robot.set_targets('odom', [(0.0, 0.0)])
    with pytest.raises(ValueError, match="target points are in frame 'odom', the map in 'map'"):
        robot.crop(later)
    with pytest.raises(ValueError, match='odometry pose .* is not finite'):
        robot.add_odom(0, 'odom', float('nan'), 0.0, 0.0)


def test_map_cells_are_read_as_a_map_server_reads_them():
    """REP-149 occupancy (-1 unknown, 0..100): >= 65 occupied, <= 25 free, else unknown, as Nav2's
    map server thresholds them; what a policy cannot read is refused, naming it."""
    robot = MapInput(4, slop_s=0.01, max_map_age_s=1.0)
    cells = np.array([[-1, 0, 25, 26], [50, 64, 65, 100]], np.int8)
    robot.add_map(0, 'map', Grid(cells, (0.0, 0.0), 0.25))
    assert robot.grid.cells.tolist() == [[-1, 0, 0, -1], [-1, -1, 100, 100]]
    with pytest.raises(ValueError, match=r'map cells range -1..101'):
        robot.add_map(0, 'map', Grid(np.array([[-1, 101]], np.int8), (0.0, 0.0), 0.25))
    with pytest.raises(ValueError, match='finer than 0.02 m'):
        robot.add_map(0, 'map', Grid(cells, (0.0, 0.0), 0.01))
    assert yaw_of(math.sin(0.3), math.cos(0.3)) == pytest.approx(0.6)
    with pytest.raises(ValueError, match='not a unit quaternion'):
        yaw_of(0.0, 0.0)


@pytest.mark.slow
def test_a_map_policy_on_the_robot_acts_on_its_map_odometry_and_targets(tmp_path, ros_node):
    """This test is the robot's camera, odometry, localiser, mapper and detector. robot_policy_node
    waits for the map before moving, then chooses each action the in-process policy chooses on the
    training observation of the same step; a map that stops coming stops the robot."""
    torch.manual_seed(6)
    path = export_policy(tmp_path / 'map.pt', ActorCritic((SIZE, SIZE, 8), 8, encoder='image_map'), TASK)
    policy, mask = load_policy(path), torch.from_numpy(motion_mask('miniworld', 8))
    actions, twists = [], []
    ros_node.create_subscription(ActionBatch, 'policy_action', actions.append, 100)
    ros_node.create_subscription(Twist, 'cmd_vel', twists.append, 100)
    rgb_pub = ros_node.create_publisher(Image, 'camera/image_raw', qos_profile_sensor_data)
    depth_pub = ros_node.create_publisher(Image, 'camera/depth/image_raw', qos_profile_sensor_data)
    odom_pub = ros_node.create_publisher(Odometry, 'odom', 20)
    map_pub = ros_node.create_publisher(OccupancyGrid, 'map', QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    tf_pub = ros_node.create_publisher(TFMessage, '/tf', 20)
    targets_pub = ros_node.create_publisher(PoseArray, 'targets', 10)
    process = robot_node(path, 'observation:=rgbd_map', 'greedy:=true', 'control_rate_hz:=1000.0',
                         'max_sensor_age:=30.0', 'max_map_age:=30.0')
    envs = EmbodiedVecEnv(TASK, 1, observation='rgbd_map', width=SIZE, height=SIZE)
    envs.reset(seed=1)
    for action in ACTIONS:  # until the ball has been seen: the map and targets the test then holds
        envs.step(np.array([action]))
    held = envs._last[0].perception
    try:
        spin_until(ros_node, lambda: all(pub.get_subscription_count() for pub in (
            rgb_pub, depth_pub, odom_pub, map_pub, tf_pub, targets_pub)), 60, 'robot_policy_node subscribing')

        def send(step, stamp, with_map: bool = True) -> None:
            if with_map:
                map_msg = occupancy_grid_msg(held.occupancy)
                map_msg.header.stamp = stamp
                targets = PoseArray(header=Header(stamp=stamp, frame_id='map'),
                                    poses=[Pose(position=Point(x=x, y=y)) for x, y in named_positions(held)])
                targets_pub.publish(targets)
                map_pub.publish(map_msg)
            tf_pub.publish(TFMessage(transforms=[sensors._transform(
                'map', 'odom', stamp, (MAP_TO_ODOM[0], MAP_TO_ODOM[1], 0.0), sensors.yaw_quaternion(MAP_TO_ODOM[2]))]))
            x, y, yaw = in_odom(step.pose)
            odom_pub.publish(sensors.odometry_msg(RobotPose(x, y, yaw), (0.0, 0.0), stamp))
            rgb_pub.publish(rgb_image_msg(step.rgb, stamp, 'camera'))
            depth_pub.publish(sensors.depth_image_msg(step.depth, stamp))

        # No map yet: the robot does not move, however many frames and poses come.
        for _ in range(10):
            send(envs._last[0], ros_node.get_clock().now().to_msg(), with_map=False)
            end = time.monotonic() + 0.05
            spin_until(ros_node, lambda: time.monotonic() > end, 5, 'time to pass')
        assert not actions
        checked = 0
        for t, action in enumerate((0, 2, 2, 1, 2, 2, 0, 2, 2, 2)):
            step = envs._last[0]
            for _ in range(10):  # a best-effort frame lost on the way is sent again
                stamp = ros_node.get_clock().now().to_msg()
                send(step, stamp)
                try:
                    taken = spin_until(ros_node, lambda: [a for a in actions if a.header.stamp == stamp], 1.0,
                                       'an action on these frames')[0]
                    break
                except TimeoutError:
                    continue
            camera = envs.encode(step)[..., :4]
            robot = MapInput(SIZE, 0.01, 30.0)
            robot.add_map(0, 'map', held.occupancy)
            robot.add_odom(0, 'map', step.pose.x, step.pose.y, step.pose.yaw)
            robot.set_targets('map', named_positions(held))
            obs = np.concatenate([camera, robot.crop(0)], axis=-1)
            expected = int(policy.step(obs[None], policy.initial_state(1))[0][0].masked_fill(~mask, float('-inf')).argmax())
            if t:  # the first action may come before the targets (another topic) arrived
                assert taken.actions[0] == expected, f'step {t}'
                checked += 1
            envs.step(np.array([action]))
        assert checked == 9
        # The mapper stops: a map 60 s older than the frames stops the robot.
        stale = occupancy_grid_msg(held.occupancy)
        stale.header.stamp = Time(nanoseconds=ros_node.get_clock().now().nanoseconds - 60 * 10**9).to_msg()
        map_pub.publish(stale)
        time.sleep(0.2)
        twists.clear()
        send(envs._last[0], ros_node.get_clock().now().to_msg(), with_map=False)
        spin_until(ros_node, lambda: Twist() in twists, 10, 'a zero Twist after a stale map')
    finally:
        process.send_signal(2)
        out, _ = process.communicate(timeout=30)
        envs.close()
    assert 'waiting for a map' in out and 'older than the frames' in out, out
