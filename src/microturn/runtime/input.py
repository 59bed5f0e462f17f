"""Input alignment for one session: audio packets of any size and rate in, 200 ms chunks out on the clock.

Rules (docs/runtime.md says the same):
- Packets carry no timestamps: each continues the stream where the previous one ended. Rates 8, 16, 24 and
  48 kHz are resampled to 16 kHz with a streaming resampler that keeps its state across packets.
- The engine's clock cuts one chunk per micro-turn whatever has arrived. A slot that is not complete is
  filled with silence and marked as a gap, and the stream resumes at the clock: a packet that arrives after
  its slot was filled lands in the next slot (its samples are kept, nothing is replayed into the past).
- The backlog is bounded: when more than `max_backlog` samples wait beyond the chunk being cut (a burst of
  late packets, or a client sending faster than real time), the oldest excess is dropped, so input latency
  never grows past `max_backlog`. The clock never goes back and never waits.
- Text streams (typed text, background-model text) are `model.queues.TokenQueue`s, read one token per
  micro-turn (see session.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from microturn.audio import SAMPLE_RATE
from microturn.runtime.resample import StreamingResampler

SUPPORTED_RATES = (8_000, 16_000, 24_000, 48_000)
NO_TOKEN = -1


def as_float_pcm(pcm: np.ndarray) -> np.ndarray:
    """Mono float32 in [-1, 1] from float or 16-bit integer samples."""
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        raise ValueError(f"audio packets must be mono 1-D arrays, got shape {pcm.shape}")
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    if not np.issubdtype(pcm.dtype, np.floating):
        raise ValueError(f"audio packets must be float or int16 samples, got {pcm.dtype}")
    return pcm.astype(np.float32, copy=False)


@dataclass
class Chunk:
    """One micro-turn of 16 kHz input as the model sees it."""

    samples: np.ndarray  # float32 [chunk_samples]
    gap: bool  # part or all of it was missing and filled with silence


class AudioInput:
    """Resamples packets to 16 kHz and cuts chunks of `chunk_samples` on demand (one per micro-turn)."""

    def __init__(self, chunk_samples: int, max_backlog: int):
        self.chunk_samples = chunk_samples
        self.max_backlog = max_backlog
        self.resamplers: dict[int, StreamingResampler] = {}
        self.rate: int | None = None
        self.resampler_state = None
        self.pending: list[np.ndarray] = []  # 16 kHz samples not yet cut, oldest first
        self.pending_samples = 0
        self.received = 0  # 16 kHz samples received in all
        self.gap_samples = 0  # silence inserted for missing input
        self.dropped_samples = 0  # backlog dropped to bound latency

    def push(self, pcm: np.ndarray, rate: int) -> None:
        if rate not in SUPPORTED_RATES:
            raise ValueError(
                f"unsupported input sample rate {rate} Hz; supported: {', '.join(map(str, SUPPORTED_RATES))}"
            )
        samples = as_float_pcm(pcm)
        if rate != self.rate:  # a new rate starts a new resampler; the old one's sub-ms tail is discarded
            self.rate = rate
            if rate not in self.resamplers:
                self.resamplers[rate] = StreamingResampler(rate, SAMPLE_RATE)
            self.resampler_state = self.resamplers[rate].new_state(1)
        resampler = self.resamplers[rate]
        out, self.resampler_state = resampler.process(self.resampler_state, torch.from_numpy(samples)[None])
        if out.shape[1]:
            self.pending.append(out[0].numpy())
            self.pending_samples += out.shape[1]
            self.received += out.shape[1]

    def _take(self, n: int) -> np.ndarray:
        """The oldest n pending samples (n <= pending_samples)."""
        joined = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        head, tail = joined[:n], joined[n:]
        self.pending = [tail] if len(tail) else []
        self.pending_samples -= n
        return head

    def next_chunk(self) -> Chunk:
        """Cut the chunk for this micro-turn now, complete or not."""
        excess = self.pending_samples - self.chunk_samples - self.max_backlog
        if excess > 0:
            self._take(excess)
            self.dropped_samples += excess
        n = min(self.pending_samples, self.chunk_samples)
        head = self._take(n) if n else np.zeros(0, dtype=np.float32)
        if n == self.chunk_samples:
            return Chunk(head, gap=False)
        self.gap_samples += self.chunk_samples - n
        return Chunk(np.concatenate([head, np.zeros(self.chunk_samples - n, dtype=np.float32)]), gap=True)
