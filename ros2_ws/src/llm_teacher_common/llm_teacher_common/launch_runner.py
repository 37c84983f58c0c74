"""Launch files as node tables, run two ways: by launch_ros (`ros2 launch`), or as plain processes.

A launch file of this project defines
- ARGUMENTS: {name: (default, description)};
- nodes(args) -> list[NodeSpec]: the graph for resolved argument values (all strings);
- generate_launch_description(): `return launch_description(ARGUMENTS, nodes)` for ros2 launch.

`llm_teacher_launch FILE [name:=value ...]` starts the same table where launch_ros and ros2cli
are not installed: each node as a process with `--ros-args`, logs prefixed with the node name,
and every node stopped (SIGINT, then SIGTERM, then SIGKILL) on Ctrl-C or as soon as one of them
exits; another Ctrl-C while stopping moves on to the next signal, never skips the escalation.
The nodes' output is always drained, also once the runner's own output is gone
(`llm_teacher_launch ... | head`), so that no node ever blocks on a full pipe.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import yaml

SHUTDOWN_GRACE_S = 10.0


@dataclass
class NodeSpec:
    """One node of a launch table, as launch_ros.actions.Node takes it."""

    package: str
    executable: str
    name: str
    parameters: list = field(default_factory=list)  # YAML file paths and {name: value} dicts
    remappings: list[tuple[str, str]] = field(default_factory=list)

    def ros_args(self) -> list[str]:
        args = ['--ros-args', '-r', f'__node:={self.name}']
        for entry in self.parameters:
            if isinstance(entry, dict):
                for key, value in entry.items():
                    args += ['-p', f'{key}:={_yaml_scalar(value)}']
            else:
                args += ['--params-file', str(entry)]
        for source, target in self.remappings:
            args += ['-r', f'{source}:={target}']
        return args


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the runner dies, even by SIGKILL, so no node is left orphaned."""
    if sys.platform.startswith('linux'):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return "''" if value == '' else str(value)  # -p name:= (nothing) is a parse error in rcl


def launch_description(arguments: dict, nodes):
    """The table as a launch_ros LaunchDescription; any node exiting shuts the launch down."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def make_nodes(context):
        args = {name: LaunchConfiguration(name).perform(context) for name in arguments}
        return [Node(package=n.package, executable=n.executable, name=n.name, parameters=n.parameters,
                     remappings=n.remappings, output='screen', on_exit=Shutdown()) for n in nodes(args)]

    declared = [DeclareLaunchArgument(name, default_value=str(default), description=description)
                for name, (default, description) in arguments.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=make_nodes)])


def yaml_parameters(path: str | Path, node: str) -> dict:
    """The `<node>: ros__parameters:` values of a parameter file, as a dict (for a node started
    under another name, which the file's key would not match)."""
    return dict(yaml.safe_load(Path(path).read_text())[node]['ros__parameters'])


def load_launch_file(path: str | Path) -> ModuleType:
    """Import a launch file by path (it must not need launch_ros at import time)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'launch file {path} does not exist')
    spec = importlib.util.spec_from_file_location(path.stem.replace('.', '_'), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_arguments(arguments: dict, given: list[str]) -> dict[str, str]:
    """Defaults overridden by `name:=value` strings; unknown names raise ValueError."""
    values = {name: str(default) for name, (default, _) in arguments.items()}
    for item in given:
        name, sep, value = item.partition(':=')
        if not sep:
            raise ValueError(f'launch argument {item!r} is not of the form name:=value')
        if name not in values:
            raise ValueError(f'unknown launch argument {name!r}; known: {", ".join(sorted(values))}')
        values[name] = value
    return values


def flag(values: dict[str, str], name: str) -> bool:
    """A true/false launch argument; anything else raises ValueError (a typo must not flip it)."""
    value = values[name].lower()
    if value not in ('true', 'false'):
        raise ValueError(f'launch argument {name!r} must be true or false, not {values[name]!r}')
    return value == 'true'


def executable_path(package: str, executable: str) -> str:
    """Where `ros2 run package executable` would find it: <prefix>/lib/<package>/<executable>."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    ensure_ament_prefix()
    try:
        path = Path(get_package_prefix(package)) / 'lib' / package / executable
    except PackageNotFoundError as err:
        raise FileNotFoundError(f'package {package!r} is not installed in any AMENT_PREFIX_PATH prefix') from err
    if not path.is_file():
        raise FileNotFoundError(f'package {package!r} has no executable {executable!r} (looked at {path})')
    return str(path)


def ensure_ament_prefix() -> None:
    """Make this environment's prefix (where colcon installed the workspace) an ament prefix."""
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    if sys.prefix not in prefixes:
        os.environ['AMENT_PREFIX_PATH'] = os.pathsep.join([sys.prefix] + prefixes)


class LaunchRunner:
    """Starts a node table as processes and stops them together."""

    def __init__(self, specs: list[NodeSpec], env: dict[str, str] | None = None, log=print):
        self.specs, self.env, self.log = specs, env, log
        self.processes: dict[str, subprocess.Popen] = {}
        self._threads: list[threading.Thread] = []
        self._output_lost = False

    def _say(self, text: str) -> None:
        if self._output_lost:
            return
        try:
            self.log(text)
        except (OSError, ValueError):  # our stdout is closed (`| head` exited): drop the output from now on
            self._output_lost = True

    def start(self) -> None:
        """Start every node; if one cannot be started, stop those already running and raise."""
        try:
            self._start_all()
        except Exception:
            self.stop()
            raise

    def _start_all(self) -> None:
        for spec in self.specs:
            command = [executable_path(spec.package, spec.executable)] + spec.ros_args()
            process = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors='replace', bufsize=1, start_new_session=True,
                                       preexec_fn=_die_with_parent)
            self.processes[spec.name] = process
            thread = threading.Thread(target=self._stream, args=(spec.name, process), daemon=True)
            thread.start()
            self._threads.append(thread)
            self._say(f'[launch] started {spec.name} (pid {process.pid})')

    def _stream(self, name: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self._say(f'[{name}] {line.rstrip()}')

    def wait(self) -> int:
        """Block until one node exits (or Ctrl-C); stop the rest; return the worst exit code."""
        try:
            while all(p.poll() is None for p in self.processes.values()):
                time.sleep(0.2)
            exited = next(name for name, p in self.processes.items() if p.poll() is not None)
            self._say(f'[launch] {exited} exited with code {self.processes[exited].returncode}; stopping the others')
        except KeyboardInterrupt:
            self._say('[launch] Ctrl-C: stopping every node (Ctrl-C again: SIGTERM now)')
        return self.stop()

    def stop(self) -> int:
        """SIGINT every running node, SIGTERM then SIGKILL what outlives the grace period.

        Meanwhile (from the main thread) a Ctrl-C or SIGTERM cuts the current grace period short,
        rather than raising out of the escalation and leaving nodes running."""
        hurry = []  # a list, not an Event: a signal handler must take no lock its thread may hold
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, lambda *_: hurry.append(True))
        try:
            for sig, grace in ((signal.SIGINT, SHUTDOWN_GRACE_S), (signal.SIGTERM, 3.0), (signal.SIGKILL, 1.0)):
                running = [p for p in self.processes.values() if p.poll() is None]
                if not running:
                    break
                if sig != signal.SIGINT:
                    names = [name for name, p in self.processes.items() if p in running]
                    self._say(f'[launch] {signal.Signals(sig).name} to {", ".join(names)}')
                hurry.clear()
                for process in running:
                    os.killpg(process.pid, sig)
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and not hurry and any(p.poll() is None for p in running):
                    time.sleep(0.05)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        for thread in self._threads:
            thread.join(timeout=1.0)
        codes = [p.returncode for p in self.processes.values()]
        # Nodes stopped by our own SIGINT exit with 0 or -SIGINT; both mean a clean stop.
        return max((abs(c) for c in codes if c not in (0, -signal.SIGINT)), default=0)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


