"""The project's launch runner with real processes: nodes are never blocked by their output, and
a second Ctrl-C still ends every node (SIGINT, SIGTERM, SIGKILL)."""
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

NODES = {
    # 2 MB of output (the pipe holds 64 kB), then a mark (in the working directory) that it got to the end
    'chatty': 'for i in range(20000):\n    print("line", i, "x" * 90)\nopen("chatty.done", "w").close()\n',
    # ignores SIGINT and SIGTERM: only SIGKILL ends it
    'stubborn': 'import os, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n'
                'signal.signal(signal.SIGTERM, signal.SIG_IGN)\nopen("stubborn.pid", "w").write(str(os.getpid()))\n'
                'while True:\n    time.sleep(1)\n',
}


@pytest.fixture
def launch(tmp_path):
    """A package of stand-in nodes in an ament prefix of its own, and a launch file per node;
    returns a function that starts the runner on one of them, with its environment."""
    prefix = tmp_path / 'prefix'
    (prefix / 'share/ament_index/resource_index/packages').mkdir(parents=True)
    (prefix / 'share/ament_index/resource_index/packages/standins').touch()
    (prefix / 'lib/standins').mkdir(parents=True)
    for name, code in NODES.items():
        executable = prefix / 'lib/standins' / name
        executable.write_text(f'#!{sys.executable}\n' + code)
        executable.chmod(0o755)
        (tmp_path / f'{name}.launch.py').write_text(textwrap.dedent(f'''
            from llm_teacher_common.launch_runner import NodeSpec
            ARGUMENTS = {{}}
            def nodes(args):
                return [NodeSpec('standins', '{name}', '{name}')]
            '''))
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix), PYTHONUNBUFFERED='1')
    return tmp_path, env


def test_a_runner_whose_output_is_gone_keeps_draining_its_nodes(launch):
    """`llm_teacher_launch ... | head -n 1`: head exits after one line, the runner's output then
    fails, and the node still writes all its output and exits (it would block on a full pipe)."""
    tmp_path, env = launch
    command = f'{sys.executable} -m llm_teacher_common.launch_runner chatty.launch.py | head -n 1'
    pipeline = subprocess.Popen(['bash', '-c', command], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = pipeline.communicate(timeout=60)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):  # where the runner hangs (its node then gets SIGTERM)
            os.killpg(pipeline.pid, signal.SIGKILL)
    assert output.startswith('[launch] started chatty'), output
    assert (tmp_path / 'chatty.done').exists(), 'the node did not get to the end of its output'


def test_a_second_ctrl_c_still_escalates_to_sigkill(launch):
    tmp_path, env = launch
    runner = subprocess.Popen([sys.executable, '-m', 'llm_teacher_common.launch_runner', 'stubborn.launch.py'], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(runner.stdout), daemon=True).start()
    pid_file = tmp_path / 'stubborn.pid'
    pid = None
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline and runner.poll() is None, ''.join(lines)
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        runner.send_signal(signal.SIGINT)
        while not any('stopping every node' in line for line in lines):
            assert time.monotonic() < deadline, ''.join(lines)
            time.sleep(0.05)
        runner.send_signal(signal.SIGINT)  # impatient: SIGTERM now (ignored), then SIGKILL
        runner.wait(timeout=30)
        assert not _alive(pid), f'node {pid} left running after the runner exited:\n' + ''.join(lines)
        assert any('SIGKILL to stubborn' in line for line in lines), ''.join(lines)
    finally:
        runner.kill()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (a zombie of ours would not be: the runner reaps its nodes)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split(') ')[-1][0] != 'Z'
    except FileNotFoundError:
        return False
