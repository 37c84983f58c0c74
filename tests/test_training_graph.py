"""The training graph of train.launch.py as real processes: sim node <-> student node over DDS."""
import json
from pathlib import Path

import pytest
from llm_teacher_msgs.msg import SuggestionBatch, TeacherStatus, TrainingStatus
from ros_helpers import spin_until

from llm_teacher.launch_runner import LaunchRunner, load_launch_file, resolve_arguments
from student_policy.checkpoints import read_checkpoint

LAUNCH = Path(__file__).resolve().parent.parent / 'launch' / 'train.launch.py'
NUM_ENVS, NUM_STEPS = 4, 32
ROLLOUT = NUM_ENVS * NUM_STEPS


def training_graph(run_dir: Path, total_frames: int):
    """train.launch.py's node table, with a tiny rollout so that tests run in seconds."""
    launch = load_launch_file(LAUNCH)
    args = resolve_arguments(launch.ARGUMENTS, [f'run_dir:={run_dir}', f'total_frames:={total_frames}',
                                                f'num_envs:={NUM_ENVS}', 'plain_ppo:=true'])
    specs = launch.nodes(args)
    student = next(s for s in specs if s.executable == 'student_node')
    student.parameters.append({'num_steps': NUM_STEPS, 'checkpoint_every': 1, 'eval_episodes': 4})
    return specs


def test_student_and_sim_train_across_processes(tmp_path, ros_node):
    statuses = []
    ros_node.create_subscription(TrainingStatus, 'training_status', statuses.append, 10)
    logs = []
    runner = LaunchRunner(training_graph(tmp_path, total_frames=3 * ROLLOUT), log=logs.append)
    with runner:
        # Step batches went sim -> student and action batches back, or no rollout would finish.
        spin_until(ros_node, lambda: len(statuses) >= 2, 120, 'two training_status messages from student_node')
        code = runner.wait()  # the student exits at its budget; the runner stops the sim
    assert code == 0, '\n'.join(logs)
    assert [s.frames for s in statuses[:2]] == [ROLLOUT, 2 * ROLLOUT]
    assert statuses[1].updates == 2 and statuses[1].teacher_weight == 0.0
    assert all(p.poll() is not None for p in runner.processes.values())
    assert (tmp_path / 'policy.pt').is_file() and (tmp_path / 'tensorboard').is_dir()
    assert (tmp_path / 'learning_curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    final = json.loads((tmp_path / 'eval.json').read_text())
    assert final["frames"] == 3 * ROLLOUT and final["episodes"] == 4 and 0 <= final["success_rate"] <= 1
    assert 0 <= final["success_rate_sampled"] <= 1
    assert any('training done at frame 384: greedy success' in line for line in logs)
    assert read_checkpoint(tmp_path / 'checkpoints' / 'last.pt')['counters']['frames'] == 3 * ROLLOUT


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, ros_node):
    statuses = []
    ros_node.create_subscription(TrainingStatus, 'training_status', statuses.append, 10)
    with LaunchRunner(training_graph(tmp_path, total_frames=100 * ROLLOUT), log=lambda line: None) as runner:
        spin_until(ros_node, lambda: len(statuses) >= 2, 120, 'training_status from student_node')
        student = runner.processes['student_node']
        student.kill()  # no clean shutdown: what survives is the last checkpoint
        student.wait(timeout=10)
    saved = read_checkpoint(tmp_path / 'checkpoints' / 'last.pt')['counters']
    assert saved['frames'] >= 2 * ROLLOUT

    statuses.clear()
    logs = []
    with LaunchRunner(training_graph(tmp_path, total_frames=100 * ROLLOUT), log=logs.append):
        spin_until(ros_node, lambda: statuses, 120, 'training_status from the resumed student_node')
    assert any(f'resumed from {tmp_path}' in line and f'at frame {saved["frames"]}, update {saved["updates"]}' in line
               for line in logs), '\n'.join(logs)
    assert statuses[0].frames == saved['frames'] + ROLLOUT and statuses[0].updates == saved['updates'] + 1


@pytest.mark.parametrize('bad, message', [
    (['num_envs=3'], "is not of the form name:=value"),
    (['colour:=red'], "unknown launch argument 'colour'"),
])
def test_bad_launch_arguments_are_named(bad, message):
    launch = load_launch_file(LAUNCH)
    with pytest.raises(ValueError, match=message):
        resolve_arguments(launch.ARGUMENTS, bad)


def test_the_llm_teacher_node_teaches_the_student_through_the_graph(tmp_path, ros_node):
    """Sim, embedded-LLM teacher and student as processes: suggestions arrive and are distilled."""
    launch = load_launch_file(LAUNCH)
    args = resolve_arguments(launch.ARGUMENTS, [f'run_dir:={tmp_path}', f'total_frames:={40 * ROLLOUT}',
                                                f'num_envs:={NUM_ENVS}'])
    specs = launch.nodes(args)
    assert [s.executable for s in specs] == ['minigrid_sim_node', 'student_node', 'teacher_node']
    specs[1].parameters.append({'num_steps': NUM_STEPS})
    specs[2].parameters.append({'cache_path': str(tmp_path / 'answers.sqlite')})
    statuses, teacher_statuses, suggestions = [], [], []
    ros_node.create_subscription(TrainingStatus, 'training_status', statuses.append, 10)
    ros_node.create_subscription(TeacherStatus, 'teacher_status', teacher_statuses.append, 10)
    ros_node.create_subscription(SuggestionBatch, 'suggestion_batch', suggestions.append, 10)
    logs = []
    with LaunchRunner(specs, log=logs.append):
        spin_until(ros_node, lambda: any(s.teacher_coverage > 0.5 for s in statuses), 240,
                   'training_status with teacher coverage above 0.5 (is teacher_node answering?)')
        spin_until(ros_node, lambda: teacher_statuses and teacher_statuses[-1].llm_calls > 0, 60,
                   'teacher_status with an LLM call')
    assert any(s.teacher_weight > 9 for s in statuses)
    valid = [s for batch in suggestions for s in batch.suggestions if s.valid]
    assert valid, '\n'.join(logs[-30:])
    for s in valid[:50]:
        assert s.source == 'transformers:SmolLM2-135M-Instruct' and len(s.action_probs) == 7
        assert abs(sum(s.action_probs) - 1) < 1e-4 and abs(sum(s.option_probs) - 1) < 1e-4
    assert teacher_statuses[-1].llm_errors == 0
