"""Full-Duplex-Bench export: folders in the benchmark's layout whose annotations point at what they claim,
from held-out conversations only. Each task's episode shape is rendered once (one episode each) from the
test split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from microturn.audio import read_wav
from microturn.cli import main
from microturn.data.build import synth_corpus
from microturn.data.export import ANNOTATION, TASKS, export_fdbench

SR = 16_000


@pytest.fixture(scope="session")
def exported(tmp_path_factory, request) -> dict[str, Path]:
    tts = Path(request.config.cache.mkdir("microturn_tts"))
    root = tmp_path_factory.mktemp("fdbench")
    out = {}
    for task in TASKS:
        corpus = root / f"corpus_{task}"
        synth_corpus(corpus, 0.1, 4, "test", shape=task, cache_dir=tts, progress=False)
        summary = export_fdbench(corpus, root / task, task)
        assert summary["samples"] >= 1, task
        out[task] = root / task
    return out


def _samples(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt((x.astype(np.float64) ** 2).mean())) if len(x) else 0.0


def _at(audio: np.ndarray, a: float, b: float) -> np.ndarray:
    return audio[int(a * SR) : int(b * SR)]


def _load(sample: Path, task: str) -> tuple[np.ndarray, list[dict], list[dict]]:
    audio, rate = read_wav(sample / "input.wav")
    assert rate == SR
    assert sorted(p.name for p in sample.iterdir()) == sorted(
        ["input.wav", ANNOTATION[task], "background.json"]
    )
    annotation = json.loads((sample / ANNOTATION[task]).read_text())
    background = json.loads((sample / "background.json").read_text())
    assert isinstance(annotation, list) and annotation
    for a in annotation:
        start, end = a["timestamp"]
        assert isinstance(a["text"], str) and 0 <= start <= end <= len(audio) / SR + 1e-3
    for b in background:
        assert set(b) == {"time", "text"} and b["time"] >= 0 and b["text"]
    return audio, annotation, background


def test_pause_is_silence_inside_a_long_turn(exported):
    for sample in _samples(exported["pause"]):
        audio, annotation, _ = _load(sample, "pause")
        speech = _rms(audio[np.abs(audio) > 0.01])
        assert len(audio) / SR >= 5.0
        for a in annotation:
            start, end = a["timestamp"]
            assert 0.4 <= end - start <= 1.0
            assert _rms(_at(audio, start, end)) < speech / 10  # at least 20 dB quieter than the speech
            assert _rms(_at(audio, start - 0.3, start)) > speech / 10  # speech before and after the pause
            assert _rms(_at(audio, end, end + 0.3)) > speech / 10


def test_turn_end_is_followed_by_five_seconds_of_silence(exported):
    for sample in _samples(exported["turn_taking"]):
        audio, annotation, background = _load(sample, "turn_taking")
        end = annotation[0]["timestamp"][0]
        assert abs(len(audio) / SR - (end + 5.0)) < 0.01
        assert _rms(_at(audio, end, end + 5.0)) < 1e-3
        assert _rms(_at(audio, end - 0.4, end)) > 0.005
        assert background and background[0]["time"] > end - 1.0  # the reply content, near the turn's end


def test_interruption_span_has_speech_then_fifteen_seconds_of_silence(exported):
    for sample in _samples(exported["interruption"]):
        audio, annotation, background = _load(sample, "interruption")
        a = annotation[0]
        start, end = a["timestamp"]
        assert a["context"] and a["interrupt"] == a["text"]
        assert _rms(_at(audio, start, end)) > 0.005
        assert abs(len(audio) / SR - (end + 15.0)) < 0.01 and _rms(_at(audio, end, end + 15.0)) < 1e-3
        # the system's answer window: the user is silent between the question and the interruption
        assert _rms(_at(audio, start - 1.5, start)) < 0.05 * _rms(_at(audio, start, end)) + 1e-3
        assert len(background) >= 1 and background[0]["time"] < start  # content of the interrupted answer


def test_backchannel_reference_times_lie_in_the_story(exported):
    for sample in _samples(exported["backchannel"]):
        audio, annotation, _ = _load(sample, "backchannel")
        assert len(audio) / SR >= 10.0
        assert all(a["timestamp"][1] - a["timestamp"][0] < 1.5 for a in annotation)


def test_export_refuses_train_unknown_task_and_existing_output(exported, tmp_path, capsys):
    corpus = tmp_path / "train_corpus"
    shutil.copytree(Path(exported["pause"]).parent / "corpus_pause", corpus)
    manifest = corpus / "manifest.jsonl"
    manifest.write_text(manifest.read_text().replace('"split": "test"', '"split": "train"'))
    with pytest.raises(ValueError, match="held-out"):
        export_fdbench(corpus, tmp_path / "x", "pause")
    assert (
        main(
            [
                "data",
                "export-fdbench",
                "--from",
                str(corpus),
                "--out",
                str(tmp_path / "y"),
                "--task",
                "laughter",
            ]
        )
        == 2
    )
    assert "unknown task 'laughter'" in capsys.readouterr().err
    before = {p: p.read_bytes() for p in exported["pause"].rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="not empty"):
        export_fdbench(Path(exported["pause"]).parent / "corpus_pause", exported["pause"], "pause")
    assert before == {p: p.read_bytes() for p in exported["pause"].rglob("*") if p.is_file()}
