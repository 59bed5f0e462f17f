"""`eval proactive`: the metrics score hand-built timed words exactly; video reaches the session one frame
per micro-turn; the command runs end to end on a tiny episode with a tiny untrained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_dataset import fixture_tokenizer

from microturn.cli import main
from microturn.data import video
from microturn.data.build import synth_corpus
from microturn.data.corpus import Event
from microturn.data.proactive import PLANNED_EPISODE_S
from microturn.eval.proactive import EpisodeFeed, TimedWord, aggregate, numbers, score_episode, tokens
from microturn.model.checkpoint import save_checkpoint
from microturn.model.config import get_config
from microturn.model.interaction import InteractionModel
from microturn.runtime.stream_loop import run_stream
from microturn.runtime.system import StepResult

torch.set_num_threads(1)


def said(*items: tuple[str, float]) -> list[TimedWord]:
    """Words spoken at the given start times (each 0.3 s long)."""
    return [TimedWord(w, t, t + 0.3) for text, t in items for w in [text]]


def test_numbers_in_words_and_digits():
    toks = tokens(said(("Twenty-three,", 1.0), ("seven.", 2.0), ("12", 3.0), ("thirty", 4.0), ("one", 4.3)))
    assert numbers(toks) == [(23, 1.0), (7, 2.0), (12, 3.0), (31, 4.0)]


def test_metrics_score_hand_built_words_exactly():
    reps = [
        Event("rep", "video", 2.0 * k, 2.0 * k + 1.5, "", {"count": k, "kind": "squat"}) for k in range(1, 6)
    ]
    # counted to four of five reps: within one; counted to two: not
    four = score_episode("reps", reps, 1.0, said(("one.", 3.8), ("two", 5.8), ("three", 7.8), ("4", 9.8)))
    two = score_episode("reps", reps, 1.0, said(("one", 3.8), ("two", 5.8)))
    assert [r["value"] for r in four + two] == [1.0, 0.0] and four[0]["count"] == 4

    action = [Event("action", "video", 10.0, 20.0, "start stop", {"kind": "wave"})]
    iou = score_episode("start_stop", action, 3.0, said(("Start!", 10.5), ("stop.", 20.5)))
    assert iou[0]["value"] == pytest.approx(9.5 / 10.5)
    assert score_episode("start_stop", action, 3.0, said(("stop", 20.5)))[0]["value"] == 0.0

    light = [Event("visual_change", "video", 10.0, 10.0, "it's green now.", {"kind": "light"})]
    assert score_episode("visual_cue", light, 3.0, said(("it's", 10.4), ("green", 10.6)))[0]["value"] == 1.0
    # the first mention after the instruction was too early: a miss, even if repeated in time
    assert score_episode("visual_cue", light, 3.0, said(("green", 6.0), ("green", 10.5)))[0]["value"] == 0.0
    assert score_episode("visual_cue", light, 3.0, said(("green", 13.5)))[0]["value"] == 0.0  # too late

    timers = [
        Event("timer", "clock", 5.0, 15.0, "time to drink water.", {"kind": "every", "seconds": 10}),
        Event("timer", "clock", 5.0, 25.0, "time to drink water.", {"kind": "every", "seconds": 20}),
    ]
    every = score_episode(
        "time", timers, 5.0, said(("time", 15.1), ("to", 15.3), ("drink", 15.5), ("water", 27.5))
    )
    assert [r["value"] for r in every] == [1.0, 0.0]
    after = [Event("timer", "clock", 4.0, 24.0, "twenty seconds.", {"kind": "after", "seconds": 20})]
    assert score_episode("time", after, 4.0, said(("twenty", 24.1), ("seconds", 24.4)))[0]["value"] == 1.0
    assert score_episode("time", after, 4.0, said(("time's", 21.0), ("up", 21.3)))[0]["value"] == 0.0
    elapsed = [
        Event(
            "timer",
            "clock",
            2.0,
            20.0,
            "that took eighteen seconds.",
            {"kind": "elapsed", "seconds": 18, "asked": 22.0},
        )
    ]
    assert (
        score_episode("time", elapsed, 2.0, said(("that", 22.5), ("took", 22.7), ("17", 22.9)))[0]["value"]
        == 1.0
    )
    assert score_episode("time", elapsed, 2.0, said(("15", 22.9)))[0]["value"] == 0.0

    cues = [
        Event("cue", "user", 4.5, 5.0, "bingo", {"cue": "banana", "kind": "inline"}),
        Event("cue", "user", 8.5, 9.0, "bingo", {"cue": "banana", "kind": "standalone"}),
    ]
    cue = score_episode("cue_word", cues, 3.0, said(("Bingo!", 5.4), ("bingo", 11.5)))
    assert [r["value"] for r in cue] == [1.0, 0.0]

    records = four + two + iou + every + score_episode("time", after, 4.0, said(("twenty", 24.1))) + cue
    records += score_episode("time", elapsed, 2.0, said(("15", 22.9)))
    m = aggregate(records)
    assert m["rep_within_one"] == 50.0 and m["n_rep_within_one"] == 2
    assert m["start_stop_miou"] == pytest.approx(9.5 / 10.5, abs=1e-4)
    # time: every 50 %, after 100 %, elapsed 0 % -> macro 50; cue: inline 100, standalone 0 -> 50
    assert (m["time_every"], m["time_after"], m["time_elapsed"], m["time_macro"]) == (50.0, 100.0, 0.0, 50.0)
    assert (m["cue_inline"], m["cue_standalone"], m["cue_macro"]) == (100.0, 0.0, 50.0)


class _FakeSession:
    def __init__(self):
        self.frames = []
        self.heard = []

    def push_video(self, frame):
        self.frames.append(frame)

    def push_heard(self, text):
        self.heard.append((len(self.frames), text))


class _FakeSystem:
    def __init__(self):
        self.session = _FakeSession()

    def reset(self, background):
        self.session.frames.clear()

    def step(self, chunk):
        return StepResult(np.zeros(3200, np.float32))


def test_each_micro_turn_gets_its_frame_before_its_audio():
    rng = np.random.default_rng(1)
    bg = video.random_background(rng)
    spec = video.scene(rng, bg, [video.random_light(rng, 1.0)])
    fake = _FakeSystem()
    heard = [(0.15, "say"), (0.19, "bingo"), (0.61, "now")]  # (word end s, word): the oracle transcriber
    run_stream(EpisodeFeed(fake, spec, heard), np.zeros(16_000, np.float32), [])
    assert len(fake.session.frames) == 5  # 1 s = 5 micro-turns
    for t, frame in enumerate(fake.session.frames):
        assert np.array_equal(frame, video.render_frame(spec, video.frame_time(t)))
    assert fake.session.heard == [(1, "say bingo"), (4, "now")]  # in the micro-turn each word ends


def test_cli_runs_on_a_tiny_episode(tmp_path, request):
    tts = Path(request.config.cache.mkdir("microturn_tts"))
    data = tmp_path / "data"
    synth_corpus(
        data / "start_stop",
        PLANNED_EPISODE_S["start_stop"] / 60,
        3,
        "test",
        "start_stop",
        tts,
        progress=False,
    )
    tokenizer = fixture_tokenizer()
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, InteractionModel(get_config("tiny", vocab_size=tokenizer.vocab_size)), tokenizer)
    out, metrics = tmp_path / "out", tmp_path / "m.json"
    code = main(
        ["eval", "proactive", str(data), "--system", "model", "--checkpoint", str(ckpt), "--out", str(out)]
        + ["--json", str(metrics), "--heard", "whisper"]  # Whisper on the segments the floor head perceived
    )
    assert code == 0
    result = json.loads(metrics.read_text())
    assert set(result["model"]) == {"speech", "text"}
    for source in ("speech", "text"):
        assert 0.0 <= result["model"][source]["start_stop_miou"] <= 1.0
        assert result["model"][source]["n_start_stop_iou"] == 1
    report = (out / "report.md").read_text()
    assert "| model | speech (Whisper) |" in report and "| model | text (emitted, secondary) |" in report
    assert (out / "timeline_model_start_stop.png").exists()
    assert len((out / "model" / "episodes.jsonl").read_text().splitlines()) == 1
    episode = next(p for p in (out / "model").iterdir() if p.is_dir())
    assert {p.name for p in episode.iterdir()} == {"output.wav", "output.json", "text.json"}


def test_sounding_segments_bridge_pad_and_cut():
    from microturn.eval.proactive import sounding_segments

    x = np.zeros(40 * 16_000, np.float32)
    for a, b in ((1.0, 1.5), (1.7, 2.0), (5.0, 5.3), (10.0, 38.0)):
        x[int(a * 16_000) : int(b * 16_000)] = 0.1
    segments = sounding_segments(x)
    expected = [(0.75, 2.25), (4.75, 5.55), (9.75, 34.75), (34.75, 38.25)]  # bridged, padded, cut at 25 s
    assert len(segments) == len(expected)
    for (a, b), (c, d) in zip(segments, expected, strict=True):
        assert a == pytest.approx(c, abs=1e-6) and b == pytest.approx(d, abs=1e-6)
