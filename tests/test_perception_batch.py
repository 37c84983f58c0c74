"""PerceptionBatch as parallel arrays: what the sim sends is what the teacher reads, through CDR;
arrays that do not fit together are refused with a ValueError naming them; a recording made
with the old layout (one nested message per object) still opens in the report."""
import math
import re

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from hypothesis import given, settings
from hypothesis import strategies as st
from llm_teacher_msgs.msg import PerceptionBatch
from rclpy.serialization import deserialize_message, serialize_message

from habitat_bridge.minigrid.vector import MiniGridVecEnv
from llm_teacher_common.messages import occupancy_grid_msg, perception_batch_msg, perceptions_from_msg
from llm_teacher_common.perception import FREE, OCCUPIED, OccupancyGrid, PerceivedObject, Perception
from ros_helpers import old_layout_typestore, write_recording

STAMP = Time(sec=1, nanosec=2)


def through_cdr(batch: PerceptionBatch) -> PerceptionBatch:
    return deserialize_message(serialize_message(batch), PerceptionBatch)


@pytest.mark.parametrize('task', ['MiniGrid-SimpleDoorKey-v0', 'MiniGrid-DoorKey-8x8-v0', 'MiniGrid-LavaDoorKey-v0'])
def test_a_sims_perceptions_read_back_equal(task):
    envs = MiniGridVecEnv(task, 6)
    envs.perceive = True
    rng = np.random.default_rng(0)
    step = envs.reset(seed=3)
    carried = objects = 0
    for seq in range(150):
        batch = through_cdr(perception_batch_msg(step.perceptions, seq, STAMP, epoch=9))
        assert (batch.seq, batch.epoch, batch.header.stamp, batch.task_family) == (seq, 9, STAMP, 'gridworld')
        assert perceptions_from_msg(batch, step.missions) == step.perceptions
        carried += sum(p.carrying is not None for p in step.perceptions)
        objects += len(batch.object_env)
        step = envs.step(rng.integers(0, envs.num_actions, 6))
    assert carried and objects  # the batches held objects and something carried


def test_embodied_perceptions_read_back_with_their_maps():
    cells = np.full((5, 3), FREE, np.int8)
    cells[4, 2] = OCCUPIED
    sent = [Perception('go to the red box', [PerceivedObject('box', 'red', forward=2.5, left=-0.5, visible=True),
                                             PerceivedObject('ball', 'blue', forward=-1.0)],
                       carrying=PerceivedObject('key', 'yellow'), x=1.5, y=-2.0, heading=0.25, task_family='embodied',
                       occupancy=OccupancyGrid(cells, (-1.0, 2.0), 0.25)),
            Perception('go to the red box', [], x=3.0, task_family='embodied',
                       occupancy=OccupancyGrid(cells[::-1].copy(), (0.0, 0.0), 0.5))]
    got = perceptions_from_msg(through_cdr(perception_batch_msg(sent, 4, STAMP)), [p.mission for p in sent])
    for p, q in zip(sent, got, strict=True):
        assert np.array_equal(p.occupancy.cells, q.occupancy.cells)
        assert (p.occupancy.origin, p.occupancy.resolution) == (q.occupancy.origin, q.occupancy.resolution)
        p.occupancy = q.occupancy = None
        assert p == q


def test_perceptions_of_two_task_families_are_refused():
    with pytest.raises(ValueError, match='one task family'):
        perception_batch_msg([Perception('a'), Perception('b', task_family='embodied')], 0, STAMP)


def two_envs() -> PerceptionBatch:
    return perception_batch_msg([Perception('m', [PerceivedObject('key', 'yellow', grid_x=2, grid_y=3)]),
                                 Perception('m', [PerceivedObject('door', 'blue', 'locked')], x=4.0)], 7, STAMP)


@pytest.mark.parametrize('change, error', [
    (lambda b: setattr(b, 'pose_y', [0.0]), 'for 2 environments and 2 objects: pose_y has 1'),
    (lambda b: setattr(b, 'carrying_color', ['', '', 'red']), 'carrying_color has 3'),
    (lambda b: setattr(b, 'object_visible', [True]), 'object_visible has 1'),
    (lambda b: setattr(b, 'object_grid_x', []), 'object_grid_x has 0'),
    (lambda b: setattr(b, 'maps', [occupancy_grid_msg(OccupancyGrid(np.zeros((2, 2), np.int8), (0.0, 0.0), 1.0))]),
     'maps has 1'),
    (lambda b: setattr(b, 'object_env', [0, 2]), 'an object of environment 2, but there are 2'),
    (lambda b: setattr(b, 'pose_theta', [0.0, math.inf]), 'pose (4.0, 0.0, inf) of environment 1 is not finite'),
])
def test_arrays_that_do_not_fit_together_are_refused_naming_them(change, error):
    batch = two_envs()
    change(batch)
    with pytest.raises(ValueError, match=r'perception batch 7.*' + re.escape(error)):
        perceptions_from_msg(through_cdr(batch), ['m', 'm'])
    assert len(perceptions_from_msg(two_envs(), ['m', 'm'])) == 2
    with pytest.raises(ValueError, match='for 3 environments'):  # a step batch of another size
        perceptions_from_msg(two_envs(), ['m'] * 3)


