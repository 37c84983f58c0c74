"""Missions as a policy reads them: the words of a mission text as token ids, BabyAI's way (a
vocabulary that grows with the missions training meets, ids in order of first use).

Id 0 pads a mission on the left to MISSION_LENGTH tokens (so a recurrent encoder ends on its last
word); id 1 stands for a word the policy never learnt. Training grows the vocabulary; a deployed
policy refuses a mission with words it never saw (`strict`), naming them, instead of acting on a
mission it cannot read.
"""
from __future__ import annotations

import re

import numpy as np

MISSION_LENGTH = 16
"""most words a mission may have."""
MAX_WORDS = 100
"""most words a vocabulary holds (BabyAI's instruction vocabulary: 100); ids stay below 256, so
rollout storage keeps them as uint8."""
PAD, UNKNOWN = 0, 1


def words_of(text: str) -> list[str]:
    """The lower-case words of a mission ("Go to the red ball." -> ['go', 'to', 'the', 'red', 'ball'])."""
    return re.findall(r'[a-z]+', text.lower())


def mission_problem(text: str, known: dict[str, int] | None = None) -> str:
    """Why a policy cannot read mission `text` ('' when it can): more words than MISSION_LENGTH;
    with `known` (the words of a trained policy's vocabulary), no words at all, or words it never saw."""
    words = words_of(text)
    if len(words) > MISSION_LENGTH:
        return f'mission {text[:120]!r} has {len(words)} words; a policy reads at most {MISSION_LENGTH}'
    if known is None:
        return ''
    if not words:
        return f'mission {text[:120]!r} has no words: say what the robot should do, e.g. "go to the red ball"'
    unknown = sorted({word for word in words if word not in known})
    if unknown:
        return (f'mission {text[:120]!r} has words the policy never saw in training: {", ".join(unknown)}; '
                f'it reads only: {", ".join(sorted(known))}')
    return ''


class MissionVocabulary:
    """Mission words -> token ids (2 .. MAX_WORDS + 1), in order of first use."""

    def __init__(self, words: list[str] | tuple[str, ...] = ()):
        self.words: list[str] = []
        self.ids: dict[str, int] = {}
        for word in words:
            self.add(word)

    def add(self, word: str) -> bool:
        """Learn `word` (False when the vocabulary is full)."""
        if word not in self.ids:
            if len(self.words) >= MAX_WORDS:
                return False
            self.ids[word] = len(self.words) + 2
            self.words.append(word)
        return True

    def encode(self, texts: list[str], grow: bool = False, strict: bool = False) -> np.ndarray:
        """Token ids (B, MISSION_LENGTH) int64 of `texts`, left-padded with PAD; words not in the
        vocabulary are learnt (`grow`, while there is room) or read as UNKNOWN.

        :raises ValueError: a mission of more than MISSION_LENGTH words, or (`strict`) one with no
            words or with words the vocabulary does not hold, naming them.
        """
        if grow and strict:
            raise ValueError('a vocabulary either learns new words (grow) or refuses them (strict), not both')
        tokens = np.full((len(texts), MISSION_LENGTH), PAD, np.int64)
        for row, text in enumerate(texts):
            problem = mission_problem(text, self.ids if strict else None)
            if problem:
                raise ValueError(problem)
            words = words_of(text)
            if grow:
                for word in words:
                    self.add(word)
            if words:
                tokens[row, -len(words):] = [self.ids.get(word, UNKNOWN) for word in words]
        return tokens
