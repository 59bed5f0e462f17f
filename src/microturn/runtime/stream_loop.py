"""The one streaming loop that every duplex system is measured through (simulate, eval fdbench).

The input is fed 200 ms at a time, with no look-ahead. Each step's compute is measured, and its output is
placed where a live listener would have heard it at the earliest (a playout queue):
    step t can start at      ready_t  = max((t + 1) * T, done_{t-1})   (its input is complete at (t+1) T)
    it is done at            done_t   = ready_t + compute_t
    its audio plays from     play_t   = max(play_{t-1} + T, done_t)
so slow steps delay the output (and it never overlaps itself) exactly as they would live. A step whose
floor is "yielding" clears the audio still queued after its done time, as a live client clears its playback
buffer when the system yields (otherwise a backlog from earlier slow steps would keep talking over the
user after the system had stopped). The output has
the input's length, sample 0 aligned with the input's sample 0; audio placed past the end is cut.

An optional `feedback` path (e.g. `data.effects.EchoPath`, the loudspeaker's echo) adds to each step's
input what the microphone picks up of the output already played while that input was recorded: step t
hears the input of [tT, (t+1)T) plus feedback(output[tT:(t+1)T]). Those output samples are final by then
(steps < t placed them; step t's own audio plays from done_t >= (t+1)T, and a later yield clears only
after its own done time), so the path is causal; the input the system heard is kept in `StreamRun.heard`.

A system with an `after_step(index, done_s, play_s)` method is called after each step, outside the
measured compute, with the step's done and play times: the offline background model runs there, on its
own measured clock (`background.offline`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from microturn.audio import SAMPLE_RATE, MicroTurn
from microturn.runtime.system import BackgroundText, DuplexSystem

DEFAULT_TURN = MicroTurn()


class Feedback(Protocol):
    """What the microphone picks up of the played output: fed each block as it plays, returns the pickup
    over the same samples (a causal filter with its own state)."""

    def process(self, played: np.ndarray) -> np.ndarray: ...


@dataclass
class StepRecord:
    index: int
    compute_ms: float
    done_s: float  # when the step could have finished live
    play_s: float  # when its audio starts in the output
    floor: str
    words: list[str]
    heard_until_s: float = math.inf  # a later yield cleared this step's audio from here on


@dataclass
class StreamRun:
    output: np.ndarray  # float32, 16 kHz, len(input) samples
    turn_s: float
    steps: list[StepRecord] = field(default_factory=list)
    heard: np.ndarray | None = None  # the input the system was fed, when a feedback path added to it

    @property
    def words(self) -> list[dict]:
        """The system's words with the times they play at: words that start in one step share it evenly.
        Words that never played (cleared by a yield, or placed past the end of the output) are left out."""
        out = []
        end_s = len(self.output) / SAMPLE_RATE
        for step in self.steps:
            n = len(step.words)
            for i, text in enumerate(step.words):
                start = step.play_s + i * self.turn_s / n
                if start >= min(step.heard_until_s, end_s):
                    continue
                out.append({"text": text, "start": round(start, 4), "end": round(start + self.turn_s / n, 4)})
        return out

    def compute_ms(self, q: float) -> float:
        return float(np.quantile([s.compute_ms for s in self.steps], q)) if self.steps else 0.0


def run_stream(
    system: DuplexSystem,
    samples: np.ndarray,
    background: list[BackgroundText] | None = None,
    turn: MicroTurn = DEFAULT_TURN,
    feedback: Feedback | None = None,
) -> StreamRun:
    """Stream 16 kHz `samples` through `system` micro-turn by micro-turn; see the module docstring."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1 or len(samples) == 0:
        raise ValueError(f"run_stream needs non-empty mono samples, got shape {samples.shape}")
    n, hop = len(samples), turn.samples
    turn_s = hop / SAMPLE_RATE
    output = np.zeros(n, dtype=np.float32)
    run = StreamRun(output, turn_s)
    if feedback is not None:
        run.heard = np.zeros(math.ceil(n / hop) * hop, dtype=np.float32)
    system.reset(list(background or []))
    after_step = getattr(system, "after_step", None)
    done = 0.0
    play_end = 0  # sample where the previous step's audio ends
    for t in range(math.ceil(n / hop)):
        chunk = samples[t * hop : (t + 1) * hop]
        if len(chunk) < hop:
            chunk = np.pad(chunk, (0, hop - len(chunk)))
        if feedback is not None:  # output[t*hop:(t+1)*hop] is final: only earlier steps placed audio there
            played = output[t * hop : (t + 1) * hop]
            played = np.pad(played, (0, hop - len(played)))
            chunk = chunk + np.asarray(feedback.process(played), dtype=np.float32)
            run.heard[t * hop : (t + 1) * hop] = chunk
        started = time.perf_counter()
        result = system.step(chunk)
        compute = time.perf_counter() - started
        audio = np.asarray(result.audio, dtype=np.float32)
        if audio.shape != (hop,):
            raise ValueError(
                f"{type(system).__name__}.step returned {audio.shape} samples, expected ({hop},)"
            )
        done = max((t + 1) * turn_s, done) + compute
        done_sample = math.ceil(done * SAMPLE_RATE)
        if result.floor == "yielding" and play_end > done_sample:
            output[done_sample:play_end] = 0.0
            play_end = done_sample
            for step in run.steps:  # their audio from done on is not heard, nor the words starting there
                if step.play_s + turn_s > done:
                    step.heard_until_s = min(step.heard_until_s, done)
        start = max(play_end, done_sample)
        if start < n:
            output[start : start + hop] = audio[: n - start]
        play_end = start + hop
        run.steps.append(
            StepRecord(t, compute * 1000.0, done, start / SAMPLE_RATE, result.floor, list(result.words))
        )
        if after_step is not None:
            after_step(t, done, start / SAMPLE_RATE)
    if run.heard is not None:
        run.heard = run.heard[:n]
    return run


def stream_output(system: DuplexSystem, samples: np.ndarray, background: list[BackgroundText]) -> np.ndarray:
    """The loop as a plain `StreamFn` of eval: just the aligned output (`run_stream` itself gives eval
    the words said and takes a feedback path too)."""
    return run_stream(system, samples, background).output
