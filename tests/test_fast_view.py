"""fast_view: MiniGrid's own egocentric view on every step, and the same memory map as without it."""
import pickle

import gymnasium as gym
import numpy as np
import pytest
from minigrid.minigrid_env import MiniGridEnv

from habitat_bridge.minigrid.expert import ScriptedExpert
from habitat_bridge.minigrid.fast_view import FastView, install
from habitat_bridge.minigrid.observation import MemoryMapObservation
from habitat_bridge.minigrid.tasks import TASK_IDS
from habitat_bridge.minigrid.vector import make_env

SOLVED_BY_EXPERT = list(TASK_IDS) + ['MiniGrid-DoorKey-8x8-v0']  # as tests/test_minigrid_tasks.py
# Standard ids with what those lack: balls that move every step and see-through walls, boxes
# that open into keys, balls to carry and drop, doors to close again.
OTHERS = ['MiniGrid-Dynamic-Obstacles-6x6-v0', 'MiniGrid-ObstructedMaze-1Dlhb-v0',
          'MiniGrid-KeyCorridorS3R2-v0']
STEPS = 2000


def assert_same_run(fast, slow, policy, steps, seed):
    """Step `fast` (fast view) and `slow` (MiniGrid's) with the same actions and seeds; on every
    step the fast view must equal MiniGrid's gen_obs on the same state, and the memory maps match.
    The fast env is pickled halfway, as vector envs are sent to worker processes."""
    assert isinstance(fast.unwrapped.gen_obs, FastView)

    def check(fast_obs, slow_obs, when):
        base = fast.unwrapped
        reference = MiniGridEnv.gen_obs(base)
        context = f'{when}, episode {episode}, pose {tuple(base.agent_pos)} heading {base.agent_dir}'
        np.testing.assert_array_equal(fast.last_view, reference['image'], err_msg=context)
        view = base.gen_obs()
        assert (view['direction'], view['mission']) == (reference['direction'], reference['mission'])
        np.testing.assert_array_equal(fast_obs, slow_obs, err_msg=context)

    episode = 0
    check(fast.reset(seed=seed)[0], slow.reset(seed=seed)[0], 'reset')
    for step in range(steps):
        if step == steps // 2:
            fast = pickle.loads(pickle.dumps(fast))
        action = policy(fast)
        fast_obs, reward, terminated, truncated, _ = fast.step(action)
        slow_obs, slow_reward, *_ = slow.step(action)
        assert reward == slow_reward
        check(fast_obs, slow_obs, f'step {step}, action {action}')
        if terminated or truncated:  # the episode's last view (a door just opened) is checked too
            episode += 1
            check(fast.reset(seed=seed + episode)[0], slow.reset(seed=seed + episode)[0], 'reset')
    return episode


def random_policy(seed):
    rng = np.random.default_rng(seed)
    return lambda env: int(rng.integers(env.action_space.n))


def noisy_expert(seed, epsilon=0.1):
    """The scripted expert, one action in ten random: it picks keys up, opens doors and ends
    episodes, and the random actions drop keys and close doors on the way."""
    rng, expert = np.random.default_rng(seed), [ScriptedExpert()]

    def act(env):
        if rng.random() < epsilon:
            expert[0] = ScriptedExpert()  # replan from wherever the random action leads
            return int(rng.integers(env.action_space.n))
        return expert[0].act(env)
    return act


@pytest.mark.parametrize('task', SOLVED_BY_EXPERT + OTHERS)
def test_random_run_matches_minigrid(task):
    episodes = assert_same_run(make_env(task), make_env(task, fast_view=False), random_policy(0), STEPS, seed=0)
    assert episodes >= 1


@pytest.mark.parametrize('task', SOLVED_BY_EXPERT)
def test_expert_run_matches_minigrid(task):
    episodes = assert_same_run(make_env(task), make_env(task, fast_view=False), noisy_expert(0), STEPS, seed=100)
    assert episodes >= 10  # many episodes: many doors opened, many new grids


def test_other_view_size_matches_minigrid():
    def env(fast):
        base = gym.make('MiniGrid-DoorKey-8x8-v0', agent_view_size=5)
        if fast:
            assert install(base)
        return MemoryMapObservation(base)
    assert_same_run(env(True), env(False), noisy_expert(1, epsilon=0.3), STEPS // 2, seed=200)


def test_env_with_its_own_gen_obs_keeps_it():
    class OwnView(TASK_IDS['MiniGrid-SimpleDoorKey-v0']):
        def gen_obs(self):
            return super().gen_obs()

    env = OwnView()
    assert not install(env) and 'gen_obs' not in vars(env)
