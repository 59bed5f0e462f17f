"""Streaming polyphase resampling with explicit state, for audio that arrives in packets of any size.

The filter is the one `scipy.signal.resample_poly` designs (a Kaiser-windowed sinc, 10 zero crossings per
side), applied causally: upsample by `up`, filter, keep every `down`-th sample. Each call keeps the last
input samples that later outputs still need, so packet boundaries leave no trace. Being causal, the stream
lags the zero-phase one-shot `audio.resample` by `delay` output samples (at most 20 at 16 kHz, 1.25 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import firwin


@lru_cache(maxsize=16)
def _design(up: int, down: int) -> tuple[torch.Tensor, int]:
    """The resample_poly low-pass filter (times `up`, float32) and its half length in upsampled samples."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    taps = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
    return torch.from_numpy(taps.astype(np.float32)), half_len


def _polyphase(taps: torch.Tensor, up: int, down: int, context: int) -> torch.Tensor:
    """[L, up]: column r holds the taps that output r of a block applies to its input window of L samples
    (the window of block j starts at input (j * down) - context relative to the block's first input, and
    output r reads inputs up to (r * down) // up through taps (r * down) % up + m * up, m = 0, 1, ...)."""
    span = context + (up - 1) * down // up + 1
    phases = torch.zeros(span, up)
    for r in range(up):
        last, phase = context + r * down // up, r * down % up  # window index of the newest input
        for m in range(last + 1):
            if phase + m * up < len(taps):
                phases[last - m, r] = taps[phase + m * up]
    return phases


@dataclass
class ResamplerState:
    """Per-stream memory for a batch of streams that advance in lockstep."""

    history: torch.Tensor  # [B, H]: the last input samples later outputs still depend on
    consumed: int = 0  # input samples seen so far (per stream)
    emitted: int = 0  # output samples returned so far (per stream)

    @staticmethod
    def cat(states: list[ResamplerState]) -> ResamplerState:
        if len({(s.consumed, s.emitted) for s in states}) > 1:
            raise ValueError("only streams at the same position can be batched")
        return ResamplerState(torch.cat([s.history for s in states]), states[0].consumed, states[0].emitted)

    def rows(self, index: list[int]) -> ResamplerState:
        return ResamplerState(self.history[index], self.consumed, self.emitted)


class StreamingResampler:
    """rate_in -> rate_out for streams in packets: `process(state, x [B, n]) -> [B, m]`, m >= 0."""

    def __init__(self, rate_in: int, rate_out: int):
        g = math.gcd(rate_in, rate_out)
        self.rate_in, self.rate_out = rate_in, rate_out
        self.up, self.down = rate_out // g, rate_in // g
        if self.up == self.down:
            self.taps, self.context, self.delay = torch.ones(1), 0, 0
            return
        self.taps, half_len = _design(self.up, self.down)
        self.context = math.ceil((len(self.taps) - 1) / self.up)
        self.delay = half_len // self.down  # output samples behind the zero-phase one-shot resampling
        self.phases = _polyphase(self.taps, self.up, self.down, self.context)

    def new_state(self, batch: int = 1) -> ResamplerState:
        return ResamplerState(torch.zeros(batch, self.context))

    def process(self, state: ResamplerState, x: torch.Tensor) -> tuple[torch.Tensor, ResamplerState]:
        """Resample the next `n` input samples of each stream; returns the outputs they complete."""
        if self.up == self.down:
            return x.clone(), ResamplerState(state.history, state.consumed + x.shape[1], state.emitted)
        segment = torch.cat([state.history, x], dim=1)  # starts at input index consumed - context
        total = state.consumed + x.shape[1]
        first, stop = state.emitted, -(-total * self.up // self.down)  # outputs k with k*down < total*up
        history = segment[:, segment.shape[1] - self.context :]
        # Output k is the causal filter's value at upsampled index k * down: it reads inputs up to
        # (k * down) // up. Outputs come in blocks of `up` (k = k0 + j * up + r, k0 a multiple of up) whose
        # inputs start `down` samples apart, so each block is one row of windows @ phases ([L, up]): one
        # matmul over the input instead of a transposed conv over the upsampled signal.
        k0 = first - first % self.up
        blocks = -(-(stop - k0) // self.up)
        if blocks <= 0:
            return segment.new_zeros(segment.shape[0], 0), ResamplerState(history, total, stop)
        span = self.phases.shape[0]
        start = k0 // self.up * self.down - (state.consumed - self.context) - self.context  # first window
        need = start + (blocks - 1) * self.down + span  # one past the last input the windows read
        padded = F.pad(segment, (max(0, -start), max(0, need - segment.shape[1])))
        base = max(0, start)
        windows = padded[:, base : base + (blocks - 1) * self.down + span].unfold(1, span, self.down)
        out = (windows @ self.phases).flatten(1)[:, first - k0 : stop - k0]
        return out, ResamplerState(history, total, stop)
