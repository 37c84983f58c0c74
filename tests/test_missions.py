"""A student that reads its mission: the words as token ids, training that learns them, checkpoints
and exports that keep them, and a robot that waits for a mission it can read."""
import time

import numpy as np
import pytest
import torch
from llm_teacher_msgs.msg import ActionBatch
from rclpy.qos import qos_profile_sensor_data
from ros_helpers import robot_node, spin_until
from sensor_msgs.msg import Image
from std_msgs.msg import String

from habitat_bridge.embodied import sensors
from habitat_bridge.embodied.vector import EmbodiedVecEnv
from llm_teacher_common.messages import rgb_image_msg
from student_deploy.inference import load_policy
from student_deploy.missions import MISSION_LENGTH, PAD, UNKNOWN, MissionVocabulary
from student_deploy.robot_control import motion_mask
from student_policy.checkpoints import CheckpointError, export_policy, load_learner, save_checkpoint
from student_policy.evaluate import evaluate
from student_policy.lockstep import LockstepLearner, StepIn, train
from student_policy.networks import ActorCritic, eager_copy
from student_policy.ppo import PPOConfig, PPOLearner, TeacherSchedule

TASK = 'MiniWorld-GoToObject-v0'
MISSIONS = ['go to the red ball', 'go to the blue box', 'go to the red box']


def test_mission_words_become_left_padded_ids_in_order_of_first_use():
    vocabulary = MissionVocabulary()
    tokens = vocabulary.encode(['Go to the red ball.', 'go to the blue box'], grow=True)
    assert tokens.shape == (2, MISSION_LENGTH) and tokens.dtype == np.int64
    assert tokens[0, -5:].tolist() == [2, 3, 4, 5, 6] and (tokens[0, :-5] == PAD).all()
    assert tokens[1, -5:].tolist() == [2, 3, 4, 7, 8]
    assert vocabulary.words == ['go', 'to', 'the', 'red', 'ball', 'blue', 'box']
    # Training reads a word it has not learnt as UNKNOWN; a deployed policy refuses it, naming it.
    assert vocabulary.encode(['go to the green key'])[0, -2:].tolist() == [UNKNOWN, UNKNOWN]
    with pytest.raises(ValueError, match='never saw in training: green, key'):
        vocabulary.encode(['go to the green key'], strict=True)
    with pytest.raises(ValueError, match=f'at most {MISSION_LENGTH}'):
        vocabulary.encode([' '.join(['go'] * (MISSION_LENGTH + 1))])
    for wordless in ('', '42', ' !? '):  # nothing to read is no mission: a robot must not drive on it
        with pytest.raises(ValueError, match='has no words'):
            vocabulary.encode([wordless], strict=True)


@pytest.mark.parametrize('recurrent', [0, 32])
def test_the_mission_changes_the_policy_and_its_exports_read_it_at_any_batch_size(tmp_path, recurrent):
    torch.manual_seed(0)
    policy = ActorCritic((48, 48, 4), 8, encoder='image', recurrent=recurrent, mission=True).eval()
    tokens = policy.encode_missions(MISSIONS, grow=True)
    obs = torch.randint(0, 256, (1, 48, 48, 4), dtype=torch.uint8).expand(3, -1, -1, -1).contiguous()
    with torch.no_grad():
        logits, state = policy.step(obs, policy.initial_state(3), tokens)
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)  # same frame, other mission, other action odds
    with pytest.raises(ValueError, match='reads the mission'):
        policy.step(obs, policy.initial_state(3))
    export_policy(tmp_path / 'policy.pt', policy, TASK)  # traced at batch 1, run at 3
    for name in ('policy.pt', 'policy.onnx'):
        deployed = load_policy(tmp_path / name)
        assert deployed.info.mission_words == ('go', 'to', 'the', 'red', 'ball', 'blue', 'box')
        got, next_state = deployed.step(obs.numpy(), deployed.initial_state(3), deployed.encode_missions(MISSIONS))
        assert torch.allclose(got, logits, atol=1e-5), name
        assert torch.allclose(next_state, state, atol=1e-5), name
        with pytest.raises(ValueError, match='never saw in training: green, key'):
            deployed.encode_missions(['go to the green key'])
        # Evaluation reads an unseen word as training does (UNKNOWN), so a test run does not stop on it.
        assert deployed.encode_missions(['go to the green key'], strict=False)[0, -2:].tolist() == [UNKNOWN, UNKNOWN]


