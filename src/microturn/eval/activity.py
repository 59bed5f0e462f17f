"""Where a 16 kHz signal is active: an energy gate (exact, for "has the output gone quiet") and
silero-vad speech segments (for the backchannel task, as the benchmark does).

The energy gate defines "quiet" for the stop latency and the overlap classifier: the RMS of
consecutive 20 ms frames below -40 dBFS (0.01 of full scale). Speech from any of our voices sits
well above it; digital silence and faint noise sit below it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from microturn.audio import SAMPLE_RATE

FRAME_S = 0.02
QUIET_RMS = 0.01  # -40 dBFS
MIN_QUIET_S = 0.5  # longer than the pauses at commas and between sentences (piper: ~200-300 ms)
# A system is speaking at a moment if it was audible in the MIN_QUIET_S before it: a pause between its
# words is still its turn, as only a quiet stretch that long counts as having stopped.
SPEAKING_BEFORE_S = MIN_QUIET_S


@dataclass(frozen=True)
class Segment:
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


def frame_rms(samples: np.ndarray, frame_s: float = FRAME_S) -> np.ndarray:
    """RMS of consecutive frames (the last partial frame is padded with zeros)."""
    n = int(round(frame_s * SAMPLE_RATE))
    padded = np.zeros(-(-len(samples) // n) * n, dtype=np.float32)
    padded[: len(samples)] = samples
    return np.sqrt(np.mean(padded.reshape(-1, n).astype(np.float64) ** 2, axis=1))


def is_silent(samples: np.ndarray, threshold: float = QUIET_RMS) -> bool:
    """True when no 20 ms frame reaches the quiet threshold."""
    return len(samples) == 0 or float(frame_rms(samples).max()) < threshold


def quiet_start_after(
    samples: np.ndarray, time_s: float, min_quiet_s: float = MIN_QUIET_S, threshold: float = QUIET_RMS
) -> float:
    """Start time of the first stretch of >= min_quiet_s of quiet frames that is still quiet at or after
    `time_s`. A stretch already under way at `time_s` counts from `time_s` (the output was quiet then).
    The end of the signal counts as quiet, so a system that talks to the very end stops at the end."""
    need = max(1, int(round(min_quiet_s / FRAME_S)))
    # `need` virtual quiet frames after the end: the end of the signal is quiet
    quiet = np.concatenate([frame_rms(samples) < threshold, np.ones(need, dtype=bool)])
    first = min(len(quiet) - 1, max(0, int(np.floor(time_s / FRAME_S + 1e-9))))
    run_start = None
    for i, q in enumerate(quiet):
        if not q:
            run_start = None
            continue
        if run_start is None:
            run_start = i
        if i >= first and i - run_start + 1 >= need:
            return max(time_s, run_start * FRAME_S)
    raise AssertionError("unreachable: the virtual tail is a quiet run")


def active_at(samples: np.ndarray, start_s: float, end_s: float, threshold: float = QUIET_RMS) -> bool:
    """True when some 20 ms frame in [start_s, end_s) reaches the quiet threshold."""
    a = max(0, int(start_s * SAMPLE_RATE))
    b = min(len(samples), int(end_s * SAMPLE_RATE))
    return b > a and not is_silent(samples[a:b], threshold)


@lru_cache(maxsize=1)
def silero_model():  # the offline VAD model (ships inside the silero-vad package)
    from silero_vad import load_silero_vad

    return load_silero_vad(onnx=True)


def speech_segments(samples: np.ndarray) -> list[Segment]:
    """Silero-vad speech segments in seconds, with the package's default settings (as the benchmark)."""
    from silero_vad import get_speech_timestamps

    if is_silent(samples):
        return []
    model = silero_model()
    model.reset_states()
    stamps = get_speech_timestamps(
        torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)),
        model,
        sampling_rate=SAMPLE_RATE,
        return_seconds=True,
    )
    return [Segment(float(s["start"]), float(s["end"])) for s in stamps]
