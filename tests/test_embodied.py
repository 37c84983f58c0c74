"""The embodied bridge on MiniWorld: sensor geometry as plain functions, then robot_sim_node
as a separate process publishing a robot's standard topics over DDS."""
import math
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Twist
from llm_teacher_msgs.msg import Perception
from nav_msgs.msg import OccupancyGrid, Odometry
from rclpy.qos import DurabilityPolicy, QoSProfile
from ros_helpers import spin_until
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Int32
from tf2_msgs.msg import TFMessage

from llm_teacher_common.commands import MOTIONS, action_for_velocity, velocity_for_action
from habitat_bridge.embodied import sensors
from habitat_bridge.embodied.expert import EmbodiedExpert
from habitat_bridge.embodied.miniworld_backend import MiniWorldBackend
from llm_teacher_common.launch_runner import LaunchRunner, NodeSpec

ENV = 'MiniWorld-PutNext-v0'
TURN_LEFT, TURN_RIGHT, FORWARD = 0, 1, 2


@pytest.fixture(scope='module')
def backend():
    sim = MiniWorldBackend(ENV, 64, 48)
    yield sim
    sim.close()


def test_camera_info_is_the_pinhole_of_the_field_of_view(backend):
    info = sensors.camera_info_msg(backend.camera, Time())
    f = 24 / math.tan(math.radians(backend.camera.vfov_deg) / 2)  # half height over tan(half vfov)
    assert (info.width, info.height) == (64, 48)
    assert info.k[0] == pytest.approx(f) and info.k[4] == pytest.approx(f)
    assert (info.k[2], info.k[5]) == (31.5, 23.5)
    assert sensors.hfov_deg(backend.camera) == pytest.approx(math.degrees(2 * math.atan(32 / f)))
    step = backend.reset(seed=0)
    assert step.rgb.shape == (48, 64, 3) and step.rgb.dtype == np.uint8
    assert step.depth.shape == (48, 64) and step.depth.dtype == np.float32


def test_depth_agrees_with_the_intrinsics(backend):
    """Where K projects the bottom of a visible box (on the floor, camera_height below the lens),
    the depth image holds about the box's forward distance: rgb, depth and CameraInfo agree."""
    camera, f = backend.camera, backend.camera.focal_length_px
    checked = agreed = 0
    for seed in range(20):
        step = backend.reset(seed=seed)
        seen = []  # (distance from the lens, pixel column) of each visible box
        for obj in step.perception.objects:
            ahead = obj.forward - camera.forward_m  # the lens sits forward_m ahead of base_link
            if obj.visible and ahead > 1.0:
                seen.append((ahead, round((camera.width - 1) / 2 - f * obj.left / ahead)))
        for ahead, column in seen:
            row = round((camera.height - 1) / 2 + f * camera.height_m / ahead) - 2  # just above the floor
            hidden = any(other < ahead and abs(c - column) <= 3 for other, c in seen)
            if hidden or not (0 <= column < camera.width and 0 <= row < camera.height):
                continue
            checked += 1
            agreed += abs(step.depth[row, column] - ahead) < 0.6  # boxes are under 1.2 m across
    assert checked >= 10 and agreed >= 0.8 * checked, f'{agreed} of {checked} boxes where K puts them'


def test_odometry_integrates_the_actions(backend):
    step = backend.reset(seed=3)
    for _ in range(4):
        before = step.pose
        step = backend.step(TURN_LEFT)
        assert math.remainder(step.pose.yaw - before.yaw, math.tau) == pytest.approx(backend.turn_angle)
    moved = 0
    for _ in range(10):
        before = step.pose
        step = backend.step(FORWARD)
        dx, dy = step.pose.x - before.x, step.pose.y - before.y
        if dx or dy:  # not blocked by a wall or an object
            assert (dx, dy) == pytest.approx((backend.step_length * math.cos(before.yaw),
                                              backend.step_length * math.sin(before.yaw)), abs=1e-6)
            moved += 1
    assert moved >= 1


