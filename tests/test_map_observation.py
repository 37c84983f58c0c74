"""The robot's map as a student input ("rgbd_map"): an egocentric crop of the occupancy map at two
scales with the mission's object marked, beside the camera; it trains, evaluates and exports, and
the robot node takes it only as rgbd_map (tests/test_map_deploy.py drives one)."""
import math

import numpy as np
import pytest
import torch

from habitat_bridge.embodied.vector import EmbodiedVecEnv
from llm_teacher_common.map_crop import CROP_RESOLUTIONS, MAP_CHANNELS, map_crop
from llm_teacher_common.perception import FREE, OCCUPIED, OccupancyGrid, PerceivedObject, Perception
from student_deploy.inference import load_policy
from student_deploy.robot_control import CameraPolicy
from student_policy.checkpoints import export_policy
from student_policy.evaluate import env_options_for, evaluate
from student_policy.lockstep import train
from student_policy.networks import encoder_for
from student_policy.ppo import PPOConfig, TeacherSchedule

TASK = 'MiniWorld-GoToObject-v0'
CELLS = 48


def test_map_crop_is_egocentric_at_both_scales():
    """What is ahead of the robot is above the crop's centre, what is to its left is left of it,
    whatever the robot's heading; unknown, free and occupied read 0, 128 and 255."""
    heading = math.radians(30)
    grid = OccupancyGrid(np.full((80, 80), FREE, np.int8), (-10.0, -10.0), 0.25)
    grid.cells[:5] = -1  # unknown strip far behind-right
    ahead = (2.0 * math.cos(heading), 2.0 * math.sin(heading))
    left = (-2.0 * math.sin(heading), 2.0 * math.cos(heading))
    for x, y in (ahead, left):
        grid.cells[grid.cell_of(x, y)] = OCCUPIED
    crop = map_crop(Perception('go to the red ball', x=0.0, y=0.0, heading=heading, task_family='embodied',
                               occupancy=grid), CELLS)
    assert crop.shape == (CELLS, CELLS, len(CROP_RESOLUTIONS)) and crop.dtype == np.uint8
    for channel, resolution in enumerate(CROP_RESOLUTIONS):
        rows, cols = np.nonzero(crop[..., channel] == 255)
        offset = 2.0 / resolution  # cells from the centre
        points = set(zip(rows.tolist(), cols.tolist()))
        assert any(abs(r - (CELLS / 2 - offset)) <= 1.5 and abs(c - CELLS / 2) <= 1.5 for r, c in points), channel
        assert any(abs(r - CELLS / 2) <= 1.5 and abs(c - (CELLS / 2 - offset)) <= 1.5 for r, c in points), channel
        assert crop[CELLS // 2, CELLS // 2, channel] == 128  # where the robot stands is free
    assert (crop[..., 1] == 0).any()  # the coarse scale reaches the unknown strip and off the map


def test_the_object_the_mission_names_is_marked_where_it_was_last_perceived():
    grid = OccupancyGrid(np.full((80, 80), FREE, np.int8), (-10.0, -10.0), 0.25)
    objects = [PerceivedObject('ball', 'red', forward=3.0, left=0.0, visible=False),  # remembered, not in view
               PerceivedObject('box', 'blue', forward=0.0, left=3.0, visible=True)]
    crop = map_crop(Perception('go to the red ball', objects=objects, x=0.0, y=0.0, heading=0.0,
                               task_family='embodied', occupancy=grid), CELLS, mark_target=True)
    assert crop.shape == (CELLS, CELLS, MAP_CHANNELS)
    for channel, resolution in zip((2, 3), CROP_RESOLUTIONS):
        rows, cols = np.nonzero(crop[..., channel] == 255)
        assert len(rows) and abs(rows.mean() - (CELLS / 2 - 3.0 / resolution - 0.5)) <= 1.0, channel  # ahead
        assert abs(cols.mean() - (CELLS / 2 - 0.5)) <= 1.0, channel  # not to the left: the box is not named


def test_a_camera_and_map_student_trains_evaluates_exports_and_deploys_only_as_rgbd_map(tmp_path):
    with pytest.raises(ValueError, match='square camera'):
        EmbodiedVecEnv(TASK, 1, observation='rgbd_map', width=64, height=48)
    envs = EmbodiedVecEnv(TASK, 2, observation='rgbd_map', width=CELLS, height=CELLS, max_episode_steps=40,
                          perceive=False)  # no perception lists in the steps, but the backends keep their maps
    step = envs.reset(seed=3)
    assert step.observations.shape == (2, CELLS, CELLS, 4 + MAP_CHANNELS) and not step.perceptions
    assert (step.observations[..., 4] == 128).any()  # the map already holds free space the camera saw
    assert encoder_for('rgbd_map') == 'image_map'
    config = PPOConfig(encoder='image_map', recurrent=16, total_frames=128, num_steps=64, minibatch_size=64,
                       teacher=TeacherSchedule(0.0, 0.0), compile=False)
    learner = train(config, envs)
    envs.close()
    path = export_policy(tmp_path / 'policy.pt', learner.policy, TASK)
    options = env_options_for(learner.policy.obs_shape, 'image_map')
    assert options['observation'] == 'rgbd_map'
    for name in ('policy.pt', 'policy.onnx'):
        result = evaluate(load_policy(tmp_path / name), TASK, 2, num_envs=2, env_options={**options, 'max_episode_steps': 20})
        assert result['episodes'] == 2
    with pytest.raises(ValueError, match="image_map encoder.*but this node gives 'rgbd' camera images with 4 channels"):
        CameraPolicy(load_policy(path))
    assert CameraPolicy(load_policy(path), observation='rgbd_map').reads_map
