"""Callbacks run after each PPO update, by `train()` and by the student node alike.

Each is a callable (learner, metrics) -> bool; returning False stops training.
A run directory holds: checkpoints/last.pt, policy.pt (TorchScript export), tensorboard/,
config.json and progress.csv (one row per update, for plots).
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

from student_policy.checkpoints import export_policy, save_checkpoint
from student_policy.ppo import PPOLearner


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / 'checkpoints' / 'last.pt'


class CheckpointCallback:
    """Saves the learner every `every` updates and when training reaches its budget, then exports."""

    def __init__(self, run_dir: str | Path, every: int = 10):
        self.run_dir, self.every = Path(run_dir), every

    def __call__(self, learner: PPOLearner, metrics: dict) -> bool:
        finished = learner.frames >= learner.config.total_frames
        if finished or learner.updates % self.every == 0:
            save_checkpoint(checkpoint_path(self.run_dir), learner)
            config = self.run_dir / 'config.json'
            config.write_text(json.dumps(dataclasses.asdict(learner.config), indent=2))
        if finished:
            export_policy(self.run_dir / 'policy.pt', learner)
        return True


class MetricsLogCallback:
    """TensorBoard scalars against global_step (frames) and a CSV copy for plots and reports."""

    def __init__(self, run_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(str(self.run_dir / 'tensorboard'))
        self.csv_path = self.run_dir / 'progress.csv'

    def __call__(self, learner: PPOLearner, metrics: dict) -> bool:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, learner.frames)
        self.writer.flush()
        row = {'frames': learner.frames, 'updates': learner.updates, 'episodes': learner.episodes, **metrics}
        new = not self.csv_path.exists()
        with self.csv_path.open('a', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        return True


def progress_line(learner: PPOLearner, metrics: dict) -> str:
    """One line of training progress for logs and terminals."""
    total = learner.config.total_frames
    return (f'frames {learner.frames}/{total} ({100 * learner.frames / total:.0f}%) | '
            f'fps {metrics["charts/SPS"]:.0f} | return {metrics["charts/episodic_return"]:.3f} | '
            f'success {metrics["charts/success_rate"]:.2f} | teacher weight {metrics["teacher/weight"]:.2f} '
            f'(coverage {metrics["teacher/coverage"]:.2f})')
