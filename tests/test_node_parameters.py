"""Every node's parameters, asked of the running node over its parameter services: the same set as
config/<node>.yaml, with the same defaults, and each with a description."""
import subprocess
import sys
from xml.etree import ElementTree
from pathlib import Path

import pytest
import yaml
from rclpy.parameter import parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient
from ros_helpers import spin_until

from llm_teacher_common.launch_runner import executable_path, load_launch_file, resolve_arguments
from student_policy.checkpoints import export_policy
from student_policy.networks import ActorCritic

CONFIG = Path(__file__).resolve().parent.parent / 'config'
SRC = Path(__file__).resolve().parent.parent / 'ros2_ws' / 'src'
NODES = {'batch_sim_node': 'habitat_bridge', 'robot_sim_node': 'habitat_bridge', 'teacher_node': 'llm_teacher',
         'recorder_node': 'llm_teacher', 'visualization_node': 'llm_teacher', 'student_node': 'student_policy',
         'policy_node': 'student_deploy', 'robot_policy_node': 'student_deploy'}
ROS_OWN = {'use_sim_time', 'start_type_description_service'}  # every rclpy node declares these
# Started with these instead of their defaults (a free port); their defaults are compared as text.
# The batch_sim_node started beside it feeds student_node step batches, so it builds its learner, and
# a compile on a cold cache (20-40 s here) holds its executor past the service calls' deadline.
OVERRIDES = {'visualization_node': {'foxglove_port': '0'}, 'student_node': {'compile': 'false'}}


def test_every_node_has_a_config_file():
    assert {p.stem for p in CONFIG.glob('*.yaml')} == set(NODES)


@pytest.fixture(scope='module')
def running_nodes(tmp_path_factory):
    """Every node started with its code defaults, in a directory where the deploy nodes find their
    default policy (runs/train/policy.pt); one directory each, as each default path is a policy."""
    processes = {}
    for node, package in NODES.items():
        cwd = tmp_path_factory.mktemp(node)
        if node.endswith('policy_node'):
            camera = node == 'robot_policy_node'
            policy = ActorCritic((64, 64, 4) if camera else (10, 10, 4), 8 if camera else 7,
                                 encoder='image' if camera else 'grid')
            export_policy(cwd / 'runs' / 'train' / 'policy.pt', policy)
        args = [a for key, value in OVERRIDES.get(node, {}).items() for a in ('-p', f'{key}:={value}')]
        processes[node] = subprocess.Popen([executable_path(package, node), '--ros-args', *args], cwd=cwd,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                           start_new_session=True)
    yield processes
    for process in processes.values():
        process.send_signal(2)
    for process in processes.values():
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def answer(ros_node, future):
    spin_until(ros_node, future.done, 30, 'a parameter service answer')
    return future.result()


@pytest.mark.parametrize('node', NODES)
def test_declared_parameters_are_the_config_files(node, running_nodes, ros_node):
    client = AsyncParameterClient(ros_node, node)
    try:
        spin_until(ros_node, lambda: client.services_are_ready() or running_nodes[node].poll() is not None, 120,
                   f'parameter services of {node}')
    except TimeoutError:
        pytest.fail(f'{node} did not come up')
    assert running_nodes[node].poll() is None, running_nodes[node].stdout.read()
    names = sorted(set(answer(ros_node, client.list_parameters()).result.names) - ROS_OWN)
    described = answer(ros_node, client.describe_parameters(names))
    values = answer(ros_node, client.get_parameters(names))
    config = yaml.safe_load((CONFIG / f'{node}.yaml').read_text())[node]['ros__parameters']
    assert set(names) == set(config), f'{node}: declared but not in the YAML {set(names) - set(config)}, ' \
                                      f'in the YAML but not declared {set(config) - set(names)}'
    undocumented = [d.name for d in described.descriptors if not d.description.strip()]
    assert not undocumented, f'{node}: parameters without a description: {undocumented}'
    defaults = dict(zip(names, (parameter_value_to_python(v) for v in values.values)))
    overridden = OVERRIDES.get(node, {})
    differ = {k: (defaults[k], config[k]) for k in names if k not in overridden and defaults[k] != config[k]}
    assert not differ, f'{node}: code default vs YAML: {differ}'


ROBOT_FORBIDDEN = ('habitat_bridge', 'llm_teacher', 'student_policy', 'python3-gymnasium-pip', 'python3-minigrid-pip',
                   'python3-miniworld-pip', 'python3-transformers-pip', 'python3-matplotlib')


def exec_depends(package: str) -> set[str]:
    """The exec_depend keys of one of this workspace's packages (others: ROS or system packages)."""
    folders = {'student_deploy': 'student_deploy', 'llm_teacher_common': 'llm_teacher_common',
               'llm_teacher_msgs': 'llm_teacher_msgs', 'student_policy': 'student_policy_node',
               'habitat_bridge': 'habitat_bridge', 'llm_teacher': 'llm_teacher_node'}
    if package not in folders:
        return set()
    manifest = ElementTree.parse(SRC / folders[package] / 'package.xml').getroot()
    return {e.text for e in manifest.iter('exec_depend')} | {e.text for e in manifest.iter('depend')}


def test_a_robot_installs_neither_a_simulator_nor_the_llm():
    """What `rosdep install --from-paths ros2_ws/src/student_deploy` pulls (student_deploy and,
    recursively, the workspace packages it depends on) holds no simulator, LLM or training package;
    and the deploy nodes run with exactly those importable: the rest made unimportable."""
    closure, todo = set(), ['student_deploy']
    while todo:
        package = todo.pop()
        if package not in closure:
            closure.add(package)
            todo.extend(exec_depends(package))
    assert not closure & set(ROBOT_FORBIDDEN), sorted(closure & set(ROBOT_FORBIDDEN))
    blocked = ('gymnasium', 'minigrid', 'miniworld', 'transformers', 'habitat_bridge', 'stable_baselines3',
               'llm_teacher', 'student_policy', 'matplotlib', 'tensorboard')
    code = (f'import sys; sys.modules.update(dict.fromkeys({blocked!r})); '
            'import student_deploy.robot_policy_node, student_deploy.policy_node, student_deploy.inference; '
            'print(sorted({m.split(".")[0] for m in sys.modules}))')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = set(eval(result.stdout))  # noqa: S307 (our own subprocess's list of names)
    for module, key in (('torch', 'python3-torch'), ('cv2', 'python3-opencv'), ('numpy', 'python3-numpy'),
                        ('rclpy', 'rclpy'), ('llm_teacher_msgs', 'llm_teacher_msgs'),
                        ('llm_teacher_common', 'llm_teacher_common'), ('sensor_msgs', 'sensor_msgs'),
                        ('geometry_msgs', 'geometry_msgs')):
        assert module in imported and key in closure, module
    launch = load_launch_file(Path(__file__).resolve().parent.parent / 'launch' / 'deploy.launch.py')
    assert {spec.package for spec in launch.nodes(resolve_arguments(launch.ARGUMENTS, []))} == {'student_deploy'}
