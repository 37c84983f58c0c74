"""The learner's side of issue #33: nothing a step batch, a suggestion or a full disk sends can end
training or make it allocate without bound."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from student_policy.checkpoints import read_checkpoint
from student_policy.lockstep import EARLY_WINDOW, LockstepLearner, StepIn
from student_policy.ppo import PPOConfig, PPOLearner

N, GRID_ACTIONS = 4, 7


def make_loop(task: str = 'MiniGrid-SimpleDoorKey-v0') -> LockstepLearner:
    config = PPOConfig(total_frames=10**6, num_steps=8, minibatch_size=16, compile=False)
    return LockstepLearner(lambda shape, n, a, encoder, groups: PPOLearner(config, shape, n, a, groups),
                           lambda learner, metrics: True, log=lambda text: None, task=task)


def step(seq, n=N, obs_shape=(5, 5, 4), num_actions=GRID_ACTIONS, num_groups=1, encoder='grid'):
    return StepIn(seq, np.zeros((n,) + obs_shape, np.uint8), np.zeros(n, np.float32), np.zeros(n, bool),
                  np.zeros(n, bool), np.zeros(n, bool), num_actions, 0, num_groups, 1, encoder)


@pytest.mark.parametrize('first, message', [
    (step(0, num_actions=8, encoder='image', obs_shape=(48, 48, 4)), 'not those of task MiniGrid-SimpleDoorKey-v0'),
    (step(0, num_groups=2**31), 'more than 4096 envs'),
    (step(0, num_actions=2**31), 'more than 4096 envs, 256 actions'),
    (step(0, obs_shape=(1024, 1024, 4)), 'bytes an observation'),
    (step(0, obs_shape=(5, 0, 4)), 'bytes an observation'),
    (step(0, obs_shape=(25, 4)), 'grid observations are (width, height, channels)'),
])
def test_a_first_batch_that_does_not_fit_the_task_is_refused_and_the_right_one_trains(first, message):
    """The first step batch sizes the learner: a stale sim of another task on the domain, or sizes
    that would allocate without bound, must not fix it; the next good batch starts training."""
    loop = make_loop()
    assert loop.on_step(first) == [] and loop.learner is None
    assert message in loop.counters.last_error
    assert len(loop.on_step(step(1))) == 1 and loop.learner.policy.obs_shape == (5, 5, 4)


def test_early_suggestions_are_kept_only_for_batches_that_can_still_come():
    loop = make_loop()
    loop.on_step(step(0))
    probs, mask = np.full((N, GRID_ACTIONS), 1 / GRID_ACTIONS, np.float32), np.ones(N, np.float32)
    for seq in range(1, 10_000, 7):  # a teacher (or anyone) answering seqs far ahead
        loop.on_suggestions(1, seq, 0, probs, mask)
    assert len(loop.rollout.early) == len(range(1, EARLY_WINDOW + 1, 7))
    loop.on_step(step(1))  # the one for seq 1 attached to its step; the rest wait or go
    assert loop.learner.storage.teacher_mask[1].all()


FULL_DISK = textwrap.dedent('''
    import resource, signal, sys
    from habitat_bridge.minigrid.vector import MiniGridVecEnv
    from student_policy.callbacks import CheckpointCallback, MetricsLogCallback
    from student_policy.lockstep import train
    from student_policy.ppo import PPOConfig, TeacherSchedule
    run_dir, frames, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if limit:  # a file may not grow past `limit` bytes: writes beyond it fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    config = PPOConfig(total_frames=frames, num_steps=16, minibatch_size=32, teacher=TeacherSchedule(0.0, 0.0),
                       compile=False)
    learner = train(config, MiniGridVecEnv('MiniGrid-SimpleDoorKey-v0', 2),
                    callbacks=[CheckpointCallback(run_dir, every=1), MetricsLogCallback(run_dir)])
    print('trained to frame', learner.frames)
''')


def test_a_full_disk_neither_ends_training_nor_damages_what_was_written(tmp_path):
    def run(frames, limit):
        return subprocess.run([sys.executable, '-c', FULL_DISK, str(tmp_path), str(frames), str(limit)],
                              capture_output=True, text=True, timeout=300)

    first = run(64, 0)
    assert first.returncode == 0, first.stderr[-2000:]
    checkpoint = read_checkpoint(tmp_path / 'checkpoints' / 'last.pt')
    rows = (tmp_path / 'progress.csv').read_text().splitlines()
    # A new run into the same directory, with room for about one more CSV row and none for a
    # checkpoint: training still reaches its budget, and the CSV holds whole rows only.
    again = run(64 * 4, len('\n'.join(rows)) + 200)
    assert again.returncode == 0 and 'trained to frame 256' in again.stdout, again.stderr[-2000:]
    assert 'could not write' in again.stderr and 'free some disk space' in again.stderr
    assert read_checkpoint(tmp_path / 'checkpoints' / 'last.pt')['counters'] == checkpoint['counters']
    after = (tmp_path / 'progress.csv').read_text().splitlines()
    assert len(after) > len(rows) and after[:len(rows)] == rows  # a row or more fitted, then the writes failed
    assert all(len(row.split(',')) == len(rows[0].split(',')) for row in after)
    assert not list(tmp_path.rglob('*.tmp'))
