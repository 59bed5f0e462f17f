"""The copy pointer: which background token the assistant would say next if it says what it was given.

The background model's text reaches the interaction model one token per micro-turn (`model.queues`) and is
meant to be said, in order, when the moment comes. A 2k-vocabulary text head that must reproduce it from
memory drifts to frequent words; told "the next unsaid background token is X" it only has to decide
whether to say X (the text head adds a learned bonus to X's logit: pointer-generator networks, See et al.
2017). The pointer follows what was actually said: a said token found among the next unsaid ones moves
it past that token, so an interrupted answer is skipped once the assistant says the next one; a new
background message (its BOS) drops whatever is left unsaid of the older ones, so a long session of
abandoned answers cannot push a new answer beyond the look-ahead.

One class serves training (the dataset walks each conversation's background and assistant tokens
through it) and streaming (one per session in the model state), so both see the same candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .tokenizer import BOS

NO_CANDIDATE = -1
LOOKAHEAD = 64  # said tokens are searched among this many unsaid ones (bounds the cost per token)


@dataclass
class CopyPointer:
    heard: list[int] = field(default_factory=list)  # background tokens from the pointer on

    def copy(self) -> CopyPointer:
        return CopyPointer(list(self.heard))

    def hear(self, tokens: list[int]) -> None:
        for token in map(int, tokens):
            if token == BOS:
                self.heard = []
            elif token >= 0:
                self.heard.append(token)

    def candidate(self) -> int:
        return self.heard[0] if self.heard else NO_CANDIDATE

    def said(self, token: int) -> None:
        """The assistant said `token`: if it is among the next unsaid tokens, the pointer moves past it."""
        try:
            self.heard = self.heard[self.heard.index(int(token), 0, LOOKAHEAD) + 1 :]
        except ValueError:
            pass

    def slot_candidates(self, tokens: list[int], slots: int, pad: int) -> list[int]:
        """Candidates for each of `slots` text slots that say `tokens` (pads are not said), advancing."""
        out = []
        for i in range(slots):
            out.append(self.candidate())
            if i < len(tokens) and tokens[i] != pad:
                self.said(tokens[i])
        return out
