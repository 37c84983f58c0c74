"""A student with memory (PPOConfig.recurrent): acting and learning see the same policy, the state
follows episodes, and the exports carry it."""
import numpy as np
import pytest
import torch

from habitat_bridge.minigrid.vector import MiniGridVecEnv
from student_policy.checkpoints import CheckpointError, export_policy, load_learner, save_checkpoint
from student_policy.evaluate import evaluate
from student_deploy.inference import load_policy
from student_policy.lockstep import train
from student_policy.networks import ActorCritic
from student_policy.ppo import PPOConfig, PPOLearner, TeacherSchedule
from student_policy.storage import minibatches
from student_deploy.robot_control import BatchStates

TASK = 'MiniGrid-SimpleDoorKey-v0'
PLAIN = TeacherSchedule(0.0, 0.0)


def test_unrolling_a_sequence_gives_what_acting_step_by_step_gave():
    torch.manual_seed(0)
    policy = ActorCritic((5, 5, 4), 7, recurrent=16)
    obs = torch.randint(0, 10, (6, 3, 5, 5, 4), dtype=torch.uint8)
    starts = torch.zeros(6, 3)
    starts[0, 0], starts[3, 1] = 1.0, 1.0  # env 0 starts an episode at once, env 1 at step 3
    state = torch.randn(3, 16)  # what came before the sequence: carried on, forgotten where one starts
    logits, values = policy.unroll(obs, state, starts)
    acting = state
    for t in range(6):
        step_logits, step_values, acting = policy(obs[t], acting * (1.0 - starts[t]).unsqueeze(-1))
        torch.testing.assert_close(logits[t], step_logits)
        torch.testing.assert_close(values[t], step_values)
    with pytest.raises(ValueError, match='recurrent'):
        ActorCritic((5, 5, 4), 7, recurrent=-1)


def fill_rollout(learner, envs, seed=0):
    step = envs.reset(seed=seed)
    for _ in range(learner.config.num_steps):
        actions = learner.act(step.observations)
        step = envs.step(actions)
        learner.record(step.rewards, step.terminated | step.truncated, step.success)
    return step


def test_ppo_recomputes_the_acting_policys_log_probs_over_chunks_from_the_stored_states():
    """The rollout keeps the state each env's policy acted from at every step and where episodes
    began: each minibatch sequence (16 consecutive steps of one env, envs mixed), unrolled from the
    state stored at its first step, gives back the log-probs and values it acted with (PPO's ratio
    starts at 1), across episode ends inside it; so does the whole rollout from its first states."""
    envs = MiniGridVecEnv('MiniGrid-Empty-5x5-v0', 4)
    config = PPOConfig(num_steps=64, recurrent=32, bptt_steps=16, minibatch_size=64, compile=False)
    learner = PPOLearner(config, envs.observation_space.shape, 4, 7)
    fill_rollout(learner, envs)  # a first rollout, so that the second starts from non-zero states
    learner.update(envs.reset(seed=1).observations)
    fill_rollout(learner, envs, seed=2)
    s = learner.storage
    assert np.abs(s.states[0]).sum() > 0  # states carried in from the last rollout
    assert s.starts.reshape(4, 16, 4)[:, 1:].sum() > 0  # episodes start inside chunks, not only at their first step
    with torch.no_grad():
        logits, values = learner.policy.unroll(torch.from_numpy(s.obs), torch.from_numpy(s.states[0]),
                                               torch.from_numpy(s.starts))
    logprobs = torch.distributions.Categorical(logits=logits).log_prob(torch.from_numpy(s.actions))
    np.testing.assert_allclose(logprobs.numpy(), s.logprobs, atol=1e-5)
    np.testing.assert_allclose(values.numpy(), s.values, atol=1e-5)

    sample = np.arange(64 * 4, dtype=np.float32).reshape(64, 4)  # t * 4 + env: which sample a minibatch holds
    seen, envs_mixed = [], False
    for mb in minibatches(*s.sequences(16, advantages=sample, returns=sample), 64, 1, np.random.default_rng(0)):
        assert mb.obs.shape[:2] == (16, 4) and mb.state.shape == (4, 32)
        ids = mb.advantages.numpy()
        assert (np.diff(ids, axis=0) == 4).all()  # consecutive steps of one env
        envs_mixed |= len(set(ids[0] % 4)) > 1
        seen.extend(ids.ravel())
        with torch.no_grad():
            logits, values = learner.policy.unroll(mb.obs, mb.state, mb.starts)
        logprobs = torch.distributions.Categorical(logits=logits).log_prob(mb.actions)
        torch.testing.assert_close(logprobs, mb.logprobs, atol=1e-5, rtol=0)
        torch.testing.assert_close(values, mb.values, atol=1e-5, rtol=0)
    assert sorted(seen) == list(range(64 * 4)) and envs_mixed  # every sample once an epoch
    metrics = learner.update(envs.reset(seed=3).observations)
    # 64 samples a minibatch: 4 chunks of 16 steps, 16 chunks a rollout, so 4 gradient steps per epoch
    assert np.isfinite(metrics['losses/policy_loss']) and metrics['losses/gradient_steps'] == 16


def test_sequences_cut_the_rollout_evenly():
    assert PPOConfig(num_steps=128, recurrent=8).sequence_length == 16
    assert PPOConfig(num_steps=8, recurrent=8).sequence_length == 8  # a shorter rollout is one sequence
    assert PPOConfig(num_steps=20).sequence_length == 1  # a reactive policy learns from single samples
    with pytest.raises(ValueError, match=r'bptt_steps must be at least 1 and divide num_steps \(20\), got 16'):
        PPOConfig(num_steps=20, recurrent=8)
    with pytest.raises(ValueError, match='got 0'):
        PPOConfig(bptt_steps=0)


