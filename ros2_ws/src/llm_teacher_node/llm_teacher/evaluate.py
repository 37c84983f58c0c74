"""How good is a teacher? Accuracy on labelled situations, and success when it acts alone.

Situations come from the scripted expert's episodes: at each step the right option is the one
the expert is carrying out (pick up the key, open the door, go to the goal), or explore when the
robot has not yet seen its target. Accuracy counts the teacher's most likely option against
that label. Act-alone success runs the teacher's policy pi_T with no student, sampled and greedy;
where greedy episodes fail, the report lists the situations they ended in and the LLM's top
options there (the usual cause: a wrong option ranked first, which sampling escapes and argmax
does not).

    python -m llm_teacher.evaluate --task MiniGrid-SimpleDoorKey-v0 --planner-mode score
    python -m llm_teacher.evaluate --backend openai --base-url http://127.0.0.1:8000 --model qwen --planner-mode sample
    python -m llm_teacher.evaluate --ungrounded   # offer every option, possible or not
    python -m llm_teacher.evaluate --prompt-file my_prompt.txt   # a prompt of your own
    python -m llm_teacher.evaluate --task MiniWorld-PutNext-v0   # embodied: acting alone only
"""
from __future__ import annotations

import argparse
import collections
import json
import sys

import numpy as np
from minigrid.core.actions import Actions

from habitat_bridge.minigrid.expert import ScriptedExpert
from llm_teacher_common.perception import Perception
from llm_teacher_common.stats import wilson_interval
from habitat_bridge.minigrid.vector import make_env
from habitat_bridge.vector import is_embodied, make_vec_env
from llm_teacher.backends import BACKENDS, LLMError, default_cache_dir, make_backend
from llm_teacher.cache import AnswerCache
from llm_teacher.mediator import Mediator, describe
from llm_teacher_common.options import EXPLORE, Option
from llm_teacher.options import feasible_options
from llm_teacher.planner import PLANNER_MODES, Planner
from llm_teacher.teacher import Teacher


def expert_label(env, expert: ScriptedExpert, perception: Perception) -> Option:
    """The option the expert is carrying out, or explore when its target is not perceived yet."""
    subgoal = expert.subgoal(env.unwrapped)
    if subgoal is None:
        return EXPLORE
    (x, y), final = subgoal
    target = next((o for o in perception.objects if (o.grid_x, o.grid_y) == (x, y)), None)
    if target is None:
        return EXPLORE
    verb = {int(Actions.pickup): 'pick up', int(Actions.toggle): 'open'}.get(final, 'go to')
    return Option(verb, target.type, target.color)


def every_option(env) -> list[Option]:
    """No grounding: every verb with every object of the task, seen or not, possible or not."""
    base = env.unwrapped
    objects = {(c.type, c.color) for c in base.grid.grid if c is not None and c.type in ('key', 'door', 'goal')}
    options = [EXPLORE]
    for kind, color in sorted(objects):
        options.append(Option('go to', kind, color))
        if kind == 'key':
            options += [Option('pick up', kind, color), Option('drop', kind, color)]
        if kind == 'door':
            options.append(Option('open', kind, color))
    return options


def offered(perception: Perception, env, grounded: bool = True) -> list[Option]:
    """The options the teacher is offered: the feasible ones, or all."""
    return feasible_options(perception) if grounded else every_option(env)


def act_alone(teacher: Teacher, task: str, episodes: int, grounded: bool = True, seed: int = 1000) -> dict:
    """Success of the teacher acting with no student: sampling pi_T, and taking its most likely action.

    Episode k starts from seed + k. Any task: MiniGrid or embodied (MiniWorld-* ids).
    Returns {'sampled': success rate, 'greedy': success rate, 'sampled_return': mean return,
    'greedy_failures': where greedy episodes ended unsolved}: a greedy teacher repeats itself, so
    the situation and option distribution it ends in is usually the one it was stuck in.
    """
    envs = make_vec_env(task, 1)
    rng = np.random.default_rng(seed)
    successes, returns = {'sampled': 0, 'greedy': 0}, []
    stuck = collections.Counter()
    for mode in successes:
        for episode in range(episodes):
            step = envs.reset(seed=seed + episode)
            episode_return = 0.0
            while True:
                perception, obs = step.perceptions[0], step.observations[0]
                options = offered(perception, envs.envs[0], grounded)
                distribution = teacher.option_distribution(perception, options) or {EXPLORE.text: 1.0}
                by_text = {o.text: o for o in options}
                probs = teacher.policy({by_text[t]: p for t, p in distribution.items()}, perception, obs)
                action = int(rng.choice(len(probs), p=probs)) if mode == 'sampled' else int(np.argmax(probs))
                step = envs.step(np.array([action]))
                episode_return += float(step.rewards[0])
                if step.terminated[0] or step.truncated[0]:
                    successes[mode] += bool(step.success[0])
                    if mode == 'sampled':
                        returns.append(episode_return)
                    elif not step.success[0]:
                        ranked = sorted(distribution.items(), key=lambda item: -item[1])[:3]
                        stuck[(describe(perception), tuple((t, round(p, 2)) for t, p in ranked))] += 1
                    break
    envs.close()
    failures = [{'episodes': n, 'observation': text, 'top_options': dict(top)}
                for (text, top), n in stuck.most_common()]
    return {'sampled': successes['sampled'] / episodes, 'greedy': successes['greedy'] / episodes,
            'episodes': episodes, 'sampled_interval95': wilson_interval(successes['sampled'], episodes),
            'greedy_interval95': wilson_interval(successes['greedy'], episodes),
            'sampled_return': float(np.mean(returns)), 'greedy_failures': failures}