def test_perception_places_objects_where_they_are(backend):
    step = backend.reset(seed=1)
    entities = [e for e in backend.world.entities if e is not backend.world.agent]
    assert step.perception.task_family == 'embodied' and step.perception.objects
    for obj in step.perception.objects:
        yaw = step.pose.yaw
        x = step.pose.x + obj.forward * math.cos(yaw) - obj.left * math.sin(yaw)
        y = step.pose.y + obj.forward * math.sin(yaw) + obj.left * math.cos(yaw)
        assert any(np.allclose((x, y), (e.pos[0], -e.pos[2]), atol=1e-6) and obj.color == e.color
                   for e in entities), obj


def test_velocity_commands_map_back_to_their_actions():
    for action, motion in enumerate(MOTIONS['miniworld']):
        command = velocity_for_action(action, 'miniworld', 0.15, math.radians(15), 0.1)
        expected = action if motion != (0, 0) else None
        assert action_for_velocity(*command, 'miniworld', 0.15, math.radians(15), 0.1) == expected
    assert action_for_velocity(0.2, 0.1, 'minigrid') is None  # a nudge: stand still
    # far beyond one step, or no number at all (fuzzed cmd_vel once overflowed squaring 1e300)
    assert action_for_velocity(1e300, 0.0, 'minigrid') == 2 and action_for_velocity(0.0, -1e300, 'minigrid') == 1
    assert action_for_velocity(float('nan'), 1.0, 'minigrid') is None


def test_unknown_environment_is_a_clear_error():
    with pytest.raises(ValueError, match='unknown MiniWorld environment .* known: MiniWorld-'):
        MiniWorldBackend('MiniWorld-Nope-v0')


@pytest.fixture(scope='module')
def sim_node():
    spec = NodeSpec('habitat_bridge', 'robot_sim_node', 'robot_sim_node',
                    parameters=[{'env': ENV, 'width': 64, 'height': 48, 'rate_hz': 10.0, 'seed': 2}])
    logs = []
    with LaunchRunner([spec], log=logs.append) as runner:
        yield runner
    print('\n'.join(logs))


def test_node_publishes_a_robots_topics(sim_node, ros_node):
    got = {name: [] for name in ('rgb', 'depth', 'info', 'odom', 'tf', 'tf_static', 'perception', 'map')}
    for name, kind, topic in (('rgb', Image, 'camera/image_raw'), ('depth', Image, 'camera/depth/image_raw'),
                              ('info', CameraInfo, 'camera/camera_info'), ('odom', Odometry, 'odom'),
                              ('tf', TFMessage, '/tf'), ('perception', Perception, 'perception'),
                              ('map', OccupancyGrid, 'map')):
        ros_node.create_subscription(kind, topic, got[name].append, 50)
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    ros_node.create_subscription(TFMessage, '/tf_static', got['tf_static'].append, latched)
    spin_until(ros_node, lambda: len(got['rgb']) >= 5, 60, 'camera images from robot_sim_node')
    got['rgb'].clear()
    deadline = time.monotonic() + 2.0
    spin_until(ros_node, lambda: time.monotonic() > deadline, 5, 'two seconds')
    assert 14 <= len(got['rgb']) <= 26, f'{len(got["rgb"])} images in 2 s at 10 Hz'

    rgb, depth, info = got['rgb'][-1], got['depth'][-1], got['info'][-1]
    assert (rgb.encoding, depth.encoding) == ('rgb8', '32FC1')
    assert rgb.header.frame_id == depth.header.frame_id == info.header.frame_id == 'camera_optical_frame'
    assert (rgb.width, rgb.height) == (depth.width, depth.height) == (info.width, info.height) == (64, 48)
    assert rgb.step == 64 * 3 and depth.step == 64 * 4
    stamps = {name: {(m.header.stamp.sec, m.header.stamp.nanosec) for m in got[name]}
              for name in ('rgb', 'depth', 'info', 'odom')}
    assert stamps['rgb'] & stamps['depth'] & stamps['info'] & stamps['odom'], 'one stamp per tick on every topic'
    odom = got['odom'][-1]
    assert (odom.header.frame_id, odom.child_frame_id) == ('odom', 'base_link')
    frames = {(t.header.frame_id, t.child_frame_id) for m in got['tf'] for t in m.transforms}
    assert frames == {('map', 'odom'), ('odom', 'base_link')}
    spin_until(ros_node, lambda: got['tf_static'], 10, '/tf_static')
    static = {(t.header.frame_id, t.child_frame_id) for t in got['tf_static'][-1].transforms}
    assert static == {('base_link', 'camera_link'), ('camera_link', 'camera_optical_frame')}
    assert got['perception'][-1].task_family == 'embodied'
    grid = got['map'][-1]  # the robot's map: what it has seen free and occupied, in the map frame
    assert grid.header.frame_id == 'map' and grid.info.resolution == 0.25 and grid.info.width == grid.info.height > 0
    cells = np.frombuffer(bytes(grid.data), np.int8)
    assert len(cells) == grid.info.width * grid.info.height and (cells == 0).any() and (cells == 100).any()


