"""The workspace as installed by `make setup`: metadata agrees, imports work, executables are where ros2 run looks."""
import ast
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from xml.etree import ElementTree

import pytest

from llm_teacher_common.launch_runner import executable_path

SRC = Path(__file__).resolve().parent.parent / 'ros2_ws' / 'src'
PYTHON_PACKAGES = {'llm_teacher_node': 'llm_teacher', 'student_policy_node': 'student_policy',
                   'student_deploy': 'student_deploy', 'habitat_bridge': 'habitat_bridge',
                   'llm_teacher_common': 'llm_teacher_common'}
EXECUTABLES = [('habitat_bridge', 'batch_sim_node'), ('habitat_bridge', 'robot_sim_node'),
               ('student_policy', 'student_node'), ('student_deploy', 'policy_node'),
               ('student_deploy', 'robot_policy_node'), ('llm_teacher', 'teacher_node'),
               ('llm_teacher', 'recorder_node'), ('llm_teacher', 'visualization_node'),
               ('llm_teacher_common', 'llm_teacher_launch')]


@pytest.mark.parametrize('folder, package', PYTHON_PACKAGES.items())
def test_package_xml_is_the_one_source_of_metadata(folder, package):
    manifest = ElementTree.parse(SRC / folder / 'package.xml').getroot()
    assert manifest.findtext('name') == package
    assert version(package) == manifest.findtext('version')
    assert (SRC / folder / 'resource' / package).is_file()
    setup_cfg = (SRC / folder / 'setup.cfg').read_text()
    assert f'$base/lib/{package}' in setup_cfg  # where `ros2 run` finds executables


def test_interfaces_import_in_rclpy():
    result = subprocess.run([sys.executable, '-c', 'import rclpy, llm_teacher_msgs.msg, llm_teacher_msgs.srv, tf2_msgs.msg'],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize('package, executable', EXECUTABLES)
def test_executables_are_installed_where_ros2_run_finds_them(package, executable):
    path = Path(executable_path(package, executable))
    assert path.parts[-3:] == ('lib', package, executable) and path.stat().st_mode & 0o111


def test_launch_cli_lists_arguments_and_rejects_unknown_ones():
    shown = subprocess.run([sys.executable, '-m', 'llm_teacher_common.launch_runner', 'train.launch.py', '--show-args'],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "'task':" in shown.stdout and 'MiniGrid-SimpleDoorKey-v0' in shown.stdout
    bad = subprocess.run([sys.executable, '-m', 'llm_teacher_common.launch_runner', 'train.launch.py', 'tsak:=x'],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown launch argument 'tsak'" in bad.stderr


# What a Python import needs, as the rosdep key package.xml declares ('-pip' keys: PyPI-only
# packages, rosdep's convention). habitat and habitat_sim install from conda only: optional.
ROSDEP_KEYS = {'numpy': 'python3-numpy', 'cv2': 'python3-opencv', 'yaml': 'python3-yaml', 'torch': 'python3-torch',
               'matplotlib': 'python3-matplotlib', 'pyglet': 'python3-pyglet', 'gymnasium': 'python3-gymnasium-pip',
               'minigrid': 'python3-minigrid-pip', 'miniworld': 'python3-miniworld-pip',
               'transformers': 'python3-transformers-pip', 'rosbags': 'python3-rosbags-pip',
               'mcap': 'python3-mcap-pip', 'mcap_ros2': 'python3-mcap-ros2-support-pip',
               'foxglove': 'python3-foxglove-sdk-pip',
               'onnxruntime': 'python3-onnxruntime-pip', 'launch': 'launch_ros', 'gguf': 'python3-gguf-pip'}
OPTIONAL = {'habitat', 'habitat_sim'}


@pytest.mark.parametrize('folder, package', PYTHON_PACKAGES.items())
def test_package_xml_declares_what_the_package_imports(folder, package):
    imported = set()
    for path in (SRC / folder / package).rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split('.')[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split('.')[0])
    manifest = ElementTree.parse(SRC / folder / 'package.xml').getroot()
    declared = {element.text for element in manifest.iter('exec_depend')}
    needed = {ROSDEP_KEYS.get(name, name) for name in imported - set(sys.stdlib_module_names) - OPTIONAL - {package}}
    assert needed <= declared, f'{package} imports what its package.xml does not declare: {sorted(needed - declared)}'


@pytest.mark.parametrize('package', ['llm_teacher', 'student_deploy'])
def test_installed_launch_files_find_their_parameter_files(package):
    """As `ros2 launch` runs them: from the install space, each node's params file is there."""
    from ament_index_python.packages import get_package_share_directory

    from llm_teacher_common.launch_runner import ensure_ament_prefix, load_launch_file, resolve_arguments
    ensure_ament_prefix()
    launch_files = sorted((Path(get_package_share_directory(package)) / 'launch').glob('*.launch.py'))
    assert launch_files
    for path in launch_files:
        launch = load_launch_file(path)
        for spec in launch.nodes(resolve_arguments(launch.ARGUMENTS, [])):
            files = [p for p in spec.parameters if isinstance(p, (str, Path))]
            assert all(Path(p).is_file() for p in files), (path.name, spec.executable, files)
