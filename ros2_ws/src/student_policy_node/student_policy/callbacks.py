"""Callbacks run after each PPO update, by `train()` and by the student node alike.

Each is a callable (learner, metrics) -> bool; returning False stops training.
A run directory holds: checkpoints/last.pt, policy.pt (TorchScript export of the best greedy
evaluation), policy_last.pt (the final weights), tensorboard/, config.json, progress.csv (one row
per update), eval.json and learning_curve.png.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from llm_teacher_common.stats import rate_text
from student_deploy.inference import load_policy
from student_policy.checkpoints import CheckpointError, export_policy, save_checkpoint, write_atomically
from student_policy.evaluate import env_options_for, evaluate
from student_policy.networks import ActorCritic, eager_copy
from student_policy.ppo import PPOLearner


# Columns of progress.csv: fixed, so that rows with and without an evaluation line up.
CSV_FIELDS = ['frames', 'updates', 'episodes', 'charts/SPS', 'charts/episodic_return', 'charts/success_rate',
              'charts/learning_rate', 'teacher/weight', 'teacher/coverage',
              'losses/policy_loss', 'losses/value_loss',
              'losses/entropy', 'losses/distill_loss', 'losses/approx_kl', 'losses/clipfrac',
              'losses/explained_variance', 'eval/success_rate', 'eval/mean_return', 'eval/frames']


def run_callbacks(callbacks, learner: PPOLearner, metrics: dict, log=lambda text: print(text, file=sys.stderr)) -> bool:
    """Run every callback; False when one asks to stop. One that cannot write (a full disk: OSError)
    is reported and training goes on: what it wrote before is kept whole (files are replaced
    atomically, a CSV row is written whole or not at all)."""
    keep_going = True
    for callback in callbacks:
        try:
            keep_going = callback(learner, metrics) and keep_going
        except OSError as err:
            log(f'{type(callback).__name__} could not write ({err}); training goes on, the files written before '
                f'are kept: free some disk space')
    return keep_going


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / 'checkpoints' / 'last.pt'


class CheckpointCallback:
    """Saves the learner every `every` updates and when training reaches its budget, then exports."""

    def __init__(self, run_dir: str | Path, every: int = 10, task: str = ''):
        self.run_dir, self.every, self.task = Path(run_dir), every, task

    def __call__(self, learner: PPOLearner, metrics: dict) -> bool:
        finished = learner.frames >= learner.config.total_frames
        if finished or learner.updates % self.every == 0:
            try:
                save_checkpoint(checkpoint_path(self.run_dir), learner)
            except CheckpointError as err:  # non-finite weights: keep the last good checkpoint, train on
                print(f'checkpoint: {err}', file=sys.stderr, flush=True)
                return True
            config = json.dumps(dataclasses.asdict(learner.config), indent=2).encode()
            write_atomically(self.run_dir / 'config.json', lambda f: f.write(config))
        if finished:
            export_policy(self.run_dir / 'policy_last.pt', learner.policy, self.task)
        return True


class EvalCallback:
    """Greedy success of the student on held-out seeds every `every` updates and at the end.

    Adds eval/success_rate, eval/mean_return and eval/frames (the frame of the evaluated weights)
    to the metrics (run it before the loggers) and writes the results to run_dir/eval.json. Like
    SB3's EvalCallback it keeps the best: policy.pt is exported whenever greedy success reaches a
    new best (a tie goes to the later, longer-trained policy), because greedy success swings between
    evaluations even late in training. The best was chosen on the evaluation seeds (10_000 + i), so
    at the end policy.pt is tested, greedy and sampled, on `test_episodes` other seeds (20_000 + i):
    those figures are unbiased and are the ones to quote. Periodic evaluations are greedy only (the
    selection needs nothing else; the training curve already shows sampled success): half the cost.

    :param background: evaluate a copy of the weights on a worker thread while training goes on
        (the student node: its executor keeps answering the simulator); results land at a later
        update. At most one evaluation runs at a time (a due one is skipped while another runs);
        the final one and the test run in the foreground.
    """

    TEST_SEED = 20_000  # evaluation episodes start at seed 10_000, training at the run's seed

    def __init__(self, run_dir: str | Path, task: str, every: int = 25, episodes: int = 150, test_episodes: int = 200,
                 background: bool = False):
        self.run_dir, self.task, self.every, self.episodes = Path(run_dir), task, every, episodes
        self.test_episodes = test_episodes
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / 'eval.json'
        self.last: dict | None = json.loads(self.path.read_text()) if self.path.exists() else None  # on resume
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='evaluation') if background else None
        self.pending: tuple[Future, int, ActorCritic] | None = None  # (result, frames, weights) in flight

    @property
    def best(self) -> dict | None:
        """The evaluation policy.pt was exported at: frames, success_rate, mean_return."""
        return self.last.get('best') if self.last else None

    def __call__(self, learner: PPOLearner, metrics: dict) -> bool:
        finished = learner.frames >= learner.config.total_frames
        if self.pending is not None and (self.pending[0].done() or finished):
            self.record(*self.pending, metrics)
            self.pending = None
        if not finished and learner.updates % self.every != 0:
            return True
        snapshot, frames = eager_copy(learner.policy), learner.frames
        if self.worker is not None and not finished:
            if self.pending is None:
                self.pending = (self.worker.submit(self.run, snapshot), frames, snapshot)
            return True
        self.record(self.run(snapshot), frames, snapshot, metrics)
        if finished:
            shipped, options = load_policy(self.run_dir / 'policy.pt'), env_options_for(snapshot.obs_shape,
                                                                                          snapshot.encoder_name)
            test, sampled = (evaluate(shipped, self.task, self.test_episodes, self.TEST_SEED, greedy=greedy,
                                      env_options=options) for greedy in (True, False))
            self.last['test'] = {'episodes': self.test_episodes, 'seed': self.TEST_SEED,
                                 'success_rate': test['success_rate'], 'interval95': test['interval95'],
                                 'mean_return': test['mean_return'], 'success_rate_sampled': sampled['success_rate'],
                                 'interval95_sampled': sampled['interval95']}
            self.save()
            if self.worker is not None:
                self.worker.shutdown()
        return True

    def run(self, policy: ActorCritic) -> dict:
        """Greedy evaluation of `policy` (on the worker thread, or here), with the seconds it took
        (what selecting the best policy costs)."""
        start = time.perf_counter()
        greedy = evaluate(policy, self.task, self.episodes,
                          env_options=env_options_for(policy.obs_shape, policy.encoder_name))
        return {**greedy, 'seconds': time.perf_counter() - start}

    def record(self, results, frames: int, policy: ActorCritic, metrics: dict) -> None:
        """Keep an evaluation's results (export policy.pt if it is the best) and add them to `metrics`."""
        greedy = results.result() if isinstance(results, Future) else results
        best = self.best
        if best is None or greedy['success_rate'] >= best['success_rate']:
            export_policy(self.run_dir / 'policy.pt', policy, self.task)
            best = {'frames': frames, 'success_rate': greedy['success_rate'], 'mean_return': greedy['mean_return']}
        self.last = {'frames': frames, **greedy, 'best': best,
                     'evaluation_seconds': (self.last or {}).get('evaluation_seconds', 0.0) + greedy.get('seconds', 0.0)}
        metrics.update({'eval/success_rate': greedy['success_rate'], 'eval/mean_return': greedy['mean_return'],
                        'eval/frames': frames})
        self.save()

    def save(self) -> None:
        result = json.dumps(self.last, indent=2).encode()  # read live by the progress line and the report
        write_atomically(self.path, lambda f: f.write(result))

    def summary(self) -> str:
        """The end-of-training line: the shipped policy's test figure, and where it came from."""
        if self.last is None:
            return 'training stopped before any evaluation'
        n = self.last['episodes']
        last = f'last evaluation at frame {self.last["frames"]}: greedy {rate_text(round(self.last["success_rate"] * n), n)}'
        test = self.last.get('test')
        if test is None:
            return last
        wins, n = round(test['success_rate'] * test['episodes']), test['episodes']
        sampled = (f', sampled {rate_text(round(test["success_rate_sampled"] * n), n)}'
                   if 'success_rate_sampled' in test else '')  # (eval.json of runs before sampled tests)
        return (f'policy {self.run_dir / "policy.pt"} (best greedy evaluation, frame {self.best["frames"]}: '
                f'{self.best["success_rate"]:.2f}, chosen on seeds 10000+) tested on unseen seeds {test["seed"]}+: '
                f'greedy success {rate_text(wins, n)}{sampled} (95% intervals), mean return (greedy) '
                f'{test["mean_return"]:.3f}; {last}; evaluations took {self.last.get("evaluation_seconds", 0.0):.0f} s '
                f'(on a worker thread); curve {self.run_dir / "learning_curve.png"}')