def test_node_drives_with_cmd_vel_and_actions(sim_node, ros_node):
    odoms = []
    ros_node.create_subscription(Odometry, 'odom', odoms.append, 50)
    spin_until(ros_node, lambda: odoms, 60, 'odometry from robot_sim_node')
    yaw = lambda o: 2 * math.atan2(o.pose.pose.orientation.z, o.pose.pose.orientation.w)  # noqa: E731
    start = odoms[-1]
    turn = ros_node.create_publisher(Int32, 'action', 10)
    spin_until(ros_node, lambda: turn.get_subscription_count() > 0, 10, 'action subscriber')
    turn.publish(Int32(data=TURN_LEFT))
    spin_until(ros_node, lambda: abs(math.remainder(yaw(odoms[-1]) - yaw(start), math.tau)) > 0.1, 10,
               'a turn after one action')
    assert math.remainder(yaw(odoms[-1]) - yaw(start), math.tau) == pytest.approx(math.radians(15), abs=1e-3)
    cmd = ros_node.create_publisher(Twist, 'cmd_vel', 10)
    twist = Twist()
    twist.angular.z = math.radians(15) / 0.1  # one turn step per control period
    before = yaw(odoms[-1])

    def turned_while_commanded():
        cmd.publish(twist)  # a joystick keeps sending; the node stops when commands go stale
        return abs(math.remainder(yaw(odoms[-1]) - before, math.tau)) > 0.2
    spin_until(ros_node, turned_while_commanded, 10, 'turning under cmd_vel')
    assert any(o.twist.twist.angular.z > 0 for o in odoms[-3:]), 'odometry reports the commanded turn rate'


def test_go_to_object_task_names_its_target_and_perceives_it():
    sim = MiniWorldBackend('MiniWorld-GoToObject-v0', 32, 32)
    try:
        step = sim.reset(seed=0)
        target = sim.world.target
        assert step.perception.mission == f'go to the {target.color} {type(target).__name__.lower()}'
        assert len([e for e in sim.world.entities if e is not sim.world.agent]) == 6
        for _ in range(30):  # look around: turning in place reveals objects, each named by kind and colour
            step = sim.step(TURN_LEFT)
        assert all(o.type in ('ball', 'box', 'key') and o.color for o in step.perception.objects)
        assert not step.info['success']
    finally:
        sim.close()


@pytest.mark.parametrize('env_id', ['MiniWorld-GoToObject-v0', 'MiniWorld-GoToRedBall-v0', 'MiniWorld-PutNext-v0'])
def test_scripted_expert_solves_the_embodied_tasks(env_id):
    """The benchmark's upper bound: >= 95% of 50 seeded episodes, success as the backend reports it."""
    sim = MiniWorldBackend(env_id, 16, 16)  # the expert reads the world, not the pixels
    try:
        solved = 0
        for seed in range(50):
            sim.reset(seed=seed)
            expert = EmbodiedExpert()
            while True:
                step = sim.step(expert.act(sim.world))
                if step.terminated or step.truncated:
                    solved += bool(step.info['success'])
                    break
        assert solved >= 48, f'{env_id}: the expert solved {solved} of 50 episodes'
    finally:
        sim.close()


