"""The student on a robot: its own camera topics in, cmd_vel out, with no simulator, LLM or training
library importable; the stand-in robot is robot_sim_node (MiniWorld) driven only through cmd_vel."""
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from geometry_msgs.msg import Twist
from llm_teacher_msgs.msg import ActionBatch
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from ros_helpers import robot_node, spin_until
from sensor_msgs.msg import Image
from std_msgs.msg import Empty

from habitat_bridge.embodied import sensors
from habitat_bridge.embodied.vector import EmbodiedVecEnv
from llm_teacher_common.launch_runner import LaunchRunner, NodeSpec, load_launch_file, resolve_arguments
from llm_teacher_common.camera import DEPTH_STEP_M, camera_observation
from llm_teacher_common.commands import velocity_for_action
from llm_teacher_common.messages import depth_from_image, rgb_from_image, rgb_image_msg
from student_policy.checkpoints import export_policy
from student_deploy.inference import load_policy
from student_policy.networks import ActorCritic
from student_deploy.robot_control import StampPairer, motion_mask

TASK = 'MiniWorld-GoToObject-v0'
LAUNCH = Path(__file__).resolve().parent.parent / 'launch'


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    torch.manual_seed(3)
    return export_policy(tmp_path_factory.mktemp('robot') / 'policy.pt', ActorCritic((64, 64, 4), 8, encoder='image'), TASK)


def spin_for(node, seconds: float) -> None:
    end = time.monotonic() + seconds
    spin_until(node, lambda: time.monotonic() > end, seconds + 5, 'time to pass')


def test_observation_from_a_robots_topics_is_the_training_observation():
    """One function builds both: the bytes from rgb8/bgr8 + 32FC1 messages equal EmbodiedVecEnv's."""
    envs = EmbodiedVecEnv(TASK, 1)
    envs.reset(seed=5)
    stamp = Time(nanoseconds=1).to_msg()
    for action in (2, 2, 0, 2, 1, 2):
        training = envs.step(np.array([action])).observations[0]
        frame = envs._last[0]
        rgb_msg, depth_msg = rgb_image_msg(frame.rgb, stamp, 'camera'), sensors.depth_image_msg(frame.depth, stamp)
        from_topics = camera_observation(rgb_from_image(rgb_msg), depth_from_image(depth_msg), 'rgbd', (64, 64))
        assert from_topics.tobytes() == training.tobytes()
        bgr = Image(header=rgb_msg.header, height=64, width=64, encoding='bgr8', step=192,
                    data=np.ascontiguousarray(frame.rgb[..., ::-1]).tobytes())
        assert np.array_equal(rgb_from_image(bgr), frame.rgb)
        millimetres = np.rint(frame.depth * 1000).astype(np.uint16)
        depth16 = Image(header=depth_msg.header, height=64, width=64, encoding='16UC1', step=128, data=millimetres.tobytes())
        as16 = camera_observation(frame.rgb, depth_from_image(depth16), 'rgbd')
        assert np.abs(as16[..., 3].astype(int) - training[..., 3]).max() <= 1  # mm rounding vs 4 cm steps
    envs.close()
    big = camera_observation(np.zeros((480, 640, 3), np.uint8), np.full((480, 640), 2.0, np.float32), 'rgbd', (64, 64))
    assert big.shape == (64, 64, 4) and (big[..., 3] == round(2.0 / DEPTH_STEP_M)).all()
    no_return = Image(height=1, width=2, encoding='16UC1', step=4, data=np.array([0, 1500], np.uint16).tobytes())
    assert np.isnan(depth_from_image(no_return)[0, 0]) and camera_observation(
        np.zeros((1, 2, 3), np.uint8), depth_from_image(no_return))[0, :, 3].tolist() == [0, round(1.5 / DEPTH_STEP_M)]  # unknown: near
    with pytest.raises(ValueError, match="encoding 'mono8' is not supported"):
        rgb_from_image(Image(height=1, width=1, encoding='mono8', step=1, data=b'\x00'))
    with pytest.raises(ValueError, match='too few for its size'):
        depth_from_image(Image(height=2, width=2, encoding='32FC1', step=8, data=b'\x00' * 8))


