"""On-the-fly augmentation of the user channel (what the assistant hears), vectorised numpy.

Each effect keeps the channel's length and timing, so the timeline labels stay valid; all randomness
comes from the caller's numpy Generator (same seed, same augmented batch). Tempo is changed at the
conversation level by the dataset (both channels and the timeline together, see `dataset.SPEEDS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve, lfilter

from .. import audio


@dataclass(frozen=True)
class AugmentConfig:
    p_pitch: float = 0.3
    max_semitones: float = 2.0
    p_noise: float = 0.5
    snr_db: tuple[float, float] = (5.0, 40.0)
    p_reverb: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.8)
    p_echo: float = 0.3
    echo_gain: tuple[float, float] = (0.05, 0.4)
    echo_delay_s: tuple[float, float] = (0.02, 0.25)
    p_codec: float = 0.2
    p_gain: float = 0.5
    gain_db: tuple[float, float] = (-12.0, 6.0)


def ola_stretch(x: np.ndarray, n_out: int, frame: int = 640) -> np.ndarray:
    """Overlap-add time stretch of `x` to `n_out` samples (pitch unchanged): Hann frames of `frame` samples at
    a synthesis hop of frame/2 (periodic Hann at 50% overlap sums to one), read at a proportional hop."""
    hop = frame // 2
    n_frames = n_out // hop + 1
    read_hop = (len(x) - frame) / max(n_frames - 1, 1) if len(x) > frame else 0.0
    starts = np.round(np.arange(n_frames) * read_hop).astype(np.int64)
    padded = np.pad(x, (0, frame))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / frame)
    frames = padded[starts[:, None] + np.arange(frame)] * window
    out = np.zeros((n_frames + 1) * hop, dtype=np.float64)
    even, odd = frames[0::2].reshape(-1), frames[1::2].reshape(-1)  # each set tiles without overlap
    out[: len(even)] += even
    out[hop : hop + len(odd)] += odd
    return out[:n_out].astype(np.float32)


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    """Resample (pitch and tempo change) then OLA back to the original length (tempo restored)."""
    factor = 2.0 ** (semitones / 12.0)
    # rates on a 400 Hz grid keep the polyphase ratio small (at most 40/41), i.e. fast
    rate_out = int(round(audio.SAMPLE_RATE / factor / 400.0)) * 400
    if rate_out == audio.SAMPLE_RATE:
        return x
    return ola_stretch(audio.resample(x, audio.SAMPLE_RATE, rate_out), len(x))


def mu_law_codec(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """Telephone-like pass: 8 kHz, 8-bit mu-law, back to 16 kHz."""
    narrow = np.clip(audio.resample(x, audio.SAMPLE_RATE, 8000), -1.0, 1.0)
    encoded = np.sign(narrow) * np.log1p(mu * np.abs(narrow)) / np.log1p(mu)
    quantised = np.round((encoded + 1) / 2 * mu) / mu * 2 - 1
    decoded = np.sign(quantised) * ((1 + mu) ** np.abs(quantised) - 1) / mu
    out = audio.resample(decoded.astype(np.float32), 8000, audio.SAMPLE_RATE)
    return np.pad(out, (0, max(0, len(x) - len(out))))[: len(x)]


def reverb(x: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Convolution with an exponentially decaying noise impulse response (a synthetic room)."""
    rt60 = rng.uniform(*cfg.rt60_s)
    n = int(rt60 * audio.SAMPLE_RATE)
    t = np.arange(n) / audio.SAMPLE_RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    ir /= np.sqrt(np.sum(ir**2))
    wet = fftconvolve(x, ir)[: len(x)]
    mix = rng.uniform(0.3, 1.0)
    return ((1 - mix) * x + mix * wet).astype(np.float32)


def coloured_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White noise through a random one-pole low-pass (white .. brown-ish), unit RMS."""
    pole = rng.uniform(0.0, 0.97)
    noise = lfilter([1.0], [1.0, -pole], rng.standard_normal(n))
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-9)


def augment_user(
    user: np.ndarray, assistant: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig()
) -> np.ndarray:
    """A plausible other version of what the assistant hears: same length and timing as `user`.
    `assistant` (same span) is the source of the extra echo."""
    x = user.astype(np.float32, copy=True)
    if rng.random() < cfg.p_pitch:
        x = pitch_shift(x, rng.uniform(-cfg.max_semitones, cfg.max_semitones))
    if rng.random() < cfg.p_echo:
        delay = int(rng.uniform(*cfg.echo_delay_s) * audio.SAMPLE_RATE)
        x[delay:] += rng.uniform(*cfg.echo_gain) * assistant[: len(x) - delay]
    if rng.random() < cfg.p_reverb:
        x = reverb(x, rng, cfg)
    if rng.random() < cfg.p_noise:
        level = max(float(np.sqrt(np.mean(x**2))), 0.01)
        snr = rng.uniform(*cfg.snr_db)
        x = x + coloured_noise(len(x), rng).astype(np.float32) * level * 10 ** (-snr / 20)
    if rng.random() < cfg.p_gain:
        x = x * 10 ** (rng.uniform(*cfg.gain_db) / 20)
    x = np.clip(x, -1.0, 1.0)
    if rng.random() < cfg.p_codec:
        x = mu_law_codec(x)
    return x.astype(np.float32)
