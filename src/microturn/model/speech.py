"""What the mel head is told about every frame: which phone of which word is being said, its neighbours in
that word, and how far into the phone the frame is.

The head renders 20 frames per micro-turn. Told only which words *start* in the window, it has to infer
frame-level alignment from the trunk, and on this CPU's training budget it never learned to (Whisper heard
nothing it said). With a per-frame phone condition its job for a fixed voice is close to a lookup.

Training reads the condition from the corpus's word times, the phones of each word spread evenly over it;
streaming builds the same thing from a per-session `SpeechSchedule` of the tokens the text head emitted,
timed with the corpus voice's average rate (`ModelConfig.speech_*_frames`). Both go through
`frame_condition`, so the head sees one kind of input. Phones come from espeak-ng (the one bundled with
piper-tts, en-us), one token at a time: a token's phones are known the moment it is emitted (a word split
over tokens is phonemised piecewise, the same way in training and streaming). Phonemes, not letters: a
first version conditioned on letters learned English spelling too slowly on this budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import torch

# espeak-ng's en-us phone symbols (NFD code points) as they occur in the corpus; the length mark is a
# symbol of its own (a long vowel gets two slots), stress marks, punctuation and spaces are dropped
PHONES = "ɪtːnsaɹdʊlɛkmʌiəuæwehoðjɔzbfvɑpʃŋɡɚʒθᵻɾɜɐʲʔ"
NONE, BOUNDARY, OTHER = 0, 1, 2  # a frame outside every word; a neighbour outside the word; a rare phone
N_PHONE_IDS = len(PHONES) + 3
CONTEXT = 2  # neighbours each side: coarticulation reaches past the next phone
WIDTH = 2 * CONTEXT + 1
_PHONE_ID = {c: i + 3 for i, c in enumerate(PHONES)}
_DROPPED = set("ˈˌ.,;:!?¡¿-— \u0329")


@lru_cache(maxsize=1)
def _espeak():
    from piper.phonemize_espeak import EspeakPhonemizer

    return EspeakPhonemizer()


@lru_cache(maxsize=65536)
def spoken_phones(text: str) -> tuple[int, ...]:
    """Phone ids of `text` as espeak-ng (en-us) says it; empty for text that says nothing."""
    if not any(c.isalnum() for c in text):
        return ()
    sentences = _espeak().phonemize("en-us", text.strip())
    return tuple(_PHONE_ID.get(c, OTHER) for sentence in sentences for c in sentence if c not in _DROPPED)


@dataclass(frozen=True)
class TokenPhones:
    """Per token id of a tokenizer: its phones and whether it starts a word."""

    phones: tuple[tuple[int, ...], ...]
    word_start: tuple[bool, ...]

    @classmethod
    def of(cls, tokenizer) -> TokenPhones:
        """From a `TextTokenizer` (specials say nothing); once per model load, ~0.3 s for 2k tokens."""
        n = tokenizer.vocab_size
        pieces = [tokenizer.tokenizer.decode([i]) if i > 2 else "" for i in range(n)]
        return cls(
            tuple(spoken_phones(p) for p in pieces), tuple(tokenizer.is_word_start(i) for i in range(n))
        )

    @cached_property
    def word_start_mask(self) -> torch.Tensor:
        """`word_start` as a [V] bool tensor."""
        return torch.tensor(self.word_start, dtype=torch.bool)

    def word(self, ids: tuple[int, ...] | list[int]) -> tuple[int, ...]:
        return tuple(c for i in ids for c in self.phones[int(i)])


def frame_condition(
    phones: torch.Tensor, word: torch.Tensor, start: torch.Tensor, end: torch.Tensor, times: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phones said at frame `times` [B, F] from spans sorted by start [B, C] (phones 0 = unused slot,
    start = inf there; times and spans in frames) -> context ids [B, F, WIDTH] (the phone at the frame in
    the middle, NONE everywhere outside words, BOUNDARY for neighbours outside the word) and the frame's
    fraction into its phone [B, F] (0 outside words)."""
    c = phones.shape[1]
    if c == 0:
        return torch.zeros((*times.shape, WIDTH), dtype=torch.long), torch.zeros(times.shape)
    idx = (torch.searchsorted(start.contiguous(), times.contiguous(), right=True) - 1).clamp(min=0)
    at_start, at_end = start.gather(1, idx), end.gather(1, idx)
    inside = (times >= at_start) & (times < at_end) & (phones.gather(1, idx) != NONE)
    at_word = word.gather(1, idx)
    ids = []
    for offset in range(-CONTEXT, CONTEXT + 1):
        j = (idx + offset).clamp(0, c - 1)
        same = (idx + offset >= 0) & (idx + offset < c) & (word.gather(1, j) == at_word)
        neighbour = torch.where(same, phones.gather(1, j), torch.full_like(j, BOUNDARY))
        ids.append(torch.where(inside, neighbour, torch.full_like(j, NONE)))
    frac = torch.where(inside, (times - at_start) / (at_end - at_start).clamp(min=1e-6), 0.0)
    return torch.stack(ids, dim=-1), frac.float()


