"""The option-level student (llm_teacher.option_level): it chooses among the mission's options and the
embodied skills act below it; trained with the teacher term over options; on a robot, the skills run
on its map (robot_policy_node)."""
import re

import numpy as np
import pytest
import torch
from llm_teacher_msgs.msg import ActionBatch
from ros_helpers import robot_node, spin_until

from habitat_bridge.embodied.vector import EmbodiedVecEnv
from llm_teacher_common.embodied_skills import EmbodiedSkills
from llm_teacher.option_level import OptionLevelEnv, over_options, scripted_option_teacher
from llm_teacher_common.launch_runner import LaunchRunner, NodeSpec
from llm_teacher_common.options import OPTION_HOLD, mission_options
from llm_teacher.scripted_options import scripted_option
from student_deploy.inference import load_policy
from student_deploy.robot_control import CameraPolicy, robot_perception, seen_through_topics
from student_policy.checkpoints import export_policy
from student_policy.evaluate import evaluate
from student_policy.lockstep import train
from student_policy.networks import ActorCritic
from student_policy.ppo import PPOConfig, TeacherSchedule


def test_a_missions_options_are_its_roles():
    assert [o.text for o in mission_options('go to the red ball')] == ['explore', 'go to the red ball']
    assert [o.text for o in mission_options('put the red box next to the yellow box')] == [
        'explore', 'go to the red box', 'go to the yellow box', 'pick up the red box', 'drop the red box']
    # A teacher's options outside the mission's are not the student's: their weight is dropped.
    probs = over_options({'go to the red ball': 0.6, 'go to the blue key': 0.4}, 'go to the red ball')
    assert probs.tolist() == [0.0, 1.0]
    assert over_options({'go to the blue key': 1.0}, 'go to the red ball') is None
    # Holding the wrong box, the teacher drops it: the student's drop (its skill drops what is held).
    put = 'put the red box next to the yellow box'
    assert over_options({'drop the yellow box': 1.0}, put).tolist() == [0, 0, 0, 0, 1]


def test_each_option_moves_the_robot_as_its_skill_does():
    """Options through the wrapper and the skill's motions stepped on a plain env of the same seed
    give the same frames; driven by the scripted teacher's options, the robot reaches the ball."""
    size = dict(width=48, height=48, observation='rgbd_map')
    envs = OptionLevelEnv(EmbodiedVecEnv('MiniWorld-GoToRedBall-v0', 1, **size))
    plain = EmbodiedVecEnv('MiniWorld-GoToRedBall-v0', 1, **size)
    skills, teacher = EmbodiedSkills(), scripted_option_teacher()
    assert envs.num_actions == 2 and envs.observation_space.shape == (48, 48, 8)
    step, alone = envs.reset(seed=100), plain.reset(seed=100)
    for _ in range(400):
        probs, mask = teacher(step)
        option = scripted_option(alone.perceptions[0])
        assert mask.all() and probs[0].tolist() == over_options({option.text: 1.0}, alone.perceptions[0].mission).tolist()
        step = envs.step(probs.argmax(axis=1))
        alone = plain.step(np.array([np.argmax(skills.policy({option: 1.0}, alone.perceptions[0]))]))
        assert step.observations.tobytes() == alone.observations.tobytes()
        if step.terminated[0] or step.truncated[0]:
            break
    envs.close()
    plain.close()
    assert step.success[0], 'the scripted options through the skills did not reach the red ball on seed 100'


