"""The paper's claims, re-run: plain PPO vs our student taught by the LLM vs taught by the scripted
expert vs the LLM teacher acting alone, on several tasks and seeds, in-process.

    .venv/bin/python benchmarks/reproduce.py --quick                       # smoke check, < 10 min
    .venv/bin/python benchmarks/reproduce.py --out docs/results            # the full study (hours)

Each (task, arm, seed) is one job; its result goes to OUT/runs/<task>/<arm>-seed<k>.json as soon as
it ends, and a job whose file exists is not run again: an interrupted study resumes where it
stopped. When all jobs are done, OUT holds results.json (every figure), learning_curves.png
(success over frames, mean and min-max over seeds) and results.md (the table).

Arms: `ppo` (teacher weight 0), `llm` (the embedded LLM as teacher; lambda 10 -> 0.1 over
--decay-frames, as `make train` does; 506880 is the paper's), `expert` (the scripted expert as a one-hot teacher: the upper bound of distillation),
`teacher` (the LLM teacher acting alone: no learning, evaluated on the students' held-out seeds).
Ablation arms, not in the default study: `llm_lava_blind` and `teacher_lava_blind`, the same with
the paper's lava-blind teacher (skills that walk into lava), for LavaDoorKey:

    .venv/bin/python benchmarks/reproduce.py --tasks MiniGrid-LavaDoorKey-v0 \
        --arms llm_lava_blind teacher_lava_blind --out docs/results/lava-blind

--prompt-file runs the LLM arms with a prompt template of one's own (a prompt ablation; its
text is kept in every job's result, and a study resumes only with the same text).
Success over frames is the rolling success of the last 100 training episodes (sampled actions,
as the paper plots it); final success is measured on 50 held-out episodes, greedy and sampled.
"""
from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from habitat_bridge.vector import is_embodied
from llm_teacher.mediator import Mediator
from llm_teacher_common.options import OPTION_HOLD
from llm_teacher_common.stats import wilson_interval

TASKS = ['MiniGrid-SimpleDoorKey-v0', 'MiniGrid-DoorKey-8x8-v0', 'MiniGrid-LavaDoorKey-v0',
         'MiniGrid-ColoredDoorKey-v0', 'MiniGrid-TwoDoor-v0']
ARMS = ['ppo', 'llm', 'expert', 'teacher']
ABLATIONS = ['llm_lava_blind', 'teacher_lava_blind']
TRAINED = ['ppo', 'llm', 'expert', 'llm_lava_blind']
LABELS = {'ppo': 'PPO alone', 'llm': 'student, LLM teacher', 'expert': 'student, scripted-expert teacher',
          'teacher': 'LLM teacher alone', 'llm_lava_blind': "student, lava-blind LLM teacher (paper's)",
          'teacher_lava_blind': "lava-blind LLM teacher alone (paper's)"}
EVAL_SEED = 10_000  # held-out seeds of every final evaluation (training envs use seed, seed + 1, ...)
EMBODIED_TASKS = ['MiniWorld-GoToObject-v0', 'MiniWorld-PutNext-v0']
EMBODIED_ENVS = 8
EMBODIED_CONFIG = dict(encoder='image', num_steps=64, minibatch_size=128, learning_rate=5e-4)


def expert_teacher(envs):
    """The scripted expert's next action, one-hot, for every env (it reads the true grid)."""
    from habitat_bridge.minigrid.expert import ScriptedExpert

    def suggest(step):
        probs = np.zeros((envs.num_envs, envs.num_actions), np.float32)
        for i, env in enumerate(envs.envs):
            probs[i, ScriptedExpert().act(env)] = 1.0  # a fresh plan from where the student stands
        return probs, np.ones(envs.num_envs, bool)
    return suggest


def scripted_motion_teacher():
    """Embodied tasks' expert: the option a script chooses from the robot's perception
    (llm_teacher.scripted_options), through the same skills as the LLM's options (no LLM loaded)."""
    from llm_teacher_common.embodied_skills import EmbodiedSkills
    from llm_teacher.scripted_options import scripted_option
    skills = EmbodiedSkills()

    def suggest(step):
        probs = np.stack([skills.policy({scripted_option(p): 1.0}, p) for p in step.perceptions])
        return probs.astype(np.float32), np.ones(len(probs), bool)
    return suggest