# --- habitat-sim backend: its geometry here, the simulator where habitat-sim is installed --------

def test_habitat_frames_agree_with_rep103():
    from habitat_bridge.embodied.habitat_backend import habitat_to_map, map_to_habitat, yaw_of

    class Quaternion:  # numpy-quaternion's fields, as AgentState.rotation has them
        def __init__(self, w, x, y, z):
            self.w, self.x, self.y, self.z = w, x, y, z
    assert habitat_to_map(map_to_habitat(2.0, -1.5, 0.7)) == pytest.approx((2.0, -1.5))
    assert habitat_to_map([0.0, 0.0, -1.0]) == pytest.approx((1.0, 0.0))  # habitat's forward (-z) is map x
    for yaw in (0.0, 0.5, -2.0, 3.0):  # a rotation about habitat's up axis is the same yaw on the map
        assert yaw_of(Quaternion(math.cos(yaw / 2), 0.0, math.sin(yaw / 2), 0.0)) == pytest.approx(yaw)


def test_habitat_visibility_is_a_depth_test():
    from habitat_bridge.embodied.types import CameraSpec
    from habitat_bridge.embodied.types import visible_in_depth
    camera = CameraSpec(64, 64, 60.0, 1.5)
    open_view, wall = np.full((64, 64), 20.0, np.float32), np.full((64, 64), 2.0, np.float32)
    assert visible_in_depth(4.0, 0.0, 0.25, open_view, camera)
    assert not visible_in_depth(4.0, 0.0, 0.25, wall, camera)  # behind the wall
    assert not visible_in_depth(4.0, 5.0, 0.25, open_view, camera)  # outside the field of view
    assert not visible_in_depth(-1.0, 0.0, 0.25, open_view, camera)  # behind the robot


def test_habitat_rooms_are_connected_and_objects_stand_inside():
    from habitat_bridge.embodied.habitat_backend import DOORWAY, ROOM, four_rooms
    walls, placed, (x, y, _) = four_rooms(np.random.default_rng(0), 4)
    assert len({p.kind for p in placed}) == 4
    for px, py in [(p.x, p.y) for p in placed] + [(x, y)]:
        assert -ROOM < px < ROOM and -ROOM < py < ROOM
        assert all(not (x0 - 0.5 < px < x1 + 0.5 and y0 - 0.5 < py < y1 + 0.5) for x0, y0, x1, y1 in walls)
    # Every room is reachable for a robot of radius 0.4 m: flood-fill free cells from its start.
    cell, radius = 0.1, 0.4
    xs = np.arange(-ROOM, ROOM, cell) + cell / 2
    gx, gy = np.meshgrid(xs, xs, indexing='ij')
    free = np.ones(gx.shape, bool)
    for x0, y0, x1, y1 in walls:
        free &= ~((gx > x0 - radius) & (gx < x1 + radius) & (gy > y0 - radius) & (gy < y1 + radius))
    reached, todo = np.zeros_like(free), [(int((x + ROOM) / cell), int((y + ROOM) / cell))]
    while todo:
        i, j = todo.pop()
        if 0 <= i < free.shape[0] and 0 <= j < free.shape[1] and free[i, j] and not reached[i, j]:
            reached[i, j] = True
            todo += [(i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)]
    for cx, cy in ((-ROOM / 2, -ROOM / 2), (ROOM / 2, -ROOM / 2), (-ROOM / 2, ROOM / 2), (ROOM / 2, ROOM / 2)):
        assert reached[int((cx + ROOM) / cell), int((cy + ROOM) / cell)], f'room at {cx, cy} cannot be reached'
    assert DOORWAY > 2 * radius


