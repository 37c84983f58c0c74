"""`sim_processes:=N`: train.launch.py starts N sim processes on one host, each stepping its share
of the env groups, and one teacher answers them all."""
from pathlib import Path

import pytest
from llm_teacher_msgs.msg import SuggestionBatch, TeacherStatus, TrainingStatus
from ros_helpers import spin_until

from llm_teacher_common.launch_runner import LaunchRunner, load_launch_file, resolve_arguments

LAUNCH = Path(__file__).resolve().parent.parent / 'launch' / 'train.launch.py'
NUM_ENVS, NUM_STEPS, FRAMES = 8, 32, 6144  # two groups of 4; 24 updates, time for the LLM's first answers


def launch(run_dir, *given: str) -> list:
    file = load_launch_file(LAUNCH)
    args = resolve_arguments(file.ARGUMENTS, [f'run_dir:={run_dir}', f'total_frames:={FRAMES}', f'num_envs:={NUM_ENVS}',
                                              'foxglove_port:=-1', 'record:=false', *given])
    specs = file.nodes(args)
    for spec in specs:
        if spec.executable == 'student_node':
            spec.parameters.append({'num_steps': NUM_STEPS, 'eval_every': 1000, 'eval_episodes': 2, 'test_episodes': 2})
    return specs


def sims(specs) -> list[tuple[str, str]]:
    return [(s.name, s.parameters[-1]['groups']) for s in specs if s.executable == 'batch_sim_node']


def test_each_sim_process_hosts_an_equal_share_of_the_groups(tmp_path):
    assert sims(launch(tmp_path)) == [('batch_sim_node', '')]
    assert sims(launch(tmp_path, 'num_groups:=2', 'sim_processes:=2')) == [('batch_sim_node_0', '0'),
                                                                          ('batch_sim_node_1', '1')]
    # On one of several hosts: the groups given there, shared out; one teacher serves them all.
    specs = launch(tmp_path, 'num_groups:=8', 'groups:=1,3,5,7', 'sim_processes:=2', 'roles:=sim,teacher')
    assert sims(specs) == [('batch_sim_node_1_3', '1,3'), ('batch_sim_node_5_7', '5,7')]
    assert [(s.name, s.parameters[-1]['groups']) for s in specs if s.executable == 'teacher_node'] == [
        ('teacher_node_1_3_5_7', '1,3,5,7')]


@pytest.mark.parametrize('given, error', [
    (['sim_processes:=0'], r"sim_processes '0': give a number of sim processes, 1 or more"),
    (['sim_processes:=two'], r"sim_processes 'two': give a number"),
    (['sim_processes:=2'], r'sim_processes 2 does not divide the 1 env group\(s\) served here \(0\).*num_groups:=2'),
    (['num_groups:=4', 'sim_processes:=3'], r'does not divide the 4 .* set num_groups:=12 .*or sim_processes to a '
                                            r'divisor of 4'),
    (['num_groups:=4', 'groups:=0,1,2', 'sim_processes:=2'], r'served here \(0,1,2\).* set groups to a list of a '
                                                             r'multiple of 2 groups'),
])
def test_a_bad_number_of_sim_processes_names_the_fix(tmp_path, given, error):
    with pytest.raises(ValueError, match=error):
        launch(tmp_path, *given)


@pytest.mark.slow
def test_two_sim_processes_and_one_teacher_train_a_student(tmp_path, ros_node):
    statuses, teacher, epochs = [], [], {}
    ros_node.create_subscription(TrainingStatus, 'training_status', statuses.append, 100)
    ros_node.create_subscription(TeacherStatus, 'teacher_status', teacher.append, 10)
    ros_node.create_subscription(SuggestionBatch, 'suggestion_batch',
                                 lambda b: epochs.setdefault(b.group, set()).add(b.epoch), 100)
    sims_and_teacher = launch(tmp_path, 'num_groups:=2', 'sim_processes:=2', 'roles:=sim,teacher')
    assert [s.name for s in sims_and_teacher if s.executable == 'teacher_node'] == ['teacher_node']
    logs = []
    with LaunchRunner(sims_and_teacher, log=logs.append):
        # The learner starts once the teacher has loaded its LLM (MiniGrid trains this budget faster).
        spin_until(ros_node, lambda: teacher, 120, "the teacher's status")
        with LaunchRunner(launch(tmp_path, 'num_groups:=2', 'roles:=learner'), log=logs.append) as learner:
            spin_until(ros_node, lambda: statuses and statuses[-1].frames >= FRAMES, 300, 'training to its budget')
            code = learner.wait()
    assert code == 0, '\n'.join(logs[-30:])
    # The learner updates only when both groups filled their rows: every update had both sims' samples.
    assert statuses[-1].updates == FRAMES // (NUM_ENVS * NUM_STEPS)
    assert max(s.teacher_coverage for s in statuses) > 0  # the learner took suggestions for its samples
    # Two sim processes (each its own epoch), both answered by the one teacher.
    assert len(epochs[0]) == len(epochs[1]) == 1 and epochs[0] != epochs[1]
    for group in ('0', '1'):
        assert any(f'[batch_sim_node_{group}]' in line and f'hosting group(s) [{group}]' in line for line in logs)
