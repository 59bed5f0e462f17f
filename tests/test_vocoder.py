"""The streaming vocoder: exact streaming, causality, real resynthesis quality, silence, checkpoint errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from microturn import cli
from microturn.audio import HOP, LOG_FLOOR, SAMPLE_RATE, log_mel
from microturn.runtime.vocoder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Vocoder,
    VocoderConfig,
    VocoderState,
    VocoderStream,
    load_default_vocoder,
    load_vocoder,
    save_vocoder,
)
from microturn.train.vocoder import (
    HELD_OUT_SENTENCES,
    load_joe_voice,
    resynthesis_distance,
    synthesize_joe,
    whisper_wer,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def untrained() -> Vocoder:
    torch.manual_seed(0)
    return Vocoder(VocoderConfig()).eval()


@pytest.fixture(scope="module")
def shipped() -> Vocoder:
    return load_default_vocoder()


@pytest.fixture(scope="module")
def joe_sentence() -> np.ndarray:
    return synthesize_joe(load_joe_voice(), HELD_OUT_SENTENCES[0])  # written here, not a chitchat line


def speech_like_mel(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 80, generator=generator) * 2.0 - 5.0


@pytest.mark.parametrize("model_name", ["untrained", "shipped"])
def test_streaming_chunks_equal_whole_signal(model_name: str, request: pytest.FixtureRequest) -> None:
    vocoder: Vocoder = request.getfixturevalue(model_name)
    mel = speech_like_mel(3, 100)
    whole, _ = vocoder.synthesize(mel)
    state, chunks = None, []
    for size in (20, 20, 7, 13, 20, 20):  # 200 ms micro-turns, and odd sizes too
        start = sum(c.shape[-1] for c in chunks) // HOP
        out, state = vocoder.synthesize(mel[:, start : start + size], state)
        chunks.append(out)
    streamed = torch.cat(chunks, dim=-1)
    assert streamed.shape == whole.shape == (3, 100 * HOP)
    assert (streamed - whole).abs().max().item() < 1e-4
    assert whole.abs().max().item() > 1e-3  # not trivially equal because both are silent


def test_batched_state_matches_separate_sessions(shipped: Vocoder) -> None:
    mel = speech_like_mel(2, 40, seed=1)
    streams = [VocoderStream(shipped) for _ in range(2)]
    separate = [
        np.concatenate([s.push(mel[i, c : c + 20].numpy()) for c in (0, 20)]) for i, s in enumerate(streams)
    ]
    state = VocoderState.cat([shipped.new_state(1), shipped.new_state(1)])
    first, state = shipped.synthesize(mel[:, :20], state)
    halves = state.split()
    second = [shipped.synthesize(mel[i : i + 1, 20:], halves[i])[0] for i in range(2)]
    for i in range(2):
        batched = torch.cat([first[i], second[i][0]]).numpy()
        np.testing.assert_allclose(batched, separate[i], atol=1e-5)


def test_chunk_output_does_not_depend_on_future_frames(shipped: Vocoder) -> None:
    mel = speech_like_mel(1, 60, seed=2)
    changed = mel.clone()
    changed[:, 40:] += torch.randn_like(changed[:, 40:]) * 3
    a, _ = shipped.synthesize(mel)
    b, _ = shipped.synthesize(changed)
    assert torch.equal(a[:, : 40 * HOP], b[:, : 40 * HOP])
    assert (a[:, 40 * HOP :] - b[:, 40 * HOP :]).abs().max().item() > 1e-3  # the change is audible later


def test_resynthesis_of_held_out_speech_is_close_and_intelligible(
    shipped: Vocoder, untrained: Vocoder, joe_sentence: np.ndarray
) -> None:
    trained_distance, _ = resynthesis_distance(shipped, joe_sentence)
    untrained_distance, _ = resynthesis_distance(untrained, joe_sentence)
    assert trained_distance < 0.4, trained_distance  # nats of mean |log-mel difference|
    assert trained_distance < 0.25 * untrained_distance, (trained_distance, untrained_distance)
    # Whisper hears the sentence's words in the resynthesis as it does in piper's original.
    wave = torch.from_numpy(joe_sentence[: len(joe_sentence) // HOP * HOP])
    vocoded, _ = shipped.synthesize(log_mel(wave)[None])
    assert whisper_wer(HELD_OUT_SENTENCES[0], vocoded[0].numpy()) <= 0.15


def test_output_follows_the_mel_level(shipped: Vocoder, joe_sentence: np.ndarray) -> None:
    wave = torch.from_numpy(joe_sentence[: len(joe_sentence) // HOP * HOP])
    loud, _ = shipped.synthesize(log_mel(wave)[None])
    quiet, _ = shipped.synthesize(log_mel(wave * 0.25)[None])
    ratio = quiet.pow(2).mean().sqrt() / loud.pow(2).mean().sqrt()
    assert 0.15 < ratio.item() < 0.4  # -12 dB in, about -12 dB out
    original = wave.pow(2).mean().sqrt()
    assert 0.5 < (loud.pow(2).mean().sqrt() / original).item() < 2.0


def test_silence_in_gives_near_silence_out(shipped: Vocoder) -> None:
    silence = torch.full((2, 100, 80), math.log(LOG_FLOOR))
    out, _ = shipped.synthesize(silence)
    rms = out.pow(2).mean().sqrt().item()
    assert rms < 1e-3, rms  # below -60 dBFS


def test_save_load_round_trip(untrained: Vocoder, tmp_path) -> None:
    save_vocoder(untrained, tmp_path)
    loaded = load_vocoder(tmp_path)
    mel = speech_like_mel(1, 20)
    assert torch.equal(untrained.synthesize(mel)[0], loaded.synthesize(mel)[0])
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_checkpoints_give_clear_errors(untrained: Vocoder, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_vocoder(tmp_path / "missing")
    save_vocoder(untrained, tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE}.*safetensors"):
        load_vocoder(tmp_path)
    save_vocoder(Vocoder(VocoderConfig(dim=64)), tmp_path)
    (tmp_path / CONFIG_FILE).write_text(VocoderConfig(dim=96).to_json())
    with pytest.raises(ValueError, match="shape"):
        load_vocoder(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"{CONFIG_FILE}.*JSON"):
        load_vocoder(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"dim": 64, "layers": 3}))
    with pytest.raises(ValueError, match="keys"):
        load_vocoder(tmp_path)


def test_train_cli_writes_and_resumes_a_checkpoint(joe_sentence: np.ndarray, tmp_path, capsys) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    # Seed the training-audio cache with 18 s of joe speech instead of synthesising it again.
    cache.mkdir()
    np.save(cache / "joe_0.3min_seed0.npy", np.resize(joe_sentence, int(0.3 * 60 * SAMPLE_RATE)))
    common = ["--out", str(out), "--cache", str(cache), "--audio-minutes", "0.3"]
    assert cli.main(["train-vocoder", *common, "--steps", "3"]) == 0
    assert json.loads((out / "train_state.json").read_text())["step"] == 3
    assert cli.main(["train-vocoder", *common, "--steps", "2"]) == 2  # refuses to overwrite
    assert "already holds a vocoder" in capsys.readouterr().err
    assert cli.main(["train-vocoder", *common, "--steps", "2", "--resume"]) == 0
    state = json.loads((out / "train_state.json").read_text())
    assert state["step"] == 5 and math.isfinite(state["valid_log_mel_distance"])
    load_vocoder(out)
    assert cli.main(["train-vocoder", "--out", str(tmp_path / "none"), "--steps", "1", "--resume"]) == 2
    assert "no training state" in capsys.readouterr().err
