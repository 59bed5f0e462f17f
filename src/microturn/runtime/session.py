"""One streaming session: what a client pushes in, and what the engine reads from it each micro-turn.

A session owns its input alignment (audio chunks on its own clock, queued text streams, the latest video
frame), the client's speech controls, and the words it has said. Its model, vocoder and resampler state
live as one row of the engine's batched state (see `engine.py`), so the session object itself stays small.
Every method a client calls is thread-safe: the engine thread reads the session between micro-turns.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from microturn.model.layers import resize_video
from microturn.model.queues import TokenQueue
from microturn.model.tokenizer import PAD, TextTokenizer
from microturn.runtime.input import NO_TOKEN, AudioInput

# The runtime's floor states (what a client is told), derived from the model's decision and floor head.
FLOORS = ("listening", "speaking", "backchannel", "yielding")
_session_ids = itertools.count(1)
TRANSCRIPT_WORDS = 2048  # words a session remembers for `truncate` (memory stays flat in long sessions)


@dataclass
class MicroTurnOutput:
    """What one session produced in one micro-turn. Audio plays during [start, start + 0.2 s) of session
    time, where start = (index + 1) * 0.2 s: the step for micro-turn `index` runs once its input is in."""

    index: int
    start: float  # session seconds at which this audio is due to play
    audio_16k: np.ndarray  # float32 [3200]
    audio_24k: np.ndarray  # float32 [4800]
    words: list[dict] = field(default_factory=list)  # {"text", "start", "end"} in session seconds
    floor: str = "listening"  # one of FLOORS
    speaking: bool = False  # the model's speaking decision for this micro-turn
    user_speaking: bool = False  # the model's own perception of the user (its floor head)
    gap_filled: bool = False  # input was missing and filled with silence


@dataclass
class TurnInputs:
    """One session's inputs for one micro-turn, read by the engine."""

    samples: np.ndarray  # float32 [3200] at 16 kHz
    gap: bool
    bg_token: int
    typed_token: int
    video: torch.Tensor | None  # [3, S, S] float in [0, 1]
    speaking_override: int  # -1 model decides, 0 force silence, 1 force speech
    heard: list[int] | None = None  # the user's words a transcriber heard (token ids), None: none pushed


class WordAssembler:
    """Text tokens -> words with times. Every word starts with a space-marked token; a word is complete when
    the next one starts or when the model stops speaking: a micro-turn that leaves a slot empty may still
    be followed by the rest of its last word (the text head pauses inside words: "sh ir", then "t"), which
    the word voice says as one word too. Words starting in the same window share it evenly."""

    def __init__(self, tokenizer: TextTokenizer, turn_s: float):
        self.tokenizer, self.turn_s = tokenizer, turn_s
        self.tokens: list[int] = []
        self.start = 0.0
        self.end = 0.0

    def _flush(self, end: float) -> list[dict]:
        if not self.tokens:
            return []
        text = self.tokenizer.decode(self.tokens)
        self.tokens = []
        return (
            [{"text": text, "start": round(self.start, 4), "end": round(max(end, self.start), 4)}]
            if text
            else []
        )

    def push(self, tokens: list[int], speaking: bool, window_start: float) -> list[dict]:
        """Tokens emitted for the window [window_start, window_start + turn_s); returns finished words."""
        window_end = window_start + self.turn_s
        if not speaking:
            return self._flush(self.end)
        real = [t for t in tokens if t != PAD]
        starts = [
            i for i, t in enumerate(real) if self.tokenizer.is_word_start(t) or (i == 0 and not self.tokens)
        ]
        done: list[dict] = []
        for i, token in enumerate(real):
            if i in starts:
                onset = window_start + starts.index(i) * self.turn_s / len(starts)
                done += self._flush(onset)
                self.start = onset
            self.tokens.append(token)
        if real:
            self.end = window_end
        return done

    def finish(self) -> list[dict]:
        return self._flush(self.end)


