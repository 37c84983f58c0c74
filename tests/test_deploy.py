"""The exported student: the evaluation command and the inference-only deploy node driving the sim."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import Twist
from llm_teacher_msgs.msg import ActionBatch, StepBatch
from ros_helpers import spin_until

from llm_teacher_common.commands import velocity_for_action
from habitat_bridge.minigrid.vector import MiniGridVecEnv
from llm_teacher_common.launch_runner import LaunchRunner, load_launch_file, resolve_arguments
from student_policy.checkpoints import export_policy
from student_policy.evaluate import evaluate, load_policy
from student_policy.lockstep import train
from student_policy.ppo import PPOConfig

LAUNCH = Path(__file__).resolve().parent.parent / 'launch'


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    envs = MiniGridVecEnv('MiniGrid-SimpleDoorKey-v0', 2)
    learner = train(PPOConfig(total_frames=64, num_steps=32, minibatch_size=32), envs)
    return export_policy(tmp_path_factory.mktemp('run') / 'policy.pt', learner.policy)


def test_evaluation_of_an_exported_policy(exported):
    result = evaluate(load_policy(exported), 'MiniGrid-SimpleDoorKey-v0', episodes=8)
    assert result['episodes'] == 8 and 0 <= result['success_rate'] <= 1 and 0 <= result['mean_return'] <= 1
    sampled = evaluate(load_policy(exported), 'MiniGrid-SimpleDoorKey-v0', episodes=8, greedy=False)
    assert sampled['greedy'] is False and sampled == evaluate(load_policy(exported), 'MiniGrid-SimpleDoorKey-v0', episodes=8, greedy=False)
    cli = subprocess.run([sys.executable, '-m', 'student_policy.evaluate', str(exported), '--episodes', '4'],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0 and '"success_rate"' in cli.stdout
    bad = subprocess.run([sys.executable, '-m', 'student_policy.evaluate', 'missing.pt'],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and 'policy file missing.pt does not exist' in bad.stderr


def test_deploy_node_drives_the_simulator(exported, ros_node):
    launch = load_launch_file(LAUNCH / 'eval.launch.py')
    specs = launch.nodes(resolve_arguments(launch.ARGUMENTS, [f'policy_path:={exported}', 'num_envs:=2']))
    batches, actions, twists = [], [], []
    # Deep queues: the sim and the policy run ~1000 batches/s, faster than this node may spin under
    # load, and a message dropped from one queue but not the other would break the pairing below.
    ros_node.create_subscription(StepBatch, 'step_batch', batches.append, 1000)
    ros_node.create_subscription(ActionBatch, 'action_batch', actions.append, 1000)
    ros_node.create_subscription(Twist, 'cmd_vel', twists.append, 1000)
    with LaunchRunner(specs, log=lambda line: None):
        # Discovery may match each subscription at a different batch: wait for enough of each.
        spin_until(ros_node, lambda: batches and batches[-1].seq >= 50 and len(twists) >= 40 and len(actions) >= 40,
                   120, 'step batch 50 and 40 actions and velocity commands (deploy node acting)')
    assert all(len(a.actions) == 2 and all(0 <= x < 7 for x in a.actions) for a in actions)
    # Env 0's actions also went out as velocity commands, in order, with the documented mapping
    # (the two subscriptions may have matched at different batches: find the common run).
    commanded = np.round([(t.linear.x, t.angular.z) for t in twists], 5)
    expected = np.round([velocity_for_action(a.actions[0]) for a in actions], 5)
    assert len(commanded) >= 40
    assert any(np.array_equal(commanded[20:40], expected[k:k + 20]) for k in range(len(expected) - 19))


def test_action_to_velocity_mapping():
    assert velocity_for_action(2) == (0.5, 0.0)  # forward: one 0.5 m cell in 1 s
    assert velocity_for_action(0, step_duration=0.5) == pytest.approx((0.0, 3.14159265))  # left: +90 deg in 0.5 s
    assert velocity_for_action(1) == pytest.approx((0.0, -1.5707963))  # right turns clockwise (REP-103)
    assert velocity_for_action(3, 'miniworld', step_length=0.2) == (-0.2, 0.0)  # miniworld move_back
    assert velocity_for_action(5) == (0.0, 0.0)  # toggle is not a motion
    for bad, message in (((7,), 'outside the minigrid action set'), ((0, 'rover'), 'unknown action set'),
                         ((0, 'minigrid', 0.5, 1.0, 0.0), 'step_duration must be > 0')):
        with pytest.raises(ValueError, match=message):
            velocity_for_action(*bad)
