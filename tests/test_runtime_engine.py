"""The engine, sessions, simulate and bench, on a tiny random-init checkpoint built and saved here."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from microturn.cli import main
from microturn.model.checkpoint import save_checkpoint
from microturn.model.config import get_config
from microturn.model.interaction import InteractionModel
from microturn.model.tokenizer import BOS, TextTokenizer
from microturn.runtime.checkpoint import load_runtime
from microturn.runtime.engine import Engine, EngineConfig
from microturn.runtime.vocoder import Vocoder, VocoderConfig, save_vocoder

CHUNK = 3200
WORDS = "hello there how are you doing today the weather is nice and warm what should i wear a shirt".split()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 10)) for _ in range(300)]
    cfg = get_config("tiny")
    tokenizer = TextTokenizer.train(texts, cfg.vocab_size)
    path = tmp_path_factory.mktemp("runtime") / "tiny"
    save_checkpoint(path, InteractionModel(cfg), tokenizer)
    save_vocoder(Vocoder(VocoderConfig(dim=32, hidden=64, blocks=2)), path / "vocoder")
    return path


@pytest.fixture(scope="module")
def models(checkpoint: Path):
    torch.set_num_threads(1)
    return load_runtime(checkpoint)


def make_engine(models, **config) -> Engine:
    return Engine(EngineConfig(**config), models.model, models.tokenizer, models.vocoder)


def noise(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def test_sessions_join_and_leave_mid_run(models) -> None:
    engine = make_engine(models)
    seen: list[int] = []
    a = engine.open_session(on_output=lambda o: seen.append(o.index))
    x = noise(CHUNK * 12, 1)
    for t in range(3):
        a.push_audio(x[t * CHUNK : (t + 1) * CHUNK], 16000)
        assert list(engine.step_once()) == [a]
    b = engine.open_session()  # joins at the next micro-turn
    for t in range(3, 6):
        a.push_audio(x[t * CHUNK : (t + 1) * CHUNK], 16000)
        b.push_audio(x[:CHUNK], 24000)  # another rate; a 24 kHz packet holds 133 ms
        out = engine.step_once()
        assert set(out) == {a, b} and engine.state.model.batch_size == 2
        assert out[b].index == t - 3 and out[a].index == t
        assert out[a].audio_16k.shape == (CHUNK,) and out[a].audio_24k.shape == (4800,)
        assert out[b].gap_filled  # only 2133 samples per slot arrived
    engine.close_session(a)  # leaves at the next micro-turn
    out = engine.step_once()
    assert list(out) == [b] and out[b].index == 3 and engine.state.model.batch_size == 1
    assert seen == list(range(6))  # a's callback ran once per micro-turn it was in, never after it left
    engine.close_session(b)
    assert engine.step_once() == {} and engine.state is None


def test_a_failing_callback_closes_only_its_session(models, capsys) -> None:
    engine = make_engine(models)

    def broken(_output) -> None:
        raise OSError("client went away")

    bad, good = engine.open_session(on_output=broken), engine.open_session()
    assert set(engine.step_once()) == {bad, good}
    assert "callback failed" in capsys.readouterr().err and bad.closed
    assert list(engine.step_once()) == [good]


def run_session(models, others: int, batch_invariant: bool, steps: int = 10) -> list:
    """Session `a` with the same input and seed, with `others` sessions joining and leaving around it."""
    engine = make_engine(models, batch_invariant=batch_invariant)
    crowd = [engine.open_session(seed=100 + i) for i in range(others)]
    a = engine.open_session(seed=7)
    x = noise(CHUNK * steps, 2)
    outputs = []
    for t in range(steps):
        a.push_audio(x[t * CHUNK : (t + 1) * CHUNK], 16000)
        for i, s in enumerate(crowd):
            s.push_audio(noise(CHUNK, 10 * t + i), 16000)
        if t == 2:
            a.request_speech(turns=4)  # the random-init model rarely opens its gate by itself
        if t == 4 and crowd:
            engine.close_session(crowd.pop(0))
            crowd.append(engine.open_session(seed=99))
        outputs.append(engine.step_once()[a])
    return outputs


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_same_output_alone_and_batched(models, batch_invariant: bool) -> None:
    alone = run_session(models, 0, batch_invariant)
    crowded = run_session(models, 3, batch_invariant)
    for x, y in zip(alone, crowded, strict=True):
        assert (x.speaking, x.floor, x.words, x.user_speaking) == (
            y.speaking,
            y.floor,
            y.words,
            y.user_speaking,
        )
        if batch_invariant:  # bitwise
            assert np.array_equal(x.audio_16k, y.audio_16k) and np.array_equal(x.audio_24k, y.audio_24k)
        else:  # the batched kernels may round differently, by float32 rounding only
            np.testing.assert_allclose(x.audio_24k, y.audio_24k, atol=1e-5)
    assert any(o.speaking for o in alone)  # the comparison covered speech, not only silence


def test_lost_and_late_packets_never_stall_the_clock(models) -> None:
    engine = make_engine(models)
    a = engine.open_session()
    x = noise(CHUNK * 6, 3)
    a.push_audio(x[:CHUNK], 16000)
    assert not engine.step_once()[a].gap_filled
    lost = engine.step_once()[a]  # packet 1 did not arrive in time
    assert lost.gap_filled and lost.index == 1
    a.push_audio(x[CHUNK : 2 * CHUNK], 48000 // 3)  # packet 1 arrives late, then packet 2 on time
    a.push_audio(x[2 * CHUNK : 3 * CHUNK], 16000)
    late = engine.step_once()[a]
    assert not late.gap_filled and late.index == 2
    assert not engine.step_once()[a].gap_filled  # packet 2, one slot later than sent


def test_client_controls(models) -> None:
    engine = make_engine(models)
    a = engine.open_session()
    a.request_speech(turns=2)
    assert [engine.step_once()[a].speaking for _ in range(2)] == [True, True]
    a.cancel_speech()
    assert not engine.step_once()[a].speaking
    a.transcript = [{"text": "one", "start": 0.4, "end": 0.6}, {"text": "two", "start": 0.8, "end": 1.0}]
    assert [w["text"] for w in a.truncate(0.7)] == ["two"] and [w["text"] for w in a.transcript] == ["one"]
    with pytest.raises(ValueError, match="RGB uint8"):
        a.push_video(np.zeros((4, 4), np.uint8))
    a.push_video(np.zeros((48, 64, 3), np.uint8))
    a.push_text("hello there")
    a.push_background("the weather is nice")  # a new message: BOS and its four tokens
    assert len(a.typed) == 2 and len(a.background) == 5
    engine.step_once()
    assert len(a.typed) == 1 and len(a.background) == 4  # one token per micro-turn per stream
    a.push_background("and warm", message="bg1")  # a new message supersedes the rest of the last
    a.push_background("today", message="bg1")  # the same task's next sentence continues its message
    assert list(a.background.pending) == [BOS, *models.tokenizer.encode("and warm today")]
    a.push_background("no idea")  # no task: a message of its own
    assert list(a.background.pending) == [BOS, *models.tokenizer.encode("no idea")]


def test_long_session_state_stays_flat(models) -> None:
    engine = make_engine(models)
    a = engine.open_session()
    window_turns = models.model.cfg.window // 2
    sizes = []
    for t in range(3 * window_turns):
        a.push_audio(noise(CHUNK, t), 16000)
        engine.step_once()
        if t in (1, window_turns, 3 * window_turns - 1):
            sizes.append(sum(k.numel() for k in engine.state.model.keys) + engine.state.mel_history.numel())
    assert sizes[0] == sizes[1] == sizes[2]
    # positions keep counting (the last out token, 2 * turns - 1, enters the ring with the next step)
    assert int(engine.state.model.slot_pos.max()) == 2 * 3 * window_turns - 2


def test_real_time_thread_keeps_the_clock(models) -> None:
    engine = make_engine(models)
    indices: list[int] = []
    done = threading.Event()

    def on_output(o) -> None:
        indices.append(o.index)
        if len(indices) == 6:
            done.set()

    a = engine.open_session(on_output=on_output)
    a.push_audio(noise(CHUNK * 8, 4), 16000)
    started = time.monotonic()
    engine.start()
    assert done.wait(5.0)
    elapsed = time.monotonic() - started
    engine.stop()
    assert indices[:6] == list(range(6))
    assert 1.0 <= elapsed < 2.5  # six 200 ms micro-turns: paced by the clock, not run ahead


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    sf.write(str(path), samples, rate, subtype="PCM_16")


def test_simulate_writes_aligned_output_of_the_input_length(checkpoint: Path, tmp_path: Path) -> None:
    n24 = 24000 * 2 + 301  # 24 kHz input, not a whole number of micro-turns
    wav = tmp_path / "in.wav"
    write_wav(wav, noise(n24, 5), 24000)
    out = tmp_path / "sim"
    assert main(["simulate", str(wav), "--out", str(out), "--checkpoint", str(checkpoint)]) == 0
    samples, rate = sf.read(str(out / "output.wav"))
    expected = int(np.ceil(n24 * 2 / 3))
    assert rate == 16000 and samples.ndim == 1 and len(samples) == expected
    timeline = json.loads((out / "timeline.json").read_text())
    assert (out / "timeline.png").stat().st_size > 1000
    assert timeline["input_sample_rate"] == 24000 and timeline["samples"] == expected
    steps = timeline["steps"]
    assert len(steps) == int(np.ceil(expected / CHUNK))
    for step, floor in zip(steps, timeline["floor"], strict=True):
        # no output before the step's input was complete plus its measured compute
        assert step["play_s"] >= (step["index"] + 1) * 0.2 + step["compute_ms"] / 1000 - 1e-3
        assert floor["start"] == step["play_s"] and floor["state"] in (
            "listening",
            "speaking",
            "backchannel",
            "yielding",
        )
    for word in timeline["words"]:
        assert word["speaker"] == "assistant" and word["end"] >= word["start"]


def test_simulate_a_folder_of_samples(checkpoint: Path, tmp_path: Path) -> None:
    for name, seconds in (("a", 1.1), ("b", 0.7)):
        folder = tmp_path / "fdb" / name
        folder.mkdir(parents=True)
        write_wav(folder / "input.wav", noise(int(16000 * seconds), 6), 16000)
    (tmp_path / "fdb" / "a" / "background.json").write_text(
        json.dumps([{"time": 0.3, "text": "hello there"}])
    )
    assert main(["simulate", str(tmp_path / "fdb"), "--checkpoint", str(checkpoint)]) == 0
    for name, seconds in (("a", 1.1), ("b", 0.7)):
        samples, _ = sf.read(str(tmp_path / "fdb" / name / "output.wav"))
        assert len(samples) == int(16000 * seconds)


def test_bad_inputs_get_clear_errors(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(50))
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0, np.float32), 16000)
    odd_rate = tmp_path / "odd.wav"
    write_wav(odd_rate, noise(4410, 7), 44100)
    good = tmp_path / "good.wav"
    write_wav(good, noise(8000, 8), 16000)
    broken = tmp_path / "broken_ckpt"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model": get_config("tiny").to_dict()}))
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    cases = [
        (corrupt, checkpoint, "corrupt.wav: not a readable audio file"),
        (empty, checkpoint, "empty.wav: empty audio file"),
        (odd_rate, checkpoint, "odd.wav: sample rate 44100 Hz is not supported"),
        (tmp_path / "missing.wav", checkpoint, "missing.wav: input not found"),
        (good, broken, "model.safetensors: corrupt or unreadable"),
        (good, tmp_path / "nowhere", "nowhere: checkpoint folder not found"),
    ]
    for wav, ckpt, message in cases:
        out = tmp_path / f"out_{wav.stem}_{ckpt.name}"
        assert main(["simulate", str(wav), "--out", str(out), "--checkpoint", str(ckpt)]) == 2
        assert message in capsys.readouterr().err
        assert not (out / "output.wav").exists()


def test_bench_quick_reports_every_figure(checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--quick", "--json", "--checkpoint", str(checkpoint)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    for key in (
        "step_ms_p50",
        "step_ms_p99",
        "realtime_factor",
        "max_realtime_sessions",
        "session_mb",
        "step_drift",
    ):
        assert key in result
    assert 0 < result["step_ms_p50"] <= result["step_ms_p99"]
    assert result["realtime_factor"] == pytest.approx(result["step_ms_p50"] / 200, rel=1e-2)
    assert result["max_realtime_sessions"] >= 1 and result["session_mb"] > 0
    assert "[bench]" in captured.err  # progress lines


def test_skipping_the_vocoder_in_silence_changes_nothing(models) -> None:
    def run(skip: bool) -> list[np.ndarray]:
        engine = make_engine(models, voice="mel")
        if not skip:
            engine.quiet_turns_needed = 10**9  # always run the vocoder
        a = engine.open_session(seed=3)
        audio = []
        for t in range(14):
            if t in (1, 9):
                a.request_speech(turns=2)
            a.push_audio(noise(CHUNK, t), 16000)
            audio.append(engine.step_once()[a].audio_24k)
        return audio

    skipped, full = run(True), run(False)
    for x, y in zip(skipped, full, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_demo_runs_the_example_conversation(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the model said:" in printed and str(out / "output.wav") in printed
    samples, rate = sf.read(str(out / "output.wav"))
    source, source_rate = sf.read(
        str(Path(__file__).parents[1] / "src/microturn/runtime/examples/conversation.wav")
    )
    assert rate == source_rate == 16000 and len(samples) == len(source)
    assert (out / "timeline.png").exists() and json.loads((out / "timeline.json").read_text())["steps"]


def test_a_transcriber_feeds_the_heard_words_memory(models) -> None:
    torch.manual_seed(1)
    hearing = InteractionModel(get_config("tiny", heard_tokens=8)).eval()
    engine = Engine(EngineConfig(), hearing, models.tokenizer, models.vocoder)
    fed, own = engine.open_session(), engine.open_session()
    x = noise(CHUNK * 4, 2)
    words = models.tokenizer.encode("what should i wear")
    for t in range(4):
        for session in (fed, own):
            session.push_audio(x[t * CHUNK : (t + 1) * CHUNK], 16000)
        if t == 1:
            fed.push_heard("what should i wear")
        engine.step_once()
        memory = engine.state.model.heard
        if t >= 1:  # from then on the fed session hears only what the transcriber gives it
            assert memory[0].external and memory[0].tokens[-len(words) :] == words
    assert not memory[1].external and len(memory[1].tokens) > 0  # the other hears through its head
    engine.close_session(fed)
    engine.close_session(own)


def test_a_start_window_counts_in_the_session_whether_stepped_batched_or_by_row(models, monkeypatch) -> None:
    gate = models.model.gate  # p = 0.25 whatever it hears: one micro-turn alone never starts, three do
    monkeypatch.setattr(gate, "weight", torch.nn.Parameter(torch.zeros_like(gate.weight)))
    monkeypatch.setattr(gate, "bias", torch.nn.Parameter(torch.full_like(gate.bias, -1.0986)))

    def speaking(window: int, batch_invariant: bool) -> list[bool]:
        monkeypatch.setattr(models.model, "cfg", replace(models.model.cfg, gate_start_window=window))
        return [o.speaking for o in run_session(models, 2, batch_invariant, steps=16)]

    assert speaking(3, batch_invariant=False) == speaking(3, batch_invariant=True)
    assert speaking(3, batch_invariant=False) != speaking(1, batch_invariant=False)  # the window mattered