def evaluate(teacher: Teacher, task: str, episodes: int, grounded: bool, seed: int = 1000) -> dict:
    """Accuracy along the expert's episodes (seeds seed ...), then act-alone success (the next
    `episodes` seeds). Embodied tasks: act-alone success only (their scripted expert is an option
    teacher, not a grid planner to label against)."""
    if is_embodied(task):
        alone = act_alone(teacher, task, episodes, grounded, seed + episodes)
        return {'task': task, 'teacher': teacher.source, 'planner_mode': teacher.planner.mode, 'grounded': grounded,
                'accuracy': None, 'situations': 0, **_alone_fields(alone), **_counter_fields(teacher)}
    env = make_env(task)
    correct = total = 0
    for episode in range(episodes):  # accuracy along the expert's trajectories
        obs, _ = env.reset(seed=seed + episode)
        expert = ScriptedExpert()
        while True:
            perception = env.perception()
            options = offered(perception, env, grounded)
            label = expert_label(env, expert, perception)
            distribution = teacher.option_distribution(perception, options)
            if distribution:
                correct += max(distribution, key=distribution.get) == label.text
            total += 1
            obs, _, terminated, truncated, _ = env.step(expert.act(env))
            if terminated or truncated:
                break
    alone = act_alone(teacher, task, episodes, grounded, seed + episodes)
    return {'task': task, 'teacher': teacher.source, 'planner_mode': teacher.planner.mode, 'grounded': grounded,
            'accuracy': correct / max(total, 1), 'situations': total, **_alone_fields(alone),
            **_counter_fields(teacher)}


def _alone_fields(alone: dict) -> dict:
    return {'act_alone_success': alone['sampled'], 'act_alone_success_greedy': alone['greedy'],
            'sampled_interval95': alone['sampled_interval95'], 'greedy_interval95': alone['greedy_interval95'],
            'greedy_failures': alone['greedy_failures'], 'episodes': alone['episodes']}


def _counter_fields(teacher: Teacher) -> dict:
    """The counters run on over the tasks of one evaluation: calls (and their mean time) so far."""
    counters = teacher.counters
    return {'llm_calls': counters.llm_calls, 'seconds_per_new_prompt': round(counters.mean_latency_ms / 1000, 2),
            'llm_errors': counters.llm_errors, 'parse_failures': counters.parse_failures}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m llm_teacher.evaluate', description=__doc__.splitlines()[0])
    parser.add_argument('--task', action='append', help='task id (repeatable); default: the paper tasks')
    parser.add_argument('--episodes', type=int, default=20)
    parser.add_argument('--seed', type=int, default=1000,
                        help='first seed of the expert episodes; acting alone uses the next --episodes seeds')
    # Left out, make_backend's and Planner's defaults apply: a test holds them equal to the YAML.
    llm = parser.add_argument_group('teacher (defaults: config/teacher_node.yaml)', argument_default=argparse.SUPPRESS)
    llm.add_argument('--backend', choices=BACKENDS)
    llm.add_argument('--model')
    llm.add_argument('--base-url')
    llm.add_argument('--api-key-env', help='environment variable holding the API key (openai)')
    llm.add_argument('--timeout-s', type=float)
    llm.add_argument('--device')
    llm.add_argument('--planner-mode', choices=PLANNER_MODES, dest='mode')
    llm.add_argument('--samples', type=int)
    parser.add_argument('--ungrounded', action='store_true', help='offer every option, possible or not')
    parser.add_argument('--prompt-file', help='prompt template to try (default: the packaged ones), '
                                              'with {mission}, {observation} and {options}')
    parser.add_argument('--cache', default=str(default_cache_dir() / 'answers.sqlite'))
    args = parser.parse_args(argv)
    tasks = args.task or ['MiniGrid-SimpleDoorKey-v0', 'MiniGrid-LavaDoorKey-v0', 'MiniGrid-ColoredDoorKey-v0',
                          'MiniGrid-TwoDoor-v0']
    embodied = [task for task in tasks if is_embodied(task)]
    if args.ungrounded and embodied:
        print(f'evaluate: --ungrounded lists every object of a grid; it cannot for {", ".join(embodied)}',
              file=sys.stderr)
        return 2
    try:
        given = vars(args)
        backend = make_backend(**{k: given[k] for k in ('backend', 'model', 'device', 'base_url', 'api_key_env',
                                                        'timeout_s') if k in given})
        planner = Planner(backend, **{k: given[k] for k in ('mode', 'samples') if k in given})
        teacher = Teacher(planner, AnswerCache(args.cache),
                          Mediator.from_file(args.prompt_file), log_error=lambda text: print(text, file=sys.stderr))
    except (ValueError, LLMError) as err:
        print(f'evaluate: {err}', file=sys.stderr)
        return 2
    for task in tasks:
        print(json.dumps(evaluate(teacher, task, args.episodes, not args.ungrounded, args.seed)), flush=True)
    teacher.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
