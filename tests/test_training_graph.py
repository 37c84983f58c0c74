"""The training graph of train.launch.py as real processes: sim node <-> student node over DDS."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from llm_teacher_msgs.msg import SuggestionBatch, TeacherStatus, TrainingStatus
from mcap_ros2.reader import read_ros2_messages
from ros_helpers import spin_until
from sensor_msgs.msg import Image
from websockets.sync.client import connect

from llm_teacher_common.messages import suggestions_from_msg, top_suggestion
from llm_teacher_common.launch_runner import LaunchRunner, load_launch_file, resolve_arguments
from llm_teacher.report import frame_strip, make_report, read_recording, suggestion_at
from student_policy.checkpoints import read_checkpoint

LAUNCH = Path(__file__).resolve().parent.parent / 'launch' / 'train.launch.py'
NUM_ENVS, NUM_STEPS = 4, 32
ROLLOUT = NUM_ENVS * NUM_STEPS


def training_graph(run_dir: Path, total_frames: int, num_groups: int = 1):
    """train.launch.py's node table, with a tiny rollout so that tests run in seconds."""
    launch = load_launch_file(LAUNCH)
    args = resolve_arguments(launch.ARGUMENTS, [f'run_dir:={run_dir}', f'total_frames:={total_frames}',
                                                f'num_envs:={NUM_ENVS}', 'plain_ppo:=true', 'foxglove_port:=0',
                                                f'num_groups:={num_groups}'])
    specs = launch.nodes(args)
    student = next(s for s in specs if s.executable == 'student_node')
    student.parameters.append({'num_steps': NUM_STEPS, 'checkpoint_every': 1, 'eval_episodes': 4, 'test_episodes': 4})
    # These runs last seconds: sampling one step batch in 20 left 4 samples, and when the recorder's
    # action_batch subscription was discovered a second late (a fresh-clone CI run) none had its actions.
    next(s for s in specs if s.executable == 'recorder_node').parameters.append({'step_every': 1})
    return specs


def foxglove_hello(logs: list[str]) -> list[dict]:
    """The first messages of the run's Foxglove WebSocket server to a client on localhost."""
    port = next(int(m.group(1)) for line in logs if (m := re.search(r'Foxglove WebSocket server on ws://127.0.0.1:(\d+)', line)))
    with connect(f'ws://127.0.0.1:{port}', subprotocols=['foxglove.sdk.v1'], open_timeout=10) as ws:
        return [json.loads(ws.recv(timeout=10)) for _ in range(2)]


