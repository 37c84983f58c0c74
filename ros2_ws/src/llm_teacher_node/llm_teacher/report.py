"""Turn a training run directory into a one-page summary: report.png and report.html.

    python -m llm_teacher.report runs/train [--teacher-episodes 20]

Panels: success over frames (student, sampled in training and greedy/sampled on held-out seeds,
against the teacher acting alone), the teacher weight lambda, the LLM calls and cache hits over
the run (from the recording's teacher_status), and a strip of frames of one environment with
the teacher's suggestion at each (from the recording's image and suggestion_batch).
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import sys
from pathlib import Path

import numpy as np

from llm_teacher_common.messages import top_suggestion

STRIP_FRAMES = 8


def read_progress(run_dir: Path) -> list[dict]:
    path = run_dir / 'progress.csv'
    if not path.is_file():
        raise ValueError(f'{run_dir} has no progress.csv: is it the run_dir of a training run?')
    with path.open() as f:
        return list(csv.DictReader(f))


def read_recording(run_dir: Path) -> dict[str, list]:
    """Messages of the newest recording by topic, as (time_ns, message); empty if none. A recording
    cut short (its recorder was killed) has no summary: it is read front to back up to its last
    complete chunk."""
    from mcap.exceptions import McapError
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader
    from mcap_ros2.decoder import DecoderFactory
    from mcap_ros2.reader import read_ros2_messages
    recordings = sorted((run_dir / 'recordings').glob('*/*.mcap'))
    topics: dict[str, list] = {}
    if not recordings:
        return topics
    try:
        for m in read_ros2_messages(str(recordings[-1])):
            topics.setdefault(m.channel.topic, []).append((m.log_time_ns, m.ros_msg))
    except McapError:
        topics.clear()
        schemas, channels, decoders = {}, {}, DecoderFactory()
        with open(recordings[-1], 'rb') as f:
            try:  # a chunk's messages come once it is read whole
                for record in StreamReader(f, skip_magic=False).records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        channels[record.id] = record
                    elif isinstance(record, Message):
                        channel = channels[record.channel_id]
                        schema = schemas[channel.schema_id]
                        decode = decoders.decoder_for(channel.message_encoding, schema)
                        topics.setdefault(channel.topic, []).append((record.log_time, decode(record.data)))
            except McapError:
                pass  # the cut: what came before it is all there is
    return topics


def teacher_alone_success(run_dir: Path, task: str, episodes: int) -> float | None:
    """The embedded teacher's act-alone success on `task`, using the run's answer cache."""
    if episodes <= 0:
        return None
    from llm_teacher.evaluate import evaluate
    from llm_teacher.teacher import embedded_teacher
    teacher = embedded_teacher(run_dir / 'answers.sqlite')
    try:
        return evaluate(teacher, task, episodes, grounded=True)['act_alone_success']
    finally:
        teacher.close()


def suggestion_at(suggestions: list, time_ns: int, env: int = 0) -> str:
    """The teacher's top option for `env` in the last suggestion batch before `time_ns`."""
    text = 'no suggestion yet'
    for t, batch in suggestions:
        if t > time_ns:
            break
        top = top_suggestion(batch, env)
        if top is not None:
            text = f'{top[0]} ({top[1]:.2f})'
    return text


def frame_strip(images: list, step_batches: list, frames: int = STRIP_FRAMES) -> list:
    """The last `frames` images of env 0 that show the episode moving: taken while the sim was
    still stepping (not after the student stopped at its budget, when the view is frozen), with
    repeats of the same picture left out."""
    last_step = step_batches[-1][0] if step_batches else float('inf')
    moving = []
    for t, image in images:
        if t <= last_step and (not moving or bytes(image.data) != bytes(moving[-1][1].data)):
            moving.append((t, image))
    return moving[-frames:]