class Session:
    """A client's handle. Create through `Engine.open_session`; all methods may be called from any thread."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        chunk_samples: int,
        max_backlog: int,
        video_size: int,
        video_interval_turns: int,
        on_output: Callable[[MicroTurnOutput], None] | None = None,
        seed: int | None = None,
    ):
        self.id = next(_session_ids)
        self.seed = self.id if seed is None else seed
        self.on_output = on_output
        self.tokenizer = tokenizer
        self.video_size = video_size
        self.video_interval_turns = video_interval_turns
        self.turn_s = chunk_samples / 16_000
        self.audio = AudioInput(chunk_samples, max_backlog)
        self.background = TokenQueue(per_turn=1)
        self._background_message: str | None = None  # the message the last background text belonged to
        self.typed = TokenQueue(per_turn=1)
        self.words = WordAssembler(tokenizer, self.turn_s)
        self.transcript: list[dict] = []  # recent words said; truncate edits it
        self.turn = 0  # micro-turns completed
        self.closed = False
        self._video: np.ndarray | None = None
        self._heard: list[int] | None = None
        self._last_video_turn: int | None = None
        self.last_video: np.ndarray | None = None  # the latest frame pushed (kept after the model took it)
        self.video_frames = 0  # frames pushed
        self.video_used = 0  # frames the model was given (at most one per video_interval_turns)
        self._force_speech = 0  # micro-turns of forced speech left (request_speech)
        self._hold_silence = False  # cancel_speech: silent until the model itself stops wanting to speak
        self._was_speaking = False
        # Called (engine thread, under the lock: keep it cheap) with (micro-turn, 16 kHz chunk) for every
        # chunk the model hears; the background model's conversation record keeps the user's audio this way.
        self.input_tap: Callable[[int, np.ndarray], None] | None = None
        self._lock = threading.Lock()

    # ---- client side ----
    def push_audio(self, pcm: np.ndarray, rate: int) -> None:
        """Any packet size; 8/16/24/48 kHz; float in [-1, 1] or int16."""
        with self._lock:
            self.audio.push(pcm, rate)

    def push_text(self, text: str) -> None:
        """Typed user text: enters the model one token per micro-turn."""
        ids = self.tokenizer.encode(text)
        with self._lock:
            self.typed.push(ids)

    def push_background(self, text: str, message: str | None = None) -> None:
        """Background-model text: enters the model one token per micro-turn. Pieces of one message (a
        background task's sentences, sharing `message`) continue it; anything else starts a new one, which
        supersedes what is still queued of the last (`model.queues`)."""
        with self._lock:
            continues = message is not None and message == self._background_message
            self._background_message = message
            if continues:
                self.background.push(self.tokenizer.encode(text))
            else:
                self.background.replace(self.tokenizer.encode_message(text))

    def push_heard(self, text: str) -> None:
        """The user's words as a transcriber heard them (Whisper on a speech segment): they feed the model's
        heard-words memory at the next micro-turn, and from then on only such words do."""
        ids = self.tokenizer.encode(text)
        with self._lock:
            self._heard = (self._heard or []) + ids

    def push_video(self, frame_rgb_uint8: np.ndarray) -> None:
        """An RGB frame [H, W, 3] uint8; the latest one is passed at most every `video_interval_turns`."""
        frame = np.asarray(frame_rgb_uint8)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"video frames must be RGB uint8 [height, width, 3], got {frame.dtype} {frame.shape}"
            )
        with self._lock:
            self._video = self.last_video = frame
            self.video_frames += 1

    def request_speech(self, turns: int = 1) -> None:
        """Open the speaking gate for the next `turns` micro-turns (a client's response.create)."""
        with self._lock:
            self._force_speech, self._hold_silence = max(1, turns), False

    def cancel_speech(self) -> None:
        """Stop speaking now and stay silent until the model no longer wants to speak (response.cancel)."""
        with self._lock:
            self._force_speech, self._hold_silence = 0, True

    def truncate(self, heard_until_s: float) -> list[dict]:
        """The client played our audio only up to `heard_until_s` (session seconds): forget the words that
        start later. Returns the words removed."""
        with self._lock:
            removed = [w for w in self.transcript if w["start"] >= heard_until_s]
            self.transcript = [w for w in self.transcript if w["start"] < heard_until_s]
            return removed

    # ---- engine side ----
    def _video_tensor(self) -> torch.Tensor | None:
        due = self._last_video_turn is None or self.turn - self._last_video_turn >= self.video_interval_turns
        if self._video is None or not due:
            return None
        frame = torch.from_numpy(self._video).permute(2, 0, 1)[None].float() / 255.0
        self._video, self._last_video_turn = None, self.turn
        self.video_used += 1
        return resize_video(frame, self.video_size)[0]

    def _take_heard(self) -> list[int] | None:
        heard, self._heard = self._heard, None
        return heard

    def take_inputs(self) -> TurnInputs:
        with self._lock:
            chunk = self.audio.next_chunk()
            if self.input_tap is not None:
                self.input_tap(self.turn, chunk.samples)
            override = -1
            if self._force_speech:
                override, self._force_speech = 1, self._force_speech - 1
            elif self._hold_silence:
                override = 0
            bg, typed = self.background.pop(), self.typed.pop()
            return TurnInputs(
                samples=chunk.samples,
                gap=chunk.gap,
                bg_token=bg[0] if bg else NO_TOKEN,
                typed_token=typed[0] if typed else NO_TOKEN,
                video=self._video_tensor(),
                speaking_override=override,
                heard=self._take_heard(),
            )

    def finish_turn(
        self,
        audio_16k: np.ndarray,
        audio_24k: np.ndarray,
        tokens: list[int],
        speaking: bool,
        wants_speech: bool,
        floor_probs: dict[str, float],
        gap: bool,
    ) -> MicroTurnOutput:
        """Turn one row of the batched step into this session's output, and advance its clock.
        `wants_speech`: the model's own gate decision, before any client override."""
        start = (self.turn + 1) * self.turn_s
        user_speaking = floor_probs.get("user", 0.0) + floor_probs.get("overlap", 0.0) > 0.5
        if speaking:
            backchannel = max(floor_probs, key=floor_probs.get) == "assistant_backchannel"
            floor = "backchannel" if backchannel else "speaking"
        else:
            floor = "yielding" if self._was_speaking and user_speaking else "listening"
        with self._lock:
            if self._hold_silence and not wants_speech:
                self._hold_silence = False
            words = self.words.push(tokens, speaking, start)
            self.transcript.extend(words)
            if len(self.transcript) > 2 * TRANSCRIPT_WORDS:
                self.transcript = self.transcript[-TRANSCRIPT_WORDS:]
        self._was_speaking = speaking
        out = MicroTurnOutput(
            index=self.turn,
            start=start,
            audio_16k=audio_16k,
            audio_24k=audio_24k,
            words=words,
            floor=floor,
            speaking=speaking,
            user_speaking=user_speaking,
            gap_filled=gap,
        )
        self.turn += 1
        return out
