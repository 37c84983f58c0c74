"""The student's learning code in-process: GAE, teacher schedule, checkpoints, and that PPO learns."""
import json

import numpy as np
import pytest
import torch

from habitat_bridge.minigrid.vector import MiniGridVecEnv
from student_policy.callbacks import EvalCallback
from student_policy.checkpoints import CheckpointError, load_learner, save_checkpoint
from student_policy.evaluate import LOOP_WINDOW, ends_in_loop, evaluate
from student_policy.networks import ActorCritic
from student_policy.lockstep import train
from student_policy.ppo import PAPER_SCHEDULE, PPOConfig, PPOLearner, TeacherSchedule
from student_policy.storage import RolloutStorage, TeacherReplay, compute_gae

PLAIN = TeacherSchedule(initial=0.0, final=0.0)


def test_gae_matches_a_hand_computation():
    rewards = np.array([[0.0], [0.0], [1.0]], np.float32)
    values = np.array([[0.5], [0.6], [0.7]], np.float32)
    dones = np.array([[0.0], [0.0], [1.0]], np.float32)
    gamma, lam = 0.9, 0.8
    adv, ret = compute_gae(rewards, values, dones, np.array([9.0], np.float32), gamma, lam)
    d2 = 1.0 - 0.7                      # episode ends: no bootstrap from last_values
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2, a1 = d2, d1 + gamma * lam * d2
    assert adv[:, 0] == pytest.approx([d0 + gamma * lam * a1, a1, a2], abs=1e-6)
    assert ret == pytest.approx(adv + values)


def test_gae_bootstraps_from_last_values_when_the_episode_goes_on():
    adv, _ = compute_gae(np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32),
                         np.zeros((1, 1), np.float32), np.array([2.0], np.float32), 0.5, 0.95)
    assert adv[0, 0] == pytest.approx(1.0)


def test_the_papers_schedule_in_frames():
    schedule = PAPER_SCHEDULE
    assert schedule.weight(0) == 10.0
    assert schedule.weight(256 * 100) == pytest.approx(10.0 - 0.005 * 100)  # 0.005 per 256-frame iteration
    assert schedule.weight(256 * 2500) == pytest.approx(0.1)
    assert schedule.weight(256 * 3000) == 0.0


@pytest.mark.parametrize('kwargs, message', [
    ({'initial': 0.0, 'final': 0.1}, 'must not exceed initial'),
    ({'initial': -1.0, 'final': -2.0}, 'must be >= 0'),
    ({'decay_frames': 0}, 'decay_frames must be > 0'),
])
def test_bad_schedules_are_refused_with_the_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TeacherSchedule(**kwargs)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match='num_steps must be at least 1, got 0'):
        PPOConfig(num_steps=0)
    with pytest.raises(ValueError, match="device 'gpu0' is not a torch device"):
        PPOConfig(device='gpu0')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='no CUDA device here; use device cpu'):
            PPOConfig(device='cuda')


def test_evaluation_plays_one_episode_per_seed_however_many_envs_run_them():
    """Seeds seed..seed+n-1, each counted once: counting the first n episodes to end would favour
    short ones, and the figure would depend on how many envs ran them."""
    torch.manual_seed(0)
    policy = ActorCritic((5, 5, 4), 7)
    wide = evaluate(policy, 'MiniGrid-DoorKey-5x5-v0', 12, seed=500, num_envs=16)
    narrow = evaluate(policy, 'MiniGrid-DoorKey-5x5-v0', 12, seed=500, num_envs=5)
    assert wide == narrow and wide['episodes'] == 12


