"""Faults the training loop survives: malformed messages, a restarted simulator, non-finite numbers,
unsafe checkpoint files. First the plain LockstepLearner (no DDS), then the running graph."""
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from llm_teacher_msgs.msg import StepBatch, Suggestion, SuggestionBatch, TrainingStatus
from ros_helpers import spin_until

from llm_teacher.launch_runner import LaunchRunner, load_launch_file, resolve_arguments
from student_policy.checkpoints import CheckpointError, read_checkpoint, save_checkpoint
from student_policy.lockstep import LockstepLearner, StepIn, suggestion_arrays
from student_policy.ppo import PPOConfig, PPOLearner, TeacherSchedule

N, A, STEPS = 4, 7, 8
OBS = (5, 5, 4)


def make_loop(updates: list, num_steps: int = STEPS):
    config = PPOConfig(total_frames=10**6, num_steps=num_steps, minibatch_size=16)
    return LockstepLearner(lambda shape, n, a, encoder, groups: PPOLearner(config, shape, n, a, groups),
                           lambda learner, metrics: updates.append(metrics) or True, log=lambda text: None)


def step(seq, epoch=1, n=N, rewards=None, obs_shape=OBS, group=0, num_groups=1):
    rng = np.random.default_rng(seq)
    return StepIn(seq, rng.integers(0, 10, (n,) + obs_shape, dtype=np.uint8),
                  np.zeros(n, np.float32) if rewards is None else rewards, np.zeros(n, bool), np.zeros(n, bool),
                  np.zeros(n, bool), A, group, num_groups, epoch)


def test_malformed_step_batches_are_refused_and_counted():
    loop = make_loop([])
    assert len(loop.on_step(step(0))) == 1
    bad = [step(1, rewards=np.array([0, np.nan, 0, 0], np.float32)), step(1, n=3), step(1, obs_shape=(6, 5, 4)),
           step(1, group=2, num_groups=1),
           StepIn(1, np.zeros((N,) + OBS, np.uint8), np.zeros(N, np.float32), np.zeros(2, bool), np.zeros(N, bool),
                  np.zeros(N, bool), A, epoch=1)]
    for batch in bad:
        assert loop.on_step(batch) == []
    assert loop.counters.rejected_steps == len(bad) and loop.learner.frames == 0
    assert 'sizes must be equal' in loop.counters.last_error
    assert len(loop.on_step(step(1))) == 1 and loop.learner.frames == N  # the good next batch goes on


def test_suggestions_that_are_not_distributions_count_as_none():
    good = np.full(A, 1 / A)
    probs, mask, invalid = suggestion_arrays(
        [good, np.full(A, np.nan), -good, good * 2, good[:3], good], [True, True, True, True, True, False], A)
    assert mask.tolist() == [1, 0, 0, 0, 0, 0] and invalid == 4 and np.isfinite(probs).all()
    loop = make_loop([])
    loop.on_step(step(0))
    loop.on_suggestions(1, 0, 0, np.zeros((N + 1, A), np.float32), np.ones(N + 1, np.float32))  # wrong length
    assert loop.counters.rejected_suggestions == 1


def test_a_restarted_simulator_drops_its_unfinished_rollout_and_training_goes_on():
    updates = []
    loop = make_loop(updates)
    for seq in range(5):
        loop.on_step(step(seq, epoch=1))
    assert loop.learner.storage.steps == [4]
    answers = loop.on_step(step(0, epoch=2))  # the sim came back: seq 0 again, new epoch
    assert len(answers) == 1 and answers[0].epoch == 2
    assert loop.counters.restarts == 1 and loop.learner.storage.steps == [0]
    for seq in range(1, STEPS + 1):
        loop.on_step(step(seq, epoch=2))
    assert len(updates) == 1 and updates[0]['faults/sim_restarts'] == 1
    # A late suggestion of the old epoch does not attach to the new epoch's step of the same seq.
    loop.on_suggestions(1, STEPS + 1, 0, np.full((N, A), 1 / A, np.float32), np.ones(N, np.float32))
    assert loop.learner.storage.teacher_mask.sum() == 0


def test_a_non_finite_loss_skips_the_gradient_step_and_checkpoints_stay_finite(tmp_path):
    learner = PPOLearner(PPOConfig(num_steps=STEPS, minibatch_size=8, teacher=TeacherSchedule()), OBS, N, A)
    for t in range(STEPS):
        learner.act(np.zeros((N,) + OBS, np.uint8))
        learner.record(np.zeros(N, np.float32), np.zeros(N, bool), np.zeros(N, bool))
    learner.attach_teacher(3, np.full((N, A), np.nan, np.float32), np.ones(N, np.float32))  # past any validation
    metrics = learner.update(np.zeros((N,) + OBS, np.uint8))
    assert metrics['losses/skipped_steps'] >= 1 and learner.skipped_steps >= 1
    assert all(torch.isfinite(p).all() for p in learner.policy.parameters())
    path = save_checkpoint(tmp_path / 'last.pt', learner)
    before = path.read_bytes()
    with torch.no_grad():
        next(learner.policy.parameters())[0] = float('nan')
    with pytest.raises(CheckpointError, match='non-finite weights'):
        save_checkpoint(path, learner)
    assert path.read_bytes() == before