@pytest.mark.slow
def test_an_option_level_student_trains_on_its_teachers_options_and_is_no_robots_motion_policy(tmp_path):
    """The training loop runs on options, each held OPTION_HOLD frames as reproduce.py trains them (the
    update learns a choice only where one was made), every state labelled by the option teacher; how
    well such a student learns is measured by benchmarks/reproduce.py --option-level (docs/results.md)."""
    task = 'MiniWorld-GoToRedBall-v0'
    envs = OptionLevelEnv(EmbodiedVecEnv(task, 4, width=48, height=48, observation='rgbd_map'), hold=OPTION_HOLD)
    config = PPOConfig(encoder='image_map', total_frames=4 * 32 * 4, num_steps=32, minibatch_size=64)
    metrics = []
    learner = train(config, envs, teacher=scripted_option_teacher(), callbacks=[lambda _, m: metrics.append(m) or True])
    envs.close()
    assert learner.policy.num_actions == 2 and len(metrics) == 4
    chose = learner.storage.decides  # the last rollout: every 8th frame of an episode, from its first
    assert 1 / OPTION_HOLD <= chose.mean() < 2 / OPTION_HOLD
    assert all(m['teacher/coverage'] == 1.0 and np.isfinite(m['losses/distill_loss']) for m in metrics)

    path = export_policy(tmp_path / 'policy.pt', learner.policy, task, chooses_options=True)
    policy = load_policy(path)
    assert policy.info.chooses_options and load_policy(path.with_suffix('.onnx')).info.chooses_options
    result = evaluate(policy, task, 2, seed=20_000, num_envs=2,
                      env_options={'width': 48, 'height': 48, 'observation': 'rgbd_map'}, wrap_envs=OptionLevelEnv)
    assert result['episodes'] == 2 and 0 <= result['success_rate'] <= 1
    with pytest.raises(ValueError, match="chooses among the teacher's options .* set observation to rgbd_map"):
        CameraPolicy(policy, observation='rgbd')
    motion = export_policy(tmp_path / 'motion.pt', ActorCritic((48, 48, 8), 8, encoder='image_map'))
    assert not load_policy(motion).info.chooses_options


TASK = 'MiniWorld-GoToRedBall-v0'


def going_to_the_target(tmp_path):
    """An option-level policy whose answer is 'go to <the object the mission names>' whatever it
    sees: the robot's motions are then exactly the skill's."""
    net = ActorCritic((48, 48, 8), 2, encoder='image_map')
    with torch.no_grad():
        net.actor.weight.zero_()
        net.actor.bias.copy_(torch.tensor([0.0, 10.0]))
    return export_policy(tmp_path / 'options.pt', net, TASK, chooses_options=True)


def test_on_a_robot_the_skills_run_on_its_map_pose_and_targets(tmp_path):
    """From what a robot's topics give (map, pose, the detector's points: those taken as the object
    the mission names and the others) the chosen option moves the robot as from the simulator's
    whole perception, to the ball; a mission a base cannot carry out is refused, naming why."""
    controller = CameraPolicy(load_policy(going_to_the_target(tmp_path)), observation='rgbd_map')
    assert controller.waiting_for_mission
    with pytest.raises(ValueError, match='moves an object: a base driven by cmd_vel cannot pick it up'):
        controller.set_mission('put the red box next to the yellow box')
    with pytest.raises(ValueError, match='names 2 objects'):
        controller.set_mission('go to the red ball or the blue key')
    assert controller.waiting_for_mission
    envs = EmbodiedVecEnv(TASK, 1, width=48, height=48, observation='rgbd_map', perceive=True)
    skills = EmbodiedSkills()
    step = envs.reset(seed=100)
    controller.set_mission(step.perceptions[0].mission)
    for _ in range(400):
        p = step.perceptions[0]
        seen = seen_through_topics(p)
        action, probs = controller.act(step.observations[0], seen)
        assert probs.argmax() == 1 and action == skills.motion(mission_options(p.mission)[1], p)
        step = envs.step(np.array([action]))
        if step.terminated[0] or step.truncated[0]:
            break
    envs.close()
    assert step.success[0], 'the go-to skill on the robot\'s perception did not reach the red ball on seed 100'


@pytest.mark.slow
def test_an_option_level_policy_drives_the_robot_to_the_ball_through_its_topics(tmp_path, ros_node):
    """robot_sim_node is the robot (driven by cmd_vel only; map, odometry, /tf, targets and the
    mission come from it): robot_policy_node chooses the option, runs its skill and reaches the ball."""
    actions, logs = [], []
    ros_node.create_subscription(ActionBatch, 'policy_action', actions.append, 1000)
    sim = NodeSpec('habitat_bridge', 'robot_sim_node', 'robot_sim_node',
                   parameters=[{'env': TASK, 'rate_hz': 20.0, 'seed': 100, 'width': 48, 'height': 48}])
    with open(tmp_path / 'robot.log', 'w') as log, LaunchRunner([sim], log=logs.append):
        process = robot_node(going_to_the_target(tmp_path), 'observation:=rgbd_map', 'max_linear:=10.0',
                             'max_angular:=10.0', log=log)
        try:
            spin_until(ros_node, lambda: any('episode 1 ended' in line for line in logs), 180,
                       'end of the first episode')
        finally:
            process.send_signal(2)
            process.wait(timeout=30)
    ended = next(line for line in logs if 'episode 1 ended' in line)
    assert float(re.search(r'reward (-?[\d.]+)', ended).group(1)) > 0, (tmp_path / 'robot.log').read_text()[-2000:]
    assert actions and all(len(a.action_probs) == 2 and a.action_probs[1] > 0.99 and list(a.options) == [1]
                           for a in actions)