def test_a_failure_that_repeats_a_short_cycle_of_actions_is_a_loop():
    assert ends_in_loop([2, 0, 1] * 3 + [0, 1] * (LOOP_WINDOW // 2))  # left-right at the end
    assert ends_in_loop([5] * LOOP_WINDOW)  # toggle facing a wall
    assert ends_in_loop([0, 2, 2, 1] * 10)  # a cycle of 4
    assert not ends_in_loop([0, 2, 2, 2, 1] * 10)  # of 5: a path, as far as this test can tell
    assert not ends_in_loop([0, 1] * (LOOP_WINDOW // 2 - 1))  # too short to tell
    # A policy that only turns left fails every episode, each one a loop.
    left = ActorCritic((5, 5, 4), 7)
    torch.nn.init.zeros_(left.actor.weight)
    with torch.no_grad():
        left.actor.bias.copy_(torch.tensor([9.0, 0, 0, 0, 0, 0, 0]))
    result = evaluate(left, 'MiniGrid-DoorKey-5x5-v0', 4, seed=500)
    assert result['success_rate'] == 0.0 and result['loops'] == 4


def test_distillation_pulls_the_student_towards_the_teacher():
    """With only the teacher term (no reward), the student's policy moves to the teacher's action."""
    envs = MiniGridVecEnv('MiniGrid-SimpleDoorKey-v0', 4)
    config = PPOConfig(total_frames=4 * 32 * 6, num_steps=32, learning_rate=3e-3,
                       teacher=TeacherSchedule(initial=10.0, final=10.0))
    target = np.zeros((4, 7), np.float32)
    target[:, 2] = 1.0  # "forward"
    learner = train(config, envs, teacher=lambda step: (target, np.ones(4, bool)))
    obs = envs.reset(seed=99).observations
    probs = torch.softmax(learner.policy.step(torch.from_numpy(obs), learner.policy.initial_state(4))[0], -1)
    assert probs[:, 2].min().item() > 0.9


def test_the_distillation_loss_is_the_cross_entropy_averaged_over_suggested_samples():
    """Two envs in one state: one with a suggestion, one without. The reported distillation loss is
    CE(pi_T || pi_theta) of the suggested sample alone (not halved by the other)."""
    config = PPOConfig(total_frames=1000, num_steps=1, minibatch_size=2, update_epochs=1,
                       teacher=TeacherSchedule(initial=1.0, final=1.0), compile=False)
    learner = PPOLearner(config, (5, 5, 4), 2, 4)
    obs = np.zeros((2, 5, 5, 4), np.uint8)
    teacher = np.array([[0.0, 0.0, 1.0, 0.0], [0.25] * 4], np.float32)
    learner.act(obs)
    learner.attach_teacher(0, teacher, np.array([1.0, 0.0], np.float32))
    learner.record(np.zeros(2, np.float32), np.ones(2, np.float32), np.zeros(2, bool))
    with torch.no_grad():
        log_probs = torch.log_softmax(learner.policy.step(torch.from_numpy(obs[:1]), learner.policy.initial_state(1))[0], -1)[0]
    metrics = learner.update(obs)
    assert metrics['losses/distill_loss'] == pytest.approx(-log_probs[2].item(), rel=1e-5)
    assert metrics['teacher/coverage'] == 0.5



@pytest.mark.parametrize('teacher_replay', [0, 64])
def test_the_update_learns_no_choice_where_the_env_ignored_the_action(teacher_replay):
    """An option-level env holding its option ignores the action (decides 0): what was sampled and
    what the teacher said there change nothing in the update, nor in the teacher replay; at a
    sample that decided they do."""
    import copy
    config = PPOConfig(total_frames=1000, num_steps=4, minibatch_size=8, update_epochs=2, learning_rate=3e-3,
                       teacher=TeacherSchedule(initial=1.0, final=1.0), compile=False, teacher_replay=teacher_replay)
    learner = PPOLearner(config, (5, 5, 4), 2, 3)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 255, (5, 2, 5, 5, 4), dtype=np.uint8)
    for t in range(4):
        learner.act(obs[t], decides=np.array([t % 2 == 0, True]))
        learner.attach_teacher(t, np.full((2, 3), 1 / 3, np.float32), np.ones(2, np.float32))
        learner.record(rng.normal(size=2).astype(np.float32), np.zeros(2, np.float32), np.zeros(2, bool))

    def updated(*steps: int):  # env 0's samples at `steps` changed: another action, another teacher
        other = copy.deepcopy(learner)
        for t in steps:
            other.storage.actions[t, 0] = (other.storage.actions[t, 0] + 1) % 3
            other.storage.teacher_probs[t, 0] = [1.0, 0.0, 0.0]
        other.update(obs[4])
        return torch.cat([p.flatten() for p in other.policy.parameters()])

    assert torch.equal(updated(), updated(1, 3))  # neither decided
    assert not torch.equal(updated(), updated(2))  # the control: step 2 decided


def test_the_teacher_replay_keeps_the_labelled_sequences_of_past_rollouts_and_drops_the_oldest():
    """Only sequences with a suggestion are kept, with the state stored at their first step, as
    (L, B, ...) batches; a full ring forgets its oldest sequence first."""
    storage = RolloutStorage(4, 2, (1,), 3, state_size=2)
    replay = TeacherReplay(frames=4, sequence=2)  # room for two sequences of 2 steps
    for rollout in range(3):
        storage.obs[..., 0] = rollout * 10 + np.arange(8).reshape(4, 2)  # unique ids: 10 * rollout + 2t + env
        storage.states[..., 0] = storage.obs[..., 0]
        storage.teacher_mask[:] = 0.0
        storage.teacher_mask[1, 0] = 1.0  # only env 0's first sequence (steps 0-1) carries a suggestion
        replay.add(*storage.sequences(2))
    assert replay.frames == 4
    labels = replay.sample(64, np.random.default_rng(0))
    assert labels.obs.shape == (2, 64, 1) and labels.teacher_probs.shape == (2, 64, 3) and labels.state.shape == (64, 2)
    assert {tuple(column) for column in labels.obs[..., 0].T.tolist()} == {(10, 12), (20, 22)}  # rollouts 1 and 2
    assert torch.equal(labels.state[:, 0], labels.obs[0, :, 0].float())
    assert labels.teacher_mask[1].eq(1).all() and labels.teacher_mask[0].eq(0).all()


def test_the_teacher_replay_keeps_teaching_what_the_rollouts_no_longer_show():
    """The teacher labels state A "2" in the first rollout; the later rollouts show only state B,
    labelled "3" (no reward anywhere). Without the replay the student forgets A's label as it
    learns B's; the replay keeps it."""
    state_a, state_b = np.zeros((2, 5, 5, 4), np.uint8), np.ones((2, 5, 5, 4), np.uint8)

    def after_training(replay: int) -> tuple[float, float]:
        config = PPOConfig(total_frames=10_000, num_steps=4, minibatch_size=8, update_epochs=2, learning_rate=3e-3,
                           teacher=TeacherSchedule(initial=1.0, final=1.0), teacher_replay=replay, compile=False)
        learner = PPOLearner(config, state_a.shape[1:], 2, 4)
        for update in range(8):
            obs, label = (state_a, 2) if update == 0 else (state_b, 3)
            for t in range(4):
                learner.act(obs)
                learner.attach_teacher(t, np.eye(4, dtype=np.float32)[[label, label]], np.ones(2, np.float32))
                learner.record(np.zeros(2, np.float32), np.zeros(2, np.float32), np.zeros(2, bool))
            metrics = learner.update(obs)
            assert ('losses/replay_loss' in metrics) == bool(replay)
        with torch.no_grad():
            logits = learner.policy.step(torch.from_numpy(np.concatenate([state_a[:1], state_b[:1]])),
                                         learner.policy.initial_state(2))[0]
        probs = torch.softmax(logits, -1)
        return probs[0, 2].item(), probs[1, 3].item()

    (forgotten, b_without), (kept, b_replayed) = after_training(0), after_training(64)
    assert b_without > 0.9 and b_replayed > 0.9  # B is learnt either way
    assert kept > 0.9 > forgotten + 0.3


def test_env_groups_fill_their_own_columns_at_their_own_pace():
    """Double-buffered sampling: group 1 runs a step ahead of group 0; each writes only its columns,
    and the rollout is full (and updates) only once both groups have all their steps."""
    envs = [MiniGridVecEnv('MiniGrid-SimpleDoorKey-v0', 2), MiniGridVecEnv('MiniGrid-SimpleDoorKey-v0', 2)]
    config = PPOConfig(total_frames=10_000, num_steps=4, minibatch_size=8)
    learner = PPOLearner(config, envs[0].observation_space.shape, 4, 7, num_groups=2)
    steps = [e.reset(seed=10 * g) for g, e in enumerate(envs)]
    seen = {0: [], 1: []}

    def advance(group):
        seen[group].append(steps[group].observations)
        actions = learner.act(steps[group].observations, group=group)
        steps[group] = envs[group].step(actions)
        learner.record(steps[group].rewards, steps[group].terminated | steps[group].truncated, steps[group].success,
                       group=group)

    advance(1)
    for _ in range(3):
        advance(0)
        advance(1)
    assert learner.storage.steps == [3, 4] and learner.storage.group_full(1) and not learner.storage.full
    advance(0)
    assert learner.storage.full and learner.frames == 16
    for group, columns in ((0, slice(0, 2)), (1, slice(2, 4))):
        assert np.array_equal(learner.storage.obs[:, columns], np.stack(seen[group]))
    metrics = learner.update(np.concatenate([steps[0].observations, steps[1].observations]))
    assert learner.storage.steps == [0, 0] and learner.updates == 1 and np.isfinite(metrics['losses/value_loss'])


def small_learner(tmp_path):
    envs = MiniGridVecEnv('MiniGrid-SimpleDoorKey-v0', 2)
    config = PPOConfig(total_frames=2 * 16 * 2, num_steps=16, minibatch_size=16)
    return envs, train(config, envs)


def test_checkpoint_round_trip_continues_exactly(tmp_path):
    envs, learner = small_learner(tmp_path)
    path = save_checkpoint(tmp_path / 'last.pt', learner)
    restored = load_learner(path, envs.observation_space.shape, 2, 7)
    assert (restored.frames, restored.updates, restored.episodes) == (learner.frames, learner.updates, learner.episodes)
    for a, b in zip(learner.policy.state_dict().values(), restored.policy.state_dict().values()):
        assert torch.equal(a, b)
    # The RNG states come back too: two restores of one checkpoint sample the same actions.
    assert restored.rng.bit_generator.state == learner.rng.bit_generator.state
    obs = envs.reset(seed=3).observations
    first = restored.act(obs)
    assert np.array_equal(load_learner(path).act(obs), first)


def test_corrupt_and_incompatible_checkpoints_are_refused_clearly(tmp_path):
    envs, learner = small_learner(tmp_path)
    path = save_checkpoint(tmp_path / 'last.pt', learner)
    with pytest.raises(CheckpointError, match='num_envs=2, but the environments have num_envs=8'):
        load_learner(path, envs.observation_space.shape, 8, 7)
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='unreadable or corrupt'):
        load_learner(truncated)
    other = tmp_path / 'other.pt'
    torch.save({'weights': 1}, other)
    with pytest.raises(CheckpointError, match='not a student checkpoint'):
        load_learner(other)
    with pytest.raises(CheckpointError, match='does not exist'):
        load_learner(tmp_path / 'missing.pt')


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    envs, learner = small_learner(tmp_path)
    path = save_checkpoint(tmp_path / 'last.pt', learner)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', crash)
    with pytest.raises(OSError):
        save_checkpoint(path, learner)
    assert path.read_bytes() == before and list(tmp_path.glob('*.tmp')) == []


@pytest.mark.slow
def test_plain_ppo_learns_to_reach_the_goal():
    """PPO alone on Empty-5x5, 40k frames. The margin comes from the spread over seeds 0-7 measured
    here (final mean return 0.73-0.96, 0.02-0.47 after the first update); DoorKey-5x5 was not used:
    at 100k frames 2 of 6 seeds never find the key, so one seed's pass depended on the CPU's float
    order (it failed on another machine of this kind)."""
    envs = MiniGridVecEnv('MiniGrid-Empty-5x5-v0', 16)
    returns = []
    train(PPOConfig(total_frames=40_960, teacher=PLAIN), envs,
          callbacks=[lambda learner, m: returns.append(m['charts/episodic_return']) or True])
    assert returns[-1] > 0.5 and returns[-1] > returns[0] + 0.25, f'mean return per update: {returns}'


def test_background_evaluation_lands_at_a_later_update_with_its_own_frames(tmp_path):
    """The student node's evaluation runs on a worker thread: training goes on, and the result is
    recorded (and policy.pt exported) with the frame of the weights it evaluated."""
    envs = MiniGridVecEnv('MiniGrid-SimpleDoorKey-v0', 2)
    evaluation = EvalCallback(tmp_path, 'MiniGrid-SimpleDoorKey-v0', every=1, episodes=2, test_episodes=2, background=True)
    seen = []

    def watch(learner, metrics):
        seen.append((learner.frames, metrics.get('eval/frames')))
        return True
    train(PPOConfig(total_frames=64 * 6, num_steps=32, minibatch_size=32, teacher=PLAIN), envs,
          callbacks=[evaluation, watch])
    landed = [(frames, evaluated) for frames, evaluated in seen if evaluated is not None]
    assert landed[-1] == (384, 384)  # the final evaluation runs in the foreground
    assert any(evaluated < frames for frames, evaluated in landed[:-1]), seen  # earlier ones landed later
    final = json.loads((tmp_path / 'eval.json').read_text())
    assert final['test']['episodes'] == 2 and (tmp_path / 'policy.pt').is_file()