def test_training_learns_the_missions_words_and_a_checkpoint_keeps_them(tmp_path):
    envs = EmbodiedVecEnv(TASK, 2, width=48, height=48, max_episode_steps=40, perceive=False)
    config = PPOConfig(encoder='image', mission=True, total_frames=256, num_steps=64, minibatch_size=64,
                       teacher=TeacherSchedule(0.0, 0.0), compile=False)
    learner = train(config, envs)
    words = learner.policy.vocabulary.words
    assert words[:3] == ['go', 'to', 'the'] and len(words) >= 5  # a colour and a kind at least
    assert learner.storage.missions.max() >= 2  # the rollout kept the token ids it acted on
    save_checkpoint(tmp_path / 'last.pt', learner)
    resumed = load_learner(tmp_path / 'last.pt', config=config)
    assert resumed.policy.vocabulary.words == words
    step = envs.reset(seed=5)
    missions = learner.policy.encode_missions(step.missions)
    with torch.no_grad():
        before = learner.policy.step(torch.from_numpy(step.observations), learner.policy.initial_state(2), missions)[0]
        after = resumed.policy.step(torch.from_numpy(step.observations), resumed.policy.initial_state(2), missions)[0]
    assert torch.equal(before, after)
    result = evaluate(eager_copy(resumed.policy), TASK, 2, num_envs=2,
                      env_options={'width': 48, 'height': 48, 'max_episode_steps': 40})
    assert result['episodes'] == 2
    with pytest.raises(CheckpointError, match='mission'):
        load_learner(tmp_path / 'last.pt', config=PPOConfig(encoder='image', mission=False))
    # A simulator that sends no missions is refused by a student that reads them, and says why.
    loop = LockstepLearner(lambda *_: PPOLearner(config, (48, 48, 4), 2, 8), lambda *_: True, log=lambda _: None,
                           reads_mission=True)
    zeros = np.zeros(2, bool)
    assert loop.on_step(StepIn(0, step.observations, np.zeros(2, np.float32), zeros, zeros, zeros, 8,
                               encoder='image')) == []
    assert loop.counters.rejected_steps == 1 and 'reads the mission' in loop.counters.last_error
    envs.close()


def test_each_env_groups_missions_stay_with_its_observations_through_a_recurrent_update(tmp_path):
    """Two env groups of two, each env its own mission: the rollout stores each step's token ids in
    that env's column, the update unrolls them with the GRU, and a checkpoint from before missions
    existed (no words, no `mission` setting) still resumes."""
    config = PPOConfig(encoder='image', mission=True, recurrent=8, total_frames=10 ** 6, num_steps=4, bptt_steps=2,
                       minibatch_size=4, teacher=TeacherSchedule(0.0, 0.0), compile=False)
    learner = PPOLearner(config, (48, 48, 4), 4, 8, num_groups=2)
    rng = np.random.default_rng(0)
    missions = {0: ['go to the red ball', 'go to the blue box'], 1: ['go to the red box', 'go to the blue ball']}
    for _ in range(config.num_steps):
        for group in (0, 1):
            learner.act(rng.integers(0, 256, (2, 48, 48, 4), dtype=np.uint8), group, missions[group])
            learner.record(np.zeros(2, np.float32), np.zeros(2, bool), np.zeros(2, bool), group)
    expected = learner.policy.encode_missions(missions[0] + missions[1]).numpy()
    assert (learner.storage.missions == expected[None]).all()
    metrics = learner.update(rng.integers(0, 256, (4, 48, 48, 4), dtype=np.uint8), missions[0] + missions[1])
    assert metrics['losses/gradient_steps'] > 0 and np.isfinite(metrics['losses/policy_loss'])
    with pytest.raises(ValueError, match="give each env's mission"):
        learner.act(np.zeros((2, 48, 48, 4), np.uint8), 0)
    # A checkpoint of a student from before missions: it resumes as one that reads none.
    old = PPOLearner(PPOConfig(encoder='image', compile=False), (48, 48, 4), 2, 8)
    save_checkpoint(tmp_path / 'old.pt', old)
    state = torch.load(tmp_path / 'old.pt', weights_only=True)
    del state['mission_words'], state['config']['mission']
    torch.save(state, tmp_path / 'old.pt')
    assert not load_learner(tmp_path / 'old.pt').policy.reads_mission