def test_habitat_backend_runs_where_habitat_sim_is_installed():
    habitat_sim = pytest.importorskip('habitat_sim', reason='habitat-sim is not installed (it installs from conda only)')
    from habitat_bridge.embodied.habitat_backend import HabitatSimBackend
    sim = HabitatSimBackend('Habitat-GoToObject-v0', 64, 48)
    step = sim.reset(seed=0)
    assert step.rgb.shape == (48, 64, 3) and step.depth.shape == (48, 64) and habitat_sim is not None
    before = sim.pose()
    step = sim.step(FORWARD)
    moved = math.hypot(sim.pose().x - before.x, sim.pose().y - before.y)
    assert moved == pytest.approx(sim.step_length, abs=0.02) or moved == 0.0  # 0: against a wall
    assert step.perception.mission.startswith('go to the')
    sim.close()


# --- habitat-lab PointNav: its conversions here, the task where habitat-lab and its data are installed ---

def test_habitat_lab_point_goal_becomes_a_goal_relative_to_base_link():
    from habitat_bridge.embodied.types import Pose
    from habitat_bridge.embodied.habitat_lab_backend import goal_perception
    # habitat-lab's [rho, -phi]: -phi is the bearing to the left; 2 m ahead-left at 30 degrees.
    perception = goal_perception(np.array([2.0, math.radians(30)], np.float32), Pose(1.0, 2.0, 0.5))
    goal, = perception.objects
    assert goal.type == 'goal' and goal.visible and perception.mission == 'go to the goal'
    assert (goal.forward, goal.left) == pytest.approx((2.0 * math.cos(math.radians(30)), 1.0))
    assert perception.task_family == 'embodied' and (perception.x, perception.y, perception.heading) == (1.0, 2.0, 0.5)
    right, = goal_perception(np.array([1.0, -math.pi / 2], np.float32), Pose(0, 0, 0)).objects
    assert (right.forward, right.left) == pytest.approx((0.0, -1.0), abs=1e-6)


def test_habitat_lab_depth_is_metres():
    from habitat_bridge.embodied.habitat_lab_backend import depth_in_metres
    normalised = np.array([[[0.0], [0.5]], [[1.0], [0.25]]], np.float32)  # (H, W, 1) as the DepthSensor gives it
    assert depth_in_metres(normalised, 0.0, 10.0, True) == pytest.approx(np.array([[0.0, 5.0], [10.0, 2.5]]))
    assert depth_in_metres(normalised, 0.5, 5.5, True)[0, 1] == pytest.approx(3.0)
    assert depth_in_metres(normalised * 7, 0.0, 10.0, False)[1, 0] == pytest.approx(7.0)


def test_habitat_lab_unknown_task_is_a_clear_error():
    from habitat_bridge.embodied.habitat_lab_backend import HabitatLabBackend
    with pytest.raises(ValueError, match="unknown habitat-lab task 'Habitat-ObjectNav-v9'; known: Habitat-PointNav-v0"):
        HabitatLabBackend('Habitat-ObjectNav-v9')


def test_habitat_lab_point_nav_runs_where_habitat_lab_and_its_data_are_installed():
    pytest.importorskip('habitat', reason='habitat-lab is not installed (it needs habitat-sim, conda only)')
    from habitat_bridge.embodied.habitat_lab_backend import HabitatLabBackend
    try:
        robot = HabitatLabBackend('Habitat-PointNav-v0', 64, 48)
    except (FileNotFoundError, RuntimeError) as err:  # habitat-lab without its test scenes and episodes
        pytest.skip(f'habitat-lab PointNav data missing: {err}')
    step = robot.reset(seed=0)
    assert step.rgb.shape == (48, 64, 3) and step.depth.shape == (48, 64) and step.perception.objects[0].type == 'goal'
    before = step.perception.objects[0]
    step = robot.step(FORWARD)
    after = step.perception.objects[0]
    assert math.hypot(after.forward - before.forward, after.left - before.left) <= robot.step_length + 0.05
    idle = robot.step(3)  # back: PointNav has no such action, so nothing moves
    assert idle.pose == step.pose and not idle.terminated and not idle.truncated
    assert robot.step(7).terminated  # done = habitat-lab's STOP, which ends the episode, success or not
    robot.close()
