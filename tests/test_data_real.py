"""Full-Duplex-Bench samples in real voices (`data real-fdbench`): edits land in quiet at word boundaries,
the annotations point at what they claim, and the folders load with the evaluation's loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from microturn.audio import SAMPLE_RATE
from microturn.data.real import Clip, Word, analyse, build_samples
from microturn.eval.samples import find_sample_dirs, read_sample

REPLIES = ["sure, here is what i think about that.", "that sounds lovely, tell me more."]


def _db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-9))


def _at(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return x[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]


def synthetic_clip() -> tuple[Clip, list[tuple[float, float]]]:
    """Words as tone bursts over faint noise: two sentences of four words, one long gap (1.6 s)."""
    rng = np.random.default_rng(0)
    audio = (0.001 * rng.standard_normal(int(9.0 * SAMPLE_RATE))).astype(np.float32)
    spans = [
        (0.5, 0.9),
        (0.95, 1.3),
        (1.35, 1.8),
        (1.85, 2.4),
        (4.0, 4.4),
        (4.45, 4.9),
        (4.95, 5.3),
        (5.6, 6.2),
    ]
    t = np.arange(len(audio)) / SAMPLE_RATE
    for a, b in spans:
        on = (t >= a) & (t < b)
        audio[on] += 0.2 * np.sin(2 * np.pi * 220 * t[on])
    texts = ["we", "went", "out", "today.", "it", "was", "very", "nice."]
    # Whisper's times are only roughly right: shift them a little
    words = [Word(w, a - 0.03, b + 0.04) for w, (a, b) in zip(texts, spans, strict=True)]
    return analyse(Clip("synthetic", audio, words)), spans


def test_analysis_finds_sentences_and_word_boundaries_in_the_quiet() -> None:
    clip, spans = synthetic_clip()
    assert [s.text for s in clip.sentences] == ["we went out today.", "it was very nice."]
    assert clip.sentences[0].start == pytest.approx(0.5, abs=0.02)
    assert clip.sentences[0].end == pytest.approx(2.4, abs=0.02)
    for b, (_, left_end), (right_start, _) in zip(clip.boundaries, spans[:-1], spans[1:], strict=True):
        assert left_end - 0.011 <= b.cut <= right_start + 0.011  # cut between the words, in their quiet
    assert clip.boundaries[3].gap == pytest.approx(1.6, abs=0.03)


def test_samples_of_every_task_from_a_clip() -> None:
    clip, _ = synthetic_clip()
    turn_end_clip = clip.sentences[1].end
    pause = build_samples(clip, "pause", REPLIES, seed=1)
    assert pause
    for sample in pause:
        x = sample.audio
        assert _db(x) > -30
        for p in sample.annotation:  # every annotated pause is quiet and 0.4-1.0 s long
            a, b = p["timestamp"]
            assert 0.4 - 1e-3 <= b - a <= 1.0 + 1e-3 and _db(_at(x, a + 0.01, b - 0.01)) < -50
        assert sample.background[0]["time"] > len(x) / SAMPLE_RATE - 0.1 - 1e-6  # the reply comes after
    # the long natural gap inside the turn was shortened to 0.8 s
    (turn,) = [s for s in build_samples(clip, "turn_taking", REPLIES) if s.info["sentences"] == [0, 1]]
    end = turn.annotation[0]["timestamp"][0]
    assert end == pytest.approx(turn_end_clip - (1.6 - 0.8), abs=0.03)  # the window starts at 0
    assert _db(_at(turn.audio, end - 0.3, end)) > -30 and _db(_at(turn.audio, end + 0.01, end + 5.0)) < -50
    assert len(turn.audio) / SAMPLE_RATE == pytest.approx(end + 5.0, abs=0.02)
    assert turn.background[0]["time"] >= end + 0.2 and turn.background[0]["text"] in REPLIES
    # interruption: the question, quiet, then the other sentence 3-6 s after the reply text arrived
    clip.voices = 2  # one sentence per turn: the first asks, the second interrupts
    inters = build_samples(clip, "interruption", REPLIES)
    assert [s.info["interrupt_sentence"] for s in inters] == [1, 0]  # a later sentence, else an earlier
    inter = inters[0]
    a, b = inter.annotation[0]["timestamp"]
    assert inter.annotation[0]["interrupt"] == "it was very nice." and inter.annotation[0]["context"]
    arrival = inter.background[0]["time"]
    assert 3.0 <= a - arrival <= 6.0 and b - a == pytest.approx(6.2 - 4.0, abs=0.03)
    assert _db(_at(inter.audio, a, b)) > -30 and _db(_at(inter.audio, arrival, a)) < -50
    assert len(inter.audio) / SAMPLE_RATE == pytest.approx(b + 15.0, abs=0.02)


def test_real_voice_export_loads_with_the_eval_loader(tmp_path) -> None:
    from microturn.data.real import assets_dir, export_real_fdbench

    try:  # the clips ship in the moonshine-voice wheel (make setup installs it)
        assets_dir()
    except RuntimeError:
        pytest.skip("moonshine-voice is not installed")

    summary = export_real_fdbench(tmp_path / "real", clips=("beckett",), n=3)
    assert summary["pause"] == 3 and summary["turn_taking"] == 3 and summary["backchannel"] == 1
    assert summary["interruption"] == 0  # beckett's sentences are two words: none can interrupt
    folders = find_sample_dirs(tmp_path / "real")
    assert len(folders) == 7
    for folder in folders:
        sample = read_sample(folder)
        assert sample.task in ("pause", "turn_taking", "backchannel") and sample.background
        if sample.task == "pause":
            for p in sample.annotations:
                assert _db(_at(sample.input, p.start + 0.01, p.end - 0.01)) < -45 < _db(sample.input)
    index = json.loads((tmp_path / "real" / "pause" / "export.json").read_text())
    assert [s["clip"] for s in index["samples"]] == ["beckett"] * 3 and index["source"]["package"]
    with pytest.raises(ValueError, match="not empty"):
        export_real_fdbench(tmp_path / "real", clips=("beckett",))
