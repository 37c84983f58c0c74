"""The imitation diagnostic (benchmarks/imitation.py): a tiny behaviour-cloning + DAgger run goes end
to end with every figure it reports (its map input: tests/test_map_observation.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / 'benchmarks' / 'imitation.py'


@pytest.mark.slow
@pytest.mark.parametrize('student', [[], ['--options']], ids=['motions', 'options'])
def test_cloning_and_dagger_run_end_to_end(tmp_path, student):
    out = subprocess.run([sys.executable, str(SCRIPT), '--frames', '400', '--epochs', '1', '--eval-episodes', '2',
                          '--envs', '4', '--map', '--recurrent', '16', '--dagger', '1', '--dagger-frames', '200',
                          '--out', str(tmp_path), *student], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line['stage'] for line in lines] == ['collect', 'round 0', 'dagger 1', 'round 1']
    for result in (lines[1], lines[3]):
        assert 0.0 <= result['agreement'] <= 1.0 and result['held_out_steps'] > 0
        assert result['closed_loop'].endswith('over 2 episodes')
    assert lines[3]['frames'] >= 600
    summary = json.loads((tmp_path / 'summary.json').read_text())
    assert len(summary['rounds']) == 2
