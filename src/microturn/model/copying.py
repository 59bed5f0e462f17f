"""Copy pointers: saying what was given (the background's text) or what was heard (the user's words).

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

The heard-words memory: "whenever I say banana, say bingo" or "remind me to stretch" asks the assistant to
say a word it only heard. The text head attends over the user's words so far (the user-transcript
head's tokens when streaming, the transcript when training) and mixes that attention into its vocabulary
distribution (the pointer of pointer-generator networks). A heard word's key embeds it with the two words
before it, so "the word after 'say'" is something a query can ask for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .tokenizer import BOS, PAD

NO_CANDIDATE = -1
LOOKAHEAD = 64  # said tokens are searched among this many unsaid ones (bounds the cost per token)
HEARD_CONTEXT = 3  # a heard word's key: the word and the two before it (-1 where there is none)


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


@dataclass
class HeardMemory:
    """Heard words as the text head reads them: `tokens` [N, M] (-1 = no word), their keys [N, M, d] and
    `visible` [N, S, M] (which words each of S queries may read: heard by then)."""

    tokens: torch.Tensor
    keys: torch.Tensor
    visible: torch.Tensor
    # streaming: [N, M] the heard token after each one when it goes on the same word (-1: a new word or
    # nothing), so a word the decoder starts copying is finished as heard
    follows: torch.Tensor | None = None
    # streaming: [N] the heard position of the piece that finishes a word the last micro-turn began copying
    word_rest_at: torch.Tensor | None = None


def heard_in_slots(slots: list[int]) -> list[int]:
    """The words of one micro-turn's transcript slots: those before the first pad."""
    return slots[: slots.index(PAD)] if PAD in slots else slots


def heard_contexts(tokens: list[int], before: list[int]) -> list[list[int]]:
    """Each new token with the HEARD_CONTEXT - 1 tokens before it (`before`: what was heard earlier)."""
    seq = [-1] * (HEARD_CONTEXT - 1) + list(before[-(HEARD_CONTEXT - 1) :]) + list(tokens)
    return [seq[i + 1 - HEARD_CONTEXT : i + 1] for i in range(len(seq) - len(tokens), len(seq))]


def heard_from_transcript(user_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training: a crop's user transcript [B, T, K] (pad 0) -> the words in order as (tokens [B, M] (-1
    none), contexts [B, M, HEARD_CONTEXT], heard-at micro-turn [B, M] (T where there is no word))."""
    b, t, k = user_text.shape
    rows = []
    for row in user_text.tolist():
        words = [(token, turn) for turn, slots in enumerate(row) for token in heard_in_slots(slots)]
        rows.append(words)
    m = max(1, max(len(words) for words in rows))
    tokens = torch.full((b, m), -1, dtype=torch.long)
    contexts = torch.full((b, m, HEARD_CONTEXT), -1, dtype=torch.long)
    turns = torch.full((b, m), t, dtype=torch.long)
    for i, words in enumerate(rows):
        if words:
            ids = [token for token, _ in words]
            tokens[i, : len(ids)] = torch.tensor(ids)
            contexts[i, : len(ids)] = torch.tensor(heard_contexts(ids, []))
            turns[i, : len(ids)] = torch.tensor([turn for _, turn in words])
    return tokens.to(user_text.device), contexts.to(user_text.device), turns.to(user_text.device)


@dataclass
class HeardWords:
    """Streaming: one session's last heard words and their keys (computed once, when heard)."""

    tokens: list[int] = field(default_factory=list)
    keys: torch.Tensor | None = None  # [len(tokens), d]
    external: bool = False  # a transcriber feeds the words (`StepInputs.heard`), not the transcript head
    word_rest_at: int = -1  # the position of a copied word's next piece, to say first in the next micro-turn

    def copy(self) -> HeardWords:  # keys are replaced, never written in place
        return HeardWords(list(self.tokens), self.keys, self.external, self.word_rest_at)

    def hear(self, tokens: list[int], keys: torch.Tensor, limit: int) -> None:
        dropped = max(0, len(self.tokens) + len(tokens) - limit)
        self.tokens = (self.tokens + list(tokens))[-limit:]
        self.keys = (keys if self.keys is None else torch.cat([self.keys, keys]))[-limit:]
        self.word_rest_at = self.word_rest_at - dropped if self.word_rest_at >= dropped else -1


def heard_batch(
    sessions: list[HeardWords], d: int, device: torch.device, word_start: torch.Tensor | None = None
) -> HeardMemory:
    """Streaming sessions' memories padded to one batch (one query slot each); with `word_start` [V] bool
    (which tokens begin a word), also what follows each heard token within its word."""
    m = max([1] + [len(s.tokens) for s in sessions])
    tokens = torch.full((len(sessions), m), -1, dtype=torch.long, device=device)
    keys = torch.zeros(len(sessions), m, d, device=device)
    for i, s in enumerate(sessions):
        if s.tokens:
            tokens[i, : len(s.tokens)] = torch.tensor(s.tokens, device=device)
            keys[i, : len(s.tokens)] = s.keys
    follows = None
    if word_start is not None:
        after = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], -1)], dim=1)
        follows = after.masked_fill((after < 0) | word_start[after.clamp(min=0)], -1)
    rest_at = torch.tensor([s.word_rest_at for s in sessions], dtype=torch.long, device=device)
    return HeardMemory(tokens, keys, (tokens >= 0)[:, None, :], follows, rest_at)
