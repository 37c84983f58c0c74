"""Teaching an embodied robot: its occupancy map, the teacher's embodied skills, and a student that
learns from camera images with the LLM teacher (all in-process, MiniWorld on Mesa EGL)."""
import math

import numpy as np
import pytest
import torch

from habitat_bridge.embodied.types import CameraSpec, Pose
from habitat_bridge.embodied.expert import segment_distances
from habitat_bridge.embodied.mapping import OccupancyMapper
from habitat_bridge.embodied.vector import EmbodiedVecEnv
from llm_teacher_common.camera import DEPTH_STEP_M, decode_depth
from llm_teacher_common.commands import BACK, DROP, FORWARD
from llm_teacher_common.perception import FREE, OCCUPIED, OccupancyGrid, PerceivedObject, Perception
from llm_teacher_common.embodied_skills import EmbodiedSkills
from llm_teacher_common.options import EXPLORE, Option
from llm_teacher.options import feasible_options
from llm_teacher.scripted_options import scripted_option
from llm_teacher.teacher import embedded_teacher
from student_policy.checkpoints import export_policy
from student_policy.networks import ActorCritic
from student_policy.lockstep import train
from student_policy.ppo import PPOConfig, TeacherSchedule

TASK = 'MiniWorld-GoToObject-v0'


def cell_centres(grid, mask):
    return np.stack(grid.centre_of(*np.nonzero(mask)), axis=1)


def true_obstacle_distance(world, points_map):
    """Distance (m) of map-frame points to the nearest true wall or object (MiniWorld: y_map = -z)."""
    xz = np.stack([points_map[:, 0], -points_map[:, 1]], axis=1)
    distance = segment_distances(xz, world.wall_segs[:, :, [0, 2]])
    for entity in world.entities:
        if entity is not world.agent:
            distance = np.minimum(distance, np.linalg.norm(xz - entity.pos[[0, 2]], axis=1) - entity.radius)
    return distance


def test_rgbd_observations_carry_depth_in_their_fourth_channel():
    envs = EmbodiedVecEnv(TASK, 2, width=48, height=48)
    step = envs.reset(seed=0)
    assert step.observations.shape == (2, 48, 48, 4) and step.observations.dtype == np.uint8
    raw = envs.envs[0].world.obs_fb.get_depth_map(0.04, 100.0)[..., 0]
    near = raw < 10  # the encoding saturates at 10.2 m
    assert np.abs(decode_depth(step.observations[0, ..., 3])[near] - raw[near]).max() <= DEPTH_STEP_M / 2 + 1e-6
    step = envs.step(np.array([2, 0]))
    assert step.observations.shape == (2, 48, 48, 4) and len(step.perceptions) == 2
    envs.close()


def test_occupancy_map_marks_walls_where_they_are_and_never_frees_an_obstacle():
    envs = EmbodiedVecEnv(TASK, 1)
    step = envs.reset(seed=3)
    world = envs.envs[0].world
    for _ in range(24):  # a full turn on the spot, then some way forward
        step = envs.step(np.array([0]))
    for _ in range(10):
        step = envs.step(np.array([2]))
    grid = step.perceptions[0].occupancy
    occupied, free = grid.cells == OCCUPIED, grid.cells == FREE
    assert occupied.sum() > 50 and free.sum() > 200
    # Occupied cells lie on walls or objects (within a cell's diagonal), free cells are off them.
    assert np.quantile(true_obstacle_distance(world, cell_centres(grid, occupied)), 0.95) < grid.resolution * 1.5
    assert np.mean(true_obstacle_distance(world, cell_centres(grid, free)) > 0) > 0.97


def test_grounding_offers_pick_up_only_when_the_mission_moves_objects():
    seen = [PerceivedObject('ball', 'red', forward=3.0), PerceivedObject('box', 'blue', forward=2.0, left=1.0)]
    go_to = {o.verb for o in feasible_options(Perception('go to the red ball', seen, task_family='embodied'))}
    put = {o.verb for o in feasible_options(Perception('put the red box next to the blue box', seen,
                                                       task_family='embodied'))}
    assert go_to == {'go to'} and put == {'explore', 'go to'}  # the blue box is not the one to move
    seen.append(PerceivedObject('box', 'red', forward=4.0))
    put = feasible_options(Perception('put the red box next to the blue box', seen, task_family='embodied'))
    assert [o for o in put if o.verb == 'pick up'] == [Option('pick up', 'box', 'red')]


def open_floor(mission: str, objects=(), carrying=None, bumped: bool = False) -> Perception:
    """A robot on a 10 m free floor, at a cell's centre, facing along a diagonal of the grid;
    `bumped`: the mapper marked what stopped it 0.6 m ahead."""
    grid = OccupancyGrid(np.full((40, 40), FREE, np.int8), (-5.0, -5.0), 0.25)
    x, y, heading = 0.125, 0.125, -math.pi / 4
    if bumped:
        grid.cells[grid.cell_of(x + 0.6 * math.cos(heading), y + 0.6 * math.sin(heading))] = OCCUPIED
    return Perception(mission, list(objects), carrying, x, y, heading, 'embodied', grid)


