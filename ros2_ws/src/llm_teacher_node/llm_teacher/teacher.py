"""The teacher: perception -> prompt -> p(option | text) (cached) -> pi_T(a|s) through the skills.

It never blocks its caller: a prompt seen before is answered at once from the cache; a new one
goes to a worker thread and this state gets no suggestion; when the LLM answers, the answer is
cached and serves every later state with the same text. LLM errors and unparseable answers are
counted and logged with the prompt, never raised; so are the answer cache's errors (a full disk, a
row another program wrote): the teacher goes on with the answers it holds in memory.
Most steps repeat the situation of a step before (mediator.situation: what the options and the
prompt are made of), so the options, the prompt and, once answered, the option distribution are
kept by situation: a step builds no text, and pays mostly for the skills.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from llm_teacher_common.perception import Perception
from llm_teacher.backends import LLMError, default_cache_dir, make_backend
from llm_teacher.cache import AnswerCache, CacheError
from llm_teacher_common.embodied_skills import EmbodiedSkills
from llm_teacher.mediator import Mediator, situation
from llm_teacher_common.options import Option
from llm_teacher.options import feasible_options
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
MAX_ANSWERS = 10_000  # answers (and unanswerable prompts) kept in memory, least recently used dropped
# What a perception may hold (a step batch comes from whatever is on the ROS domain): beyond these,
# planning costs more than a step is worth, or never ends (clearance dilations are 1 / resolution).
MAX_OBJECTS, MAX_MISSION_CHARS = 32, 512
MAX_GRID_SIDE = 64  # cells of a grid world's memory map (the paper's largest task: 20)
MAP_RESOLUTION_M = (0.02, 2.0)  # occupancy map m per cell (the embodied sims map at 0.25)
# Occupancy map cells a side: the embodied sims map 128 x 128. At 256 and MAX_OBJECTS a state costs
# the skills up to ~0.15 s (measured); at 512, 2.3 s.
MAX_MAP_SIDE = 256


def check_input(perception: Perception, memory_map: np.ndarray) -> None:
    """Refuse a state the skills cannot plan on in bounded time: non-finite numbers, too many
    objects, a map too large or too fine.

    :raises ValueError: what is wrong, with the value and what is allowed.
    """
    numbers = [perception.x, perception.y, perception.heading]
    for obj in perception.objects:
        numbers += [obj.forward, obj.left]
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError(f'pose or object positions are not finite: {[v for v in numbers if not math.isfinite(v)][:3]}')
    if len(perception.objects) > MAX_OBJECTS or len(perception.mission) > MAX_MISSION_CHARS:
        raise ValueError(f'{len(perception.objects)} objects and a mission of {len(perception.mission)} characters: '
                         f'at most {MAX_OBJECTS} and {MAX_MISSION_CHARS}')
    if perception.task_family == 'gridworld':
        if memory_map.ndim != 3 or memory_map.shape[2] != 4 or max(memory_map.shape[:2]) > MAX_GRID_SIDE:
            raise ValueError(f'memory map of shape {memory_map.shape}: (width, height, 4) with sides up to '
                             f'{MAX_GRID_SIDE} expected')
    grid = perception.occupancy
    if grid is not None:
        low, high = MAP_RESOLUTION_M
        if not low <= grid.resolution <= high or not all(math.isfinite(v) for v in grid.origin):
            raise ValueError(f'occupancy map resolution {grid.resolution} m (origin {grid.origin}): '
                             f'{low}..{high} m per cell and a finite origin expected')
        if max(grid.cells.shape) > MAX_MAP_SIDE:
            raise ValueError(f'occupancy map of {grid.cells.shape} cells: at most {MAX_MAP_SIDE} a side')


def _remember(store: OrderedDict, key, value) -> None:
    """Keep `key` as the most recently used, dropping the least recently used beyond MAX_ANSWERS."""
    store[key] = value
    store.move_to_end(key)
    while len(store) > MAX_ANSWERS:
        store.popitem(last=False)


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
        self._answers: OrderedDict[str, tuple[dict[str, float], float, bool]] = OrderedDict()
        self._pending: set[str] = set()
        # Prompts whose every sampled answer was unparseable: not asked again while remembered (they
        # would be, on every visit, at full LLM cost); such states carry no teacher term.
        self._unanswerable: OrderedDict[str, None] = OrderedDict()
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
        in the perception instead.

        :raises ValueError: a state check_input refuses, or of an unknown task family.
        """
        check_input(perception, memory_map)
        if perception.task_family not in self.skills:
            raise ValueError(f'task family {perception.task_family!r} is not one of {", ".join(self.skills)}')
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
            if answer is not None:
                self._answers.move_to_end(prompt)
        if answer is None:
            try:
                distribution = self.cache.get(self.source, self.planner.mode, prompt)
            except CacheError as err:
                self.log_error(str(err))
                return None
            if distribution is not None:
                answer = (distribution, 0.0, True)
                with self._lock:
                    _remember(self._answers, prompt, answer)
        return answer

    def _ask_later(self, prompt: str, options) -> None:
        with self._lock:
            if prompt in self._pending or prompt in self._unanswerable or len(self._pending) >= self.max_pending:
                return
            self._pending.add(prompt)
        self._worker.submit(self._ask, prompt, options)

    def _ask(self, prompt: str, options) -> None:
        try:
            self._answer(prompt, options)
        finally:  # only once answered and stored: wait_idle() then sees the answer, and none is asked twice
            with self._lock:
                self._pending.discard(prompt)

    def _answer(self, prompt: str, options) -> None:
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
                _remember(self._answers, prompt, (result.distribution, latency_ms, False))
            else:
                _remember(self._unanswerable, prompt, None)
        if result.distribution:
            try:
                self.cache.put(self.source, self.planner.mode, prompt, result.distribution)
            except CacheError as err:
                self.log_error(str(err))

    def wait_idle(self, timeout: float) -> bool:
        """Block until no prompt is pending (for evaluation and tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._pending:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self) -> None:
        self.planner.backend.close()  # a request in flight ends now, so the worker does too
        self._worker.shutdown(wait=False, cancel_futures=True)
        self.cache.close()


def embedded_teacher(cache_path=None, log_error=print, avoid_lava: bool = True, prompt: str | None = None,
                     planner_mode: str = 'score') -> Teacher:
    """The default teacher: the embedded LLM, scoring options, answers cached in `cache_path`
    (default: the user's cache directory); avoid_lava False gives the paper's lava-blind skills,
    prompt a template of one's own (its text; default: the packaged ones), planner_mode one of
    planner.PLANNER_MODES."""
    cache_path = cache_path or default_cache_dir() / 'answers.sqlite'
    mediator = Mediator(prompt) if prompt else Mediator.from_file()
    return Teacher(Planner(make_backend(), planner_mode), AnswerCache(cache_path), mediator,
                   log_error=log_error, avoid_lava=avoid_lava)