def test_onnx_and_torchscript_exports_give_the_same_logits(exported):
    torchscript, onnx = load_policy(exported), load_policy(exported.with_suffix('.onnx'))
    assert torchscript.info == onnx.info and torchscript.info.obs_shape == (64, 64, 4) and onnx.info.task == TASK
    obs = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 4), dtype=np.uint8)
    assert torch.allclose(torchscript.step(obs, torchscript.initial_state(5))[0], onnx.step(obs, onnx.initial_state(5))[0],
                          atol=1e-4)
    with pytest.raises(ValueError, match='does not exist'):
        load_policy(exported.with_name('nope.onnx'))


def test_stamp_pairing():
    pairer = StampPairer(slop_s=0.01)
    assert pairer.add_rgb(100_000_000, 'rgb@100') is None  # no depth yet
    pair = pairer.add_depth(105_000_000, 'depth@105')
    assert (pair.stamp_ns, pair.rgb, pair.depth) == (100_000_000, 'rgb@100', 'depth@105')
    assert pairer.add_depth(200_000_000, 'depth@200') is None  # 100 ms from any rgb frame
    assert pairer.add_rgb(100_000_000, 'again') is None  # not older than the pair already given
    assert pairer.add_rgb(203_000_000, 'rgb@203').depth == 'depth@200'


@pytest.mark.parametrize('params, message', [
    (['observation:=rgb'], "shape \\(64, 64, 4\\) .* but this node gives 'rgb' camera images with 3 channels"),
    (['action_set:=minigrid'], "chooses among 8 actions, but action set 'minigrid' has 7"),
    (['max_linear:=0.0'], r'max_linear must be a finite number in \(0, inf\), got 0.0'),
])
def test_robot_node_refuses_a_policy_that_does_not_fit(exported, params, message):
    process = robot_node(exported, *params)
    out, _ = process.communicate(timeout=120)
    assert process.returncode != 0 and re.search(message, out), out


def test_robot_node_stops_the_robot_on_stale_sensors_and_on_shutdown(exported, ros_node):
    """Fed by this test as a camera driver: fresh pairs move the robot; old ones, silence and Ctrl-C stop it."""
    twists, actions = [], []
    twist_sub = ros_node.create_subscription(Twist, 'cmd_vel', twists.append, 100)
    action_sub = ros_node.create_subscription(ActionBatch, 'policy_action', actions.append, 100)
    rgb_pub = ros_node.create_publisher(Image, 'camera/image_raw', qos_profile_sensor_data)
    depth_pub = ros_node.create_publisher(Image, 'camera/depth/image_raw', qos_profile_sensor_data)
    rng = np.random.default_rng(1)

    def publish(age_s=0.0):
        stamp = Time(nanoseconds=ros_node.get_clock().now().nanoseconds - int(age_s * 1e9)).to_msg()
        rgb_pub.publish(rgb_image_msg(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), stamp, 'camera'))
        depth_pub.publish(sensors.depth_image_msg(rng.uniform(0.3, 5, (120, 160)).astype(np.float32), stamp))

    process = robot_node(exported, 'greedy:=true')
    try:
        # Both ways matched (under load the node's publishers can be discovered after its subscriptions):
        # else the zero Twists of the stale phase below could go unseen.
        spin_until(ros_node, lambda: rgb_pub.get_subscription_count() and depth_pub.get_subscription_count()
                   and twist_sub.get_publisher_count() and action_sub.get_publisher_count(), 60,
                   'robot_policy_node subscribing to the camera and publishing')
        for _ in range(100):
            publish(age_s=2.0)
            spin_for(ros_node, 0.02)
        assert not actions and twists and all(t.linear.x == 0 and t.angular.z == 0 for t in twists), 'acted on old frames'
        for _ in range(200):
            publish()
            spin_for(ros_node, 0.06)
            if len(actions) >= 5:
                break
        assert len(actions) >= 5 and any(t.linear.x or t.angular.z for t in twists)
        moving = [a for a in actions if motion_mask('miniworld', 8)[a.actions[0]]]
        assert len(moving) == len(actions) and all(abs(sum(a.action_probs) - 1) < 1e-5 for a in actions)
        count = len(twists)
        spin_until(ros_node, lambda: len(twists) > count and twists[-1] == Twist(), 5, 'a zero Twist once frames stop')
        publish()
        spin_until(ros_node, lambda: twists[-1] != Twist(), 5, 'motion again on a fresh frame')
        process.send_signal(2)
        process.wait(timeout=30)
        spin_until(ros_node, lambda: twists[-1] == Twist(), 5, 'a zero Twist on shutdown')
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode in (0, -2), process.stdout.read()


