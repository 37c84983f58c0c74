"""The README and docs/ promise only what exists: make targets, launch arguments, links, scripts, modules.

Reads the Markdown, the Makefile and the launch files' ARGUMENTS tables (launch files imported by
path, as the launch runner does; no node is started). Fast and offline.
"""
import importlib.util
import re
import shlex
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
DOCS = sorted((ROOT / 'docs').glob('*.md'))
LAUNCH_FILES = ('train.launch.py', 'eval.launch.py', 'deploy.launch.py')

FENCE = re.compile(r'^[ \t]*```.*?$(.*?)^[ \t]*```', re.S | re.M)
INLINE = re.compile(r'`([^`\n]+)`')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
HEADING = re.compile(r'^#{1,6}\s+(.*?)\s*#*\s*$', re.M)


def commands(markdown: str) -> list[str]:
    """Shell command lines of a Markdown text: fenced-block lines (backslash continuations joined,
    comments dropped) and inline code spans outside the blocks."""
    lines = []
    for block in FENCE.findall(markdown):
        for line in block.replace('\\\n', ' ').splitlines():
            line = re.sub(r'(^|\s)#.*', '', line).strip()
            if line:
                lines.append(line)
    lines += INLINE.findall(FENCE.sub('', markdown))
    return lines


def words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:  # an unbalanced quote in prose
        return line.split()


def make_targets(line: str) -> list[str]:
    """The targets of each `make ...` in a command line (variables, options and what follows a shell operator left out)."""
    targets, tokens = [], words(line)
    for i, token in enumerate(tokens):
        if token != 'make':
            continue
        for word in tokens[i + 1:]:
            if word in {'&&', '||', ';', '|'} or word.startswith('#'):
                break
            if '=' not in word and not word.startswith('-'):
                targets.append(word)
    return targets


def launch_arguments(line: str) -> list[tuple[str, str]]:
    """(launch file, argument name) for each name:=value given to a launch file; `make train`
    passes TRAIN_ARGS to train.launch.py. A name:=value after `--ros-args` is a node parameter."""
    named = [name for name in LAUNCH_FILES if name in line]
    if not named and re.search(r'\bmake\s+train\b', line):
        named = ['train.launch.py']
    if not named:
        return []
    line = line.split('--ros-args')[0]
    # TRAIN_ARGS="a:=1 b:=2" is one shell word: look inside it too.
    found = []
    for word in words(line):
        for part in word.split():
            name, sep, _ = part.rpartition(':=')
            name = name.split('=')[-1]
            if sep and re.fullmatch(r'[A-Za-z_]\w*', name):
                found.append((named[0], name))
    return found


@cache
def markdown(path: Path) -> str:
    return path.read_text()


@cache
def launch_arguments_of(name: str) -> frozenset[str]:
    """The ARGUMENTS of the project's launch file `name` (where the workspace keeps it)."""
    paths = sorted({p.resolve() for p in [ROOT / 'launch' / name, *ROOT.glob(f'ros2_ws/src/*/launch/{name}')]
                    if p.is_file()})
    assert paths, f'no launch file {name} in launch/ or ros2_ws/src/*/launch/'
    spec = importlib.util.spec_from_file_location(name.replace('.', '_'), paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return frozenset(module.ARGUMENTS)


def make_file_targets() -> set[str]:
    targets = set()
    for line in (ROOT / 'Makefile').read_text().splitlines():
        match = re.match(r'^([A-Za-z0-9_.\-$() /]+?)\s*:(?![=:])', line)
        if match and not line.startswith(('\t', '.')):
            targets.update(match.group(1).split())
        if line.startswith('.PHONY:'):
            targets.update(line.split(':', 1)[1].split())
    return targets


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r'[`*_]{2,}|[`*]', '', heading).strip().lower()
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def documents() -> list[Path]:
    return [README, *DOCS]


def test_the_readme_names_the_two_commands():
    targets = {t for line in commands(markdown(README)) for t in make_targets(line)}
    assert {'train', 'test', 'test-fast'} <= targets, 'the README must name make train, make test and make test-fast'


@pytest.mark.parametrize('path', documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_make_target_in_the_docs_exists(path):
    missing = {t for line in commands(markdown(path)) for t in make_targets(line)} - make_file_targets()
    assert not missing, f'{path.name} names make targets the Makefile lacks: {sorted(missing)}'


@pytest.mark.parametrize('path', documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_launch_argument_in_the_docs_exists(path):
    unknown = [f'{launch} {name}:=' for line in commands(markdown(path)) for launch, name in launch_arguments(line)
               if name not in launch_arguments_of(launch)]
    assert not unknown, f'{path.name} passes launch arguments their launch file does not declare: {unknown}'


@pytest.mark.parametrize('path', documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_and_heading(path):
    broken = []
    for target in LINK.findall(FENCE.sub('', markdown(path))):
        if re.match(r'[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition('#')
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f'{target} (no such file)')
        elif anchor and linked.suffix == '.md' and anchor not in {slug(h) for h in HEADING.findall(
                FENCE.sub('', linked.read_text()))}:
            broken.append(f'{target} (no such heading in {linked.name})')
    assert not broken, f'{path.name} has broken links: {broken}'


def module_exists(module: str) -> bool:
    """A project module by its file under ros2_ws/src/*/, anything else by importlib."""
    parts = module.split('.')
    for package_dir in ROOT.glob(f'ros2_ws/src/*/{parts[0]}'):
        base = package_dir.parent.joinpath(*parts)
        return base.with_suffix('.py').is_file() or (base / '__init__.py').is_file()
    return importlib.util.find_spec(parts[0]) is not None


def test_every_script_and_module_the_readme_runs_exists():
    lines = commands(markdown(README))
    scripts = {m for line in lines for m in re.findall(r'\bbenchmarks/[\w/]+\.py\b', line)}
    modules = {m for line in lines for m in re.findall(r'\bpython[\d.]*\s+-m\s+([\w.]+)', line)}
    assert modules, 'expected the README to run at least one module'
    missing = sorted(s for s in scripts if not (ROOT / s).is_file())
    missing += sorted(m for m in modules if not module_exists(m))
    assert not missing, f'README.md runs scripts or modules that do not exist: {missing}'


@pytest.mark.parametrize('line, expected', [
    ('make train TRAIN_ARGS="task:=X total_frames:=6"', [('train.launch.py', 'task'), ('train.launch.py', 'total_frames')]),
    ('ros2 launch student_deploy deploy.launch.py robot:=false policy_path:=p.onnx',
     [('deploy.launch.py', 'robot'), ('deploy.launch.py', 'policy_path')]),
    ('python -m habitat_bridge.robot_sim_node --ros-args -p env:=MiniWorld-GoToObject-v0', []),
    ('python -m llm_teacher_common.launch_runner eval.launch.py --ros-args -p x:=1', []),
])
def test_launch_arguments_are_read_from_commands(line, expected):
    assert launch_arguments(line) == expected


def test_commands_and_targets_are_read_from_markdown():
    text = 'Run `make PYTHON=/x/python3.11 train`.\n\n```bash\nmake test-fast   # fast\nls \\\n  make-believe\n```\n'
    assert [t for line in commands(text) for t in make_targets(line)] == ['test-fast', 'train']
    assert slug("#24's goals, where they stand (2026-11-30)") == '24s-goals-where-they-stand-2026-11-30'
    assert slug('The teacher: `teacher_node`') == 'the-teacher-teacher_node'