def test_scripted_options_follow_the_mission_from_the_perception_alone():
    red_box, yellow_box = PerceivedObject('box', 'red', forward=3.0), PerceivedObject('box', 'yellow', forward=2.2)
    held = PerceivedObject('box', 'red')
    assert scripted_option(open_floor('go to the red box')) == EXPLORE
    assert scripted_option(open_floor('go to the red box', [red_box])) == Option('go to', 'box', 'red')
    put = 'put the red box next to the yellow box'
    assert scripted_option(open_floor(put, [yellow_box])) == EXPLORE
    assert scripted_option(open_floor(put, [red_box, yellow_box])) == Option('pick up', 'box', 'red')
    assert scripted_option(open_floor(put, [], held)) == EXPLORE
    assert scripted_option(open_floor(put, [yellow_box], held)) == Option('go to', 'box', 'yellow')
    # Pushed against the yellow box (the mapper marked what stopped it): put it down there.
    assert scripted_option(open_floor(put, [yellow_box], held, bumped=True)) == Option('drop', 'box', 'red')
    assert scripted_option(open_floor(put, [], PerceivedObject('key', 'blue'))) == Option('drop', 'key', 'blue')
    with pytest.raises(ValueError, match='open the door'):
        scripted_option(open_floor('open the door'))


def test_mapper_marks_what_stops_the_robot_and_the_skills_back_off_or_steer_round_it():
    """Stuck recovery: odometry that shows no motion after a motion command marks the cell where
    the robot was stopped (a new one each time), and the skills, stateless, react to the map."""
    mapper = OccupancyMapper(CameraSpec(64, 64, 60.0, 1.5))
    nothing = np.full((64, 64), 50.0, np.float32)  # no obstacle in view
    here = Pose(0.0, 0.0, 0.0)
    mapper.reset(here)
    grid = mapper.update(nothing, here)
    assert grid.cells[grid.cell_of(0.6, 0.0)] == FREE
    grid = mapper.update(nothing, here, motion=(0.15, 0.0))  # told to go forward, did not move
    assert grid.cells[grid.cell_of(0.6, 0.0)] == OCCUPIED
    grid = mapper.update(nothing, here, motion=(0.15, 0.0))  # again: the next cell on the way there
    assert grid.cells[grid.cell_of(0.45, 0.0)] == OCCUPIED
    grid = mapper.update(nothing, here, motion=(-0.15, 0.0))  # backing into something
    assert grid.cells[grid.cell_of(-0.6, 0.0)] == OCCUPIED
    before = grid.cells == OCCUPIED
    turned = Pose(0.0, 0.0, 0.26)
    grid = mapper.update(nothing, turned, motion=(0.0, 0.26))  # it did turn: nothing new is marked
    assert ((grid.cells == OCCUPIED) == before).all()
    grid = mapper.update(nothing, turned, motion=(0.0, 0.26))  # a refused turn (what it holds hit something)
    assert grid.cells[grid.cell_of(0.6 * math.cos(0.26), 0.6 * math.sin(0.26))] == OCCUPIED
    # What it picks up stood ahead, mapped: its cells are no obstacle once it is held.
    mapper.reset(here)
    mapper.grid.cells[mapper.grid.cell_of(1.0, 0.0)] = OCCUPIED
    assert mapper.update(nothing, here, carrying=True).cells[mapper.grid.cell_of(1.0, 0.0)] != OCCUPIED

    skills = EmbodiedSkills()
    go_to_ball = Option('go to', 'ball', 'red')
    ball = PerceivedObject('ball', 'red', forward=4.0)
    assert np.argmax(skills.policy({go_to_ball: 1.0}, open_floor('go to the red ball', [ball]))) == FORWARD
    assert np.argmax(skills.policy({go_to_ball: 1.0}, open_floor('go to the red ball', [ball], bumped=True))) != FORWARD
    # Carrying, what it holds ran into something: back off (to make room to turn).
    held = PerceivedObject('box', 'red')
    go_to_box = Option('go to', 'box', 'yellow')
    far_box = PerceivedObject('box', 'yellow', forward=5.0, left=3.0)
    put = 'put the red box next to the yellow box'
    assert np.argmax(skills.policy({go_to_box: 1.0}, open_floor(put, [far_box], held, bumped=True))) == BACK