@pytest.mark.slow
def test_the_robot_waits_for_a_mission_it_can_read_and_acts_on_the_one_it_was_given(tmp_path, ros_node):
    """robot_policy_node with a policy that reads the mission: frames alone move nothing; a mission
    with words the policy never learnt is refused by name and the robot stays stopped; a readable
    mission makes it act as the policy does in-process on that mission, and another one changes it."""
    torch.manual_seed(2)
    net = ActorCritic((64, 64, 4), 8, encoder='image', mission=True).eval()
    net.encode_missions(MISSIONS, grow=True)
    path = export_policy(tmp_path / 'policy.pt', net, TASK)
    actions = []
    action_sub = ros_node.create_subscription(ActionBatch, 'policy_action', actions.append, 100)
    rgb_pub = ros_node.create_publisher(Image, 'camera/image_raw', qos_profile_sensor_data)
    depth_pub = ros_node.create_publisher(Image, 'camera/depth/image_raw', qos_profile_sensor_data)
    mission_pub = ros_node.create_publisher(String, 'mission', 10)
    envs = EmbodiedVecEnv(TASK, 1)
    step = envs.reset(seed=3)
    frame = envs._last[0]
    mask = torch.from_numpy(motion_mask('miniworld', 8))
    with open(tmp_path / 'robot.log', 'w') as log:
        process = robot_node(path, 'greedy:=true', 'control_rate_hz:=1000.0', 'max_sensor_age:=30.0', log=log)
        try:
            spin_until(ros_node, lambda: rgb_pub.get_subscription_count() and depth_pub.get_subscription_count()
                       and mission_pub.get_subscription_count() and action_sub.get_publisher_count(), 60,
                       'robot_policy_node subscribing and publishing')

            def send_frames(seconds: float) -> None:
                end = ros_node.get_clock().now().nanoseconds + int(seconds * 1e9)
                while ros_node.get_clock().now().nanoseconds < end and not actions:
                    stamp = ros_node.get_clock().now().to_msg()
                    rgb_pub.publish(rgb_image_msg(frame.rgb, stamp, 'camera'))
                    depth_pub.publish(sensors.depth_image_msg(frame.depth, stamp))
                    try:
                        spin_until(ros_node, lambda: actions, 0.2, 'an action')
                    except TimeoutError:
                        pass

            send_frames(2.0)
            assert not actions, 'the robot acted with no mission'
            mission_pub.publish(String(data='go to the green key'))
            send_frames(2.0)
            assert not actions, 'the robot acted on a mission it cannot read'
            for mission in ('go to the red ball', 'go to the blue box'):
                with torch.no_grad():
                    logits = net.step(torch.from_numpy(step.observations), net.initial_state(1),
                                      net.encode_missions([mission]))[0][0]
                expected = torch.softmax(logits.masked_fill(~mask, float('-inf')), -1).numpy()
                mission_pub.publish(String(data=mission))
                # Until the new mission arrives the node may act on the old one: wait for the new answer.
                deadline = time.monotonic() + 20
                while not (actions and np.allclose(actions[-1].action_probs, expected, atol=1e-4)):
                    assert time.monotonic() < deadline, f'no action for the mission {mission!r} within 20 s'
                    actions.clear()
                    send_frames(2.0)
        finally:
            envs.close()
            process.send_signal(2)
            process.wait(timeout=30)
    text = (tmp_path / 'robot.log').read_text()
    assert 'mission refused' in text and 'green, key' in text, text[-2000:]
