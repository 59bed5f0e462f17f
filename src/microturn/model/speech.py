"""What the mel head is told about every frame: which character of which word is being said, its
neighbours in that word, and how far into the character the frame is.

The head renders 20 frames per micro-turn. Told only which words *start* in the window, it has to infer
frame-level alignment from the trunk, and on this CPU's training budget it never learned to (Whisper heard
nothing it said). With a per-frame character condition its job for a fixed voice is close to a lookup.

Training reads the condition from the corpus's word times, the characters of each word spread evenly over
it; streaming builds the same thing from a per-session `SpeechSchedule` of the words the text head emitted,
timed with the corpus voice's average rate (`ModelConfig.speech_*_frames`). Both go through
`frame_condition`, so the head sees one kind of input. Characters, not phonemes: a BPE token's characters
are known the moment it is emitted, a word's phonemes only once all its tokens are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789'"
NONE, BOUNDARY = 0, 1  # a frame outside every word; a neighbour outside the frame's word
N_CHAR_IDS = len(ALPHABET) + 2
CONTEXT = 2  # neighbours each side: "tion" and "ough" need more than the character itself
WIDTH = 2 * CONTEXT + 1
_CHAR_ID = {c: i + 2 for i, c in enumerate(ALPHABET)}
_NOT_SPOKEN = re.compile(f"[^{re.escape(ALPHABET)}]")


def spoken_chars(text: str) -> tuple[int, ...]:
    """Character ids of the part of `text` that is said (punctuation and spaces are not)."""
    return tuple(_CHAR_ID[c] for c in _NOT_SPOKEN.sub("", text.lower()))


@dataclass(frozen=True)
class Graphemes:
    """Per token id of a tokenizer: its spoken characters and whether it starts a word."""

    chars: tuple[tuple[int, ...], ...]
    word_start: tuple[bool, ...]

    @classmethod
    def of(cls, tokenizer) -> Graphemes:
        """From a `TextTokenizer` (specials say nothing)."""
        n = tokenizer.vocab_size
        pieces = [tokenizer.tokenizer.decode([i]) if i > 2 else "" for i in range(n)]
        return cls(
            tuple(spoken_chars(p) for p in pieces), tuple(tokenizer.is_word_start(i) for i in range(n))
        )

    def word(self, ids: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        return tuple(c for i in ids for c in self.chars[int(i)])


def frame_condition(
    chars: torch.Tensor, word: torch.Tensor, start: torch.Tensor, end: torch.Tensor, times: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Characters said at frame `times` [B, F] from spans sorted by start [B, C] (chars 0 = unused slot,
    start = inf there; times and spans in frames) -> context ids [B, F, WIDTH] (the character at the frame
    in the middle, NONE everywhere outside words, BOUNDARY for neighbours outside the word) and the frame's
    fraction into its character [B, F] (0 outside words)."""
    c = chars.shape[1]
    if c == 0:
        return torch.zeros((*times.shape, WIDTH), dtype=torch.long), torch.zeros(times.shape)
    idx = (torch.searchsorted(start.contiguous(), times.contiguous(), right=True) - 1).clamp(min=0)
    at_start, at_end = start.gather(1, idx), end.gather(1, idx)
    inside = (times >= at_start) & (times < at_end) & (chars.gather(1, idx) != NONE)
    at_word = word.gather(1, idx)
    ids = []
    for offset in range(-CONTEXT, CONTEXT + 1):
        j = (idx + offset).clamp(0, c - 1)
        same = (idx + offset >= 0) & (idx + offset < c) & (word.gather(1, j) == at_word)
        neighbour = torch.where(same, chars.gather(1, j), torch.full_like(j, BOUNDARY))
        ids.append(torch.where(inside, neighbour, torch.full_like(j, NONE)))
    frac = torch.where(inside, (times - at_start) / (at_end - at_start).clamp(min=1e-6), 0.0)
    return torch.stack(ids, dim=-1), frac.float()


