"""torch.compile for the student: when it is on, where its compiled code is cached across runs, and
that a cache it cannot write or read never stops training (no timings here: benchmarks/compile_start.py)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from student_policy.ppo import (COMPILE_FROM_FRAMES, COMPILE_PRELOADED_FROM_FRAMES, COMPILE_WARM_FROM_FRAMES, PPOConfig,
                                compile_cache_dir,
                                compile_failures, setup_compile, warm_up_compile)

GRAPHS = 'grid (5, 5, 3), 4 envs'  # what PPOLearner says shapes its compiled graphs


@pytest.fixture
def cache_home(monkeypatch, tmp_path):
    """A fresh XDG cache home and no TORCHINDUCTOR_CACHE_DIR: compile_cache_dir() is the default under it."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR', raising=False)
    return tmp_path / 'xdg' / 'llm_teacher' / 'torchinductor'


def test_auto_compiles_long_budgets_and_shorter_ones_once_the_student_compiled_here(capsys, cache_home):
    assert setup_compile(PPOConfig(total_frames=COMPILE_WARM_FROM_FRAMES), GRAPHS) is None
    assert setup_compile(PPOConfig(total_frames=10**9, compile=False), GRAPHS) is None
    assert not cache_home.exists()  # nothing set up for an eager run
    cache = setup_compile(PPOConfig(total_frames=COMPILE_FROM_FRAMES), GRAPHS)
    assert cache.directory == cache_home and 'compiling the student' in capsys.readouterr().err
    assert cache.check()  # nothing failed: the marker says this student compiled here
    assert setup_compile(PPOConfig(total_frames=COMPILE_WARM_FROM_FRAMES), GRAPHS) is not None
    assert 'loading the compiled student' in capsys.readouterr().err
    assert setup_compile(PPOConfig(total_frames=COMPILE_WARM_FROM_FRAMES), 'grid (7, 7, 3), 4 envs') is None
    assert setup_compile(PPOConfig(total_frames=COMPILE_WARM_FROM_FRAMES - 1), GRAPHS) is None
    assert setup_compile(PPOConfig(total_frames=10**6), GRAPHS, frames_done=10**6 - COMPILE_WARM_FROM_FRAMES + 1) is None  # resumed near its end
    # A caller that loaded the compiler while it waited (student_node) compiles shorter budgets too.
    assert setup_compile(PPOConfig(total_frames=COMPILE_PRELOADED_FROM_FRAMES), GRAPHS, compiler_loaded=True) is not None
    assert setup_compile(PPOConfig(total_frames=COMPILE_PRELOADED_FROM_FRAMES - 1), GRAPHS, compiler_loaded=True) is None
    assert setup_compile(PPOConfig(total_frames=COMPILE_PRELOADED_FROM_FRAMES), 'grid (7, 7, 3), 4 envs',
                         compiler_loaded=True) is None  # not compiled here yet: the first compile waits for long budgets


def test_compile_says_why_it_is_off_without_a_compiler(monkeypatch, capsys, cache_home):
    monkeypatch.setenv('CXX', '/nonexistent/c++')
    assert setup_compile(PPOConfig(total_frames=COMPILE_FROM_FRAMES), GRAPHS) is None
    assert 'torch.compile is off: no C++ compiler (/nonexistent/c++)' in capsys.readouterr().err


def test_the_cache_lasts_in_the_users_cache_home_unless_torchinductor_cache_dir_says_otherwise(monkeypatch, tmp_path,
                                                                                                cache_home):
    assert compile_cache_dir() == cache_home
    assert setup_compile(PPOConfig(compile=True), GRAPHS).directory == cache_home
    assert cache_home.is_dir() and os.environ['TORCHINDUCTOR_CACHE_DIR'] == str(cache_home)  # where torch writes
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'mine'))
    assert compile_cache_dir() == tmp_path / 'mine'
    assert setup_compile(PPOConfig(compile=True), GRAPHS).directory == tmp_path / 'mine'
    assert (tmp_path / 'mine').is_dir()


