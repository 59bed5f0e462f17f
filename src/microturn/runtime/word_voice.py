"""The word voice: the model's words said with the units the corpus's assistant track is made of.

The model decides what to say and when: its text head emits each word in the micro-turn the word starts
in, and its gate says, every 200 ms, whether it is speaking. This voice says each emitted word with the
corpus voice's own unit for it (piper, one trimmed unit per word, `data.tts`), after the previous word and
the corpus's gap between them, and drops what is left the micro-turn the model stops speaking (a yield or
an interruption cuts the word off, as the mel head's schedule does).

Why it exists beside the learned mel head: on this CPU's training budget the mel head's speech stays hard
to follow (Whisper tiny.en WER about 0.50 on held-out crops, BENCHMARKS.md), while these units are what
the model was trained to hear itself say. The model's out token embeds the log-mel of exactly the audio
played, as in training, where the assistant track is these units. Units are synthesised on first use
(about 0.1 s a word on this CPU) and kept on disk and in memory, so a real-time session pays for a word
once; `EngineConfig.voice = "mel"` selects the learned head and vocoder instead.
"""

from __future__ import annotations

import threading
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from microturn import audio
from microturn.data.tts import TtsCache
from microturn.data.voices import ASSISTANT_VOICE, Voice
from microturn.model.interaction import SILENT_LOG_MEL, emitted_log_mel
from microturn.model.tokenizer import PAD, TextTokenizer

# the silence the corpus puts after a word (data.synth: word gaps 20-90 ms, after a comma 80-220 ms, at a
# clause end 150-280 ms), at its mean: longer pauses are the model's to make by emitting the word later
_GAP_S = {",": 0.15, ".": 0.215, "?": 0.215, "!": 0.215}
_WORD_GAP_S = 0.055


def _sayable(text: str) -> str:
    """`text` without control characters (byte-level pieces can decode to any byte; espeak-ng refuses a
    NUL); empty when nothing in it is a letter or digit (the voice would say nothing)."""
    text = "".join(c for c in text if not unicodedata.category(c).startswith("C"))
    return text if any(c.isalnum() for c in text) else ""


@dataclass
class WordVoiceState:
    """One session's voice: the samples still to play, from the start of the next window; the last played
    samples (the causal log-mel's context); and the word said last (its text, its unit's length and how
    much of it is still queued, at the queue's end), which a piece emitted in a later window continues."""

    queue: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    history: np.ndarray = field(default_factory=lambda: np.zeros(audio.MEL_CONTEXT, np.float32))
    last_text: str = ""
    last_len: int = 0
    last_left: int = 0

    def copy(self) -> WordVoiceState:
        return WordVoiceState(
            self.queue.copy(), self.history.copy(), self.last_text, self.last_len, self.last_left
        )