def run_job(job: dict, policy_path: Path | None = None) -> dict:
    """Train one arm on one task and seed (or evaluate the teacher alone); returns the result.
    With `policy_path`, the trained student is exported there (as training exports policy.pt)."""
    from habitat_bridge.vector import make_vec_env
    from llm_teacher.teacher import embedded_teacher
    from student_policy.evaluate import evaluate
    from student_policy.networks import eager_copy, encoder_for
    from student_policy.lockstep import train
    from student_policy.ppo import PPOConfig, TeacherSchedule

    task, arm, seed, frames, episodes = job['task'], job['arm'], job['seed'], job['frames'], job['episodes']
    start = time.perf_counter()
    kind, avoid_lava = arm.removesuffix('_lava_blind'), not arm.endswith('_lava_blind')
    if kind == 'teacher':
        from llm_teacher.evaluate import act_alone
        teacher = embedded_teacher(avoid_lava=avoid_lava, prompt=job.get('prompt'))
        alone = act_alone(teacher, task, episodes, seed=EVAL_SEED)
        return {**job, 'final_success_sampled': alone['sampled'], 'final_success_greedy': alone['greedy'],
                'final_return': alone['sampled_return'], 'llm_calls': teacher.counters.llm_calls,
                'seconds': time.perf_counter() - start}
    embodied = is_embodied(task)
    # Embodied: the camera at job['size'] px square, and the settings of benchmarks/embodied_throughput.py.
    env_options = {'width': job['size'], 'height': job['size'], 'observation': job.get('observation', '')} if embodied else {}
    perceive = kind == 'llm' or embodied and kind == 'expert'
    envs = make_vec_env(task, job.get('envs', EMBODIED_ENVS if embodied else 16), perceive=perceive, **env_options)
    teacher = embedded_teacher(avoid_lava=avoid_lava, prompt=job.get('prompt')) if kind == 'llm' else None
    option_level = job.get('option_level', False)
    if option_level:  # the student chooses options, the skills act (llm_teacher.option_level)
        from llm_teacher import option_level as options
        envs = options.OptionLevelEnv(envs, hold=job.get('option_hold', 1))
        suggest = (options.scripted_option_teacher() if arm == 'expert'
                   else options.llm_option_teacher(teacher) if teacher is not None else None)
    else:
        suggest = (expert_teacher(envs) if arm == 'expert' and not embodied
                   else scripted_motion_teacher() if arm == 'expert'
                   else functools.partial(teacher.suggest_batch, num_actions=envs.num_actions) if teacher is not None
                   else None)
    schedule = TeacherSchedule(0.0, 0.0) if arm == 'ppo' else TeacherSchedule(decay_frames=job['decay_frames'])
    curve = []

    def record(learner, metrics):
        curve.append([learner.frames, round(metrics['charts/success_rate'], 4),
                      round(metrics['charts/episodic_return'], 4)])
        if len(curve) % 10 == 0:
            print(f'{task} {arm} seed {seed}: {learner.frames} frames, success {curve[-1][1]:.2f}', flush=True)
        return True
    config = PPOConfig(total_frames=frames, seed=seed, teacher=schedule, device=job.get('device', 'cpu'),
                       recurrent=job.get('recurrent', 0), mission=job.get('mission', False),
                       teacher_replay=job.get('teacher_replay', 0),
                       **(dict(EMBODIED_CONFIG, encoder=encoder_for(envs.observation)) if embodied else {}))
    learner = train(config, envs, teacher=suggest, callbacks=[record])
    envs.close()
    if policy_path is not None:
        from student_policy.checkpoints import export_policy
        export_policy(policy_path, learner.policy, task, chooses_options=option_level)
    student = eager_copy(learner.policy)  # on the CPU, where evaluate() feeds observations, whatever the training device
    # Evaluated as it trained and as it acts on a robot: each chosen option held job['option_hold'] frames.
    wrap = functools.partial(options.OptionLevelEnv, hold=job.get('option_hold', 1)) if option_level else None
    greedy = evaluate(student, task, episodes, seed=EVAL_SEED, env_options=env_options, wrap_envs=wrap)
    sampled = evaluate(student, task, episodes, seed=EVAL_SEED, greedy=False, env_options=env_options, wrap_envs=wrap)
    return {**job, 'curve': curve, 'final_success_greedy': greedy['success_rate'],
            'final_success_sampled': sampled['success_rate'], 'final_return': sampled['mean_return'],
            'llm_calls': teacher.counters.llm_calls if teacher else 0, 'seconds': time.perf_counter() - start}


