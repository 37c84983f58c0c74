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



def turned_map_input(grid: Grid, yaw: float, pose, targets) -> MapInput:
    """A MapInput given `grid` as a mapper publishes it, its origin turned by `yaw`, the base at
    `pose` in the map frame and `targets`; as robot_policy_node reads them."""
    msg = occupancy_grid_msg(grid)
    msg.info.origin.orientation = sensors.yaw_quaternion(yaw)
    q = msg.info.origin.orientation
    robot = MapInput(SIZE, slop_s=0.01, max_map_age_s=1.0)
    robot.add_map(0, 'map', occupancy_grid_from_msg(msg), (q.x, q.y, q.z, q.w))
    robot.add_odom(0, 'map', *pose)
    robot.set_targets('map', targets)
    return robot


def turned(x: float, y: float, angle: float) -> tuple[float, float]:
    return math.cos(angle) * x - math.sin(angle) * y, math.sin(angle) * x + math.cos(angle) * y


@pytest.mark.filterwarnings('error')
def test_a_map_whose_origin_is_turned_gives_the_crop_of_the_same_place():
    """Nav2's map_server origin [x, y, yaw]: the cells lie along the origin's turned axes. The same
    place published turned a quarter at a time (origin at another corner, cells turned with it), or
    with the whole map frame turned, gives the crop of the unturned map; a tilted one is refused."""
    cells = np.random.default_rng(0).choice(np.array([-1, 0, 100], np.int8), size=(40, 30))
    grid, pose, targets = Grid(cells, (-3.1, -2.6), 0.25), (0.37, -0.61, 0.4), [(1.3, 0.8), (-2.0, 3.0)]
    expected = turned_map_input(grid, 0.0, pose, targets).crop(0)
    assert expected[..., 0].any() and expected[..., 2].any()  # map cells and a target in view
    quarter, yaw = grid, 0.0
    for _ in range(3):  # the next corner becomes the origin: cell [i, j] was [width - 1 - j, i]
        width = quarter.cells.shape[0] * quarter.resolution
        corner = turned(width, 0.0, yaw)
        quarter = Grid(quarter.cells[::-1].T.copy(), (quarter.origin[0] + corner[0], quarter.origin[1] + corner[1]),
                       quarter.resolution)
        yaw += math.pi / 2
        assert np.array_equal(turned_map_input(quarter, yaw, pose, targets).crop(0), expected), f'turned {yaw:.2f}'
    angle = 0.7  # the map frame turned: the origin, the robot and the targets with it
    origin = turned(*grid.origin, angle)
    moved = (*turned(pose[0], pose[1], angle), pose[2] + angle)
    crop = turned_map_input(Grid(cells, origin, 0.25), angle, moved, [turned(x, y, angle) for x, y in targets]).crop(0)
    assert np.array_equal(crop, expected)
    robot = MapInput(SIZE, slop_s=0.01, max_map_age_s=1.0)
    with pytest.raises(ValueError, match=r'map origin orientation \(0.1, 0.0, 0.0, 0.995\) rolls or pitches the map'):
        robot.add_map(0, 'map', grid, (0.1, 0.0, 0.0, 0.995))
    with pytest.raises(ValueError, match='map origin orientation: quaternion .* is not a unit quaternion'):
        robot.add_map(0, 'map', grid, (0.0, 0.0, 0.0, 0.5))
    assert robot.grid is None


@pytest.mark.filterwarnings('error')  # numpy's "invalid value encountered in cast" came from such poses
def test_poses_and_targets_that_overflow_are_refused_naming_them():
    """Huge but finite odometry and map -> odom compose to a pose that is not finite; a finite one
    far off the map would index past int64: each is refused, naming what gave it, not read as an
    all-unknown crop. A target too far from the robot to place is refused too."""
    def robot_at(x: float, correction_x: float, origin=(-5.0, -5.0)) -> MapInput:
        robot = MapInput(SIZE, slop_s=0.01, max_map_age_s=1.0)
        robot.add_map(0, 'map', Grid(np.zeros((40, 40), np.int8), origin, 0.25))
        robot.add_odom(0, 'odom', x, 1.0, 0.0)
        robot.add_transform('map', 'odom', correction_x, 0.0, 0.0, stamp=0)
        return robot

    with pytest.raises(ValueError, match=r'odometry \(1e\+308, 1, yaw 0\) behind map -> odom \(1e\+308, 0, yaw 0\) '
                                         r'gives the map-frame pose \(inf, 1, yaw 0\), which is not finite'):
        robot_at(1e308, 1e308).crop(0)
    with pytest.raises(ValueError, match=r"the robot \(1e\+18, 1, yaw 0\) in 'map' is 1e\+18 m off the map"):
        robot_at(1e18, 0.0).crop(0)
    assert robot_at(5.0, 10.0).crop(0).shape == (SIZE, SIZE, 4)  # 10 m off the map: its edge is in view
    far = robot_at(-1.7e308, 0.0, origin=(-1.7e308, 0.0))  # on a map that far out
    far.set_targets('map', [(1.0, 1.0), (1.7e308, 0.0)])
    with pytest.raises(ValueError, match=r'target point \(1.7e\+308, 0\) is too far from the robot'):
        far.crop(0)


def test_targets_are_capped_and_a_refused_map_or_targets_stops_the_robot():
    """A detector's flood of targets (10,000 took 0.21 s a frame) is refused whole, not cut; after
    a refused map or targets message no crop is given (the node stops the robot) until a valid one."""
    robot = MapInput(SIZE, slop_s=0.01, max_map_age_s=1.0)
    grid = Grid(np.zeros((40, 40), np.int8), (-5.0, -5.0), 0.25)
    robot.add_map(0, 'map', grid)
    robot.add_odom(0, 'map', 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match='65 target points, more than 64'):
        robot.set_targets('map', [(1.0, 0.0)] * 65)
    with pytest.raises(ValueError, match=r'target points \[\(nan, 0.0\)\] are not finite'):
        robot.set_targets('map', [(1.0, 0.0), (math.nan, 0.0)])
    robot.set_targets('map', [(1.0, 0.0)] * MapInput.MAX_TARGETS)
    assert robot.crop(0)[..., 2:].any()
    robot.refuse('targets', '65 target points')
    with pytest.raises(ValueError, match=r'the last targets message was refused \(65 target points\): the robot stays '
                                         'stopped until a valid one comes'):
        robot.crop(0)
    robot.set_targets('map', [])
    robot.refuse('map', 'bad cells')
    with pytest.raises(ValueError, match=r'the last map message was refused \(bad cells\)'):
        robot.crop(0)
    robot.add_map(0, 'map', grid)
    robot.refuse('targets', 'not finite')
    robot.forget()  # a new episode: the targets of the last one no longer hold, refused or not
    assert not robot.crop(0)[..., 2:].any()

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