LAUNCH_PACKAGES = ('llm_teacher', 'student_deploy')  # where this project's launch files are installed


def find_launch_file(name: str) -> Path:
    """A path as given, else a file of the installed launch directory of llm_teacher (training,
    evaluation) or student_deploy (the robot's deploy.launch.py), whichever is installed and has it.

    :raises ValueError: no such file, naming where it was looked for.
    """
    if Path(name).is_file():
        return Path(name)
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    ensure_ament_prefix()
    searched = []
    for package in LAUNCH_PACKAGES:
        try:
            path = Path(get_package_share_directory(package)) / 'launch' / name
        except PackageNotFoundError:
            continue
        if path.is_file():
            return path
        searched.append(str(path.parent))
    raise ValueError(f'no launch file {name!r} here or in {", ".join(searched) or "an installed package"}')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog='llm_teacher_launch',
        description='Run a launch file of this project without ROS 2 launch tools '
                    '(same node table as `ros2 launch llm_teacher FILE` or `ros2 launch student_deploy deploy.launch.py`).')
    parser.add_argument('launch_file', help='e.g. train.launch.py, or a path to one')
    parser.add_argument('arguments', nargs='*', help='launch arguments as name:=value')
    parser.add_argument('--show-args', action='store_true', help='list the launch arguments and exit')
    options = parser.parse_args(argv)
    try:
        module = load_launch_file(find_launch_file(options.launch_file))
        if options.show_args:
            for name, (default, description) in module.ARGUMENTS.items():
                print(f"    '{name}':\n        {description}\n        (default: '{default}')")
            return 0
        specs = module.nodes(resolve_arguments(module.ARGUMENTS, options.arguments))
        # Stop the nodes on Ctrl-C and on SIGTERM, also when started in the background by a shell
        # (which starts it with SIGINT ignored, so Python installs no Ctrl-C handler of its own).
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.default_int_handler)
        runner = LaunchRunner(specs)
        runner.start()
    except (ValueError, FileNotFoundError) as err:
        print(f'llm_teacher_launch: {err}', file=sys.stderr)
        return 2
    return runner.wait()


if __name__ == '__main__':
    sys.exit(main())