def job_path(out: Path, job: dict) -> Path:
    return out / 'runs' / job['task'] / f'{job["arm"]}-seed{job["seed"]}.json'


def run_and_save(args: tuple[dict, str]) -> str:
    import torch
    from student_policy.checkpoints import write_atomically
    torch.set_num_threads(1)
    job, out = args
    policy = job_path(Path(out), job)
    result = run_job(job, policy.with_name(policy.stem + '-policy.pt'))  # (and .onnx, .json: not in git)
    text = json.dumps(result).encode()  # atomic: a killed study never leaves half a result that resume would trust
    write_atomically(job_path(Path(out), job), lambda f: f.write(text))
    return (f'done {job["task"]} {job["arm"]} seed {job["seed"]}: greedy {result["final_success_greedy"]:.2f} '
            f'sampled {result["final_success_sampled"]:.2f} ({result["seconds"]:.0f} s)')


def frames_to(curve: list, threshold: float, hold: float = 0.8) -> int | None:
    """First frame where the rolling success reaches `threshold` and never again falls below `hold`.

    (The first threshold crossing alone misleads: early in a run the window holds only the few
    episodes that ended, and on DoorKey-8x8 two lucky ones read as 1.0 at 2k frames.)
    """
    for i, (frames, success, _) in enumerate(curve):
        if success >= threshold and all(later >= hold for _, later, _ in curve[i:]):
            return frames
    return None


def summarise(out: Path, jobs: list[dict]) -> dict:
    """results.json, learning_curves.png and results.md from the files of the jobs done so far."""
    done = [job for job in jobs if job_path(out, job).exists()]
    if not done:
        raise SystemExit(f'no finished job in {out}/runs/ to summarise')
    total, partial = len(jobs), len(done) < len(jobs)
    jobs = done
    results = [json.loads(job_path(out, job).read_text()) for job in jobs]
    tasks = list(dict.fromkeys(job['task'] for job in jobs))
    arms = list(dict.fromkeys(job['arm'] for job in jobs))
    table = {}
    for task in tasks:
        for arm in arms:
            runs = [r for r in results if r['task'] == task and r['arm'] == arm]
            if not runs:  # a study in progress: this arm has no finished seed on this task yet
                continue
            threshold = runs[0].get('threshold', 0.9)
            reached = [frames_to(r['curve'], threshold, hold=threshold - 0.1) for r in runs] if arm in TRAINED else []
            table[f'{task}/{arm}'] = {
                'task': task, 'arm': arm, 'seeds': [r['seed'] for r in runs], 'frames_budget': runs[0]['frames'],
                'episodes': runs[0]['episodes'], 'decay_frames': runs[0]['decay_frames'],
                'threshold': threshold, 'frames_to_threshold': reached, 'final_success_greedy': [r['final_success_greedy'] for r in runs],
                'final_success_sampled': [r['final_success_sampled'] for r in runs],
                'final_return': [r['final_return'] for r in runs], 'llm_calls': [r['llm_calls'] for r in runs]}
    summary = {'machine': f'{os.cpu_count()} cores, in-process, 1 torch thread per job', 'table': table,
               'runs': results, 'partial': partial}
    (out / 'results.json').write_text(json.dumps(summary, indent=1))
    plot(out, tasks, arms, results)
    note = f'**Partial: {len(done)} of {total} jobs done.**\n\n' if partial else ''
    (out / 'results.md').write_text(note + markdown(tasks, arms, table))
    return summary


def _mean_spread(values: list[float]) -> str:
    return f'{np.mean(values):.2f}' + (f' ({min(values):.2f}-{max(values):.2f})' if len(values) > 1 else '')


def _rate_with_interval(rates: list[float], episodes: int) -> str:
    """Mean over seeds, per-seed range, and the 95% Wilson interval of all seeds' episodes pooled."""
    low, high = wilson_interval(round(sum(rates) * episodes), episodes * len(rates))
    return f'{_mean_spread(rates)} [{low:.2f}, {high:.2f}]'