def test_the_warm_up_runs_only_where_compile_may_and_fixes_the_cache_before_torch_does(monkeypatch, cache_home):
    assert warm_up_compile(PPOConfig(total_frames=10**9, compile=False)) is None
    assert warm_up_compile(PPOConfig(total_frames=COMPILE_FROM_FRAMES - 1)) is None  # no student compiled here yet
    setup_compile(PPOConfig(total_frames=COMPILE_FROM_FRAMES), GRAPHS).check()  # one has now
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR')  # as in a new process, which the warm-up sets it for
    assert warm_up_compile(PPOConfig(total_frames=COMPILE_PRELOADED_FROM_FRAMES - 1)) is None
    thread = warm_up_compile(PPOConfig(total_frames=COMPILE_PRELOADED_FROM_FRAMES))
    thread.join()  # torch's compiler loaded: importing it would have set its /tmp default
    assert os.environ['TORCHINDUCTOR_CACHE_DIR'] == str(cache_home) == str(compile_cache_dir())


def test_a_cache_dir_that_cannot_be_written_compiles_into_a_temporary_one_or_runs_eager(monkeypatch, capsys, tmp_path):
    (tmp_path / 'file').write_text('not a directory')
    unwritable = tmp_path / 'file' / 'cache'  # unwritable even for root
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(unwritable))
    fallback = setup_compile(PPOConfig(compile=True), GRAPHS).directory
    try:
        assert fallback != unwritable and fallback.is_dir() and os.environ['TORCHINDUCTOR_CACHE_DIR'] == str(fallback)
        assert f'torch.compile cache {unwritable} cannot be written' in capsys.readouterr().err
    finally:
        shutil.rmtree(fallback)

    def no_temporary(**_):
        raise OSError(28, 'No space left on device')

    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(unwritable))
    monkeypatch.setattr('tempfile.mkdtemp', no_temporary)
    assert setup_compile(PPOConfig(compile=True), GRAPHS) is None
    assert 'training runs eager' in capsys.readouterr().err


def test_a_failed_compile_is_said_and_clears_our_cache_but_not_one_the_user_named(monkeypatch, capsys, tmp_path,
                                                                                 cache_home):
    cache = setup_compile(PPOConfig(compile=True), GRAPHS)
    cache.failures_before = compile_failures() - 1  # as if a frame had failed since
    assert not cache.check() and not cache_home.exists()
    assert 'torch.compile failed' in capsys.readouterr().err
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'mine'))
    cache = setup_compile(PPOConfig(compile=True), GRAPHS)
    assert cache.check() and cache.marker.exists()
    cache.failures_before = compile_failures() - 1
    assert not cache.check()
    assert (tmp_path / 'mine').is_dir() and not cache.marker.exists()  # auto no longer counts on it
    assert f'delete {tmp_path / "mine"}' in capsys.readouterr().err


ONE_UPDATE = '''
import json
import numpy as np
import torch
from student_policy.ppo import PPOConfig, PPOLearner, compile_failures

learner = PPOLearner(PPOConfig(num_steps=8, minibatch_size=16, update_epochs=1, compile=True), (5, 5, 3), 4, 7)
rng = np.random.default_rng(0)
obs = lambda: rng.integers(0, 6, (4, 5, 5, 3), dtype=np.uint8)
for _ in range(8):
    learner.act(obs())
    learner.record(np.zeros(4, np.float32), np.zeros(4, bool), np.zeros(4, bool))
learner.update(obs())
counters = torch._dynamo.utils.counters
print(json.dumps({'updates': learner.updates, 'failures': compile_failures(),
                  'aot_hits': counters['aot_autograd']['autograd_cache_hit']}))
'''


def one_compiled_update(xdg: Path) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k != 'TORCHINDUCTOR_CACHE_DIR'}
    out = subprocess.run([sys.executable, '-c', ONE_UPDATE], env=dict(env, XDG_CACHE_HOME=str(xdg), OMP_NUM_THREADS='1'),
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@pytest.mark.slow
def test_a_second_start_loads_the_compiled_student_from_the_cache_and_a_corrupt_cache_runs_eager(tmp_path):
    cache = tmp_path / 'llm_teacher' / 'torchinductor'
    first, _ = one_compiled_update(tmp_path)
    assert first == {'updates': 1, 'failures': 0, 'aot_hits': 0}
    assert list((cache / 'aotautograd').iterdir()) and list((cache / 'fxgraph').iterdir())
    second, _ = one_compiled_update(tmp_path)
    assert second['failures'] == 0 and second['aot_hits'] >= 2  # the act (no-grad) and training graphs

    for library in cache.rglob('*.so'):  # a disk that lost the compiled code
        library.write_bytes(b'garbage')
    broken, log = one_compiled_update(tmp_path)
    assert broken['updates'] == 1  # training went on
    if broken['failures']:  # torch 2.13 fails the compile on it; a later torch may recompile instead
        assert 'torch.compile failed' in log and not cache.exists()