TEXT = st.text(max_size=8)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_any_batch_reads_or_is_refused_with_a_value_error(data):
    """What a fuzzed DDS peer may send: the read returns one perception per mission, or a ValueError."""
    n, m = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 4))

    def array(elements, size):
        return data.draw(st.one_of(st.lists(elements, min_size=size, max_size=size), st.lists(elements, max_size=5)))

    batch = PerceptionBatch(
        task_family=data.draw(st.sampled_from(['gridworld', 'embodied', ''])),
        pose_x=array(st.floats(), n), pose_y=array(st.floats(), n), pose_theta=array(st.floats(), n),
        carrying_type=array(TEXT, n), carrying_color=array(TEXT, n),
        object_env=array(st.integers(0, 2 ** 32 - 1) | st.integers(0, n), m), object_type=array(TEXT, m),
        object_color=array(TEXT, m), object_state=array(TEXT, m), object_forward=array(st.floats(), m),
        object_left=array(st.floats(), m), object_grid_x=array(st.integers(-2 ** 31, 2 ** 31 - 1), m),
        object_grid_y=array(st.integers(-2 ** 31, 2 ** 31 - 1), m), object_visible=array(st.booleans(), m))
    try:
        perceptions = perceptions_from_msg(through_cdr(batch), ['m'] * n)
    except ValueError as err:
        assert str(err).startswith('perception batch 0')
        return
    assert len(perceptions) == n and sum(len(p.objects) for p in perceptions) == len(batch.object_env)


# The old layout's definitions (before #35: one Perception, with its PerceivedObjects, per environment)
OLD_LAYOUT = {
    'PerceptionBatch': 'std_msgs/Header header\nuint64 seq\nuint64 epoch\nPerception[] perceptions\n'
                       'nav_msgs/OccupancyGrid[] maps\n',
    'Perception': 'string task_family\nstring mission\nPerceivedObject[] objects\nPerceivedObject carrying\n'
                  'geometry_msgs/Pose2D pose\n',
    'PerceivedObject': 'string type\nstring color\nstring state\ngeometry_msgs/Point position\nint32 grid_x\n'
                       'int32 grid_y\nbool visible\n',
}


def test_a_recording_with_the_old_layout_still_opens_in_the_report(tmp_path):
    """An MCAP carries its schemas: the report reads one recorded before the parallel arrays."""
    from llm_teacher.report import read_recording

    typestore = old_layout_typestore(OLD_LAYOUT)
    t = typestore.types
    point = t['geometry_msgs/msg/Point'](x=2.0, y=-1.0, z=0.0)
    key = t['llm_teacher_msgs/msg/PerceivedObject'](type='key', color='yellow', state='', position=point, grid_x=2,
                                                    grid_y=3, visible=True)
    nothing = t['llm_teacher_msgs/msg/PerceivedObject'](type='', color='', state='', position=point, grid_x=-1,
                                                        grid_y=-1, visible=False)
    pose = t['geometry_msgs/msg/Pose2D'](x=1.0, y=1.0, theta=0.0)
    perception = t['llm_teacher_msgs/msg/Perception'](task_family='gridworld', mission='open the door', objects=[key],
                                                      carrying=nothing, pose=pose)
    header = t['std_msgs/msg/Header'](stamp=t['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id='map')
    old = t['llm_teacher_msgs/msg/PerceptionBatch'](header=header, seq=20, epoch=5, perceptions=[perception], maps=[])
    write_recording(tmp_path, '/perception_batch', 'llm_teacher_msgs/msg/PerceptionBatch', old, typestore)
    [(time_ns, read)] = read_recording(tmp_path)['/perception_batch']
    assert time_ns == 10 and read.seq == 20
    assert read.perceptions[0].mission == 'open the door' and read.perceptions[0].objects[0].color == 'yellow'
