"""Every registered task of the paper (and a standard MiniGrid id): layout, memory map, perception, expert."""
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from minigrid.core.constants import OBJECT_TO_IDX

from habitat_bridge import register_tasks
from habitat_bridge.minigrid.expert import ScriptedExpert
from habitat_bridge.minigrid.observation import UNSEEN, MemoryMapObservation
from habitat_bridge.minigrid.tasks import MAX_STEPS, TASK_IDS
from habitat_bridge.minigrid.vector import MiniGridVecEnv, make_env
from habitat_bridge.vector import make_vec_env
from llm_teacher_common.families import family_of_task

TASKS = list(TASK_IDS) + ['MiniGrid-DoorKey-8x8-v0']
PAPER_TASKS = list(TASK_IDS)
register_tasks()  # for gym.make of the paper's ids below


def run_expert(env, seed):
    obs, _ = env.reset(seed=seed)
    expert = ScriptedExpert()
    trajectory = [obs]
    while True:
        obs, reward, terminated, truncated, info = env.step(expert.act(env))
        trajectory.append(obs)
        if terminated or truncated:
            return reward, info, trajectory


@pytest.mark.parametrize('task', TASKS)
def test_expert_solves_every_seeded_episode(task):
    env = make_env(task)
    failures = []
    for seed in range(200):
        reward, info, trajectory = run_expert(env, seed)
        if not info['success'] or reward <= 0:
            failures.append(seed)
    assert failures == [], f'{task}: expert failed on seeds {failures}'


@pytest.mark.parametrize('task', PAPER_TASKS)
def test_success_reward_follows_the_paper(task):
    env = make_env(task)
    reward, info, trajectory = run_expert(env, seed=3)
    steps = len(trajectory) - 1
    assert info['success']
    assert reward == pytest.approx(1 - 0.9 * steps / MAX_STEPS)


@pytest.mark.parametrize('task', TASKS)
def test_same_seed_same_layout_and_different_seeds_differ(task):
    def layout(seed):
        env = gym.make(task)
        env.reset(seed=seed)
        return env.unwrapped.grid.encode(), tuple(env.unwrapped.agent_pos), env.unwrapped.agent_dir

    first, again = layout(7), layout(7)
    assert np.array_equal(first[0], again[0]) and first[1:] == again[1:]
    assert any(not np.array_equal(layout(s)[0], first[0]) or layout(s)[1:] != first[1:] for s in range(8, 12))


@pytest.mark.parametrize('task', PAPER_TASKS)
def test_paper_task_settings(task):
    env = gym.make(task).unwrapped
    env.reset(seed=0)
    assert env.agent_view_size == 3 and env.max_steps == MAX_STEPS
    assert (env.width, env.height) == ((20, 20) if task == 'MiniGrid-TwoDoor-v0' else (10, 10))


@pytest.mark.parametrize('task', TASKS)
def test_passes_gymnasium_check_and_pickles(task):
    env = make_env(task)
    check_env(env.unwrapped, skip_render_check=True)
    env.reset(seed=1)
    clone = pickle.loads(pickle.dumps(env))
    assert np.array_equal(clone.unwrapped.grid.encode(), env.unwrapped.grid.encode())


@pytest.mark.parametrize('task', PAPER_TASKS)
def test_truncates_at_max_steps(task):
    env = make_env(task)
    env.reset(seed=0)
    for step in range(1, MAX_STEPS + 1):
        _, reward, terminated, truncated, info = env.step(0)  # turning in place never succeeds
        assert not terminated and reward == 0 and not info['success']
        assert truncated == (step == MAX_STEPS)


def test_lava_never_just_inside_the_door():
    # Lava lies inside the room, so the only door neighbour it could take is the cell just inside.
    env = gym.make('MiniGrid-LavaDoorKey-v0').unwrapped
    for seed in range(100):
        env.reset(seed=seed)
        (dx, dy), = [env.locked_doors[0].cur_pos]
        lava = [(x, y) for x in range(env.width) for y in range(env.height)
                if env.grid.get(x, y) is not None and env.grid.get(x, y).type == 'lava']
        assert len(lava) == 1 and abs(lava[0][0] - dx) + abs(lava[0][1] - dy) > 1, f'seed {seed}'


def test_colored_door_key_has_a_blue_door_and_two_keys():
    env = gym.make('MiniGrid-ColoredDoorKey-v0').unwrapped
    env.reset(seed=5)
    objects = [env.grid.get(x, y) for x in range(env.width) for y in range(env.height)]
    keys = sorted(o.color for o in objects if o is not None and o.type == 'key')
    doors = [o for o in objects if o is not None and o.type == 'door']
    assert keys == ['blue', 'red'] and len(doors) == 1 and doors[0].color == 'blue' and doors[0].is_locked


