"""The engine: every live session advanced together, one batched model step per micro-turn, in real time.

The engine keeps one batched state for all live sessions (model KV caches, the voice's state, output
resampler and the mel front end's history), one row per session in `self.sessions` order. Sessions join
and leave between micro-turns: rows are appended (`concat`) or dropped (`select`) there and nowhere else.

Each micro-turn (`step_once`): every session's chunk is cut on its clock (gaps filled), the batch's log-mel
and dMel computed, one `model.step` (the word voice says the emitted words inside it; with the mel voice
one batched vocoder call follows, 16 kHz) and one batched resampler call (24 kHz); then each session turns
its row into a `MicroTurnOutput` and its callback runs.

`start()` runs `step_once` on a thread against a monotonic deadline schedule: step k is due at
t0 + k * 200 ms. A step that overruns does not shift the schedule: the missed deadlines are skipped (and
counted), so the clock never drifts and sessions never fall further behind real time than one step.

Batch invariance: with `EngineConfig.batch_invariant` each session's row is stepped on its own (batch 1),
which makes a session's output bitwise independent of who else is batched; see docs/runtime.md for what the
batched default guarantees and what the mode costs.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from microturn import audio
from microturn.data.tts import TtsCache
from microturn.model.config import FLOOR_STATES
from microturn.model.interaction import SILENT_LOG_MEL, InteractionModel
from microturn.model.streaming import StepInputs, StepOutput, StreamState
from microturn.model.tokenizer import TextTokenizer
from microturn.runtime import VOICES
from microturn.runtime.resample import ResamplerState, StreamingResampler
from microturn.runtime.session import MicroTurnOutput, Session, TurnInputs
from microturn.runtime.vocoder import Vocoder, VocoderState
from microturn.runtime.word_voice import WordVoice, WordVoiceState

OUTPUT_RATE = 24_000


@dataclass
class EngineConfig:
    max_sessions: int = 256
    input_backlog_ms: int = 400  # input latency bound: older backlog is dropped (see runtime/input.py)
    batch_invariant: bool = False  # step each session alone: bitwise independent of the batch, slower
    threads: int = 1  # torch intra-op threads of the stepping thread for batches below `large_batch`
    large_batch: int = 32  # from this many live sessions the step uses `large_batch_threads`
    # (capped at the CPU count). A large batch is bound by reading the KV rings and by its matmuls, which
    # split over cores: on this 2-core machine at load 1 to 2, 2 threads took 64 sessions from 78 to 54 ms
    # (p99). Off (1) by default: when other processes hold the cores, 2 threads stalled for seconds per
    # step (BENCHMARKS.md); set 2 on a machine dedicated to the engine.
    large_batch_threads: int = 1
    # at most one video frame per this many ms per session: 200 = one per micro-turn, as training passes
    # them (train/dataset.py renders micro-turn t's frame at data.video.frame_time(t))
    video_interval_ms: int = 200
    step_history: int = 3000  # step times kept for statistics
    # Euler steps of the flow-matching mel head; None = the checkpoint's `flow_steps`. Fewer are cheaper
    # when speaking (3 instead of the small config's 4: see BENCHMARKS.md for how close the mel stays).
    flow_steps: int | None = None
    # what says the model's words: "words" the corpus voice's unit per emitted word (runtime/word_voice.py:
    # intelligible), "mel" the learned mel head and the vocoder (BENCHMARKS.md has both voices' WER)
    voice: str = "words"
    # where the word voice keeps its units (None: data.tts's cache folder, which corpus rendering fills)
    voice_cache: str | None = None


@dataclass
class EngineStats:
    steps: int = 0
    overruns: int = 0  # steps that finished after the next deadline
    skipped: int = 0  # deadlines skipped because of overruns
    step_ms: deque = field(default_factory=lambda: deque(maxlen=3000))  # wall time of recent steps
    batch: deque = field(default_factory=lambda: deque(maxlen=3000))  # sessions in those steps


@dataclass
class BatchState:
    """Everything per session that the batched step carries from one micro-turn to the next. The step
    updates these tensors in place, so that a row view (`row`) can be stepped on its own."""

    model: StreamState
    vocoder: VocoderState
    resampler: ResamplerState
    mel_history: torch.Tensor  # [B, audio.MEL_CONTEXT] the last input samples (causal log-mel context)
    quiet_turns: torch.Tensor  # [B] long: micro-turns since the session last spoke
    voice: list[WordVoiceState]  # per session: the word voice's queue (unused with the mel voice)

    def select(self, rows: list[int]) -> BatchState:
        voc = self.vocoder.split()
        return BatchState(
            self.model.select(rows),
            VocoderState.cat([voc[r] for r in rows]),
            self.resampler.rows(rows),
            self.mel_history[rows],
            self.quiet_turns[rows],
            [self.voice[r].copy() for r in rows],
        )

    @staticmethod
    def concat(parts: list[BatchState]) -> BatchState:
        return BatchState(
            StreamState.concat([p.model for p in parts]),
            VocoderState.cat([p.vocoder for p in parts]),
            ResamplerState.cat([p.resampler for p in parts]),
            torch.cat([p.mel_history for p in parts]),
            torch.cat([p.quiet_turns for p in parts]),
            [v.copy() for p in parts for v in p.voice],
        )

    def row(self, r: int) -> BatchState:
        """Views of row r: stepping them updates the batched tensors in place (batch-invariant mode)."""
        m, one = self.model, slice(r, r + 1)
        model = StreamState(
            [k[one] for k in m.keys],
            [v[one] for v in m.values],
            m.slot_pos[one],
            m.turn[one],
            m.seeds[one],
            m.out_token[one],
            m.speech[one],  # the same schedule and pointer objects: stepping the row updates them
            m.copy[one],
            m.heard[one],
            m.last_frame[one],
            m.has_frame[one],
            m.recent_start_probs[one],
        )
        voc = VocoderState([c[one] for c in self.vocoder.conv_inputs], self.vocoder.ola_tail[one])
        resampler = ResamplerState(
            self.resampler.history[one], self.resampler.consumed, self.resampler.emitted
        )
        return BatchState(
            model, voc, resampler, self.mel_history[one], self.quiet_turns[one], self.voice[one]
        )


class Engine:
    def __init__(
        self, config: EngineConfig, model: InteractionModel, tokenizer: TextTokenizer, vocoder: Vocoder
    ):
        self.config = config
        self.model = model.eval()
        self.model.attach_tokenizer(tokenizer)  # the speech schedule reads each emitted token's phones
        self.vocoder = vocoder.eval()
        self.tokenizer = tokenizer
        cfg = model.cfg
        self.turn_s = cfg.micro_turn_ms / 1000.0
        self.chunk_samples = audio.SAMPLE_RATE * cfg.micro_turn_ms // 1000
        if cfg.frames * audio.HOP != self.chunk_samples:
            raise ValueError(f"model micro-turn {cfg.micro_turn_ms} ms is not a whole number of mel frames")
        self.upsampler = StreamingResampler(audio.SAMPLE_RATE, OUTPUT_RATE)
        if config.voice not in VOICES:
            raise ValueError(f"EngineConfig.voice must be one of {', '.join(VOICES)}, got {config.voice!r}")
        cache = TtsCache(config.voice_cache) if config.voice_cache else None
        self.word_voice = WordVoice(tokenizer, self.chunk_samples, cache) if config.voice == "words" else None
        if self.word_voice is not None:
            self.word_voice.warm_up()
        self.quiet_turns_needed, self.silence_16k, self.silence_24k = self._silence()
        self.sessions: list[Session] = []
        self.state: BatchState | None = None
        self.stats = EngineStats(
            step_ms=deque(maxlen=config.step_history), batch=deque(maxlen=config.step_history)
        )
        self._joining: list[Session] = []
        self._leaving: set[Session] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: Exception | None = None  # what stopped the real-time thread, if anything

    # ---- sessions ----
    def open_session(
        self, on_output: Callable[[MicroTurnOutput], None] | None = None, seed: int | None = None
    ) -> Session:
        """A new session; it joins the batch at the next micro-turn. `seed` fixes its sampling noise."""
        with self._lock:
            if len(self.sessions) + len(self._joining) - len(self._leaving) >= self.config.max_sessions:
                raise RuntimeError(
                    f"engine is full: {self.config.max_sessions} sessions (EngineConfig.max_sessions)"
                )
            session = Session(
                self.tokenizer,
                self.chunk_samples,
                self.config.input_backlog_ms * audio.SAMPLE_RATE // 1000,
                self.model.cfg.video_size,
                max(1, round(self.config.video_interval_ms / self.model.cfg.micro_turn_ms)),
                on_output=on_output,
                seed=seed,
            )
            self._joining.append(session)
            return session

    def close_session(self, session: Session) -> None:
        """The session leaves at the next micro-turn and its state is freed."""
        with self._lock:
            session.closed = True
            if session in self._joining:
                self._joining.remove(session)
            elif session in self.sessions:
                self._leaving.add(session)

    def _silence(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """After `needed` silent micro-turns a session's vocoder state is the silence fixed point (every
        conv context and the overlap-add tail hold silence only), and each further silent micro-turn gives
        exactly `silence_16k` (and, one micro-turn later, `silence_24k` from the resampler): the step skips
        the vocoder, then the resampler, for such sessions. The word voice's silence is zeros at once."""
        c = self.vocoder.config
        frames = self.model.cfg.frames
        if self.word_voice is not None:  # silence in, silence out: the resampler of zeros gives zeros
            return (
                0,
                torch.zeros(self.chunk_samples),
                torch.zeros(self.chunk_samples * OUTPUT_RATE // audio.SAMPLE_RATE),
            )
        # the last conv's context and the overlap-add tail (n_fft // hop - 1 frames) hold silence once
        # receptive_field + n_fft // hop - 1 silent frames went in (2 micro-turns with the shipped vocoder)
        needed = -(-(c.receptive_field + c.n_fft // c.hop - 1) // frames)
        silent = torch.full((1, frames, self.model.cfg.n_mels), SILENT_LOG_MEL)
        vocoder, resampler = self.vocoder.new_state(1), self.upsampler.new_state(1)
        with torch.inference_mode():
            for _ in range(needed + 2):
                wave_16k, vocoder = self.vocoder.synthesize(silent, vocoder)
                wave_24k, resampler = self.upsampler.process(resampler, wave_16k)
        return needed, wave_16k[0], wave_24k[0]

    def _fresh_state(self, sessions: list[Session]) -> BatchState:
        n = len(sessions)
        consumed, emitted = (
            (0, 0) if self.state is None else (self.state.resampler.consumed, self.state.resampler.emitted)
        )
        return BatchState(
            self.model.new_state(n, seeds=[s.seed for s in sessions]),
            self.vocoder.new_state(n),
            # a joining stream continues from the batch's position, as if it had been silent until now
            ResamplerState(torch.zeros(n, self.upsampler.context), consumed, emitted),
            torch.zeros(n, audio.MEL_CONTEXT),
            torch.zeros(n, dtype=torch.long),
            [WordVoiceState() for _ in range(n)],
        )

    def _apply_membership(self) -> None:
        with self._lock:
            leaving, joining = self._leaving, self._joining
            self._leaving, self._joining = set(), []
        if leaving:
            keep = [i for i, s in enumerate(self.sessions) if s not in leaving]
            self.sessions = [self.sessions[i] for i in keep]
            self.state = self.state.select(keep) if keep else None
        if joining:
            fresh = self._fresh_state(joining)
            self.state = fresh if self.state is None else BatchState.concat([self.state, fresh])
            self.sessions += joining

    # ---- one micro-turn ----
    def _step_rows(
        self, state: BatchState, inputs: list[TurnInputs]
    ) -> tuple[StepOutput, torch.Tensor, torch.Tensor]:
        """The batched computation for the sessions of `state`, whose tensors it updates in place."""
        cfg = self.model.cfg
        samples = torch.from_numpy(np.stack([i.samples for i in inputs]))
        mel = audio.log_mel(samples, state.mel_history)
        state.mel_history.copy_(torch.cat([state.mel_history, samples], dim=1)[:, -audio.MEL_CONTEXT :])
        videos = [i.video for i in inputs]
        present = torch.tensor([v is not None for v in videos])
        video = None
        if bool(present.any()):
            blank = torch.zeros(3, cfg.video_size, cfg.video_size)
            video = torch.stack([blank if v is None else v for v in videos])
        step_inputs = StepInputs(
            user_dmel=audio.dmel(mel, cfg.dmel_bins),
            bg_token=torch.tensor([i.bg_token for i in inputs]),
            typed_token=torch.tensor([i.typed_token for i in inputs]),
            gap=torch.tensor([i.gap for i in inputs]),
            video=video,
            video_present=present if video is not None else None,
            speaking_override=torch.tensor([i.speaking_override for i in inputs]),
            heard=[i.heard for i in inputs] if any(i.heard is not None for i in inputs) else None,
        )
        said: list[torch.Tensor] = []  # the word voice's samples, kept by `voice` for the output below

        def voice(text: torch.Tensor, speaking: torch.Tensor) -> torch.Tensor:
            wave, mel = self.word_voice.say(state.voice, text, speaking)
            said.append(wave)
            return mel

        out = self.model.step(
            state.model,
            step_inputs,
            flow_steps=self.config.flow_steps,
            voice=voice if self.word_voice is not None else None,
        )
        quiet = state.quiet_turns.clone()  # silent micro-turns before this one
        state.quiet_turns.copy_(torch.where(out.speaking, 0, quiet + 1))
        speaking, needed = out.speaking, self.quiet_turns_needed
        if self.word_voice is not None:
            wave_16k = said[0]
        else:
            wave_16k = self._vocode(state, out.mel, (speaking | (quiet < needed)).nonzero()[:, 0])
        wave_24k = self._upsample(state, wave_16k, (speaking | (quiet < needed + 1)).nonzero()[:, 0])
        return out, wave_16k, wave_24k

    def _vocode(self, state: BatchState, mel: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """16 kHz audio for the step's mel frames, running the vocoder for `rows` only (the others are at
        the silence fixed point)."""
        wave = self.silence_16k.expand(len(mel), -1).clone()
        if len(rows) == 0:
            return wave
        voc, every = state.vocoder, len(rows) == len(mel)
        part = voc if every else VocoderState([c[rows] for c in voc.conv_inputs], voc.ola_tail[rows])
        samples, new = self.vocoder.synthesize(mel if every else mel[rows], part)
        _write_rows([*voc.conv_inputs, voc.ola_tail], [*new.conv_inputs, new.ola_tail], rows, every)
        if every:
            return samples
        wave[rows] = samples
        return wave

    def _upsample(self, state: BatchState, wave_16k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """24 kHz audio, running the resampler for `rows` only (the others are in steady silence)."""
        wave = self.silence_24k.expand(len(wave_16k), -1).clone()
        res, every = state.resampler, len(rows) == len(wave_16k)
        if len(rows):
            part = res if every else ResamplerState(res.history[rows], res.consumed, res.emitted)
            samples, new = self.upsampler.process(part, wave_16k if every else wave_16k[rows])
            _write_rows([res.history], [new.history], rows, every)
            wave = samples if every else wave.index_copy_(0, rows, samples)
        # every stream advances together, whether it ran or was in steady silence
        res.consumed += wave_16k.shape[1]
        res.emitted += wave.shape[1]
        return wave

    @torch.inference_mode()
    def step_once(self) -> dict[Session, MicroTurnOutput]:
        """Advance every live session by one micro-turn; returns (and calls back with) their outputs."""
        started = time.perf_counter()
        self._apply_membership()
        if not self.sessions:
            return {}
        state, sessions = self.state, self.sessions
        self._use_threads(len(sessions))
        inputs = [s.take_inputs() for s in sessions]
        if self.config.batch_invariant:
            results = [self._step_rows(state.row(r), [inputs[r]]) for r in range(len(sessions))]
            state.resampler.consumed += self.chunk_samples  # the row views advanced their own copies
            state.resampler.emitted += self.chunk_samples * OUTPUT_RATE // audio.SAMPLE_RATE
            out = _cat_outputs([o for o, _, _ in results])
            wave_16k = torch.cat([w for _, w, _ in results])
            wave_24k = torch.cat([w for _, _, w in results])
        else:
            out, wave_16k, wave_24k = self._step_rows(state, inputs)

        wants = out.wants.tolist()
        speaking = out.speaking.tolist()
        text = out.text.tolist()
        floor = out.floor_probs.tolist()
        w16, w24 = wave_16k.numpy(), wave_24k.numpy()
        outputs = {}
        for r, session in enumerate(sessions):
            outputs[session] = session.finish_turn(
                w16[r].copy(),
                w24[r].copy(),
                text[r],
                speaking[r],
                wants[r],
                dict(zip(FLOOR_STATES, floor[r], strict=True)),
                inputs[r].gap,
            )
        self.stats.steps += 1
        self.stats.step_ms.append((time.perf_counter() - started) * 1000.0)
        self.stats.batch.append(len(sessions))
        for session, output in outputs.items():
            if session.on_output is not None and not session.closed:
                try:
                    session.on_output(output)
                except Exception as exc:  # one client's failure must not stop every other session
                    print(
                        f"microturn engine: session {session.id}'s callback failed ({exc!r}); closing it",
                        file=sys.stderr,
                    )
                    self.close_session(session)
        return outputs

    def _use_threads(self, batch: int) -> None:
        """Torch intra-op threads for a batch of this size (set on the stepping thread, only on a change)."""
        config = self.config
        threads = config.threads
        if batch >= config.large_batch and not config.batch_invariant:
            threads = max(threads, min(config.large_batch_threads, os.cpu_count() or 1))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    # ---- real time ----
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Run micro-turns on a thread, one every 200 ms of monotonic time, until `stop()`."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._stop.clear()
        self.error = None
        self._thread = threading.Thread(target=self._run, name="microturn-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; re-raises the error that stopped it, if one did."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self.error is not None:
            raise RuntimeError(f"the engine thread stopped on an error: {self.error!r}") from self.error

    def _run(self) -> None:
        deadline = time.monotonic() + self.turn_s
        while not self._stop.is_set():
            wait = deadline - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            try:
                self.step_once()
            except Exception as exc:  # kept for stop() to raise; `running` turns False
                self.error = exc
                return
            deadline += self.turn_s
            late = time.monotonic() - deadline
            if late > 0:  # overran the next deadline: skip the deadlines already missed
                missed = int(late // self.turn_s) + 1
                self.stats.overruns += 1
                self.stats.skipped += missed
                deadline += missed * self.turn_s


def _write_rows(
    targets: list[torch.Tensor], values: list[torch.Tensor], rows: torch.Tensor, every: bool
) -> None:
    """State update in place: all rows, or the `rows` that were computed."""
    for target, value in zip(targets, values, strict=True):
        if every:
            target.copy_(value)
        else:
            target[rows] = value


def _cat_outputs(outputs: list[StepOutput]) -> StepOutput:
    fields = {name: [getattr(o, name) for o in outputs] for name in vars(outputs[0])}
    return StepOutput(
        **{name: None if parts[0] is None else torch.cat(parts) for name, parts in fields.items()}
    )
