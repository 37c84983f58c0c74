"""The imitation diagnostic (benchmarks/imitation.py): the student's map input is egocentric, and a
tiny behaviour-cloning + DAgger run goes end to end with every figure it reports."""
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm_teacher_common.perception import FREE, OCCUPIED, OccupancyGrid, Perception

SCRIPT = Path(__file__).resolve().parent.parent / 'benchmarks' / 'imitation.py'


def load_script():
    spec = importlib.util.spec_from_file_location('imitation', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_map_crop_is_egocentric_at_both_scales():
    """What is ahead of the robot is above the crop's centre, what is to its left is left of it,
    whatever the robot's heading; unknown, free and occupied read 0, 128 and 255."""
    imitation = load_script()
    heading = math.radians(30)
    grid = OccupancyGrid(np.full((80, 80), FREE, np.int8), (-10.0, -10.0), 0.25)
    grid.cells[:5] = -1  # unknown strip far behind-right
    ahead = (2.0 * math.cos(heading), 2.0 * math.sin(heading))
    left = (-2.0 * math.sin(heading), 2.0 * math.cos(heading))
    for x, y in (ahead, left):
        grid.cells[grid.cell_of(x, y)] = OCCUPIED
    crop = imitation.map_crop(Perception('go to the red ball', x=0.0, y=0.0, heading=heading,
                                         task_family='embodied', occupancy=grid))
    cells = imitation.CROP_CELLS
    assert crop.shape == (cells, cells, len(imitation.CROP_RESOLUTIONS)) and crop.dtype == np.uint8
    for channel, resolution in enumerate(imitation.CROP_RESOLUTIONS):
        rows, cols = np.nonzero(crop[..., channel] == 255)
        offset = 2.0 / resolution  # cells from the centre
        points = set(zip(rows.tolist(), cols.tolist()))
        assert any(abs(r - (cells / 2 - offset)) <= 1.5 and abs(c - cells / 2) <= 1.5 for r, c in points), channel
        assert any(abs(r - cells / 2) <= 1.5 and abs(c - (cells / 2 - offset)) <= 1.5 for r, c in points), channel
        assert crop[cells // 2, cells // 2, channel] == 128  # where the robot stands is free
    assert (crop[..., 1] == 0).any()  # the coarse scale reaches the unknown strip and off the map


@pytest.mark.slow
def test_cloning_and_dagger_run_end_to_end(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), '--frames', '400', '--epochs', '1', '--eval-episodes', '2',
                          '--envs', '4', '--map', '--recurrent', '16', '--dagger', '1', '--dagger-frames', '200',
                          '--out', str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line['stage'] for line in lines] == ['collect', 'round 0', 'dagger 1', 'round 1']
    for result in (lines[1], lines[3]):
        assert 0.0 <= result['agreement'] <= 1.0 and result['held_out_steps'] > 0
        assert result['closed_loop'].endswith('over 2 episodes')
    assert lines[3]['frames'] >= 600
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert len(summary['rounds']) == 2
