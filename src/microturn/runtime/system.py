"""What a streaming duplex system is, for the runtime's loop and for evaluation.

Both the interaction model (through a runtime session) and the harness baseline implement this, so that
`simulate` and `eval fdbench` drive them through the same real-time loop with the same accounting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class BackgroundText:
    """Text from the background model that becomes available at `time` seconds into the session."""

    time: float
    text: str
    task: str | None = None  # the background task it comes from (None: oracle text); a task's sentences
    # arrive one by one, and a system speaking a task's answer goes on with its later sentences


@dataclass
class StepResult:
    """One micro-turn of output: 16 kHz samples to play next, and the words started in them."""

    audio: np.ndarray  # float32 [samples_per_micro_turn]
    words: list[str] = field(default_factory=list)
    floor: str = "listening"  # listening | speaking | backchannel | yielding


class OfflineBackground(Protocol):
    """A background model on the offline loop's simulated clock (`background.offline.SimulatedBackground`):
    a system feeds it what it heard and did, and takes the text and the user's transcribed words that have
    arrived by each micro-turn."""

    def reset(self) -> None: ...

    def observe_input(self, turn: int, samples: np.ndarray) -> None: ...

    def observe(self, output, now_s: float, transcript: list[dict]) -> None: ...

    def take(self, turn: int) -> list[BackgroundText]: ...

    def take_heard(self, turn: int) -> list[str]: ...


class DuplexSystem(Protocol):
    """Fed 200 ms of 16 kHz user audio per call; returns the next 200 ms of its own audio."""

    def reset(self, background: list[BackgroundText]) -> None: ...

    def step(self, chunk: np.ndarray) -> StepResult: ...

    # optional: `after_step(index, done_s, play_s)`, called by the streaming loop after step `index` with the
    # time the step finished on the live clock and the time its audio plays; not counted as compute (the
    # offline background runs here, measured on its own clock)
