"""One episode of a trained student, as a picture: camera frames with the teacher's suggestion and
the student's action on each, and the robot's occupancy map with the path it took.

    .venv/bin/python benchmarks/episode_strip.py docs/results/embodied/runs/MiniWorld-GoToObject-v0/llm-seed0-policy.pt \
        --task MiniWorld-GoToObject-v0 --seed 10000 --out docs/results/embodied/episode.png

The student acts (greedy by default) on the observations it was trained on (the policy's own
image size); the teacher (the embedded LLM through the skills, or --teacher scripted: the
scripted option) only annotates: what it would have suggested in that state.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from habitat_bridge.vector import make_vec_env
from llm_teacher_common.options import EXPLORE
from llm_teacher.options import feasible_options
from llm_teacher.scripted_options import scripted_option
from llm_teacher.teacher import embedded_teacher
from llm_teacher_common.families import family_of_task
from llm_teacher_common.perception import FREE, OCCUPIED
from student_policy.evaluate import env_options_for
from student_deploy.inference import choose_actions, load_policy

FRAMES = 8


def run_episode(policy_path: str, task: str, seed: int, teacher_kind: str, greedy: bool) -> dict:
    """Steps of one episode: frame, pose, the teacher's top option, the student's action."""
    policy = load_policy(policy_path)
    envs = make_vec_env(task, 1, perceive=True, **env_options_for(policy.info.obs_shape, policy.info.encoder))
    teacher = embedded_teacher() if teacher_kind == 'llm' else None
    names = family_of_task(task).action_names
    step, state = envs.reset(seed=seed), policy.initial_state(1)
    steps = []
    while True:
        perception = step.perceptions[0]
        if teacher is None:
            suggestion = f'{scripted_option(perception).text} (scripted)'
        else:
            distribution = teacher.option_distribution(perception, feasible_options(perception)) or {EXPLORE.text: 1.0}
            text, p = max(distribution.items(), key=lambda item: item[1])
            suggestion = f'{text} ({p:.2f})'
        logits, state = policy.step(step.observations, state)
        action = int(choose_actions(logits, greedy)[0])
        steps.append({'rgb': envs.render(0), 'pose': (perception.x, perception.y), 'suggestion': suggestion,
                      'action': names[action], 'map': perception.occupancy, 'objects': perception.objects,
                      'heading': perception.heading})
        step = envs.step(np.array([action]))
        if step.terminated[0] or step.truncated[0]:
            envs.close()
            if teacher is not None:
                teacher.close()
            return {'steps': steps, 'success': bool(step.success[0]), 'mission': perception.mission}


def draw(episode: dict, out: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    steps = episode['steps']
    shown = np.unique(np.linspace(0, len(steps) - 1, FRAMES).round().astype(int))
    fig = plt.figure(figsize=(2.2 * len(shown) + 4.5, 3.6))
    grid = fig.add_gridspec(1, len(shown) + 2)
    for column, t in enumerate(shown):
        ax = fig.add_subplot(grid[0, column])
        ax.imshow(steps[t]['rgb'])
        ax.set_title(f't={t}\nteacher: {steps[t]["suggestion"]}\nstudent: {steps[t]["action"]}', fontsize=7)
        ax.axis('off')
    ax = fig.add_subplot(grid[0, len(shown):])
    last = steps[-1]
    grid_map = last['map'].cropped_to_known()
    cells = np.full(grid_map.cells.shape, 0.5)  # unknown grey, free white, occupied black
    cells[grid_map.cells == FREE], cells[grid_map.cells == OCCUPIED] = 1.0, 0.0
    x0, y0 = grid_map.origin
    extent = (x0, x0 + cells.shape[0] * grid_map.resolution, y0, y0 + cells.shape[1] * grid_map.resolution)
    ax.imshow(cells.T, origin='lower', cmap='gray', vmin=0, vmax=1, extent=extent)
    path = np.array([s['pose'] for s in steps])
    ax.plot(path[:, 0], path[:, 1], 'r-', lw=1.2, label='path')
    ax.plot(*path[0], 'go', label='start')
    cos, sin = np.cos(last['heading']), np.sin(last['heading'])
    for obj in last['objects']:  # perceived objects, in the map frame
        x, y = last['pose'][0] + cos * obj.forward - sin * obj.left, last['pose'][1] + sin * obj.forward + cos * obj.left
        ax.plot(x, y, 's', color=obj.color if obj.color in ('red', 'green', 'blue', 'yellow', 'purple', 'grey') else 'k',
                markersize=6, markeredgecolor='k')
    ax.set_title(f'occupancy map and path ({"success" if episode["success"] else "failure"}, {len(steps)} steps)',
                 fontsize=8)
    ax.legend(fontsize=7, loc='upper right')
    ax.set_xticks([])
    ax.set_yticks([])
    fig.suptitle(f'{title}: "{episode["mission"]}"', fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('policy', help='an exported student policy (.pt or .onnx)')
    parser.add_argument('--task', default='MiniWorld-GoToObject-v0')
    parser.add_argument('--seed', type=int, default=10_000, help='the episode (held-out seeds start at 10000)')
    parser.add_argument('--teacher', choices=('llm', 'scripted'), default='llm', help='who annotates the suggestions')
    parser.add_argument('--sample', action='store_true', help='sample the student\'s actions instead of argmax')
    parser.add_argument('--out', default='runs/episode.png')
    args = parser.parse_args()
    episode = run_episode(args.policy, args.task, args.seed, args.teacher, greedy=not args.sample)
    path = draw(episode, Path(args.out), f'{Path(args.policy).name} on {args.task}, seed {args.seed}')
    print(f'{path}: {"success" if episode["success"] else "failure"} in {len(episode["steps"])} steps')


if __name__ == '__main__':
    main()