def markdown(tasks: list[str], arms: list[str], table: dict) -> str:
    first = next(iter(table.values()))
    lines = [f'| task | arm | frames to {first["threshold"]} success (per seed) | final success, greedy '
             '| final success, sampled | final return (sampled) |', '|---|---|---|---|---|---|']
    for task in tasks:
        for arm in arms:
            row = table.get(f'{task}/{arm}')
            if row is None:
                continue
            reached = ('-' if arm not in TRAINED else
                       ', '.join(f'{f // 1000}k' if f is not None else f'not in {row["frames_budget"] // 1000}k'
                                 for f in row['frames_to_threshold']))
            lines.append(f'| {task.removeprefix("MiniGrid-")} | {LABELS[arm]} | {reached} '
                         f'| {_rate_with_interval(row["final_success_greedy"], row["episodes"])} '
                         f'| {_rate_with_interval(row["final_success_sampled"], row["episodes"])} '
                         f'| {_mean_spread(row["final_return"])} |')
    return '\n'.join(lines) + (
        f'\n\nFrames to {first["threshold"]}: where the rolling success (last 100 training episodes) reaches '
        f'{first["threshold"]} and stays at {first["threshold"] - 0.1:.1f} or more. Mean over seeds {first["seeds"]} (min-max in round brackets; in square brackets the 95% '
        f'Wilson interval of the {len(first["seeds"])} x {first["episodes"]} held-out episodes pooled); '
        f'{first["frames_budget"]} training frames per '
        f'run, teacher weight 10 -> 0.1 over {first["decay_frames"]} frames; success over {first["episodes"]} '
        f'held-out episodes.\n')


