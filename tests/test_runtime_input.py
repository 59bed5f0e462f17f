"""Input alignment (resampling, chunking, lost and late packets) and the streaming loop's playout rule."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy.signal import resample_poly

from microturn.runtime.input import AudioInput
from microturn.runtime.resample import StreamingResampler
from microturn.runtime.stream_loop import run_stream
from microturn.runtime.system import BackgroundText, StepResult

CHUNK = 3200


def speechlike(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Band-limited noise plus tones: energy across the band, like speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    tones = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (220.0, 1230.0, 3100.0))
    return (tones + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def stream_in_packets(resampler: StreamingResampler, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    state, out, i, j = resampler.new_state(1), [], 0, 0
    while i < len(x):
        n = sizes[j % len(sizes)]
        y, state = resampler.process(state, torch.from_numpy(x[i : i + n])[None])
        out.append(y[0].numpy())
        i, j = i + n, j + 1
    return np.concatenate(out)


@pytest.mark.parametrize("rate_in,rate_out", [(8000, 16000), (24000, 16000), (48000, 16000), (16000, 24000)])
def test_streaming_resampler_matches_one_shot(rate_in: int, rate_out: int) -> None:
    x = speechlike(rate_in, 0.7)
    resampler = StreamingResampler(rate_in, rate_out)
    streamed = stream_in_packets(resampler, x, [1, 7, 333, 2, 1001, 4097, 160])
    g = np.gcd(rate_in, rate_out)
    reference = resample_poly(x.astype(np.float64), rate_out // g, rate_in // g)
    assert len(streamed) == len(reference)  # every output sample, once, whatever the packet sizes
    d = resampler.delay
    assert 0 < d <= 20
    aligned, ref = streamed[d:], reference[: len(reference) - d]
    margin = 64  # the one-shot version sees zeros past the ends; compare away from them
    assert np.abs(aligned[margin:-margin] - ref[margin:-margin]).max() < 1e-5


def test_resampler_packet_boundaries_leave_no_trace() -> None:
    x = speechlike(48000, 0.5, seed=3)
    resampler = StreamingResampler(48000, 16000)
    whole = stream_in_packets(resampler, x, [len(x)])
    odd = stream_in_packets(resampler, x, [3, 1, 997, 5])
    np.testing.assert_allclose(odd, whole, atol=1e-6)


def test_chunks_are_cut_on_the_clock_from_odd_packets_at_any_rate() -> None:
    for rate in (8000, 16000, 24000, 48000):
        x = speechlike(rate, 1.0, seed=rate)
        audio = AudioInput(CHUNK, max_backlog=16000)
        for i in range(0, len(x), 777):
            audio.push(x[i : i + 777], rate)
        chunks = [audio.next_chunk() for _ in range(4)]
        assert all(c.samples.shape == (CHUNK,) and not c.gap for c in chunks)
        got = np.concatenate([c.samples for c in chunks])
        g = np.gcd(rate, 16000)
        reference = resample_poly(x.astype(np.float64), 16000 // g, rate // g)
        delay = StreamingResampler(rate, 16000).delay
        # chunk k holds 16 kHz samples [k * 3200, (k + 1) * 3200) of the stream, which lags by `delay`
        np.testing.assert_allclose(got[delay + 100 :], reference[100 : len(got) - delay], atol=1e-5)


def test_int16_packets_and_bad_packets() -> None:
    audio = AudioInput(CHUNK, max_backlog=CHUNK)
    audio.push((np.ones(CHUNK) * 16384).astype(np.int16), 16000)
    assert np.allclose(audio.next_chunk().samples, 0.5)
    with pytest.raises(ValueError, match="unsupported input sample rate 44100"):
        audio.push(np.zeros(100, np.float32), 44100)
    with pytest.raises(ValueError, match="mono"):
        audio.push(np.zeros((100, 2), np.float32), 16000)


def test_lost_packet_is_filled_with_silence_and_marked_and_the_clock_goes_on() -> None:
    audio = AudioInput(CHUNK, max_backlog=2 * CHUNK)
    x = speechlike(16000, 1.0)
    audio.push(x[:CHUNK], 16000)
    first = audio.next_chunk()
    lost = audio.next_chunk()  # nothing arrived for this slot
    assert not first.gap and lost.gap and not lost.samples.any()
    audio.push(x[:1000], 16000)  # a partial slot: the part that came, then silence
    partial = audio.next_chunk()
    assert (
        partial.gap and np.array_equal(partial.samples[:1000], x[:1000]) and not partial.samples[1000:].any()
    )
    assert audio.gap_samples == CHUNK + CHUNK - 1000


def test_late_packet_lands_in_the_next_slot_and_the_backlog_is_bounded() -> None:
    audio = AudioInput(CHUNK, max_backlog=CHUNK)
    packets = [np.full(CHUNK, 0.01 * (k + 1), np.float32) for k in range(6)]
    audio.push(packets[0], 16000)
    assert audio.next_chunk().samples[0] == pytest.approx(0.01)
    assert audio.next_chunk().gap  # packet 1 is late: its slot is silence
    audio.push(packets[1], 16000)  # ...it arrives now, together with packet 2
    audio.push(packets[2], 16000)
    late = audio.next_chunk()
    assert not late.gap and late.samples[0] == pytest.approx(0.02)  # kept, one slot later
    # a burst (3 packets at once) exceeds the backlog bound: the oldest excess is dropped
    for k in (3, 4, 5):
        audio.push(packets[k], 16000)
    after_burst = audio.next_chunk()  # 4 chunks waited: one is cut, at most one may wait after it
    assert audio.dropped_samples == 2 * CHUNK
    assert after_burst.samples[0] == pytest.approx(0.05)  # packets 2 and 3 dropped: latency stays bounded
    assert audio.next_chunk().samples[0] == pytest.approx(0.06)
    assert audio.next_chunk().gap


class ScriptedSystem:
    """A duplex system for testing the loop: a burst of ones in chosen steps, a chosen compute time."""

    def __init__(self, burst_steps: set[int], compute_s: dict[int, float]):
        self.burst_steps, self.compute_s = burst_steps, compute_s
        self.t = 0
        self.background: list[BackgroundText] = []
        self.seen: list[np.ndarray] = []

    def reset(self, background: list[BackgroundText]) -> None:
        self.t, self.background, self.seen = 0, background, []

    def step(self, chunk: np.ndarray) -> StepResult:
        self.seen.append(chunk.copy())
        time.sleep(self.compute_s.get(self.t, 0.0))
        audio = np.ones(CHUNK, np.float32) if self.t in self.burst_steps else np.zeros(CHUNK, np.float32)
        words = ["hello", "there"] if self.t in self.burst_steps else []
        self.t += 1
        return StepResult(audio, words, "speaking" if words else "listening")


def test_stream_loop_places_output_no_earlier_than_it_could_play_live() -> None:
    n = 16000 * 2 + 123  # not a whole number of micro-turns
    x = speechlike(16000, 3.0)[:n]
    system = ScriptedSystem(burst_steps={1, 2, 6}, compute_s={1: 0.05, 2: 0.25})
    run = run_stream(system, x, [])
    assert run.output.shape == (n,)
    assert len(system.seen) == 11 and all(c.shape == (CHUNK,) for c in system.seen)
    np.testing.assert_array_equal(system.seen[3], x[3 * CHUNK : 4 * CHUNK])  # no look-ahead, no reorder
    assert not system.seen[-1][123:].any()  # the last partial chunk is padded with silence
    for step in run.steps:
        # never before the step's input was complete plus its compute
        assert step.play_s >= (step.index + 1) * 0.2 + step.compute_ms / 1000.0 - 1e-9
    s1, s2, s6 = run.steps[1], run.steps[2], run.steps[6]
    assert s1.play_s >= 0.4 + 0.05
    # step 2 overran its 200 ms: it started when step 1 was done, and its audio follows step 1's
    assert s2.done_s >= s1.done_s + 0.25 and s2.play_s >= s1.play_s + 0.2
    onset = int(np.flatnonzero(run.output)[0])
    assert onset == round(s1.play_s * 16000)
    assert run.output[round(s6.play_s * 16000) : round(s6.play_s * 16000) + CHUNK].all()
    assert [w["text"] for w in run.words] == ["hello", "there"] * 3
    assert run.words[0]["start"] == pytest.approx(s1.play_s, abs=1e-4)
