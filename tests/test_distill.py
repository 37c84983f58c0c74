"""The distillation term's per-sample weights (PPOConfig.distill) on hand-made minibatches."""
import numpy as np
import pytest
import torch

from student_policy.ppo import DISTILL_MODES, PPOConfig, PPOLearner, TeacherSchedule, distill_weights

CERTAIN = [0.0, 0.0, 1.0, 0.0]     # one-hot: the teacher knows
EVEN_SPLIT = [0.5, 0.0, 0.5, 0.0]  # 'explore' and the right option, near-evenly
UNIFORM = [0.25, 0.25, 0.25, 0.25]
LEANING = [0.1, 0.0, 0.7, 0.2]


def test_ce_weighs_every_sample_alike():
    probs = torch.tensor([CERTAIN, UNIFORM])
    weights = distill_weights('ce', probs, torch.tensor([0, 1]), torch.tensor([1.0, -1.0]))
    assert weights.tolist() == [1.0, 1.0]


def test_certainty_teaches_a_certain_state_fully_and_a_hesitant_one_not_at_all():
    probs = torch.tensor([CERTAIN, EVEN_SPLIT, UNIFORM, LEANING])
    weights = distill_weights('certainty', probs, torch.zeros(4, dtype=torch.long), torch.zeros(4))
    assert weights.tolist() == pytest.approx([1.0, 0.0, 0.0, 0.5])


@pytest.mark.parametrize('probs, action, advantage, weight', [
    (CERTAIN, 2, 1.0, 1.0),      # followed the teacher, it paid off
    (CERTAIN, 2, -1.0, 1.0),     # followed the teacher, it did not: still taught (see distill_weights)
    (CERTAIN, 0, -1.0, 1.0),     # left the teacher and did worse than expected
    (CERTAIN, 0, 0.0, 1.0),
    (CERTAIN, 0, 0.5, 0.0),      # left the teacher and beat the critic's expectation: PPO decides
    (EVEN_SPLIT, 0, 0.5, 1.0),   # a tie: either top action is the teacher's choice
    (LEANING, 3, 0.5, 0.0),
])
def test_advantage_masks_only_deviations_that_beat_the_critic(probs, action, advantage, weight):
    weights = distill_weights('advantage', torch.tensor([probs]), torch.tensor([action]), torch.tensor([advantage]))
    assert weights.tolist() == [weight]


def test_unknown_modes_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"distill must be one of ce, certainty, advantage, got 'kl'"):
        PPOConfig(distill='kl')
    with pytest.raises(ValueError, match='got'):
        distill_weights('kl', torch.tensor([CERTAIN]), torch.tensor([0]), torch.tensor([0.0]))


def _learner_with_one_rollout(distill: str, teacher_probs: list[list[float]], actions: list[int],
                              rewards: list[float]) -> PPOLearner:
    """A learner with a full rollout of one step of len(actions) envs, all in the same state, each
    episode ending after its reward (so A = reward - V(s))."""
    n = len(actions)
    config = PPOConfig(total_frames=1000, num_steps=1, minibatch_size=n, update_epochs=1, distill=distill,
                       teacher=TeacherSchedule(initial=1.0, final=1.0), seed=0)
    learner = PPOLearner(config, (5, 5, 4), n, 4)
    obs = np.zeros((n, 5, 5, 4), np.uint8)
    learner.act(obs, np.array(teacher_probs, np.float32), np.ones(n, np.float32))
    learner.storage.actions[0] = actions
    learner.record(np.array(rewards, np.float32), np.ones(n, np.float32), np.zeros(n, bool))
    return learner


@pytest.mark.parametrize('distill', DISTILL_MODES)
def test_update_reports_the_mean_weight_and_a_loss_scaled_by_it(distill):
    """Two envs in the same state: a certain teacher the student followed, and an even split the
    student left for an action that was rewarded (A = 1 - V(s) > 0 for an untrained critic). The
    reported distillation loss is the weighted CE averaged over both suggested samples."""
    probs = [CERTAIN, EVEN_SPLIT]
    learner = _learner_with_one_rollout(distill, probs, actions=[2, 3], rewards=[0.0, 1.0])
    with torch.no_grad():
        log_probs = torch.log_softmax(learner.policy(torch.zeros(1, 5, 5, 4, dtype=torch.uint8))[0], -1)[0]
    cross_entropy = -(torch.tensor(probs) * log_probs).sum(-1)
    expected_weights = {'ce': [1.0, 1.0], 'certainty': [1.0, 0.0], 'advantage': [1.0, 0.0]}[distill]
    metrics = learner.update(np.zeros((2, 5, 5, 4), np.uint8))
    assert metrics['teacher/distill_weight'] == pytest.approx(np.mean(expected_weights))
    assert metrics['losses/distill_loss'] == pytest.approx(
        (cross_entropy * torch.tensor(expected_weights)).sum().item() / 2, rel=1e-5)
