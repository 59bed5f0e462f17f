"""Issue 6's "And" checks in eval fdbench: the speech word error rate (words said vs words Whisper
heard) and the self-echo feedback path of the real-time loop (causal, at the drawn delay)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from test_eval_bench import PAUSE, make_sample
from test_runtime_input import CHUNK, speechlike

from microturn.audio import SAMPLE_RATE, read_wav
from microturn.data.effects import EchoPath, echo
from microturn.eval.fdbench import aggregate, speech_errors
from microturn.eval.report import write_report
from microturn.eval.runner import EchoSpec, parse_delay_ms, run_fdbench
from microturn.runtime.stream_loop import run_stream
from microturn.runtime.system import BackgroundText, StepResult


def test_speech_errors_on_hand_built_pairs() -> None:
    said = "hello there, how are you".split()
    assert speech_errors(said, said) == {"speech_words": 5, "speech_errors": 0, "speech_wer": 0.0}
    # case and punctuation do not count; a deletion ("there") and an insertion ("doing") do
    r = speech_errors(said, ["Hello.", "How", "are", "you", "doing?"])
    assert r == {"speech_words": 5, "speech_errors": 2, "speech_wer": 0.4}
    # one substitution, not a deletion plus an insertion: the alignment is a minimum edit distance
    assert speech_errors(["the", "cat", "sat"], ["the", "hat", "sat"])["speech_errors"] == 1
    assert speech_errors(["i'm", "fine"], ["I'm", "fine."])["speech_errors"] == 0
    assert speech_errors(["a", "b"], [])["speech_wer"] == 1.0  # nothing intelligible
    assert speech_errors(["a"], ["x", "y", "z", "a"])["speech_wer"] == 3.0  # insertions can exceed 1
    # nothing said: the words heard are insertions, the sample's own rate is undefined
    assert speech_errors([], ["um", "yes"]) == {"speech_words": 0, "speech_errors": 2, "speech_wer": None}
    # pooled over samples and per task: all errors over all words said
    records = [
        {"task": "pause", "to": 0, "speech_words": 4, "speech_errors": 1},
        {"task": "pause", "to": 0, "speech_words": 0, "speech_errors": 2},
        {"task": "turn_taking", "to": 1, "latency_s": 0.2, "speech_words": 10, "speech_errors": 0},
    ]
    m = aggregate(records)
    assert m["speech_wer"] == pytest.approx(3 / 14) and m["speech_words"] == 14
    assert m["speech_wer_pause"] == pytest.approx(3 / 4) and m["speech_wer_turn_taking"] == 0.0
    assert "speech_wer" not in aggregate([{"task": "pause", "to": 0}])


def test_echo_path_streams_the_corpus_echo() -> None:
    x = speechlike(SAMPLE_RATE, 1.3, seed=3)
    whole = echo(x, 0.083, -10.0, np.random.default_rng(7))
    path = EchoPath(0.083, -10.0, np.random.default_rng(7))
    blocks = np.concatenate([path.process(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    np.testing.assert_allclose(blocks, whole, atol=1e-6)
    assert not blocks[: int(0.083 * SAMPLE_RATE)].any() and blocks[int(0.083 * SAMPLE_RATE)] != 0


class Talker:
    """Speaks a burst of `level` in chosen steps and records every input chunk it is fed."""

    def __init__(
        self,
        burst_steps: set[int],
        level: float = 0.5,
        floors: dict[int, str] | None = None,
        slow: dict[int, float] | None = None,
    ):
        self.burst_steps, self.level, self.floors, self.slow = burst_steps, level, floors or {}, slow or {}
        self.t, self.seen = 0, []

    def reset(self, background: list[BackgroundText]) -> None:
        self.t, self.seen = 0, []

    def step(self, chunk: np.ndarray) -> StepResult:
        self.seen.append(chunk.copy())
        time.sleep(self.slow.get(self.t, 0.0))
        speaking = self.t in self.burst_steps
        rng = np.random.default_rng(self.t)
        audio = (self.level * rng.uniform(-1, 1, CHUNK)).astype(np.float32) if speaking else np.zeros(CHUNK)
        floor = self.floors.get(self.t, "speaking" if speaking else "listening")
        self.t += 1
        return StepResult(audio.astype(np.float32), ["hello", "there"] if speaking else [], floor)


def test_echo_reaches_the_input_causally_and_at_its_delay() -> None:
    x = speechlike(SAMPLE_RATE, 3.0, seed=1)
    delay_s = 0.117
    system = Talker({3, 4, 9})
    run = run_stream(system, x, [], feedback=EchoPath(delay_s, -10.0, np.random.default_rng(5)))
    heard = np.concatenate(system.seen)[: len(x)]
    np.testing.assert_array_equal(run.heard, heard)  # what the run reports is what the system was fed
    leak = heard - x
    # the input differs from the clean input exactly from the first played sample + the delay on ...
    onset = int(np.flatnonzero(run.output)[0])
    assert onset == round(run.steps[3].play_s * SAMPLE_RATE) >= 4 * CHUNK  # step 3 plays after its input
    first_leak = int(np.flatnonzero(np.abs(leak) > 1e-7)[0])
    assert first_leak == onset + round(delay_s * SAMPLE_RATE)
    # ... and is the loudspeaker echo of the played output, -10 dB down
    expected = echo(run.output, delay_s, -10.0, np.random.default_rng(5))
    np.testing.assert_allclose(leak, expected, atol=1e-5)
    ratio = np.sqrt(np.mean(leak**2)) / np.sqrt(np.mean(run.output**2))
    assert 0.1 < ratio < 0.32  # -10 dB is 0.32 in amplitude; the speaker band takes a little more
    # causal: the steps whose input was recorded before the echo's first sample heard the clean input
    padded = np.pad(x, (0, len(system.seen) * CHUNK - len(x)))
    for t, chunk in enumerate(system.seen[: first_leak // CHUNK]):
        np.testing.assert_array_equal(chunk, padded[t * CHUNK : (t + 1) * CHUNK])
    # without feedback the system hears the clean input
    clean = Talker({3, 4, 9})
    assert run_stream(clean, x, []).heard is None
    np.testing.assert_array_equal(np.concatenate(clean.seen)[: len(x)], x)


def test_words_of_audio_cleared_by_a_yield_are_not_said() -> None:
    # steps 1-5 speak; step 1 is slow so a backlog builds; step 6 yields and clears what is still queued
    system = Talker({1, 2, 3, 4, 5}, floors={6: "yielding"}, slow={1: 0.5})
    run = run_stream(system, np.zeros(int(2.0 * SAMPLE_RATE), np.float32), [])
    yield_done = run.steps[6].done_s
    assert not run.output[int(np.ceil(yield_done * SAMPLE_RATE)) :].any()
    played = [
        round(run.steps[t].play_s + i * 0.1, 4)
        for t in range(1, 6)
        for i in range(2)
        if run.steps[t].play_s + i * 0.1 < yield_done
    ]
    assert 2 <= len(played) < 10  # the backlog was partly cleared
    assert [w["start"] for w in run.words] == played


def test_parse_delay_ms() -> None:
    assert parse_delay_ms("50-150") == (50.0, 150.0) and parse_delay_ms("80") == (80.0, 80.0)
    for bad in ("150-50", "x", "1-2-3", "-5"):
        with pytest.raises(ValueError, match="echo delay"):
            parse_delay_ms(bad)
    spec = EchoSpec(-10.0, (50.0, 150.0), seed=2)
    assert spec.describe() == "echo -10 dB, 50-150 ms"
    delays = {spec.path(f"pause/{i:04d}").delay_s for i in range(20)}
    assert len(delays) == 20 and all(0.05 <= d <= 0.15 for d in delays)
    assert (
        spec.path("pause/0001").delay_s == EchoSpec(-10.0, (50.0, 150.0), seed=2).path("pause/0001").delay_s
    )


def test_fdbench_run_with_echo_writes_what_the_system_heard(tmp_path) -> None:
    # a quiet talker (below the energy gate, so Whisper is not run): its words are said but not heard
    data = tmp_path / "data" / "pause"
    for name in ("0001", "0002", "0003"):
        make_sample(data / name, "pause.json", PAUSE, np.zeros(2 * SAMPLE_RATE, np.float32))
    spec = EchoSpec(-10.0, (50.0, 150.0))
    run = run_fdbench(
        tmp_path / "data",
        lambda: Talker({2, 3}, level=0.005),
        run_stream,
        tmp_path / "out",
        system_name="talker",
        echo=spec,
        per_folder=2,
    )
    assert [r["sample"] for r in run.records] == ["pause/0001", "pause/0002"]
    for record in run.records:
        assert 50.0 <= record["echo_delay_ms"] <= 150.0
        assert record["speech_words"] == 4 and record["speech_wer"] == 1.0
        out = tmp_path / "out" / "talker" / record["sample"]
        heard, _ = read_wav(out / "heard.wav")
        assert np.abs(heard).max() > 0  # the input was silent: all of it is the echo
        assert [w["text"] for w in json.loads((out / "said.json").read_text())] == ["hello", "there"] * 2
    assert run.metrics["speech_wer"] == 1.0 and run.metrics["speech_wer_pause"] == 1.0
    report = write_report(tmp_path / "report", [run]).read_text()
    assert "| talker | oracle | echo -10 dB, 50-150 ms |" in report and "speech WER pause" in report
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["echo"] == {"level_db": -10.0, "delay_ms": [50.0, 150.0], "seed": 0}