def make_report(run_dir: Path, teacher_episodes: int = 20) -> tuple[Path, Path]:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    rows = read_progress(run_dir)
    recording = read_recording(run_dir)
    config = json.loads((run_dir / 'config.json').read_text()) if (run_dir / 'config.json').is_file() else {}
    final = json.loads((run_dir / 'eval.json').read_text()) if (run_dir / 'eval.json').is_file() else {}
    task = final.get('task', 'MiniGrid-SimpleDoorKey-v0')
    teacher = teacher_alone_success(run_dir, task, teacher_episodes) if (run_dir / 'answers.sqlite').exists() else None
    frames = [int(r['frames']) for r in rows]

    fig = plt.figure(figsize=(14, 9))
    grid = fig.add_gridspec(2, 3, height_ratios=[1.2, 1])
    ax = fig.add_subplot(grid[0, 0:2])
    ax.plot(frames, [float(r['charts/success_rate']) for r in rows], label='student (training, sampled)')
    points = [(int(r['frames']), float(r['eval/success_rate'])) for r in rows if r.get('eval/success_rate')]
    if points:
        ax.plot(*zip(*points), 'o-', label='student greedy, held-out')
    if teacher is not None:
        ax.axhline(teacher, color='k', ls=':', label=f'teacher alone ({teacher:.2f})')
    ax.set(xlabel='environment frames', ylabel='success rate', ylim=(-0.02, 1.02), title=f'{task}: success')
    ax.legend(loc='lower right')
    ax = fig.add_subplot(grid[0, 2])
    ax.plot(frames, [float(r['teacher/weight']) for r in rows], 'k')
    ax.set(xlabel='environment frames', ylabel='lambda', title='teacher weight')
    ax = fig.add_subplot(grid[1, 0])
    status = recording.get('/teacher_status', [])
    if status:
        start = status[0][0]
        minutes = [(t - start) / 60e9 for t, _ in status]
        ax.plot(minutes, [m.llm_calls for _, m in status], label='LLM calls')
        ax.plot(minutes, [m.cache_hits for _, m in status], label='cache hits')
        ax.set_yscale('symlog')
        ax.legend()
    else:
        ax.text(0.5, 0.5, 'no teacher_status recorded\n(plain PPO, or record:=false)', ha='center', va='center')
    ax.set(xlabel='minutes', title='teacher: LLM calls and cache hits')

    strip = frame_strip(recording.get('/image', []), recording.get('/step_batch', []))
    sub = grid[1, 1:].subgridspec(2, max(len(strip), 1) // 2 + max(len(strip), 1) % 2)
    for i, (t, image) in enumerate(strip):
        ax = fig.add_subplot(sub[i % 2, i // 2])
        pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width, -1)
        ax.imshow(pixels)
        ax.set_title(suggestion_at(recording.get('/suggestion_batch', []), t), fontsize=7)
        ax.axis('off')
    if not strip:
        fig.add_subplot(sub[0, 0]).text(0.5, 0.5, 'no images recorded', ha='center')
    fig.suptitle(f'{run_dir.name}: {frames[-1] if frames else 0} frames')
    fig.tight_layout()
    png = run_dir / 'report.png'
    fig.savefig(png, dpi=90)
    plt.close(fig)

    test = final.get('test', {})  # the shipped policy on unseen seeds (absent while training runs)
    figures = {'task': task, 'frames': frames[-1] if frames else 0,
               **{f'last evaluation {k}': v for k, v in final.items() if k in ('success_rate', 'mean_return')},
               **{f'test {k}': v for k, v in test.items() if k in ('episodes', 'success_rate', 'success_rate_sampled')},
               'teacher alone success': teacher,
               'learning rate': config.get('learning_rate'), 'seed': config.get('seed')}
    rows_html = ''.join(f'<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>' for k, v in figures.items())
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(run_dir.name)}</title></head><body>'
            f'<h1>Training run {html.escape(str(run_dir))}</h1><table>{rows_html}</table>'
            f'<img alt="report" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}"></body></html>')
    page_path = run_dir / 'report.html'
    page_path.write_text(page)
    return png, page_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m llm_teacher.report', description=__doc__.splitlines()[0])
    parser.add_argument('run_dir')
    parser.add_argument('--teacher-episodes', type=int, default=20, help='episodes of the teacher acting alone (0: skip)')
    args = parser.parse_args(argv)
    try:
        png, page = make_report(Path(args.run_dir), args.teacher_episodes)
    except ValueError as err:
        print(f'report: {err}', file=sys.stderr)
        return 2
    print(f'report: {png} and {page}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