@pytest.mark.slow
@pytest.mark.parametrize('task', [TASK, 'MiniWorld-GoToRedBall-v0'])
def test_closed_loop_actions_through_the_topics_equal_in_process_greedy_actions(exported, task, ros_node, tmp_path):
    """robot_sim_node is the robot (cmd_vel only); for more than a whole episode (GoToObject ends by
    400 steps), each action the node took equals the in-process greedy action on the same frames.
    On GoToRedBall the policy reads the mission, which the node takes from the sim's `mission` topic
    (the same every episode there, so each action's mission is known)."""
    mission = None
    if task != TASK:
        torch.manual_seed(5)
        net = ActorCritic((64, 64, 4), 8, encoder='image', mission=True)
        net.encode_missions(['go to the red ball'], grow=True)
        exported, mission = export_policy(tmp_path / 'mission.pt', net, task), 'go to the red ball'
    frames = {'rgb': {}, 'depth': {}}
    actions, twists = [], []
    ros_node.create_subscription(Image, 'camera/image_raw', lambda m: frames['rgb'].__setitem__(Time.from_msg(m.header.stamp).nanoseconds, m), 1000)
    ros_node.create_subscription(Image, 'camera/depth/image_raw', lambda m: frames['depth'].__setitem__(Time.from_msg(m.header.stamp).nanoseconds, m), 1000)
    ros_node.create_subscription(ActionBatch, 'policy_action', actions.append, 1000)
    ros_node.create_subscription(Twist, 'cmd_vel', twists.append, 1000)
    sim = NodeSpec('habitat_bridge', 'robot_sim_node', 'robot_sim_node',
                   parameters=[{'env': task, 'rate_hz': 20.0, 'seed': 7}])
    logs = []
    with open(tmp_path / 'robot.log', 'w') as log, LaunchRunner([sim], log=logs.append):
        process = robot_node(exported, 'greedy:=true', 'max_linear:=10.0', 'max_angular:=10.0', log=log)
        try:
            def checkable() -> int:  # actions taken on frames this test saw (not before it subscribed)
                stamps = (Time.from_msg(a.header.stamp).nanoseconds for a in actions)
                return sum(t in frames['rgb'] and t in frames['depth'] for t in stamps)
            spin_until(ros_node, lambda: len(actions) >= 420 and checkable() >= 400, 240,
                       '400 actions of robot_policy_node on frames this test saw')
        finally:
            process.send_signal(2)
            process.wait(timeout=30)
    assert any('episode 1 ended' in line for line in logs), logs[-5:]
    policy, mask = load_policy(exported), torch.from_numpy(motion_mask('miniworld', 8))
    checked = 0
    for action in actions:
        stamp = Time.from_msg(action.header.stamp).nanoseconds
        if stamp not in frames['rgb'] or stamp not in frames['depth']:
            continue  # taken before this test's subscriptions matched
        obs = camera_observation(rgb_from_image(frames['rgb'][stamp]), depth_from_image(frames['depth'][stamp]), 'rgbd', (64, 64))
        tokens = policy.encode_missions([mission]) if mission else None
        expected = int(policy.step(obs[None], policy.initial_state(1), tokens)[0][0].masked_fill(~mask, float('-inf')).argmax())
        assert action.actions[0] == expected
        checked += 1
    assert checked >= 400
    # Each action went out as the velocity that does it in one control period (1/20 s).
    expected_twists = {velocity_for_action(a.actions[0], 'miniworld', 0.15, 0.2617994, 0.05) for a in actions}
    moving = {(round(t.linear.x, 4), round(t.angular.z, 4)) for t in twists if t != Twist()}
    assert moving <= {(round(x, 4), round(z, 4)) for x, z in expected_twists}