def test_a_chosen_option_is_held_for_option_hold_frames(tmp_path):
    """In evaluation (OptionLevelEnv(hold=k)) and on a robot (CameraPolicy option_hold=k) an option
    is chosen every k-th frame of an episode and its skill runs in between, whatever the policy says."""
    size = dict(width=48, height=48, observation='rgbd_map')
    held, every, unheld = (OptionLevelEnv(EmbodiedVecEnv(TASK, 1, **size), hold=hold) for hold in (3, 1, 1))
    step, alone, raw = held.reset(seed=102), every.reset(seed=102), unheld.reset(seed=102)
    # Until the ball is in view (frame 27 of seed 102) explore and go to move alike.
    said = [1] * 27 + [1, 0, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1]
    taken = [said[t - t % 3] for t in range(len(said))]  # what frames 0, 3, 6, ... chose
    differ = 0
    for a, b in zip(said, taken):
        step, alone, raw = held.step(np.array([a])), every.step(np.array([b])), unheld.step(np.array([a]))
        assert step.observations.tobytes() == alone.observations.tobytes()
        differ += step.observations.tobytes() != raw.observations.tobytes()
    assert differ, 'the control: choosing every frame what the policy says goes elsewhere in these frames'
    for envs in (held, every, unheld):
        envs.close()

    net = ActorCritic((48, 48, 8), 2, encoder='image_map')
    with torch.no_grad():  # even odds: sampled, the policy says another option now and then
        net.actor.weight.zero_()
        net.actor.bias.zero_()
    policy = load_policy(export_policy(tmp_path / 'even.pt', net, TASK, chooses_options=True))
    with pytest.raises(ValueError, match='option_hold must be a whole number of frames >= 1'):
        CameraPolicy(policy, observation='rgbd_map', option_hold=0)
    envs = EmbodiedVecEnv(TASK, 1, perceive=True, **size)
    skills = EmbodiedSkills()
    for hold in (1, 4):
        controller = CameraPolicy(policy, observation='rgbd_map', greedy=False, option_hold=hold)
        step = envs.reset(seed=100)
        controller.set_mission(step.perceptions[0].mission)
        options = []
        for _ in range(16):
            p = step.perceptions[0]
            seen = seen_through_topics(p)
            action, _ = controller.act(step.observations[0], seen)
            options.append(controller.held_option)
            assert action == skills.motion(mission_options(p.mission)[controller.held_option], p)
            step = envs.step(np.array([action]))
        if hold == 1:
            assert len(set(options)) == 2  # (this seed's samples: both options)
        else:
            assert all(len(set(options[i:i + hold])) == 1 for i in range(0, 16, hold))
    envs.close()


def test_the_skills_on_a_robot_refuse_maps_they_cannot_plan_on():
    """A map at another resolution than the skills' cells is refused; a robot off the map's known
    part (a depth camera never sees the floor under it) plans on the whole map; one off the map, refused."""
    from llm_teacher_common.perception import FREE, UNKNOWN, OccupancyGrid
    cells = np.full((40, 40), UNKNOWN, np.int8)
    cells[20:30, 20:30] = FREE
    fine = OccupancyGrid(cells, (0.0, 0.0), 0.05)
    with pytest.raises(ValueError, match='map resolution 0.05 m: the skills plan on 0.25 m cells'):
        robot_perception('go to the red ball', fine, (6.0, 6.0, 0.0), [(8.0, 6.0)])
    grid = OccupancyGrid(cells, (0.0, 0.0), 0.25)
    skills, option = EmbodiedSkills(), mission_options('go to the red ball')[1]
    beside = robot_perception('go to the red ball', grid, (4.0, 6.0, 0.0), [(7.0, 6.0)])  # cell 16: 2 off the known part's margin
    assert skills.motion(option, beside) in range(8)
    off = robot_perception('go to the red ball', grid, (-3.0, 6.0, 0.0), [(7.0, 6.0)])
    with pytest.raises(ValueError, match=r'the robot at \(-3, 6\) is off its map'):
        skills.motion(option, off)
