"""Where the training graph's nodes spend a lock-step (a dev tool: needs py-spy, which the project
does not; `pip install py-spy==0.4.3`).

Runs train.launch.py as benchmarks/training_graph.py does, attaches py-spy to each node for a
window in the steady state, and prints per node its CPU time a lock-step (all its threads, from
/proc) and how its Python thread's samples split (py-spy sees Python frames only: time in the C++
executor, DDS and serialisation shows under the Python call that entered it).

    OMP_NUM_THREADS=1 .venv/bin/python tools/profile_graph.py --task MiniGrid-DoorKey-8x8-v0
    OMP_NUM_THREADS=1 .venv/bin/python tools/profile_graph.py --task MiniGrid-SimpleDoorKey-v0 --teacher

With --teacher, run it once first to fill the answer cache (--cache), so that the profiled run's
teacher works as a warm one does.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'benchmarks'))
from training_graph import run_training_graph, steady_fps  # noqa: E402

# node -> (row, the frames a sample's stack must hold), first match wins; '' matches any sample
ROWS = {
    'student_node': [('PPO update (amortised over the rollout)', ('LockstepLearner.update',)),
                     ('act: policy forward, sampling', ('LockstepLearner.act',)),
                     ('ActionBatch publish (conversion, DDS)', ('StudentNode.on_step', 'Publisher.publish')),
                     ('StepBatch -> StepIn, checks, ActionBatch build', ('StudentNode.on_step',)),
                     ('suggestions in', ('on_suggestions',)),
                     ('C++ executor: wait, take, deserialise', ('',))],
    'batch_sim_node': [('env step (MiniGrid, memory map)', ('BatchSimNode.on_actions.<locals>.<lambda>',)),
                       ('StepBatch build', ('step_batch_msg',)),
                       ('PerceptionBatch build', ('perception_batch_msg',)),
                       ('StepBatch + PerceptionBatch publish (DDS)', ('publish_step', 'Publisher.publish')),
                       ('image rendering (2 Hz)', ('publish_image',)),
                       ('C++ executor: wait, take, deserialise', ('',))],
    'teacher_node': [('suggest', ('Teacher.suggest',)),
                     ('perceptions_from_msg', ('perceptions_from_msg',)),
                     ('SuggestionBatch build', ('suggestion_batch_msg',)),
                     ('SuggestionBatch publish (DDS)', ('TeacherNode.answer', 'Publisher.publish')),
                     ('C++ executor: wait, take, deserialise', ('',))],
    'visualization_node': [('action bars', ('on_actions',)), ('suggestion marker', ('on_suggestions',)),
                           ('C++ executor: wait, take, deserialise', ('',))],
    'recorder_node': [('deserialise for seq and group, write', ('on_message',)),
                      ('C++ executor: wait, take', ('',))],
}


def child_pid(executable: str) -> int | None:
    """The pid of this process's descendant running `executable` (not another user's node)."""
    children: dict[int, list[int]] = {}
    for proc in Path('/proc').iterdir():
        if proc.name.isdigit():
            try:
                parent = int((proc / 'stat').read_text().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(proc.name))
    todo = [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            try:
                argv = (Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0'))[:2]
            except OSError:
                continue
            if any(arg.endswith(b'/' + executable.encode()) for arg in argv):
                return pid
            todo.append(pid)
    return None


def cpu_seconds(pid: int) -> float:
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')  # utime + stime


def profile(py_spy: str, nodes: list[str], out: Path, delay: float, seconds: int, result: dict) -> None:
    pids: dict[str, int] = {}
    while len(pids) < len(nodes):
        pids.update({n: pid for n in nodes if n not in pids and (pid := child_pid(n))})
        time.sleep(0.5)
    time.sleep(delay)  # past the start-up and the first updates
    before, start = {n: cpu_seconds(pid) for n, pid in pids.items()}, time.monotonic()
    spies = [subprocess.Popen([py_spy, 'record', '--pid', str(pid), '--duration', str(seconds), '--rate', '100',
                               '--format', 'raw', '--nonblocking', '--output', str(out / f'{n}.txt')],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n, pid in pids.items()]
    for spy in spies:
        spy.wait()
    result['seconds'] = time.monotonic() - start
    result['cpu_s'] = {n: cpu_seconds(pid) - before[n] for n, pid in pids.items()}


def split(stacks_file: Path, rows: list) -> tuple[int, dict[str, int]]:
    counts, total = {name: 0 for name, _ in rows}, 0
    for line in stacks_file.read_text().splitlines():
        stack, n = line.rsplit(' ', 1)
        total += int(n)
        name = next(name for name, frames in rows if all(f in stack for f in frames))
        counts[name] += int(n)
    return total, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--task', default='MiniGrid-DoorKey-8x8-v0')
    parser.add_argument('--frames', type=int, default=81_920)
    parser.add_argument('--teacher', action='store_true', help='with the LLM teacher (else plain PPO)')
    parser.add_argument('--cache', default=str(Path(tempfile.gettempdir()) / 'profile_graph_answers.sqlite'))
    parser.add_argument('--delay', type=float, default=25.0, help='s after the nodes start before profiling')
    parser.add_argument('--seconds', type=int, default=30, help='profiling window')
    parser.add_argument('--num-envs', type=int, default=16)
    args = parser.parse_args()
    py_spy = shutil.which('py-spy')
    if py_spy is None:
        raise SystemExit('profile_graph: py-spy is not on PATH (a dev tool: pip install py-spy==0.4.3)')
    nodes = [n for n in ROWS if args.teacher or n != 'teacher_node']
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        spy = threading.Thread(target=profile, args=(py_spy, nodes, out, args.delay, args.seconds, result), daemon=True)
        spy.start()
        rows = run_training_graph(args.frames, task=args.task, plain_ppo=not args.teacher, num_envs=args.num_envs,
                                  teacher_parameters={'cache_path': args.cache})
        spy.join(timeout=10)
        if 'cpu_s' not in result:
            raise SystemExit('profile_graph: the run ended before the profiling window; give more --frames')
        fps = steady_fps([float(r['charts/SPS']) for r in rows])
        steps = fps / args.num_envs * result['seconds']
        print(f'{args.task}, {"LLM teacher" if args.teacher else "plain PPO"}: {fps:.0f} frames/s, '
              f'{steps:.0f} lock-steps in the {result["seconds"]:.0f} s window')
        for node in nodes:
            total, counts = split(out / f'{node}.txt', ROWS[node])
            print(f'{node}: {1e6 * result["cpu_s"][node] / steps:.0f} us CPU a lock-step; {total} samples')
            for name, count in counts.items():
                print(f'    {name:45s} {100 * count / max(total, 1):5.1f}%')


if __name__ == '__main__':
    main()