def test_deploy_launch_takes_a_robots_topics():
    launch = load_launch_file(LAUNCH / 'deploy.launch.py')
    spec, = launch.nodes(resolve_arguments(launch.ARGUMENTS, ['rgb:=/robot/rgb', 'depth:=/robot/depth', 'cmd_vel:=/robot/cmd_vel',
                                                            'mission:=/robot/mission']))
    assert spec.executable == 'robot_policy_node'
    assert {('camera/image_raw', '/robot/rgb'), ('camera/depth/image_raw', '/robot/depth'), ('cmd_vel', '/robot/cmd_vel'),
            ('mission', '/robot/mission')} <= set(spec.remappings)
    grid, = launch.nodes(resolve_arguments(launch.ARGUMENTS, ['robot:=false', 'observations:=/robot/obs',
                                                            'actions:=/robot/cmd']))
    assert grid.executable == 'policy_node' and {('step_batch', '/robot/obs'), ('action_batch', '/robot/cmd')} <= set(grid.remappings)
    assert 'step_batch:=/robot/obs' in grid.ros_args()


@pytest.mark.slow
def test_a_recurrent_policy_on_the_robot_acts_as_in_process_over_a_whole_episode(tmp_path, ros_node):
    """A policy with memory: fed one frame pair at a time (this test is the camera, and waits for
    each action), robot_policy_node chooses at every step of a whole greedy episode the action of
    the in-process policy carrying its state; a `reset` starts its memory afresh. The ONNX file:
    tests/test_recurrent.py shows TorchScript's steps equal ONNX's over an episode. (Frames captured
    from robot_sim_node over best-effort DDS cannot prove that no frame was missed, which a state
    depends on; the reactive closed loop above covers cmd_vel.)"""
    torch.manual_seed(4)
    net = ActorCritic((64, 64, 4), 8, encoder='image', recurrent=32).eval()
    path = export_policy(tmp_path / 'recurrent.pt', net, TASK).with_suffix('.onnx')
    actions = []
    action_sub = ros_node.create_subscription(ActionBatch, 'policy_action', actions.append, 100)
    rgb_pub = ros_node.create_publisher(Image, 'camera/image_raw', qos_profile_sensor_data)
    depth_pub = ros_node.create_publisher(Image, 'camera/depth/image_raw', qos_profile_sensor_data)
    reset_pub = ros_node.create_publisher(Empty, 'reset', 10)
    # a long max_sensor_age: the watchdog's reset must not be what makes the reset check pass
    process = robot_node(path, 'greedy:=true', 'control_rate_hz:=1000.0', 'max_sensor_age:=30.0')
    envs = EmbodiedVecEnv(TASK, 1)
    step, state, mask = envs.reset(seed=11), net.initial_state(1), torch.from_numpy(motion_mask('miniworld', 8))
    try:
        spin_until(ros_node, lambda: rgb_pub.get_subscription_count() and depth_pub.get_subscription_count()
                   and reset_pub.get_subscription_count() and action_sub.get_publisher_count(), 60,
                   'robot_policy_node subscribing and publishing')

        def acted_on(frame, what: str) -> None:
            """Send a frame pair until the node acts on it: a best-effort pair lost on the way (as
            just after discovery) never reached the policy, so sending it again moves no state twice."""
            count = len(actions)
            for _ in range(10):
                stamp = ros_node.get_clock().now().to_msg()
                rgb_pub.publish(rgb_image_msg(frame.rgb, stamp, 'camera'))
                depth_pub.publish(sensors.depth_image_msg(frame.depth, stamp))
                try:
                    return spin_until(ros_node, lambda: len(actions) > count, 1.0, what)
                except TimeoutError:
                    continue
            raise TimeoutError(f'no {what} after 10 tries')

        steps = 0
        while True:
            acted_on(envs._last[0], f'the action for step {steps}')
            with torch.no_grad():
                logits, state = net.step(torch.from_numpy(step.observations), state)
            expected = int(logits[0].masked_fill(~mask, float('-inf')).argmax())
            assert actions[-1].actions[0] == expected, f'step {steps}'
            step, steps = envs.step(np.array([expected])), steps + 1
            if step.terminated[0] or step.truncated[0]:
                break
        assert steps >= 50  # a whole episode, longer than any window a reactive policy could fake
        reset_pub.publish(Empty())  # after a reset the node acts as a fresh policy on the same frame
        spin_for(ros_node, 0.5)
        acted_on(envs._last[0], 'the action after the reset')
        with torch.no_grad():
            fresh = net.step(torch.from_numpy(step.observations), net.initial_state(1))[0]
        assert np.allclose(actions[-1].action_probs,
                           torch.softmax(fresh[0].masked_fill(~mask, float('-inf')), -1).numpy(), atol=1e-4)
    finally:
        envs.close()
        process.send_signal(2)
        process.wait(timeout=30)