def plot(out: Path, tasks: list[str], arms: list[str], results: list[dict]) -> None:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for arm in arms:
            runs = [r for r in results if r['task'] == task and r['arm'] == arm]
            if not runs:
                continue
            if arm not in TRAINED:  # a teacher alone: its final success as a line
                ax.axhline(np.mean([r['final_success_sampled'] for r in runs]), color='k' if arm == 'teacher' else 'grey',
                           ls='--', label=LABELS[arm])
                continue
            length = min(len(r['curve']) for r in runs)
            frames = np.array([point[0] for point in runs[0]['curve'][:length]])
            success = np.array([[point[1] for point in r['curve'][:length]] for r in runs])
            line, = ax.plot(frames, success.mean(0), label=LABELS[arm])
            ax.fill_between(frames, success.min(0), success.max(0), color=line.get_color(), alpha=0.2)
        ax.set_title(task.removeprefix('MiniGrid-'))
        ax.set_xlabel('environment frames')
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel('success rate (last 100 episodes)')
    axes[0][-1].legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'learning_curves.png', dpi=90)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tasks', nargs='+', default=TASKS)
    parser.add_argument('--arms', nargs='+', default=ARMS, choices=ARMS + ABLATIONS)
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--frames', type=int, default=400_000, help='training frames per job')
    parser.add_argument('--decay-frames', type=int, default=300_000,
                        help="frames over which the teacher weight falls from 10 to 0.1 (the paper's: 506880)")
    parser.add_argument('--episodes', type=int, default=50, help='held-out episodes of each final evaluation')
    parser.add_argument('--jobs', type=int, default=os.cpu_count(), help='jobs run at once (one core each)')
    parser.add_argument('--out', default='runs/reproduce')
    parser.add_argument('--prompt-file', help="the LLM teacher's prompt template (default: the packaged one)")
    parser.add_argument('--threshold', type=float, default=0.9,
                        help='the success the "frames to" column counts to (the embodied study: 0.8)')
    parser.add_argument('--size', type=int, default=48,
                        help='embodied tasks: camera pixels (square) the student sees; see embodied_throughput.py')
    parser.add_argument('--recurrent', type=int, default=0,
                        help="units of the students' GRU memory (PPOConfig.recurrent); 0: reactive students")
    parser.add_argument('--observation', default='', choices=('', 'rgbd', 'rgb', 'rgbd_map'),
                        help="embodied tasks: what the students see ('' the default, rgbd; rgbd_map: the camera "
                             "and the robot's map crop with the mission's object marked)")
    parser.add_argument('--mission', action='store_true',
                        help='the students read the mission text too (PPOConfig.mission): tasks whose mission varies')
    parser.add_argument('--teacher-replay', type=int, default=0,
                        help="frames of teacher-labelled sequences the students' teacher term revisits "
                             "(PPOConfig.teacher_replay); 0: off")
    parser.add_argument('--option-level', action='store_true',
                        help='embodied tasks: the students choose among the options and the skills act below them '
                             '(llm_teacher.option_level); the teacher term is over options')
    parser.add_argument('--option-hold', type=int, default=OPTION_HOLD,
                        help="--option-level: frames each option the student chooses is held, in training (the "
                             "policy and teacher terms learn only from the frames where it chose) and in the final "
                             "evaluation, as robot_policy_node's option_hold (1: a choice every frame; the studies "
                             "before 2026-12-08 trained so, resume them with 1)")
    parser.add_argument('--device', default='cpu', help="the students' torch device (cuda: on a GPU machine)")
    parser.add_argument('--envs', type=int, help='environments (robots) per job (default: 16 MiniGrid, 8 embodied)')
    parser.add_argument('--summarise', action='store_true',
                        help='run nothing: write the tables and plots of the jobs done so far (a study in progress)')
    parser.add_argument('--quick', action='store_true',
                        help='smoke check: seed 0, 16k frames, 10 episodes, out runs/reproduce-quick')
    args = parser.parse_args()
    if args.option_hold < 1:
        parser.error(f'--option-hold must be >= 1 frames, got {args.option_hold}')
    if args.quick:
        args.seeds, args.frames, args.episodes, args.decay_frames = [0], 16_384, 10, 12_288
        args.out = args.out if args.out != 'runs/reproduce' else 'runs/reproduce-quick'
    out = Path(args.out)
    jobs = [{'task': task, 'arm': arm, 'seed': seed, 'frames': args.frames, 'episodes': args.episodes,
             'decay_frames': args.decay_frames, **({'threshold': args.threshold} if args.threshold != 0.9 else {}),
             **({'size': args.size} if is_embodied(task) else {})}
            for task in args.tasks for seed in args.seeds for arm in args.arms]
    if args.prompt_file:
        try:  # the file and its template's fields are checked now, not in the first job's worker
            prompt = Mediator.from_file(args.prompt_file).default
        except ValueError as err:
            raise SystemExit(f'{args.prompt_file}: {err}') from err
        jobs = [{**job, 'prompt': prompt} for job in jobs]  # the text, not the path: an edited file is another study
    # Settings away from their defaults go into every job; at the default they stay absent, so the
    # studies run before an option existed resume.
    optional = {'device': (args.device, 'cpu'), 'envs': (args.envs, None), 'recurrent': (args.recurrent, 0),
                'mission': (args.mission, False), 'observation': (args.observation, ''),
                'teacher_replay': (args.teacher_replay, 0), 'option_level': (args.option_level, False),
                'option_hold': (args.option_hold if args.option_level else 1, 1),
                # the hold in training: the runs before 2026-12-08 lack it (they trained choosing every frame)
                'train_hold': (args.option_hold if args.option_level else 1, 1)}
    settings = {key: value for key, (value, default) in optional.items() if value != default}
    jobs = [{**job, **settings} for job in jobs]
    for job in jobs:  # resume: a finished job counts only if it was run with the same settings
        path = job_path(out, job)
        if path.exists() and {k: json.loads(path.read_text()).get(k) for k in job} != job:
            raise SystemExit(f'{path} holds a result with other settings than this study; '
                             f'choose another --out or delete it')
    todo = [job for job in jobs if not job_path(out, job).exists()]
    print(f'{len(jobs)} jobs, {len(jobs) - len(todo)} already done, {args.jobs} at a time; results in {out}/',
          flush=True)
    start = time.perf_counter()
    if todo and not args.summarise:
        with multiprocessing.get_context('spawn').Pool(args.jobs, maxtasksperchild=1) as pool:
            for done, line in enumerate(pool.imap_unordered(run_and_save, [(job, str(out)) for job in todo]), 1):
                print(f'[{done}/{len(todo)}, {time.perf_counter() - start:.0f} s] {line}', flush=True)
    summarise(out, jobs)
    print((out / 'results.md').read_text())


if __name__ == '__main__':
    main()
