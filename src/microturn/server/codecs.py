"""Audio formats of the Realtime protocol: base64 PCM16 (24 kHz) and G.711 mu-law / A-law (8 kHz).

`audioop` is gone from newer Pythons, so G.711 is implemented here with numpy, following the ITU-T G.711
reference (Sun's g711.c): decoding is a 256-entry table, encoding a segment search over the magnitude.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from microturn.audio import resample


class AudioFormatError(ValueError):
    """Audio that does not match the session's format (bad base64, odd byte count, unknown format)."""


@dataclass(frozen=True)
class AudioFormat:
    """One wire format: its GA type name, its beta name and its fixed sample rate."""

    type: str  # GA name: audio/pcm | audio/pcmu | audio/pcma
    beta: str  # beta name: pcm16 | g711_ulaw | g711_alaw
    rate: int
    bytes_per_sample: int

    def to_ga(self) -> dict:
        return {"type": self.type, "rate": self.rate} if self.type == "audio/pcm" else {"type": self.type}


PCM = AudioFormat("audio/pcm", "pcm16", 24_000, 2)
PCMU = AudioFormat("audio/pcmu", "g711_ulaw", 8_000, 1)
PCMA = AudioFormat("audio/pcma", "g711_alaw", 8_000, 1)
FORMATS = {f.type: f for f in (PCM, PCMU, PCMA)} | {f.beta: f for f in (PCM, PCMU, PCMA)}


def parse_format(value: object) -> AudioFormat:
    """A GA format object ({"type": "audio/pcm", "rate": 24000}) or a beta name ("pcm16")."""
    if isinstance(value, str):
        name, rate = value, None
    elif isinstance(value, dict) and isinstance(value.get("type"), str):
        name, rate = value["type"], value.get("rate")
    else:
        raise AudioFormatError(f"audio format must be a name or {{'type': ..., 'rate': ...}}, got {value!r}")
    if name not in FORMATS:
        raise AudioFormatError(f"unsupported audio format {name!r}; use one of {sorted(FORMATS)}")
    fmt = FORMATS[name]
    if rate is not None and rate != fmt.rate:
        raise AudioFormatError(f"{fmt.type} is {fmt.rate} Hz on the wire, got rate {rate!r}")
    return fmt


# --- G.711 (ITU-T reference algorithm) -------------------------------------------------------------------

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # in the 14-bit domain the encoder works in
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_TO_PCM16 = _ulaw_decode_table()
ALAW_TO_PCM16 = _alaw_decode_table()


def ulaw_encode(pcm16: np.ndarray) -> np.ndarray:
    """int16 samples -> mu-law bytes (uint8)."""
    x = pcm16.astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    x = np.minimum(np.abs(x), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, x)  # first segment whose end >= x
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((x >> (seg + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8)


def alaw_encode(pcm16: np.ndarray) -> np.ndarray:
    """int16 samples -> A-law bytes (uint8)."""
    x = pcm16.astype(np.int32) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    x = np.where(x >= 0, x, -x - 1)
    seg = np.searchsorted(_ALAW_SEG_END, x)
    code = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((x >> np.maximum(seg, 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8)


# --- float32 <-> wire bytes ------------------------------------------------------------------------------


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def decode_base64(data: object) -> bytes:
    if not isinstance(data, str):
        raise AudioFormatError(f"audio must be a base64 string, got {type(data).__name__}")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AudioFormatError(f"audio is not valid base64 ({exc})") from exc


def decode_audio(data: object, fmt: AudioFormat) -> np.ndarray:
    """base64 audio in `fmt` -> float32 samples in [-1, 1] at `fmt.rate`."""
    raw = decode_base64(data)
    if fmt is PCM:
        if len(raw) % 2:
            raise AudioFormatError(f"audio/pcm is 16-bit: {len(raw)} bytes is not a whole number of samples")
        pcm16 = np.frombuffer(raw, dtype="<i2")
    else:
        table = ULAW_TO_PCM16 if fmt is PCMU else ALAW_TO_PCM16
        pcm16 = table[np.frombuffer(raw, dtype=np.uint8)]
    return pcm16.astype(np.float32) / 32768.0


def encode_audio(samples_24k: np.ndarray, fmt: AudioFormat) -> str:
    """float32 24 kHz samples -> base64 audio in `fmt` (G.711 is resampled to 8 kHz first)."""
    samples = samples_24k if fmt.rate == PCM.rate else resample(samples_24k, PCM.rate, fmt.rate)
    pcm16 = float_to_pcm16(samples)
    if fmt is PCM:
        raw = pcm16.astype("<i2").tobytes()
    else:
        raw = (ulaw_encode(pcm16) if fmt is PCMU else alaw_encode(pcm16)).tobytes()
    return base64.b64encode(raw).decode("ascii")


def duration_ms(byte_count: int, fmt: AudioFormat) -> float:
    return byte_count / fmt.bytes_per_sample / fmt.rate * 1000.0
