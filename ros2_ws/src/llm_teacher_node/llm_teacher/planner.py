"""Planner: prompt + feasible options -> p(option | text), two ways.

- sample: K answers sampled from the LLM, parsed (exact, then normalised, else rejected) and
  counted: the paper's uncertainty-aware soft instructions.
- score (the default): the log-likelihood of each feasible option as the answer (summed over its
  tokens), all in one batched pass over the prompt's KV cache; softmax over options gives an
  exact distribution, no parsing. (Length-normalised and first-token scores lost on all five
  tasks: docs/results.md, "Option scoring: sum, mean or first token".)
Only feasible options (affordance grounding) are offered and can get mass.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llm_teacher.backends import LLMBackend
from llm_teacher_common.options import Option
from llm_teacher.options import parse_option

PLANNER_MODES = ('score', 'sample')


@dataclass
class PlanResult:
    distribution: dict[str, float]  # option text -> probability; empty when no answer parsed
    rejected_answers: list[str]
    llm_called: bool = True


class Planner:

    def __init__(self, backend: LLMBackend, mode: str = 'score', samples: int = 10, temperature: float = 1.0,
                 max_tokens: int = 16):
        if mode not in PLANNER_MODES:
            raise ValueError(f'planner mode {mode!r} is not one of {PLANNER_MODES}')
        if samples < 1:
            raise ValueError(f'samples must be at least 1, got {samples}')
        self.backend, self.mode, self.samples = backend, mode, samples
        self.temperature, self.max_tokens = temperature, max_tokens

    def plan(self, prompt: str, options: list[Option]) -> PlanResult:
        if len(options) == 1:  # grounding left one choice: no need to ask
            return PlanResult({options[0].text: 1.0}, [], llm_called=False)
        if self.mode == 'score':
            logits = np.array(self.backend.score(prompt, [o.text for o in options]))
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            return PlanResult({o.text: float(p) for o, p in zip(options, probs)}, [])
        counts: dict[str, int] = {}
        rejected = []
        for answer in self.backend.generate(prompt, self.samples, self.temperature, self.max_tokens):
            option = parse_option(answer, options)
            if option is None:
                rejected.append(answer)
            else:
                counts[option.text] = counts.get(option.text, 0) + 1
        total = sum(counts.values())
        return PlanResult({text: c / total for text, c in counts.items()} if total else {}, rejected)