def word_spans(words: list[tuple[float, float, tuple[int, ...]]]) -> tuple[torch.Tensor, ...]:
    """(start, end, chars) per word (frames, sorted, not overlapping) -> span tensors [1, C] for
    `frame_condition`: each word's characters spread evenly over the word."""
    chars, word, start, end = [], [], [], []
    for w, (s, e, cs) in enumerate(words):
        n = len(cs)
        for i, ch in enumerate(cs):
            chars.append(ch)
            word.append(w)
            start.append(s + (e - s) * i / n)
            end.append(s + (e - s) * (i + 1) / n)
    return (
        torch.tensor([chars], dtype=torch.long).view(1, -1),
        torch.tensor([word], dtype=torch.long).view(1, -1),
        torch.tensor([start], dtype=torch.float64).view(1, -1),
        torch.tensor([end], dtype=torch.float64).view(1, -1),
    )


@dataclass
class SpeechSchedule:
    """One session's characters still to be said: span starts and ends in frames from the start of the
    next window. `add` schedules the tokens emitted for that window, `condition` reads its frames,
    `advance` moves one window on; `clear` forgets everything (the model stopped or was interrupted)."""

    chars: list[int] = field(default_factory=list)
    word: list[int] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)
    next_word: int = 0

    def copy(self) -> SpeechSchedule:
        return SpeechSchedule(
            list(self.chars), list(self.word), list(self.start), list(self.end), self.next_word
        )

    def say(
        self,
        tokens: list[int],
        speaking: bool,
        graphemes: Graphemes | None,
        rates: tuple[float, float, float],
    ) -> None:
        """The next window: its tokens are scheduled while speaking; silence (the model stopped or was
        interrupted) drops what was not said yet."""
        if not speaking:
            self.clear()
        elif graphemes is not None:
            self.add(tokens, graphemes, rates)

    def add(self, tokens: list[int], graphemes: Graphemes, rates: tuple[float, float, float]) -> None:
        """Tokens (pads skipped) in order. A word takes word + n * char frames and starts a gap after the
        previous one (at the window's start when nothing is playing); a token continuing a word adds char
        frames per character right after it. `rates` = (word, char, gap) frames."""
        word_frames, char_frames, gap_frames = rates
        for token in tokens:
            cs = graphemes.chars[token] if 0 < token < len(graphemes.chars) else ()
            if not cs:
                continue
            if not self.chars:
                begin, per_char, w = 0.0, char_frames + word_frames / len(cs), None
            elif graphemes.word_start[token]:
                begin, per_char, w = self.end[-1] + gap_frames, char_frames + word_frames / len(cs), None
            else:
                begin, per_char, w = self.end[-1], char_frames, self.word[-1]
            if w is None:
                w, self.next_word = self.next_word, self.next_word + 1
            for i, ch in enumerate(cs):
                self.chars.append(ch)
                self.word.append(w)
                self.start.append(begin + i * per_char)
                self.end.append(begin + (i + 1) * per_char)

    def advance(self, frames: int) -> None:
        """Move `frames` on: words said in full are dropped; a word still playing keeps its said characters
        (they are its later characters' context)."""
        playing = {w for w, e in zip(self.word, self.end, strict=True) if e > frames}
        keep = [i for i, w in enumerate(self.word) if w in playing]
        self.chars = [self.chars[i] for i in keep]
        self.word = [self.word[i] for i in keep]
        self.start = [self.start[i] - frames for i in keep]
        self.end = [self.end[i] - frames for i in keep]

    def clear(self) -> None:
        self.chars, self.word, self.start, self.end = [], [], [], []


def schedule_condition(schedules: list[SpeechSchedule], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The next window's per-frame condition for several sessions (frame_condition's outputs, B rows)."""
    c = max((len(s.chars) for s in schedules), default=0)
    b = len(schedules)
    chars = torch.zeros(b, c, dtype=torch.long)
    word = torch.full((b, c), -1, dtype=torch.long)
    start = torch.full((b, c), float("inf"), dtype=torch.float64)
    end = torch.full((b, c), float("inf"), dtype=torch.float64)
    for r, s in enumerate(schedules):
        n = len(s.chars)
        chars[r, :n] = torch.tensor(s.chars, dtype=torch.long)
        word[r, :n] = torch.tensor(s.word, dtype=torch.long)
        start[r, :n] = torch.tensor(s.start, dtype=torch.float64)
        end[r, :n] = torch.tensor(s.end, dtype=torch.float64)
    times = (torch.arange(frames, dtype=torch.float64) + 0.5).expand(b, frames)
    return frame_condition(chars, word, start, end, times)