@pytest.mark.parametrize('task', TASKS)
def test_memory_map_never_reveals_an_unseen_cell(task):
    env = make_env(task)
    rng = np.random.default_rng(0)
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        seen = np.zeros(obs.shape[:2], bool)
        base = env.unwrapped
        for _ in range(60):
            # What the agent sees now, by minigrid's own visibility computation (its render highlight).
            _, vis_mask = base.gen_obs_grid()
            forward, right = np.asarray(base.dir_vec), np.asarray(base.right_vec)
            size = base.agent_view_size
            top_left = np.asarray(base.agent_pos) + forward * (size - 1) - right * (size // 2)
            for i in range(size):
                for j in range(size):
                    x, y = top_left - forward * j + right * i
                    if vis_mask[i, j] and 0 <= x < base.width and 0 <= y < base.height:
                        seen[x, y] = True
            seen[tuple(base.agent_pos)] = True
            known = obs[..., 0] != UNSEEN
            assert not (known & ~seen).any(), 'memory map shows a cell the agent never saw'
            assert (obs[..., 3] > 0).sum() == 1 and obs[base.agent_pos[0], base.agent_pos[1], 3] == 1 + base.agent_dir
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(0, 6)))
            if terminated or truncated:
                break


@pytest.mark.parametrize('task', TASKS)
def test_perception_matches_the_grid(task):
    env = make_env(task)
    rng = np.random.default_rng(1)
    env.reset(seed=2)
    base = env.unwrapped
    for _ in range(80):
        perception = env.perception()
        for obj in perception.objects:
            cell = base.grid.get(obj.grid_x, obj.grid_y)
            if obj.visible:  # what is in view now is exactly what the grid holds
                assert cell is not None and cell.type == obj.type and cell.color == obj.color
                if obj.type == 'door':
                    expected = 'open' if cell.is_open else 'locked' if cell.is_locked else 'closed'
                    assert obj.state == expected
            dx, dy = obj.grid_x - base.agent_pos[0], obj.grid_y - base.agent_pos[1]
            assert obj.forward == dx * base.dir_vec[0] + dy * base.dir_vec[1]
            assert obj.left == -(dx * base.right_vec[0] + dy * base.right_vec[1])
        if base.carrying is None:
            assert perception.carrying is None
        else:
            assert (perception.carrying.type, perception.carrying.color) == (base.carrying.type, base.carrying.color)
        assert (perception.x, perception.y, perception.heading) == (*base.agent_pos, base.agent_dir)
        _, _, terminated, truncated, _ = env.step(int(rng.integers(0, 6)))
        if terminated or truncated:
            env.reset()


def test_memory_map_carries_the_carried_object_at_the_agent_cell():
    env = make_env('MiniGrid-SimpleDoorKey-v0')
    env.reset(seed=4)
    expert = ScriptedExpert()
    while env.unwrapped.carrying is None:
        obs, *_ = env.step(expert.act(env))
    x, y = env.unwrapped.agent_pos
    assert obs[x, y, 0] == OBJECT_TO_IDX['key']


def test_vector_env_auto_resets_and_numbers_episodes():
    envs = MiniGridVecEnv('MiniGrid-SimpleDoorKey-v0', num_envs=3)
    first = envs.reset(seed=0)
    assert first.observations.shape == (3, 10, 10, 4) and len(set(first.episode_ids)) == 3
    for _ in range(MAX_STEPS - 1):
        step = envs.step(np.zeros(3, int))
        assert not step.truncated.any()
    step = envs.step(np.zeros(3, int))
    assert step.truncated.all() and not step.success.any()
    assert set(step.episode_ids).isdisjoint(first.episode_ids)


def test_unknown_task_and_observation_mode_name_what_is_allowed():
    with pytest.raises(ValueError, match="unknown task id 'MiniGrid-Nope-v0'.*MiniGrid-SimpleDoorKey-v0"):
        make_env('MiniGrid-Nope-v0')
    with pytest.raises(ValueError, match="'pixels' is not one of"):
        make_env('MiniGrid-SimpleDoorKey-v0', observation='pixels')


def test_egocentric_mode_is_the_agent_view():
    env = make_env('MiniGrid-SimpleDoorKey-v0', observation='egocentric')
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 3, 3)
    assert np.array_equal(obs, env.unwrapped.gen_obs()['image'])
    assert isinstance(env.env, MemoryMapObservation) and env.perception().mission


EVERY_TASK = TASKS + ['MiniWorld-GoToObject-v0', 'MiniWorld-GoToRedBall-v0', 'MiniWorld-PutNext-v0']


@pytest.mark.parametrize('task', EVERY_TASK)
def test_every_task_keeps_the_vector_env_contract(task):
    """Every registered id, MiniWorld included, through make_vec_env: its family's observation,
    same seed same episode, auto-reset with new episode ids, perceptions of its family."""
    family = family_of_task(task)
    runs = []
    for _ in range(2):
        envs = make_vec_env(task, 2)
        steps = [envs.reset(seed=3)]
        rng = np.random.default_rng(0)
        steps += [envs.step(rng.integers(0, envs.num_actions, 2)) for _ in range(10)]
        envs.close()
        runs.append(steps)
    first = runs[0][0]
    assert first.observations.dtype == np.uint8 and first.observations.shape[1:] == envs.observation_space.shape
    assert envs.num_actions == len(family.action_names)
    assert all(np.array_equal(a.observations, b.observations) for a, b in zip(*runs))  # seeded
    assert {p.task_family for p in first.perceptions} == {family.name}
    assert len(set(first.episode_ids)) == 2
