"""Audio front end shared by the corpus, the model, the runtime and the vocoder.

One sample rate (16 kHz) and one causal log-mel definition everywhere, so that the features the model is
trained on are bit-for-bit the features the runtime computes from 200 ms chunks. torchaudio does not import
with the pinned torch, so the mel filterbank is built here (Slaney-style triangles on the HTK mel scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from microturn.files import atomic_write

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms
WIN = 400  # 25 ms
N_FFT = 512
N_MELS = 80
LOG_FLOOR = 1e-5
MEL_CONTEXT = N_FFT - HOP  # samples of history before a chunk that the causal log_mel reads
# Fixed log-mel range used for dMel quantisation and for normalising mel targets. Chosen from the corpus:
# near-silence sits at log(1e-5) = -11.5, the loudest speech frames near +2.5.
LOG_MEL_MIN = -11.5
LOG_MEL_MAX = 2.5


class AudioError(ValueError):
    """A wav that cannot be used: names the file and the problem."""


@lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """[n_fft // 2 + 1, n_mels] triangular filters on the HTK mel scale, area-normalised."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mels = np.linspace(hz_to_mel(np.array(0.0)), hz_to_mel(np.array(sample_rate / 2)), n_mels + 2)
    hz = mel_to_hz(mels)
    fb = np.zeros((n_fft // 2 + 1, n_mels), dtype=np.float32)
    for i in range(n_mels):
        lo, mid, hi = hz[i], hz[i + 1], hz[i + 2]
        up = (freqs - lo) / (mid - lo)
        down = (hi - freqs) / (hi - mid)
        fb[:, i] = np.maximum(0.0, np.minimum(up, down)) * (2.0 / (hi - lo))
    with torch.inference_mode(False):  # cached: must stay usable by autograd whoever calls first
        return torch.from_numpy(fb)


@lru_cache(maxsize=1)
def _window() -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.hann_window(WIN)


def log_mel(wave: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
    """Causal log-mel: frame i sees only samples before (i + 1) * HOP.

    wave: [..., n] float in [-1, 1], n a multiple of HOP. history: the last N_FFT - HOP samples before
    `wave` (zeros at the start of a stream). Returns [..., n // HOP, N_MELS]. Streaming chunk by chunk with
    the right history gives exactly the frames of the whole signal.
    """
    if wave.shape[-1] % HOP:
        raise AudioError(f"log_mel needs a multiple of {HOP} samples, got {wave.shape[-1]}")
    lead = MEL_CONTEXT
    if history is None:
        history = wave.new_zeros(*wave.shape[:-1], lead)
    x = torch.cat([history, wave], dim=-1)
    frames = x.unfold(-1, N_FFT, HOP)  # [..., n_frames, N_FFT]
    win = torch.zeros(N_FFT, dtype=wave.dtype)
    win[N_FFT - WIN :] = _window().to(wave.dtype)  # window the most recent 25 ms of each frame
    spec = torch.fft.rfft(frames * win, dim=-1).abs().pow(2)
    mel = spec @ mel_filterbank().to(wave.dtype)
    return torch.log(mel.clamp_min(LOG_FLOOR))


def normalise_log_mel(lm: torch.Tensor) -> torch.Tensor:
    """Map the fixed log-mel range to [-1, 1] (flow-matching targets)."""
    return (lm - LOG_MEL_MIN) / (LOG_MEL_MAX - LOG_MEL_MIN) * 2.0 - 1.0


def denormalise_log_mel(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(-1.0, 1.0) + 1.0) / 2.0 * (LOG_MEL_MAX - LOG_MEL_MIN) + LOG_MEL_MIN


def dmel(lm: torch.Tensor, bins: int) -> torch.Tensor:
    """dMel (Bai et al. 2024): each log-mel channel quantised into `bins` intensity levels (long)."""
    x = (lm - LOG_MEL_MIN) / (LOG_MEL_MAX - LOG_MEL_MIN)
    return (x * bins).floor().clamp(0, bins - 1).long()


def read_wav(path: str | Path, expect_rate: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Mono float32 samples and rate; clear errors for missing, corrupt or wrong-rate files."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: file not found")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt headers
        raise AudioError(f"{path}: not a readable audio file ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(f"{path}: empty audio file")
    if expect_rate is not None and rate != expect_rate:
        raise AudioError(f"{path}: sample rate {rate} Hz, expected {expect_rate} Hz")
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], rate


def write_wav(path: str | Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM, written to a temporary name first so a crash never leaves half a file."""
    samples = np.clip(samples, -1.0, 1.0)
    atomic_write(Path(path), lambda tmp: sf.write(str(tmp), samples, rate, subtype="PCM_16", format="WAV"))


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling (scipy), exact for the integer ratios between 8/16/22.05/24/48 kHz."""
    if rate_in == rate_out:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(rate_in, rate_out)
    return resample_poly(samples, rate_out // g, rate_in // g).astype(np.float32)


@dataclass(frozen=True)
class MicroTurn:
    """Micro-turn geometry: 200 ms by default."""

    ms: int = 200

    @property
    def samples(self) -> int:
        return SAMPLE_RATE * self.ms // 1000

    @property
    def frames(self) -> int:
        return self.samples // HOP