def word_spans(words: list[tuple[float, float, tuple[int, ...]]]) -> tuple[torch.Tensor, ...]:
    """(start, end, phones) per word (frames, sorted, not overlapping) -> span tensors [1, C] for
    `frame_condition`: each word's phones spread evenly over the word."""
    phones, word, start, end = [], [], [], []
    for w, (s, e, ps) in enumerate(words):
        n = len(ps)
        for i, ph in enumerate(ps):
            phones.append(ph)
            word.append(w)
            start.append(s + (e - s) * i / n)
            end.append(s + (e - s) * (i + 1) / n)
    return (
        torch.tensor([phones], dtype=torch.long).view(1, -1),
        torch.tensor([word], dtype=torch.long).view(1, -1),
        torch.tensor([start], dtype=torch.float64).view(1, -1),
        torch.tensor([end], dtype=torch.float64).view(1, -1),
    )


@dataclass
class SpeechSchedule:
    """One session's phones still to be said: span starts and ends in frames from the start of the next
    window. `add` schedules the tokens emitted for that window, `condition` reads its frames,
    `advance` moves one window on; `clear` forgets everything (the model stopped or was interrupted)."""

    phones: list[int] = field(default_factory=list)
    word: list[int] = field(default_factory=list)
    start: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)
    next_word: int = 0
    talking: bool = False  # whether the session spoke in the window `say` was last given

    def copy(self) -> SpeechSchedule:
        return SpeechSchedule(
            list(self.phones), list(self.word), list(self.start), list(self.end), self.next_word, self.talking
        )

    def say(
        self,
        tokens: list[int],
        speaking: bool,
        token_phones: TokenPhones | None,
        rates: tuple[float, float, float],
        window: int,
    ) -> None:
        """The next window (`window` frames): its tokens are scheduled while speaking; silence (the model
        stopped or was interrupted) drops what was not said yet."""
        self.talking = speaking
        if not speaking:
            self.clear()
        elif token_phones is not None:
            self.add(tokens, token_phones, rates, window)

    def add(
        self, tokens: list[int], token_phones: TokenPhones, rates: tuple[float, float, float], window: int
    ) -> None:
        """Tokens (pads skipped) in order. A word takes word + n * phone frames and starts a gap after the
        previous one (at the window's start when nothing is playing); a token continuing a word adds phone
        frames per phone right after it. `rates` = (word, phone, gap) frames. The text head emits a word
        for the window it starts in, so a word that would start after this window means the schedule runs
        behind the model: what is still to play is squeezed to make room, and the lag never grows past a
        window (else the backlog the gate then cuts off grows with every slow word)."""
        word_frames, phone_frames, gap_frames = rates
        for token in tokens:
            ps = token_phones.phones[token] if 0 < token < len(token_phones.phones) else ()
            if not ps:
                continue
            if not self.phones:
                begin, per_phone, w = 0.0, phone_frames + word_frames / len(ps), None
            elif token_phones.word_start[token]:
                if self.end[-1] + gap_frames >= window:  # starts after this window: late, catch up
                    self._squeeze(window - 1.0 - gap_frames)
                begin, per_phone, w = self.end[-1] + gap_frames, phone_frames + word_frames / len(ps), None
            else:
                begin, per_phone, w = self.end[-1], phone_frames, self.word[-1]
            if w is None:
                w, self.next_word = self.next_word, self.next_word + 1
            for i, ph in enumerate(ps):
                self.phones.append(ph)
                self.word.append(w)
                self.start.append(begin + i * per_phone)
                self.end.append(begin + (i + 1) * per_phone)

    def _squeeze(self, until: float) -> None:
        """Map the part still to play, frames [0, end], linearly onto [0, until] (said parts stay)."""
        scale = until / self.end[-1]
        self.start = [t * scale if t > 0 else t for t in self.start]
        self.end = [t * scale if t > 0 else t for t in self.end]

    def advance(self, frames: int) -> None:
        """Move `frames` on: words said in full are dropped; a word still playing keeps its said phones
        (they are its later phones' context)."""
        playing = {w for w, e in zip(self.word, self.end, strict=True) if e > frames}
        keep = [i for i, w in enumerate(self.word) if w in playing]
        self.phones = [self.phones[i] for i in keep]
        self.word = [self.word[i] for i in keep]
        self.start = [self.start[i] - frames for i in keep]
        self.end = [self.end[i] - frames for i in keep]

    def clear(self) -> None:
        self.phones, self.word, self.start, self.end = [], [], [], []


def schedule_condition(schedules: list[SpeechSchedule], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The next window's per-frame condition for several sessions (frame_condition's outputs, B rows)."""
    c = max((len(s.phones) for s in schedules), default=0)
    b = len(schedules)
    phones = torch.zeros(b, c, dtype=torch.long)
    word = torch.full((b, c), -1, dtype=torch.long)
    start = torch.full((b, c), float("inf"), dtype=torch.float64)
    end = torch.full((b, c), float("inf"), dtype=torch.float64)
    for r, s in enumerate(schedules):
        n = len(s.phones)
        phones[r, :n] = torch.tensor(s.phones, dtype=torch.long)
        word[r, :n] = torch.tensor(s.word, dtype=torch.long)
        start[r, :n] = torch.tensor(s.start, dtype=torch.float64)
        end[r, :n] = torch.tensor(s.end, dtype=torch.float64)
    times = (torch.arange(frames, dtype=torch.float64) + 0.5).expand(b, frames)
    return frame_condition(phones, word, start, end, times)