def test_a_restarted_simulator_and_a_resume_start_from_zero_states(tmp_path):
    envs = MiniGridVecEnv(TASK, 2)
    learner = train(PPOConfig(total_frames=2 * 16 * 2, num_steps=16, minibatch_size=16, recurrent=8, teacher=PLAIN,
                              compile=False), envs)
    assert learner.state.abs().sum() > 0
    learner.drop_group_rollout(0)  # its simulator restarted: what follows starts afresh
    assert learner.starts.tolist() == [1.0, 1.0]
    restored = load_learner(save_checkpoint(tmp_path / 'last.pt', learner))
    assert restored.config.recurrent == 8 and restored.policy.core.hidden_size == 8
    assert restored.state.abs().sum() == 0 and restored.starts.all()  # zero states: the episodes go on unknown


def test_exports_carry_the_state_and_agree_over_a_whole_episode(tmp_path):
    """TorchScript and ONNX take (obs, state) and give (logits, next state); over an episode both
    give the network's own logits and states, and evaluation runs either with its state."""
    torch.manual_seed(0)
    envs = MiniGridVecEnv(TASK, 1)
    policy = ActorCritic(envs.observation_space.shape, 7, recurrent=16).eval()
    path = export_policy(tmp_path / 'policy.pt', policy, TASK)
    exported = {suffix: load_policy(path.with_suffix(suffix)) for suffix in ('.pt', '.onnx')}
    assert all(p.info.recurrent == 16 and p.state_size == 16 for p in exported.values())
    step = envs.reset(seed=7)
    states = {name: p.initial_state(1) for name, p in {**exported, 'net': policy}.items()}
    for _ in range(40):
        obs = torch.from_numpy(step.observations)
        with torch.no_grad():
            want, states['net'] = policy.step(obs, states['net'])
        for suffix, p in exported.items():
            logits, states[suffix] = p.step(obs, states[suffix])
            torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(states[suffix], states['net'], atol=1e-4, rtol=1e-4)
        step = envs.step(want.argmax(-1).numpy())
    results = [evaluate(p, TASK, 4, seed=500) for p in (policy, *exported.values())]
    assert results[0] == results[1] == results[2]


def test_a_reactive_policy_file_keeps_its_one_input(tmp_path):
    path = export_policy(tmp_path / 'policy.pt', ActorCritic((9, 9, 4), 7), TASK)
    for suffix in ('.pt', '.onnx'):
        policy = load_policy(path.with_suffix(suffix))
        logits, state = policy.step(np.zeros((2, 9, 9, 4), np.uint8), policy.initial_state(2))
        assert logits.shape == (2, 7) and state.shape == (2, 0) and policy.info.recurrent == 0
    import onnx
    assert [i.name for i in onnx.load(str(path.with_suffix('.onnx'))).graph.input] == ['obs']


def test_a_deploy_node_keeps_a_state_per_environment_and_starts_it_with_each_episode(tmp_path):
    """policy_node's per-env memory (robot_control.BatchStates) on the step batches of 3 envs: the
    actions equal in-process greedy acting that zeroes each env's state when its episode ends; a
    resent batch is answered from the same state; env groups keep their own; a new simulator
    (epoch), a failed step and reset() start afresh."""
    torch.manual_seed(1)
    envs = MiniGridVecEnv(TASK, 3)
    net = ActorCritic(envs.observation_space.shape, 7, recurrent=16).eval()
    policy = load_policy(export_policy(tmp_path / 'policy.pt', net, TASK).with_suffix('.onnx'))
    states = BatchStates(policy)
    step, state, ended, episodes = envs.reset(seed=3), net.initial_state(3), np.zeros(3, bool), 0
    for seq in range(300):
        for _ in range(1 + (seq % 50 == 7)):  # now and then a batch comes twice (a resend)
            logits, new_state = policy.step(step.observations, states.before(0, 1, seq, ended))
            states.after(0, new_state)
        with torch.no_grad():
            want, state = net.step(torch.from_numpy(step.observations), state.masked_fill(torch.from_numpy(ended)[:, None], 0))
        assert (logits.argmax(-1) == want.argmax(-1)).all()
        step = envs.step(want.argmax(-1).numpy())
        ended = step.terminated | step.truncated
        episodes += ended.sum()
    assert episodes >= 3 and states.before(0, 1, 300, np.zeros(3, bool)).abs().sum() > 0
    assert states.before(1, 1, 301, np.zeros(3, bool)).abs().sum() == 0  # group 1 has its own memory
    assert states.before(0, 2, 0, np.zeros(3, bool)).abs().sum() == 0  # group 0's simulator restarted
    states.reset()  # before a step that then fails: the next batch still starts from zeros
    assert states.before(0, 2, 1, np.zeros(3, bool)).abs().sum() == 0
    assert states.before(0, 2, 2, np.zeros(3, bool)).abs().sum() == 0
    with pytest.raises(FloatingPointError, match='non-finite state'):
        states.after(0, torch.full((3, 16), float('nan')))


def test_a_resume_with_another_memory_size_is_refused_clearly(tmp_path):
    envs = MiniGridVecEnv(TASK, 2)
    config = PPOConfig(total_frames=32, num_steps=16, minibatch_size=16, recurrent=8, teacher=PLAIN, compile=False)
    path = save_checkpoint(tmp_path / 'last.pt', train(config, envs))
    with pytest.raises(CheckpointError, match="trained with recurrent=8, but this run has recurrent=0"):
        load_learner(path, config=PPOConfig(total_frames=64))