def plot_learning_curve(run_dir: str | Path) -> Path:
    """learning_curve.png from progress.csv: success (sampled in training, greedy eval) and teacher weight."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    run_dir = Path(run_dir)
    with (run_dir / 'progress.csv').open() as f:
        rows = list(csv.DictReader(f))
    frames = [int(r['frames']) for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(frames, [float(r['charts/success_rate']) for r in rows], label='success (training, sampled)')
    # eval/frames: the frame of the evaluated weights (a background evaluation lands later)
    evals = [(int(float(r.get('eval/frames') or r['frames'])), float(r['eval/success_rate']))
             for r in rows if r.get('eval/success_rate')]
    if evals:
        ax.plot(*zip(*evals), 'o-', label='success (greedy, held-out seeds)')
    ax.set_xlabel('environment frames')
    ax.set_ylabel('success rate')
    ax.set_ylim(-0.02, 1.02)
    weight = ax.twinx()
    weights = [float(r['teacher/weight']) for r in rows]
    weight.plot(frames, weights, 'k--', alpha=0.4, label='teacher weight')
    weight.set_ylim(0, 1.05 * max(weights + [1.0]))
    weight.set_ylabel('teacher weight (lambda)')
    lines = ax.get_legend_handles_labels()[0] + weight.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], loc='center right')
    ax.set_title(run_dir.name)
    fig.tight_layout()
    path = run_dir / 'learning_curve.png'
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class MetricsLogCallback:
    """TensorBoard scalars against global_step (frames) and a CSV copy for plots and reports."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(str(self.run_dir / 'tensorboard'))
        self.csv_path = self.run_dir / 'progress.csv'
        # A resumed run keeps the columns its file has.
        self.fields = (self.csv_path.open().readline().strip().split(',')
                       if self.csv_path.exists() and self.csv_path.stat().st_size else CSV_FIELDS)

    def __call__(self, learner: PPOLearner, metrics: dict) -> bool:
        frames = learner.frames
        row = {'frames': frames, 'updates': learner.updates, 'episodes': learner.episodes, **metrics}
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.fields, extrasaction='ignore')
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            writer.writeheader()
        writer.writerow(row)
        append_whole(self.csv_path, text.getvalue().encode())  # first: the CSV is what plots and reports read
        try:
            for tag, value in metrics.items():
                self.writer.add_scalar(tag, value, frames)
            self.writer.flush()
        except OSError:
            # TensorBoard's writer thread keeps a failed write's error for ever: a new writer
            # (a new event file) goes on once there is room again
            self.writer = SummaryWriter(str(self.run_dir / 'tensorboard'))
            raise
        if learner.frames >= learner.config.total_frames:
            plot_learning_curve(self.run_dir)
        return True


def append_whole(path: Path, data: bytes) -> None:
    """Append `data` to `path` all or nothing: a failed write (a full disk) is cut back off, so no
    reader (nor the next append) finds half a row."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def progress_line(learner: PPOLearner, metrics: dict) -> str:
    """One line of training progress for logs and terminals."""
    total = learner.config.total_frames
    frames = learner.frames
    return (f'frames {frames}/{total} ({100 * frames / total:.0f}%) | '
            f'fps {metrics["charts/SPS"]:.0f} | return {metrics["charts/episodic_return"]:.3f} | '
            f'success {metrics["charts/success_rate"]:.2f} | teacher weight {metrics["teacher/weight"]:.2f} '
            f'(coverage {metrics["teacher/coverage"]:.2f})')
