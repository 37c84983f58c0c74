"""The study script (benchmarks/reproduce.py): every arm runs, the outputs are written, a finished
study resumes without re-running, and results from other settings are refused."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / 'benchmarks' / 'reproduce.py'
TASK = 'MiniGrid-SimpleDoorKey-v0'


def reproduce(out: Path, frames: int = 4096, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), '--tasks', TASK, '--seeds', '0', '--frames', str(frames),
                           '--episodes', '4', '--jobs', '2', '--out', str(out), *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_study_writes_its_results_and_resumes(tmp_path):
    first = reproduce(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / 'results.json').read_text())
    assert {run['arm'] for run in results['runs']} == {'ppo', 'llm', 'expert', 'teacher'}
    for run in results['runs']:
        if run['arm'] != 'teacher':  # one point per PPO update of 16 envs x 128 steps
            assert [point[0] for point in run['curve']] == [2048, 4096]
    # The embedded teacher acting alone opens the door in most SimpleDoorKey episodes.
    assert results['table'][f'{TASK}/teacher']['final_success_sampled'][0] >= 0.5
    assert (tmp_path / 'learning_curves.png').stat().st_size > 10_000
    table = (tmp_path / 'results.md').read_text()
    assert 'LLM teacher alone' in table and 'not in 4k' in table

    again = reproduce(tmp_path)
    assert again.returncode == 0 and '4 jobs, 4 already done' in again.stdout

    other = reproduce(tmp_path, frames=8192)
    assert other.returncode != 0 and 'other settings' in other.stderr


@pytest.mark.slow
def test_the_lava_blind_ablation_is_an_arm_of_its_own(tmp_path):
    """The paper's lava-blind teacher acting alone: its own arm, label and dashed line."""
    run = reproduce(tmp_path, 4096, '--tasks', 'MiniGrid-LavaDoorKey-v0', '--arms', 'teacher_lava_blind')
    assert run.returncode == 0, run.stderr[-3000:]
    row = json.loads((tmp_path / 'results.json').read_text())['table']['MiniGrid-LavaDoorKey-v0/teacher_lava_blind']
    assert 0 <= row['final_success_sampled'][0] <= 1
    assert "| LavaDoorKey-v0 | lava-blind LLM teacher alone (paper's) | - |" in (tmp_path / 'results.md').read_text()


@pytest.mark.slow
def test_a_prompt_ablation_keeps_its_prompt_and_resumes_only_with_it(tmp_path):
    from llm_teacher.mediator import PROMPTS
    prompt = tmp_path / 'prompt.txt'
    prompt.write_text('Goal: {mission}. Seen: {observation}.')
    bad = reproduce(tmp_path / 'out', 4096, '--arms', 'teacher', '--prompt-file', str(prompt))
    assert bad.returncode != 0 and 'prompt.txt: prompt template lacks {options}' in bad.stderr
    prompt.write_text((PROMPTS / 'gridworld.txt').read_text())  # the packaged text: no new LLM calls
    run = reproduce(tmp_path / 'out', 4096, '--arms', 'teacher', '--prompt-file', str(prompt))
    assert run.returncode == 0, run.stderr[-3000:]
    saved = json.loads((tmp_path / 'out' / 'runs' / TASK / 'teacher-seed0.json').read_text())
    assert saved['prompt'] == prompt.read_text()
    prompt.write_text(prompt.read_text() + 'Think first.\n')  # an edited prompt is another study
    edited = reproduce(tmp_path / 'out', 4096, '--arms', 'teacher', '--prompt-file', str(prompt))
    assert edited.returncode != 0 and 'other settings' in edited.stderr


@pytest.mark.slow
def test_the_embodied_study_trains_camera_students_with_the_scripted_option_teacher(tmp_path):
    """MiniWorld arms: PPO alone and the student of the scripted-option teacher (options from the
    robot's perception, through the embodied skills), on 48x48 camera images."""
    run = reproduce(tmp_path, 1024, '--tasks', 'MiniWorld-GoToObject-v0', '--arms', 'ppo', 'expert',
                    '--episodes', '2', '--threshold', '0.8', '--size', '48')
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / 'results.json').read_text())
    for run in results['runs']:  # one point per PPO update of 8 robots x 64 steps
        assert [point[0] for point in run['curve']] == [512, 1024] and run['size'] == 48
        assert 0 <= run['final_success_greedy'] <= 1
    assert 'frames to 0.8 success' in (tmp_path / 'results.md').read_text()
    # The trained student is kept, and one of its episodes drawn (frames, suggestions, map and path).
    policy = tmp_path / 'runs' / 'MiniWorld-GoToObject-v0' / 'expert-seed0-policy.pt'
    strip = subprocess.run([sys.executable, str(SCRIPT.parent / 'episode_strip.py'), str(policy), '--teacher', 'scripted',
                            '--seed', '10001', '--out', str(tmp_path / 'episode.png')],
                           capture_output=True, text=True, timeout=300)
    assert strip.returncode == 0 and 'steps' in strip.stdout, strip.stderr[-3000:]
    assert (tmp_path / 'episode.png').stat().st_size > 20_000
