"""The teacher: perception -> prompt -> p(option | text) (cached) -> pi_T(a|s) through the skills.

It never blocks its caller: a prompt seen before is answered at once from the cache; a new one
goes to a worker thread and this state gets no suggestion; when the LLM answers, the answer is
cached and serves every later state with the same text. LLM errors and unparseable answers are
counted and logged with the prompt, never raised.
Most steps repeat the situation of a step before (mediator.situation: what the options and the
prompt are made of), so the options, the prompt and, once answered, the option distribution are
kept by situation: a step builds no text, and pays mostly for the skills.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from llm_teacher_common.perception import Perception
from llm_teacher.backends import LLMError
from llm_teacher.cache import AnswerCache
from llm_teacher.embodied_skills import EmbodiedSkills
from llm_teacher.mediator import Mediator, situation
from llm_teacher.options import Option, feasible_options
from llm_teacher.planner import Planner
from llm_teacher.skills import NUM_ACTIONS, teacher_policy


@dataclass
class Suggestion:
    valid: bool
    options: list[str] = field(default_factory=list)
    option_probs: list[float] = field(default_factory=list)
    action_probs: np.ndarray = field(default_factory=lambda: np.zeros(NUM_ACTIONS, np.float32))
    cache_hit: bool = False
    latency_ms: float = 0.0


@dataclass
class _Situation:
    """What a situation asks the LLM, and once answered, the distribution over its options."""

    options: list[Option]
    prompt: str
    option_probs: dict[Option, float] | None = None  # options of the answer with p > 0
    latency_ms: float = 0.0
    cache_hit: bool = False


@dataclass
class TeacherCounters:
    requests: int = 0
    cache_hits: int = 0
    llm_calls: int = 0
    llm_errors: int = 0
    parse_failures: int = 0
    latency_ms_total: float = 0.0

    @property
    def mean_latency_ms(self) -> float:
        return self.latency_ms_total / self.llm_calls if self.llm_calls else 0.0


MAX_SITUATIONS = 10_000  # situations kept (each with a prompt's text, ~1 kB)


class Teacher:

    def __init__(self, planner: Planner, cache: AnswerCache, mediator: Mediator, log_error=print, max_pending: int = 256,
                 avoid_lava: bool = True):
        self.planner, self.cache, self.mediator = planner, cache, mediator
        self.avoid_lava = avoid_lava  # False: the paper's lava-blind skills (an ablation)
        self.source = planner.backend.name
        self.log_error = log_error
        self.counters = TeacherCounters()
        self.max_pending = max_pending
        # prompt -> (distribution, LLM latency in ms, came from the persistent cache): memory over the cache
        self._answers: dict[str, tuple[dict[str, float], float, bool]] = {}
        self._pending: set[str] = set()
        # Prompts whose every sampled answer was unparseable: not asked again this session (they
        # would be, on every visit, at full LLM cost); such states carry no teacher term.
        self._unanswerable: set[str] = set()
        self._lock = threading.Lock()
        # mediator.situation -> its options, prompt and answer; used by the caller's thread only
        self._situations: dict[tuple, _Situation] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='llm')
        embodied = EmbodiedSkills()
        # The option skills of each task family (llm_teacher_common.families): option -> pi_T(a|s).
        self.skills = {
            'gridworld': lambda options, perception, grid: teacher_policy(options, grid, perception.objects,
                                                                          self.avoid_lava),
            'embodied': lambda options, perception, _: embodied.policy(options, perception),
        }

    @property
    def pending(self) -> int:
        return len(self._pending)

    def suggest(self, perception: Perception, memory_map: np.ndarray) -> Suggestion:
        """pi_T for this state, or at once an invalid suggestion when its prompt has no answer yet.

        `memory_map` is the grid world's observation; embodied skills plan on the occupancy map
        in the perception instead."""
        self.counters.requests += 1
        key = situation(perception)
        known = self._situations.get(key)
        if known is None:
            options = feasible_options(perception)
            known = _Situation(options, self.mediator.prompt(perception, options))
            if len(self._situations) >= MAX_SITUATIONS:  # embodied robots keep seeing new objects
                self._situations.clear()
            self._situations[key] = known
        if known.option_probs is None:
            answer = self._lookup(known.prompt)
            if answer is None:
                self._ask_later(known.prompt, known.options)
                return Suggestion(valid=False)
            distribution, known.latency_ms, known.cache_hit = answer
            by_text = {o.text: o for o in known.options}
            known.option_probs = {by_text[t]: p for t, p in distribution.items() if t in by_text and p > 0}
        self.counters.cache_hits += 1
        option_probs = known.option_probs
        if not option_probs:
            return Suggestion(valid=False)
        return Suggestion(valid=True, options=[o.text for o in option_probs],
                          option_probs=list(option_probs.values()),
                          action_probs=self.policy(option_probs, perception, memory_map),
                          cache_hit=known.cache_hit, latency_ms=known.latency_ms)

    def suggest_batch(self, step, num_actions: int) -> tuple[np.ndarray, np.ndarray]:
        """The teacher as in-process training's callable: a VecStep -> (action probs (N, A), mask (N,)),
        the mask False where a state has no suggestion yet."""
        probs = np.zeros((len(step.perceptions), num_actions), np.float32)
        mask = np.zeros(len(step.perceptions), bool)
        for i, (perception, obs) in enumerate(zip(step.perceptions, step.observations)):
            suggestion = self.suggest(perception, obs)
            if suggestion.valid:
                probs[i], mask[i] = suggestion.action_probs, True
        return probs, mask

    def policy(self, option_probs: dict, perception: Perception, memory_map: np.ndarray) -> np.ndarray:
        """pi_T(a|s): the option distribution through the skills of the perception's task family."""
        return self.skills[perception.task_family](option_probs, perception, memory_map)

    def option_distribution(self, perception: Perception, options) -> dict[str, float] | None:
        """p(option | text) over `options` (blocking: asks the LLM now if needed); None if it failed."""
        prompt = self.mediator.prompt(perception, options)
        if self._lookup(prompt) is None:
            self._ask_later(prompt, options)
            self.wait_idle(timeout=600)
        answer = self._lookup(prompt)
        return answer[0] if answer else None

    def _lookup(self, prompt: str):
        with self._lock:
            answer = self._answers.get(prompt)
        if answer is None:
            distribution = self.cache.get(self.source, self.planner.mode, prompt)
            if distribution is not None:
                answer = (distribution, 0.0, True)
                with self._lock:
                    self._answers[prompt] = answer
        return answer

    def _ask_later(self, prompt: str, options) -> None:
        with self._lock:
            if prompt in self._pending or prompt in self._unanswerable or len(self._pending) >= self.max_pending:
                return
            self._pending.add(prompt)
        self._worker.submit(self._ask, prompt, options)

    def _ask(self, prompt: str, options) -> None:
        start = time.perf_counter()
        try:
            result = self.planner.plan(prompt, options)
        except LLMError as err:
            self.counters.llm_errors += 1
            self.log_error(f'LLM error ({err}) for prompt:\n{prompt}')
            return
        except Exception as err:  # a bug in a backend must not kill the node
            self.counters.llm_errors += 1
            self.log_error(f'{type(err).__name__} in the planner ({err}) for prompt:\n{prompt}')
            return
        finally:
            with self._lock:
                self._pending.discard(prompt)
        latency_ms = 1000 * (time.perf_counter() - start)
        if result.llm_called:
            self.counters.llm_calls += 1
            self.counters.latency_ms_total += latency_ms
        if result.rejected_answers:
            self.counters.parse_failures += len(result.rejected_answers)
            self.log_error(f'{len(result.rejected_answers)} unparseable answers, e.g. {result.rejected_answers[0]!r}, '
                           f'for prompt:\n{prompt}')
        with self._lock:
            if result.distribution:
                self._answers[prompt] = (result.distribution, latency_ms, False)
            else:
                self._unanswerable.add(prompt)
        if result.distribution:
            self.cache.put(self.source, self.planner.mode, prompt, result.distribution)

    def wait_idle(self, timeout: float) -> bool:
        """Block until no prompt is pending (for evaluation and tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._pending:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
        self.cache.close()


def embedded_teacher(cache_path=None, log_error=print, avoid_lava: bool = True, prompt: str | None = None,
                     planner_mode: str = 'score') -> Teacher:
    """The default teacher: the embedded LLM, scoring options, answers cached in `cache_path`
    (default: the user's cache directory); avoid_lava False gives the paper's lava-blind skills,
    prompt a template of one's own (its text; default: the packaged ones), planner_mode one of
    planner.PLANNER_MODES."""
    from llm_teacher.backends import TransformersBackend, default_cache_dir
    cache_path = cache_path or default_cache_dir() / 'answers.sqlite'
    mediator = Mediator(prompt) if prompt else Mediator.from_file()
    return Teacher(Planner(TransformersBackend(), planner_mode), AnswerCache(cache_path), mediator,
                   log_error=log_error, avoid_lava=avoid_lava)
