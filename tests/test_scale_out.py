"""Training across hosts, on one machine: two sim processes (one env group each) and two teacher
processes (one group each) feed one learner, as train.launch.py's roles start them on three hosts."""
from pathlib import Path

import pytest
from llm_teacher_msgs.msg import SuggestionBatch, TrainingStatus
from ros_helpers import spin_until

from llm_teacher_common.launch_runner import LaunchRunner, load_launch_file, resolve_arguments

LAUNCH = Path(__file__).resolve().parent.parent / 'launch' / 'train.launch.py'
NUM_ENVS, NUM_STEPS = 8, 32  # two groups of 4


def host(run_dir, roles: str, groups: str = '') -> list:
    launch = load_launch_file(LAUNCH)
    args = resolve_arguments(launch.ARGUMENTS, [f'run_dir:={run_dir}', 'total_frames:=6144', f'num_envs:={NUM_ENVS}',
                                                'num_groups:=2', f'roles:={roles}', f'groups:={groups}',
                                                'foxglove_port:=-1', 'record:=false'])
    specs = launch.nodes(args)
    for spec in specs:
        if spec.executable == 'student_node':
            spec.parameters.append({'num_steps': NUM_STEPS, 'eval_every': 1000, 'eval_episodes': 2, 'test_episodes': 2})
    return specs


def test_roles_and_groups_name_the_nodes_of_each_host(tmp_path):
    names = [s.name for s in host(tmp_path, 'sim,teacher', '1')]
    assert names == ['batch_sim_node_1', 'teacher_node_1']
    sim = host(tmp_path, 'sim', '0,1')[0]
    assert {'groups': '0,1'}.items() <= sim.parameters[-1].items() and isinstance(sim.parameters[0], dict)
    assert [s.executable for s in host(tmp_path, 'learner')] == ['student_node', 'visualization_node']
    with pytest.raises(ValueError, match="roles 'simulator'"):
        host(tmp_path, 'simulator')


@pytest.mark.slow
def test_two_sims_and_two_teachers_feed_one_learner(tmp_path, ros_node):
    statuses, suggested = [], {}
    ros_node.create_subscription(TrainingStatus, 'training_status', statuses.append, 100)
    ros_node.create_subscription(SuggestionBatch, 'suggestion_batch',
                                 lambda b: suggested.setdefault(b.group, set()).add(b.epoch), 100)
    specs = host(tmp_path, 'learner') + host(tmp_path, 'sim,teacher', '0') + host(tmp_path, 'sim,teacher', '1')
    logs = []
    with LaunchRunner(specs, log=logs.append) as runner:
        # The learner updates only when both groups filled their rows: reaching the budget means
        # every group's samples reached it.
        spin_until(ros_node, lambda: len(suggested) == 2, 120, 'suggestions for both groups')
        spin_until(ros_node, lambda: statuses and statuses[-1].frames >= 6144, 300, 'training to its budget')
        code = runner.wait()
    assert code == 0, '\n'.join(logs[-30:])
    assert statuses[-1].updates == 6144 // (NUM_ENVS * NUM_STEPS) and statuses[-1].teacher_coverage > 0
    # One sim process per group (each has its own epoch), each group answered by its own teacher.
    assert len(suggested[0]) == len(suggested[1]) == 1 and suggested[0] != suggested[1]
    for group in ('0', '1'):
        assert any(f'[batch_sim_node_{group}]' in line and f'hosting group(s) [{group}]' in line for line in logs)
