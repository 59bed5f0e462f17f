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


@dataclass
class StepResult:
    """One micro-turn of output: 16 kHz samples to play next, and the words started in them."""

    audio: np.ndarray  # float32 [samples_per_micro_turn]
    words: list[str] = field(default_factory=list)
    floor: str = "listening"  # listening | speaking | backchannel | yielding


class DuplexSystem(Protocol):
    """Fed 200 ms of 16 kHz user audio per call; returns the next 200 ms of its own audio."""

    def reset(self, background: list[BackgroundText]) -> None: ...

    def step(self, chunk: np.ndarray) -> StepResult: ...