def test_student_and_sim_train_across_processes(tmp_path, ros_node):
    statuses = []
    ros_node.create_subscription(TrainingStatus, 'training_status', statuses.append, 10)
    logs = []
    runner = LaunchRunner(training_graph(tmp_path, total_frames=3 * ROLLOUT), log=logs.append)
    with runner:
        # Step batches went sim -> student and action batches back, or no rollout would finish.
        spin_until(ros_node, lambda: len(statuses) >= 1, 120, 'a training_status message from student_node')
        hello = foxglove_hello(logs)
        spin_until(ros_node, lambda: any(s.frames == 3 * ROLLOUT for s in statuses), 120,
                   'the training_status of the last update')
        code = runner.wait()  # the student exits at its budget; the runner stops the others
    assert code == 0, '\n'.join(logs)
    # One status per update. (Under load this node's subscription can match after the first one
    # was sent, so the statuses seen are a tail of [128, 256, 384].)
    frames = [s.frames for s in statuses]
    assert frames == [ROLLOUT * k for k in range(4 - len(frames), 4)], frames
    assert all(s.updates == s.frames // ROLLOUT and s.teacher_weight == 0.0 for s in statuses)
    assert all(p.poll() is not None for p in runner.processes.values())
    assert (tmp_path / 'policy.pt').is_file() and (tmp_path / 'policy_last.pt').is_file()
    assert (tmp_path / 'tensorboard').is_dir()
    assert (tmp_path / 'learning_curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    final = json.loads((tmp_path / 'eval.json').read_text())
    assert final["frames"] == 3 * ROLLOUT and final["episodes"] == 4 and 0 <= final["success_rate"] <= 1
    # policy.pt is the best greedy evaluation (a tie goes to the later one), tested on other seeds.
    assert final['best']['frames'] == 3 * ROLLOUT or final['best']['success_rate'] > final['success_rate']
    assert final['test']['episodes'] == 4 and final['test']['seed'] != 10_000
    assert 0 <= final['test']['success_rate_sampled'] <= 1 and 'success_rate_sampled' not in final
    assert any('training done at frame 384: policy' in line and 'tested on unseen seeds 20000+: greedy success' in line and ', sampled ' in line
               for line in logs)
    assert read_checkpoint(tmp_path / 'checkpoints' / 'last.pt')['counters']['frames'] == 3 * ROLLOUT

    # The live view answered a WebSocket client, and advertised the run's channels.
    assert hello[0]['op'] == 'serverInfo' and hello[1]['op'] == 'advertise'
    assert {'/image', '/training/status', '/teacher/suggestion'} <= {c['topic'] for c in hello[1]['channels']}

    # The recording decodes with an independent MCAP reader (mcap-ros2-support, not rosbags).
    recording, = (tmp_path / 'recordings').glob('*/*.mcap')
    messages = [(m.channel.topic, m.ros_msg) for m in read_ros2_messages(str(recording))]
    topics = {topic for topic, _ in messages}
    assert {'/step_batch', '/action_batch', '/training_status', '/image'} <= topics, topics
    assert '/perception_batch' not in topics  # plain PPO: no teacher, so no one needs them
    steps = {msg.seq: msg for topic, msg in messages if topic == '/step_batch'}
    actions = {msg.seq: msg for topic, msg in messages if topic == '/action_batch'}
    assert len(steps) >= 2 and set(actions) <= set(steps)  # a sample of the batches, with their answers
    for msg in steps.values():
        assert msg.num_envs == NUM_ENVS and len(msg.observations) == NUM_ENVS * 10 * 10 * 4
    for msg in actions.values():
        assert len(msg.actions) == NUM_ENVS and len(msg.action_probs) == NUM_ENVS * 7
    # The recorder may join a moment after the first status; what it got is in order and exact.
    recorded = [m.frames for t, m in messages if t == '/training_status']
    assert recorded and recorded == sorted(recorded) and set(recorded) <= {ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT}


def test_double_buffered_sampling_trains_through_the_graph(tmp_path, ros_node):
    """num_groups:=2: the sim steps one half of the envs while the student acts on the other; the
    student fills one rollout of all envs from both groups' batches and updates once per rollout.
    The student has a memory (recurrent): its states follow both groups, and what it exports carries it."""
    statuses = []
    ros_node.create_subscription(TrainingStatus, 'training_status', statuses.append, 10)
    logs = []
    specs = training_graph(tmp_path, total_frames=3 * ROLLOUT, num_groups=2)
    next(s for s in specs if s.executable == 'student_node').parameters.append({'recurrent': 16})
    runner = LaunchRunner(specs, log=logs.append)
    with runner:
        spin_until(ros_node, lambda: any(s.frames == 3 * ROLLOUT for s in statuses), 180,
                   'the training_status of the last update')
        code = runner.wait()
    assert code == 0, '\n'.join(logs)
    assert any(f'new student for {NUM_ENVS} envs (2 group(s))' in line for line in logs), '\n'.join(logs)
    assert all(s.frames == s.updates * ROLLOUT for s in statuses)
    saved = read_checkpoint(tmp_path / 'checkpoints' / 'last.pt')
    assert saved['counters']['frames'] == 3 * ROLLOUT and saved['config']['recurrent'] == 16
    assert json.loads((tmp_path / 'policy.json').read_text())['recurrent'] == 16
    recording, = (tmp_path / 'recordings').glob('*/*.mcap')
    steps = [m.ros_msg for m in read_ros2_messages(str(recording)) if m.channel.topic == '/step_batch']
    assert {msg.group for msg in steps} == {0, 1}  # the recorder samples every group
    assert all(msg.num_envs == NUM_ENVS // 2 and msg.num_groups == 2 for msg in steps)


@pytest.mark.parametrize('bad, message', [
    (['num_envs=3'], "is not of the form name:=value"),
    (['colour:=red'], "unknown launch argument 'colour'"),
    (['avoid_lava:=flase'], "'avoid_lava' must be true or false, not 'flase'"),
])
def test_bad_launch_arguments_are_named(bad, message):
    launch = load_launch_file(LAUNCH)
    with pytest.raises(ValueError, match=message):
        launch.nodes(resolve_arguments(launch.ARGUMENTS, bad))


def test_the_lava_blind_teacher_is_a_launch_argument():
    launch = load_launch_file(LAUNCH)
    teachers = [next(s for s in launch.nodes(resolve_arguments(launch.ARGUMENTS, given)) if s.executable == 'teacher_node')
                for given in ([], ['avoid_lava:=false'])]
    assert [t.parameters[-1]['avoid_lava'] for t in teachers] == [True, False]


def test_memory_mission_and_map_are_launch_arguments():
    launch = load_launch_file(LAUNCH)

    def overrides(given):  # what the launch sets on top of the config files
        specs = {s.executable: s for s in launch.nodes(resolve_arguments(launch.ARGUMENTS, given))}
        return specs['batch_sim_node'].parameters[-1], specs['student_node'].parameters[1]
    sim, student = overrides([])
    assert 'observation' not in sim and not {'recurrent', 'mission'} & set(student)  # the config's, unless given
    sim, student = overrides(['observation:=rgbd_map', 'recurrent:=128', 'mission:=true'])
    assert sim['observation'] == 'rgbd_map' and student['recurrent'] == 128 and student['mission'] is True


@pytest.mark.slow
def test_a_camera_and_map_student_that_reads_its_mission_trains_through_the_graph(tmp_path, ros_node):
    """MiniWorld robots in batch_sim_node (camera + map crop), a recurrent student that reads the
    missions the step batches carry: it trains, and its checkpoint and export keep the words."""
    launch = load_launch_file(LAUNCH)
    args = resolve_arguments(launch.ARGUMENTS, [f'run_dir:={tmp_path}', 'total_frames:=128', 'num_envs:=2',
                                                'task:=MiniWorld-GoToObject-v0', 'plain_ppo:=true', 'record:=false',
                                                'foxglove_port:=-1', 'observation:=rgbd_map', 'recurrent:=16',
                                                'mission:=true'])
    specs = launch.nodes(args)
    next(s for s in specs if s.executable == 'batch_sim_node').parameters.append({'render_hz': 0.0})
    next(s for s in specs if s.executable == 'student_node').parameters.append(
        {'num_steps': 32, 'minibatch_size': 32, 'eval_episodes': 2, 'test_episodes': 2, 'compile': 'false'})
    logs = []
    runner = LaunchRunner(specs, log=logs.append)
    with runner:
        code = runner.wait()  # the student exits at its budget; the runner stops the sim
    assert code == 0, '\n'.join(logs[-40:])
    words = read_checkpoint(tmp_path / 'checkpoints' / 'last.pt')['mission_words']
    assert words[:3] == ['go', 'to', 'the'], words
    info = json.loads((tmp_path / 'policy.json').read_text())
    assert info['encoder'] == 'image_map' and info['obs_shape'][2] == 8 and info['mission_words'] == words[:len(info['mission_words'])]
    assert info['recurrent'] == 16 and info['mission_length'] > 0


@pytest.mark.slow
def test_the_llm_teacher_node_teaches_the_student_through_the_graph(tmp_path, ros_node):
    """Sim, embedded-LLM teacher and student as processes: suggestions arrive and are distilled."""
    launch = load_launch_file(LAUNCH)
    args = resolve_arguments(launch.ARGUMENTS, [f'run_dir:={tmp_path}', f'total_frames:={400 * ROLLOUT}',
                                                f'num_envs:={NUM_ENVS}', 'foxglove_port:=-1'])
    specs = launch.nodes(args)
    assert [s.executable for s in specs] == ['batch_sim_node', 'student_node', 'teacher_node', 'visualization_node',
                                             'recorder_node']
    specs[1].parameters.append({'num_steps': NUM_STEPS})
    assert specs[2].parameters[-1]['cache_path'] == str(tmp_path / 'answers.sqlite')  # the run keeps its answers
    statuses, teacher_statuses, suggestions, images = [], [], [], []
    ros_node.create_subscription(TrainingStatus, 'training_status', statuses.append, 10)
    ros_node.create_subscription(TeacherStatus, 'teacher_status', teacher_statuses.append, 10)
    ros_node.create_subscription(SuggestionBatch, 'suggestion_batch', suggestions.append, 10)
    ros_node.create_subscription(Image, 'image', images.append, 1)
    logs = []
    with LaunchRunner(specs, log=logs.append):
        spin_until(ros_node, lambda: any(s.teacher_coverage > 0.5 for s in statuses), 240,
                   'training_status with teacher coverage above 0.5 (is teacher_node answering?)')
        spin_until(ros_node, lambda: teacher_statuses and teacher_statuses[-1].llm_calls > 0, 60,
                   'teacher_status with an LLM call')
        # The report's strip shows env 0 (the rendered one): wait for an answer for it (with a fresh
        # cache the LLM answers new prompts one by one, and env 0 may wait a while), then for two
        # frames after it (the rendering comes at 2 Hz) so that the recording holds both.
        spin_until(ros_node, lambda: any(top_suggestion(batch, 0) for batch in suggestions), 120,
                   'a suggestion for env 0, the rendered one')
        shown = len(images)
        spin_until(ros_node, lambda: len(images) >= shown + 2, 30, 'two more images from batch_sim_node')
    assert any(s.teacher_weight > 9 for s in statuses)
    assert any(batch.valid.count(True) for batch in suggestions), '\n'.join(logs[-30:])
    for batch in suggestions[:50]:
        read = suggestions_from_msg(batch)
        assert batch.source == 'transformers:SmolLM2-135M-Instruct' and read.action_probs.shape[1] == 7
        assert np.allclose(read.action_probs[read.valid].sum(axis=1), 1, atol=1e-4)
        for env in np.flatnonzero(read.valid):
            assert abs(read.option_probs[read.option_env == env].sum() - 1) < 1e-4
    assert teacher_statuses[-1].llm_errors == 0

    # The report command turns the run directory into a page with the teacher's suggestions.
    png, page = make_report(tmp_path, teacher_episodes=2)
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and 'data:image/png;base64,' in page.read_text()
    recording = read_recording(tmp_path)
    assert recording['/teacher_status'] and recording['/image'] and recording['/suggestion_batch']
    # With a teacher the perceptions it read are recorded too, with the sampled step batches.
    steps = {msg.seq for _, msg in recording.get('/step_batch', [])}
    perceptions = [msg for _, msg in recording.get('/perception_batch', [])]
    assert perceptions and {msg.seq for msg in perceptions} <= steps
    assert all(len(msg.pose_x) == NUM_ENVS and msg.task_family == 'gridworld' for msg in perceptions)
    texts = [suggestion_at(recording['/suggestion_batch'], t) for t, _ in recording['/image']]
    assert any(text != 'no suggestion yet' for text in texts), texts


@pytest.mark.slow
def test_an_embodied_robot_learns_from_its_camera_through_the_graph(tmp_path, ros_node):
    """train.launch.py with a MiniWorld task: the sim node sends rgbd images and perceptions with
    the robot's occupancy map, the teacher plans embodied skills on it, the student trains a CNN."""
    launch = load_launch_file(LAUNCH)
    args = resolve_arguments(launch.ARGUMENTS, [f'run_dir:={tmp_path}', f'total_frames:={400 * ROLLOUT}',
                                                f'num_envs:={NUM_ENVS}', 'task:=MiniWorld-GoToObject-v0',
                                                'foxglove_port:=-1', 'record:=false'])
    specs = launch.nodes(args)
    specs[1].parameters.append({'num_steps': NUM_STEPS, 'checkpoint_every': 1})
    statuses, suggestions = [], []
    ros_node.create_subscription(TrainingStatus, 'training_status', statuses.append, 10)
    ros_node.create_subscription(SuggestionBatch, 'suggestion_batch', suggestions.append, 10)
    logs = []
    with LaunchRunner(specs, log=logs.append):
        spin_until(ros_node, lambda: sum(s.teacher_coverage > 0.5 for s in statuses) >= 2, 300,
                   'two rollouts with teacher coverage above 0.5 (is teacher_node answering?)')
    assert any(batch.valid.count(True) for batch in suggestions), '\n'.join(logs[-30:])
    for batch in suggestions[:50]:
        read = suggestions_from_msg(batch)
        assert read.action_probs.shape[1] == 8  # MiniWorld's actions
        assert np.allclose(read.action_probs[read.valid].sum(axis=1), 1, atol=1e-4)
    state = read_checkpoint(tmp_path / 'checkpoints' / 'last.pt')
    assert state['config']['encoder'] == 'image' and state['obs_shape'] == [64, 64, 4]


def test_ctrl_c_stops_every_node_and_the_next_run_resumes(tmp_path):
    """As a user would: the launch command in a terminal, Ctrl-C (SIGINT) once a checkpoint exists, run again."""
    command = [sys.executable, '-m', 'llm_teacher_common.launch_runner', str(LAUNCH), f'run_dir:={tmp_path}',
               'num_envs:=4', 'plain_ppo:=true', 'foxglove_port:=0', 'total_frames:=1000000']
    checkpoint = tmp_path / 'checkpoints' / 'last.pt'
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    assert checkpoint.exists(), 'no checkpoint within 180 s'
    first.send_signal(signal.SIGINT)
    output = first.communicate(timeout=60)[0]
    assert first.returncode == 0, output
    pids = [int(pid) for pid in re.findall(r'started \w+ \(pid (\d+)\)', output)]
    assert len(pids) == 4 and not [pid for pid in pids if Path(f'/proc/{pid}').exists()], output
    saved = read_checkpoint(checkpoint)['counters']
    recording, = (tmp_path / 'recordings').glob('*/*.mcap')
    assert any(m.channel.topic == '/training_status' for m in read_ros2_messages(str(recording)))  # closed cleanly

    second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any('resumed from' in line for line in lines):
        lines.append(second.stdout.readline())
    second.send_signal(signal.SIGINT)
    second.communicate(timeout=60)
    assert any(f'at frame {saved["frames"]}, update {saved["updates"]}' in line for line in lines), ''.join(lines)


def test_report_strip_shows_the_episode_moving_not_the_frozen_end():
    """After the student stops at its budget the sim keeps rendering the same picture; the strip
    takes the last distinct frames from while it was still stepping."""
    def image(value):
        return Image(height=1, width=1, encoding='rgb8', step=3, data=bytes([value] * 3))
    images = [(t, image(v)) for t, v in ((1, 0), (2, 1), (3, 1), (4, 2), (5, 3), (6, 3), (7, 3), (8, 3))]
    steps = [(5, 'batch')]  # the last step batch recorded: the sim stopped stepping after t=5
    strip = frame_strip(images, steps, frames=3)
    assert [t for t, _ in strip] == [2, 4, 5]
