"""What a SuggestionBatch costs per env-step: building it from the teacher's suggestions, serialising
it (what publish does), deserialising it (what a subscription does) and reading it (the student's
intake: the action distributions and where they hold); and, per batch, the views' top option of
one environment.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/suggestion_messages.py

The suggestions are a warm teacher's (every one valid) on the perceptions of 16 environments
stepped with random actions: each offers the options the teacher offers in that state, with
random option and action distributions. Each figure is the best of --repeats passes over
--batches batches (the best is the least disturbed on a shared machine).
"""
import numpy as np
from builtin_interfaces.msg import Time
from llm_teacher_msgs.msg import SuggestionBatch
from rclpy.serialization import deserialize_message, serialize_message

from habitat_bridge.vector import make_vec_env
from llm_teacher.options import feasible_options
from llm_teacher.teacher import Suggestion
from llm_teacher_common.lockstep import suggestion_arrays
from llm_teacher_common.messages import suggestion_batch_msg, suggestions_from_msg, top_suggestion
from perception_messages import arguments, best_us  # the same timing and options as its twin

SOURCE = 'transformers:SmolLM2-135M-Instruct'


def warm_suggestions(task: str, num_envs: int, batches: int) -> tuple[list[list[Suggestion]], int]:
    envs = make_vec_env(task, num_envs)
    envs.perceive = True
    rng = np.random.default_rng(0)
    step, steps = envs.reset(seed=0), []
    for _ in range(batches):
        steps.append([])
        for perception in step.perceptions:
            options = [o.text for o in feasible_options(perception)]
            steps[-1].append(Suggestion(True, options, rng.dirichlet(np.ones(len(options))).tolist(),
                                        rng.dirichlet(np.ones(envs.num_actions)).astype(np.float32), cache_hit=True))
        step = envs.step(rng.integers(0, envs.num_actions, num_envs))
    return steps, envs.num_actions


def intake(batch: SuggestionBatch, num_actions: int):
    """What student_node does with a batch before handing it to the learner."""
    read = suggestions_from_msg(batch)
    return suggestion_arrays(read.action_probs, read.valid, num_actions)


def main():
    args = arguments(__doc__)
    stamp = Time(sec=1)
    print(f'us per env-step (batches of {args.num_envs}), best of {args.repeats}; top: us per batch')
    print(f'{"task":28} {"options":>7} {"build":>6} {"serialise":>9} {"deserialise":>11} {"read":>6} {"total":>6} '
          f'{"bytes":>6} {"top":>6}')
    for task in args.tasks:
        steps, num_actions = warm_suggestions(task, args.num_envs, args.batches)
        msgs = [suggestion_batch_msg(s, seq, stamp, num_actions, SOURCE) for seq, s in enumerate(steps)]
        raw = [serialize_message(m) for m in msgs]
        received = [deserialize_message(data, SuggestionBatch) for data in raw]
        times = [best_us(lambda s: suggestion_batch_msg(s, 0, stamp, num_actions, SOURCE), steps, args.repeats),
                 best_us(serialize_message, msgs, args.repeats),
                 best_us(lambda data: deserialize_message(data, SuggestionBatch), raw, args.repeats),
                 best_us(lambda batch: intake(batch, num_actions), received, args.repeats)]
        top = best_us(lambda batch: top_suggestion(batch, 0), received, args.repeats)
        for batch, sent in zip(received, steps):  # what is read is what was sent
            probs, mask, _ = intake(batch, num_actions)
            assert mask.all() and np.array_equal(probs, np.stack([s.action_probs for s in sent]))
        per_env = [t / args.num_envs for t in times]
        options = sum(len(s.options) for batch in steps for s in batch) / (len(steps) * args.num_envs)
        print(f'{task:28} {options:7.1f} ' + ' '.join(f'{t:{w}.1f}' for t, w in zip(per_env, (6, 9, 11, 6)))
              + f' {sum(per_env):6.1f} {np.mean([len(r) for r in raw]) / args.num_envs:6.0f} {top:6.1f}')


if __name__ == '__main__':
    main()
