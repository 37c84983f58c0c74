"""Teaching an embodied robot: its occupancy map, the teacher's embodied skills, and a student that
learns from camera images with the LLM teacher (all in-process, MiniWorld on Mesa EGL)."""
import math

import numpy as np
import pytest
import torch

from habitat_bridge.embodied.expert import segment_distances
from habitat_bridge.embodied.vector import EmbodiedVecEnv
from llm_teacher_common.camera import DEPTH_STEP_M, decode_depth
from llm_teacher_common.perception import FREE, OCCUPIED, PerceivedObject, Perception
from llm_teacher.embodied_skills import EmbodiedSkills
from llm_teacher.options import EXPLORE, Option, feasible_options
from llm_teacher.teacher import embedded_teacher
from student_policy.checkpoints import export_policy
from student_policy.networks import ActorCritic
from student_policy.ppo import PPOConfig, TeacherSchedule, train

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
    assert go_to == {'explore', 'go to'} and put == {'explore', 'go to', 'pick up'}


@pytest.mark.slow
def test_embodied_skills_reach_the_target_when_told_the_right_option():
    """The skills alone (option chosen by a script that reads only the perception: go to the
    mission's object once seen, explore before): most seeded episodes end at the target."""
    envs = EmbodiedVecEnv(TASK, 1)
    skills = EmbodiedSkills(envs.envs[0].turn_angle)
    solved, episodes = 0, 8
    for seed in range(episodes):
        step = envs.reset(seed=100 + seed)
        while True:
            perception = step.perceptions[0]
            color, kind = perception.mission.split()[-2:]
            seen = any(o.type == kind and o.color == color for o in perception.objects)
            option = Option('go to', kind, color) if seen else EXPLORE
            step = envs.step(np.array([int(np.argmax(skills.policy({option: 1.0}, perception)))]))
            if step.terminated[0] or step.truncated[0]:
                solved += bool(step.success[0])
                break
    assert solved >= episodes // 2, f'the skills reached the target in {solved} of {episodes} episodes'


def test_image_policy_exports_and_runs_on_camera_observations(tmp_path):
    policy = ActorCritic((64, 64, 4), 8, encoder='image')
    logits, values = policy(torch.zeros((3, 64, 64, 4), dtype=torch.uint8))
    assert logits.shape == (3, 8) and values.shape == (3,)
    with pytest.raises(ValueError, match='36x36'):
        ActorCritic((16, 16, 3), 8, encoder='image')

    exported = torch.jit.load(str(export_policy(tmp_path / 'policy.pt', policy)))
    obs = torch.randint(0, 255, (2, 64, 64, 4), dtype=torch.uint8)
    assert torch.allclose(exported(obs), policy(obs)[0], atol=1e-5)


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