class WordVoice:
    """Says the words a batch of sessions emitted in one micro-turn (`say`), `window` samples each."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        window: int,
        cache: TtsCache | None = None,
        voice: Voice = ASSISTANT_VOICE,
    ):
        self.tokenizer, self.window, self.voice = tokenizer, window, voice
        self.cache = cache if cache is not None else TtsCache()
        self.unit = lru_cache(maxsize=4096)(self._unit)
        # espeak-ng (piper's phonemiser) keeps global state: one synthesis at a time across threads
        self._synthesis = threading.Lock()
        self._prefetching: threading.Thread | None = None
        self._stop_prefetch = threading.Event()

    def warm_up(self) -> None:
        """Load the synthesiser before the first micro-turn (a real-time step cannot wait seconds)."""
        self.cache.warm_up(self.voice)

    def prefetch(self, words: int = 1200) -> threading.Thread:
        """Synthesise the units of the tokenizer's first `words` whole-word tokens (its most frequent
        words, by merge order) on a background thread, so a live session rarely waits for a unit: about
        0.1 s each on this CPU the first time, a file read after. `close()` stops it."""
        tokenizer = self.tokenizer
        ids = [i for i in range(tokenizer.vocab_size) if tokenizer.is_word_start(i)]
        texts = [w for w in (_sayable(tokenizer.decode([i])) for i in ids) if w][:words]

        def run() -> None:
            for text in texts:
                if self._stop_prefetch.is_set():
                    return
                self.unit(text)

        self._stop_prefetch.clear()
        thread = threading.Thread(target=run, name="microturn-voice-prefetch", daemon=True)
        thread.start()
        self._prefetching = thread
        return thread

    def close(self) -> None:
        """Stop a prefetch between two units and wait for it: a thread still inside the synthesiser when
        the interpreter exits aborts the process."""
        self._stop_prefetch.set()
        if self._prefetching is not None:
            self._prefetching.join()
            self._prefetching = None

    def _unit(self, text: str) -> np.ndarray:
        with self._synthesis:
            return self.cache.unit(self.voice, text)

    def words(self, tokens: list[int]) -> list[tuple[str, bool]]:
        """One micro-turn's tokens -> its words as (text, continues): a word starts at a space-marked
        token; a first token without the mark continues the word of an earlier micro-turn (the text head
        has 3 slots a micro-turn, and may also pause inside a word: "sh ir" then "t")."""
        groups: list[list[int]] = []
        for token in tokens:
            if token == PAD:
                continue
            if not groups or self.tokenizer.is_word_start(token):
                groups.append([])
            groups[-1].append(token)
        return [
            (self.tokenizer.decode(g), i == 0 and not self.tokenizer.is_word_start(g[0]))
            for i, g in enumerate(groups)
        ]

    def speak(self, state: WordVoiceState, tokens: list[int], speaking: bool) -> np.ndarray:
        """The next window's samples for one session. A word starts at the window's start when nothing is
        playing, else after what is queued and the corpus's gap; when earlier words already play past this
        window (the model emits faster than the units last) the gaps are skipped so the lag stops growing.
        A piece continuing the last word replaces it: the whole word's unit goes on from as far as the
        last one had played, so "shir" + "t" is heard as "shirt", not as two words."""
        if not speaking:
            state.queue, state.last_text = np.zeros(0, np.float32), ""
            return np.zeros(self.window, np.float32)
        queue = state.queue
        behind = len(queue) >= self.window
        for piece, continues in self.words(tokens):
            if continues and state.last_text:
                text = _sayable(state.last_text + piece)
                unit = self.unit(text)
                said = state.last_len - state.last_left
                queue = np.concatenate([queue[: len(queue) - state.last_left], unit[said:]])
            else:
                text = _sayable(piece)
                if not text:
                    continue
                unit = self.unit(text)
                if len(queue) and not behind:
                    gap = _GAP_S.get(state.last_text[-1:], _WORD_GAP_S)
                    queue = np.concatenate([queue, np.zeros(round(gap * audio.SAMPLE_RATE), np.float32)])
                queue = np.concatenate([queue, unit])
                said = 0
            state.last_text, state.last_len, state.last_left = text, len(unit), len(unit) - said
        played = np.zeros(self.window, np.float32)
        played[: min(len(queue), self.window)] = queue[: self.window]
        state.queue = queue[self.window :]
        state.last_left = min(state.last_left, len(state.queue))
        return played

    def say(
        self, states: list[WordVoiceState], text: torch.Tensor, speaking: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every session's next window: samples [B, window] and the log-mel the model hears itself say
        [B, frames, n_mels] (the log floor when silent, as `emitted_log_mel` gives training)."""
        rows = [
            self.speak(state, tokens, talking)
            for state, tokens, talking in zip(states, text.tolist(), speaking.tolist(), strict=True)
        ]
        wave = torch.from_numpy(np.stack(rows))
        frames = self.window // audio.HOP
        mel = torch.full((len(states), frames, audio.N_MELS), SILENT_LOG_MEL)
        talking = speaking.nonzero()[:, 0].tolist()  # silent rows hear the log floor: no log-mel to compute
        if talking:
            history = torch.from_numpy(np.stack([states[r].history for r in talking]))
            said = audio.log_mel(wave[talking], history)
            mel[talking] = emitted_log_mel(audio.normalise_log_mel(said).clamp(-1.0, 1.0), speaking[talking])
        for state, row in zip(states, rows, strict=True):
            state.history = np.concatenate([state.history, row])[-audio.MEL_CONTEXT :]
        return wave, mel
