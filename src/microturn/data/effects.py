"""Signal effects for the user channel: muffled side talk, the assistant's echo, and noise."""

from __future__ import annotations

import numpy as np
from scipy import fft
from scipy.signal import butter, lfilter, oaconvolve, sosfilt

from microturn.audio import SAMPLE_RATE

NOISE_COLOURS = ("white", "pink", "brown")


def db_to_gain(db: float) -> float:
    return float(10 ** (db / 20))


def lowpass(audio: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """4th-order Butterworth low-pass: speech heard through a room or away from the microphone."""
    sos = butter(4, cutoff_hz, btype="low", fs=SAMPLE_RATE, output="sos")
    return sosfilt(sos, audio).astype(np.float32)


def loudspeaker_band() -> np.ndarray:
    """Second-order sections of the 300-3,400 Hz band a small loudspeaker and microphone pass."""
    return butter(2, [300, 3400], btype="band", fs=SAMPLE_RATE, output="sos")


def room_taps(rng: np.random.Generator) -> np.ndarray:
    """A room's impulse response: the direct path and six sparse reflections decaying over 60 ms."""
    taps = np.zeros(int(0.06 * SAMPLE_RATE), np.float32)
    taps[0] = 1.0
    for _ in range(6):
        i = int(rng.integers(40, len(taps)))
        taps[i] += float(rng.uniform(0.1, 0.4)) * np.exp(-i / (0.02 * SAMPLE_RATE))
    return taps


def echo(assistant: np.ndarray, delay_s: float, level_db: float, rng: np.random.Generator) -> np.ndarray:
    """The assistant's voice as the user's microphone picks it up from a loudspeaker: band-limited
    (300-3,400 Hz), delayed, attenuated, with a short decaying room tail."""
    band = sosfilt(loudspeaker_band(), assistant)
    wet = oaconvolve(band, room_taps(rng))[: len(band)]
    delay = int(delay_s * SAMPLE_RATE)
    out = np.zeros_like(assistant, dtype=np.float32)
    out[delay:] = wet[: len(out) - delay] * db_to_gain(level_db)
    return out


class EchoPath:
    """`echo` as a causal stream, for a feedback loop: feed what the loudspeaker played, block by block,
    and get what the microphone picks up of it over the same samples (the same filters, the same draws
    from `rng`; the concatenated blocks equal `echo` of the whole signal to float rounding)."""

    def __init__(self, delay_s: float, level_db: float, rng: np.random.Generator):
        self.delay_s, self.level_db = delay_s, level_db
        self.sos = loudspeaker_band()
        self.taps = room_taps(rng).astype(np.float64)
        self.gain = db_to_gain(level_db)
        self._band_state = np.zeros((self.sos.shape[0], 2))
        self._room_state = np.zeros(len(self.taps) - 1)
        self._line = np.zeros(int(delay_s * SAMPLE_RATE))  # picked up, not yet heard (the delay)

    def process(self, played: np.ndarray) -> np.ndarray:
        band, self._band_state = sosfilt(self.sos, np.asarray(played, np.float64), zi=self._band_state)
        wet, self._room_state = lfilter(self.taps, [1.0], band, zi=self._room_state)
        line = np.concatenate([self._line, wet * self.gain])
        self._line = line[len(played) :]
        return line[: len(played)].astype(np.float32)


def noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS coloured noise: white (flat), pink (1/f power), brown (1/f^2 power)."""
    white = rng.standard_normal(n)
    if colour == "white":
        shaped = white
    else:
        size = fft.next_fast_len(n, real=True)  # a conversation's length can have large prime factors
        spectrum = fft.rfft(white, size)
        f = fft.rfftfreq(size, 1 / SAMPLE_RATE)
        f[0] = f[1]
        spectrum /= np.sqrt(f) if colour == "pink" else f
        shaped = fft.irfft(spectrum, size)[:n]
    return (shaped / (np.sqrt((shaped**2).mean()) + 1e-12)).astype(np.float32)


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt((audio.astype(np.float64) ** 2).mean())) if len(audio) else 0.0
