"""Offline transcription into the benchmark's output.json schema."""

import json

import numpy as np

from microturn.audio import SAMPLE_RATE, write_wav
from microturn.eval.harness import synthesise
from microturn.eval.transcribe import transcribe, validate_transcript, write_transcript


def test_piper_sentence_words_and_timestamps(tmp_path):
    speech = synthesise("My sister bought a small house near the river.")
    lead = 1.0
    audio = np.concatenate(
        [np.zeros(int(lead * SAMPLE_RATE), np.float32), speech, np.zeros(SAMPLE_RATE, np.float32)]
    )
    write_wav(tmp_path / "output.wav", audio)
    result = write_transcript(tmp_path / "output.wav", tmp_path / "output.json")
    assert json.loads((tmp_path / "output.json").read_text()) == result
    validate_transcript(result, "output.json")
    words = [c["text"].strip(".,").lower() for c in result["chunks"]]
    assert words == ["my", "sister", "bought", "a", "small", "house", "near", "the", "river"]
    starts = [c["timestamp"][0] for c in result["chunks"]]
    assert starts == sorted(starts)
    assert lead - 0.3 <= starts[0] <= lead + 0.3  # the first word starts where the speech does
    assert result["chunks"][-1]["timestamp"][1] <= lead + len(speech) / SAMPLE_RATE + 0.3


def test_silence_gives_no_words():
    assert transcribe(np.zeros(3 * SAMPLE_RATE, np.float32)) == {"text": "", "chunks": []}
    faint = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 1e-3).astype(np.float32)
    assert transcribe(faint) == {"text": "", "chunks": []}