def test_checkpoints_load_without_running_code(tmp_path):
    learner = PPOLearner(PPOConfig(num_steps=STEPS, minibatch_size=8), OBS, N, A)
    state = read_checkpoint(save_checkpoint(tmp_path / 'last.pt', learner))
    assert state['counters']['frames'] == 0

    class Payload:
        def __reduce__(self):
            return (os.system, ('echo pwned > ' + str(tmp_path / 'pwned'),))
    torch.save({'format': 'llm_teacher.student_checkpoint/1', 'x': Payload()}, tmp_path / 'evil.pt')
    with pytest.raises(CheckpointError, match='safe load refuses'):
        read_checkpoint(tmp_path / 'evil.pt')
    assert not (tmp_path / 'pwned').exists()


LAUNCH = Path(__file__).resolve().parent.parent / 'launch' / 'train.launch.py'


@pytest.mark.slow
def test_the_graph_survives_a_killed_simulator_and_malformed_messages(tmp_path, ros_node):
    """sim + student (plain PPO, 4 envs, rollouts of 128 frames): SIGKILL the sim and start it again,
    publish a NaN suggestion batch and a torn step batch: the student trains on to its budget and
    counts each fault in TrainingStatus."""
    launch = load_launch_file(LAUNCH)
    args = resolve_arguments(launch.ARGUMENTS, [f'run_dir:={tmp_path}', 'total_frames:=3072', 'num_envs:=4',
                                                'plain_ppo:=true', 'foxglove_port:=-1', 'record:=false'])
    specs = [s for s in launch.nodes(args) if s.executable in ('minigrid_sim_node', 'student_node')]
    student = next(s for s in specs if s.executable == 'student_node')
    student.parameters.append({'num_steps': 32, 'checkpoint_every': 1, 'eval_every': 1000, 'eval_episodes': 2,
                               'test_episodes': 2})
    sim = next(s for s in specs if s.executable == 'minigrid_sim_node')
    statuses, logs = [], []
    ros_node.create_subscription(TrainingStatus, 'training_status', statuses.append, 100)
    suggestions = ros_node.create_publisher(SuggestionBatch, 'suggestion_batch', 10)
    steps = ros_node.create_publisher(StepBatch, 'step_batch', 10)
    restarted = LaunchRunner([sim], log=logs.append)  # the sim again, after the first one is killed
    try:
        with LaunchRunner(specs, log=logs.append) as graph:
            spin_until(ros_node, lambda: statuses and statuses[-1].frames >= 512, 120, 'four updates before the faults')
            for seq in range(0, 4000, 50):  # a NaN "valid" suggestion for whatever seq comes
                suggestions.publish(SuggestionBatch(seq=seq, suggestions=[Suggestion(valid=True, action_probs=[float('nan')] * 7)] * 4))
            steps.publish(StepBatch(seq=10**9, num_envs=4, num_actions=7, num_groups=1, obs_shape=[10, 10, 4],
                                    obs_encoding='memory_map', observations=b'\x00' * 17, rewards=[0.0] * 4,
                                    terminated=[False] * 4, truncated=[False] * 4, success=[False] * 4))
            os.killpg(graph.processes[sim.name].pid, signal.SIGKILL)
            killed_at, frames_at_kill = time.monotonic(), statuses[-1].frames
            restarted.start()
            spin_until(ros_node, lambda: statuses[-1].sim_restarts >= 1 and statuses[-1].frames > frames_at_kill, 120,
                       'an update after the simulator restarted')
            print(f'restart -> next PPO update: {time.monotonic() - killed_at:.1f} s')
            spin_until(ros_node, lambda: statuses[-1].frames >= 3072, 180, 'training to its budget')
    finally:
        restarted.stop()
    last = statuses[-1]
    assert last.sim_restarts == 1 and last.rejected_step_batches >= 1, (last, logs[-20:])
    assert last.invalid_suggestions >= 1 and last.skipped_gradient_steps == 0 and np.isfinite(last.policy_loss)
    # frames count what the envs stepped, the rows dropped at the restart included
    assert read_checkpoint(tmp_path / 'checkpoints' / 'last.pt')['counters']['frames'] >= 3072
    assert any('the simulator restarted' in line for line in logs)