def test_the_object_the_mission_moves_is_dropped_only_next_to_its_target():
    """A sampled teacher dropped the box on the way (PutNext sampled 0.38): the drop skill puts
    down the mission's object only where it is pushed against the one to put it next to; any
    other object wherever the robot stands. Going there with it, the go-to ends in that drop."""
    skills = EmbodiedSkills()
    put = 'put the red box next to the yellow box'
    held, drop = PerceivedObject('box', 'red'), Option('drop', 'box', 'red')
    near, far = PerceivedObject('box', 'yellow', forward=2.2), PerceivedObject('box', 'yellow', forward=5.0)
    assert skills.action(drop, open_floor(put, [near], held, bumped=True)) == DROP
    # Going to the yellow box with the red one, arrived: the go-to ends in the drop (not another box).
    assert skills.action(Option('go to', 'box', 'yellow'), open_floor(put, [near], held, bumped=True)) == DROP
    other_held = PerceivedObject('box', 'blue')
    assert skills.action(Option('go to', 'box', 'yellow'), open_floor(put, [near], other_held, bumped=True)) is None
    assert skills.action(drop, open_floor(put, [far], held)) is None
    assert skills.action(drop, open_floor(put, [], held)) is None
    probs = skills.policy({drop: 0.5, Option('go to', 'box', 'yellow'): 0.5}, open_floor(put, [far], held))
    assert probs[DROP] == 0
    other = PerceivedObject('box', 'blue')
    assert skills.action(Option('drop', 'box', 'blue'), open_floor(put, [far], other)) == DROP


@pytest.mark.slow
@pytest.mark.parametrize('task, episodes, at_least', [('MiniWorld-GoToObject-v0', 12, 11),
                                                      ('MiniWorld-PutNext-v0', 10, 8)])
def test_embodied_skills_do_the_task_with_the_scripted_options(task, episodes, at_least):
    """The skills with the scripted-option teacher (benchmarks/embodied_skills.py has the 50-episode
    figures): greedy on the skills' policy, nearly every seeded episode succeeds."""
    envs = EmbodiedVecEnv(task, 1)
    skills = EmbodiedSkills(envs.envs[0].turn_angle)
    solved = 0
    for seed in range(episodes):
        step = envs.reset(seed=100 + seed)
        while True:
            perception = step.perceptions[0]
            step = envs.step(np.array([int(np.argmax(skills.policy({scripted_option(perception): 1.0}, perception)))]))
            if step.terminated[0] or step.truncated[0]:
                solved += bool(step.success[0])
                break
    envs.close()
    assert solved >= at_least, f'{task}: the skills succeeded in {solved} of {episodes} episodes'


def test_image_policy_exports_and_runs_on_camera_observations(tmp_path):
    policy = ActorCritic((64, 64, 4), 8, encoder='image')
    logits, values, _ = policy(torch.zeros((3, 64, 64, 4), dtype=torch.uint8), policy.initial_state(3))
    assert logits.shape == (3, 8) and values.shape == (3,)
    with pytest.raises(ValueError, match='36x36'):
        ActorCritic((16, 16, 3), 8, encoder='image')

    exported = torch.jit.load(str(export_policy(tmp_path / 'policy.pt', policy)))
    obs = torch.randint(0, 255, (2, 64, 64, 4), dtype=torch.uint8)
    assert torch.allclose(exported(obs), policy.step(obs, policy.initial_state(2))[0], atol=1e-5)


@pytest.mark.slow
def test_student_learns_from_camera_images_with_the_llm_teacher(tmp_path):
    """In-process, from a cold answer cache: once the LLM teacher answers most states, the
    student's policy moves measurably towards the teacher's (the distillation loss falls)."""
    envs = EmbodiedVecEnv(TASK, 4)
    teacher = embedded_teacher(tmp_path / 'answers.sqlite')
    config = PPOConfig(encoder='image', total_frames=4 * 32 * 60, num_steps=32, minibatch_size=64, learning_rate=5e-4,
                       teacher=TeacherSchedule(initial=10.0, final=10.0, decay_frames=1, off_frames=10**9))
    covered = []  # metrics of the updates on rollouts the teacher mostly answered

    def until_taught(learner, metrics):
        if metrics['teacher/coverage'] >= 0.5:
            covered.append(metrics)
        return len(covered) < 6
    train(config, envs, teacher=lambda step: teacher.suggest_batch(step, envs.num_actions), callbacks=[until_taught])
    teacher.close()
    envs.close()
    distill = [m['losses/distill_loss'] for m in covered]
    assert len(covered) == 6, f'the teacher answered half the states in only {len(covered)} rollouts'
    assert all(math.isfinite(d) for d in distill)
    assert np.mean(distill[-2:]) < 0.8 * distill[0], f'the student did not move towards the teacher: {distill}'


def test_evaluate_measures_an_embodied_teacher_acting_alone(tmp_path):
    """llm_teacher.evaluate on a MiniWorld task: act-alone success with intervals, no accuracy (the
    grid expert it labels with has no embodied counterpart)."""
    from llm_teacher.evaluate import evaluate
    teacher = embedded_teacher(tmp_path / 'answers.sqlite')
    result = evaluate(teacher, 'MiniWorld-GoToRedBall-v0', episodes=1, grounded=True, seed=1000)
    teacher.close()
    assert result['accuracy'] is None and result['episodes'] == 1
    assert 0 <= result['act_alone_success_greedy'] <= 1 and len(result['greedy_interval95']) == 2
