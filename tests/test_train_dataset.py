"""Corpus conversations -> micro-turn tensors: labels at the right micro-turns, augmentation, determinism.

`write_corpus` (also used by the other training tests) writes a tiny corpus in the documented on-disk format:
tone bursts stand in for speech, and a hand-made timeline says who said which word when.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from microturn import audio
from microturn.model.config import get_config
from microturn.model.queues import TokenQueue, arrival_turn, render_queued_stream
from microturn.model.tokenizer import PAD, TextTokenizer
from microturn.runtime.session import Session
from microturn.train.augment import augment_user, mu_law_codec, ola_stretch, pitch_shift
from microturn.train.dataset import (
    CropPlan,
    CropRenderer,
    CropSampler,
    read_conversations,
    render_tracks,
    validation_batches,
)

torch.set_num_threads(1)

USER_LINES = ["hi there how are you", "what time is it now", "tell me about the weather", "thanks a lot"]
ASSISTANT_LINES = ["i am fine thank you", "it is noon", "sunny and warm today", "you are welcome"]


def _tone_words(wave: np.ndarray, words: list[dict], pitch: float) -> None:
    for i, w in enumerate(words):
        a, b = int(w["start"] * audio.SAMPLE_RATE), int(w["end"] * audio.SAMPLE_RATE)
        t = np.arange(b - a) / audio.SAMPLE_RATE
        f0 = pitch * (1 + 0.1 * (i % 3))
        wave[a:b] += 0.2 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 2.5 * f0 * t)


def write_conversation(folder: Path, conv_id: str, split: str, seed: int) -> dict:
    """User and assistant alternate turns of tone-burst 'words'; background text arrives before each reply."""
    rng = np.random.default_rng(seed)
    words, utterances, background = [], [], []
    t = 0.3
    for turn in range(4):
        for speaker, lines in (("user", USER_LINES), ("assistant", ASSISTANT_LINES)):
            text = lines[(turn + seed) % len(lines)]
            start = t
            if speaker == "assistant":
                background.append({"time": round(t - 0.25, 3), "text": text, "utterance": len(utterances)})
            for word in text.split():
                dur = 0.15 + 0.05 * len(word) / 3
                words.append(
                    {
                        "speaker": speaker,
                        "text": word,
                        "start": round(t, 3),
                        "end": round(t + dur, 3),
                        "utterance": len(utterances),
                    }
                )
                t += dur + 0.05
            utterances.append(
                {
                    "speaker": speaker,
                    "text": text,
                    "start": round(start, 3),
                    "end": round(t, 3),
                    "kind": "turn",
                    "voice": "tone",
                    "truncated": False,
                }
            )
            t += float(rng.uniform(0.3, 0.8))
    if seed % 2 == 0:  # an assistant backchannel over the last user turn
        u = utterances[-2]
        words.append(
            {
                "speaker": "assistant",
                "text": "mhm",
                "start": u["start"] + 0.4,
                "end": u["start"] + 0.7,
                "utterance": len(utterances),
            }
        )
        words.sort(key=lambda w: w["start"])
        utterances.append(
            {
                "speaker": "assistant",
                "text": "mhm",
                "start": u["start"] + 0.4,
                "end": u["start"] + 0.7,
                "kind": "backchannel",
                "voice": "tone",
                "truncated": False,
            }
        )
    duration = round(t + 0.5, 1)
    n = int(duration * audio.SAMPLE_RATE)
    user, assistant = np.zeros(n, np.float32), np.zeros(n, np.float32)
    _tone_words(user, [w for w in words if w["speaker"] == "user"], 180.0)
    _tone_words(assistant, [w for w in words if w["speaker"] == "assistant"], 120.0)
    user += 0.3 * np.roll(assistant, 800) + 0.002 * rng.standard_normal(n).astype(np.float32)  # echo + noise
    folder.mkdir(parents=True)
    audio.write_wav(folder / "user.wav", user)
    audio.write_wav(folder / "assistant.wav", assistant)
    timeline = {
        "id": conv_id,
        "split": split,
        "sample_rate": 16000,
        "duration_s": duration,
        "source": "test",
        "words": words,
        "utterances": utterances,
        "events": [],
        "background": background,
    }
    (folder / "timeline.json").write_text(json.dumps(timeline))
    return {"id": conv_id, "split": split, "path": conv_id, "duration_s": duration, "phenomena": {}}


def write_corpus(root: Path, split: str = "train", n: int = 3, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    entries = [write_conversation(root / f"{split}{i}", f"{split}{i}", split, seed + i) for i in range(n)]
    (root / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return root


def fixture_tokenizer() -> TextTokenizer:
    return TextTokenizer.train(USER_LINES + ASSISTANT_LINES + ["mhm"], vocab_size=300)


def test_queue_rule_is_shared_and_fifo():
    assert arrival_turn(0.0, 0.2) == 0 and arrival_turn(0.2, 0.2) == 0 and arrival_turn(0.21, 0.2) == 1
    released = render_queued_stream([(1, [5, 6, 7]), (2, [8])], n_turns=6, per_turn=1)
    assert released == [[], [5], [6], [7], [8], []]
    queue = TokenQueue(per_turn=2)
    queue.push([1, 2, 3])
    assert queue.pop() == [1, 2] and queue.pop() == [3] and queue.pop() == [] and len(queue) == 0


def test_a_new_background_message_supersedes_the_rest_of_the_last():
    """Background text: a message arriving while the last one is still queued drops its rest, in the
    renderer and in a session alike (the same rule, so training and runtime see the same stream)."""
    released = render_queued_stream([(1, [5, 6, 7]), (2, [8, 9])], n_turns=6, per_turn=1, supersede=True)
    assert released == [[], [5], [8], [9], [], []]
    tok = fixture_tokenizer()
    session = Session(tok, chunk_samples=3200, max_backlog=10, video_size=32, video_interval_turns=1)
    session.push_background("hello there friend", message="a")
    session.push_background("how are you", message="a")  # the same message goes on
    first = tok.encode_message("hello there friend") + tok.encode("how are you")
    assert list(session.background.pending) == first
    session.push_background("yes", message="b")
    assert list(session.background.pending) == tok.encode_message("yes")


def test_tracks_put_words_at_their_micro_turns(tmp_path):
    corpus = write_corpus(tmp_path / "c", n=1)
    tok = fixture_tokenizer()
    conv = read_conversations(corpus, tok)[0]
    cfg = get_config("tiny")
    tracks = render_tracks(conv, cfg)
    words = [w for w in json.loads((corpus / "train0" / "timeline.json").read_text())["words"]]
    first_asst = next(w for w in words if w["speaker"] == "assistant")
    window = int(first_asst["start"] / 0.2)
    assert tracks["text"][window - 1, 0] == tok.encode_word(first_asst["text"])[0]  # emitted one turn ahead
    assert tracks["speaking"][int((first_asst["start"] + first_asst["end"]) / 0.4)] == 1
    assert tracks["speaking"][:2].sum() == 0
    first_user = words[0]
    assert tracks["user_text"][int(first_user["start"] / 0.2) + cfg.user_transcript_delay, 0] != PAD
    assert tracks["floor"][int((first_user["start"] + first_user["end"]) / 0.4)] == 1  # user holds the floor
    assert tracks["floor"][int((first_asst["start"] + first_asst["end"]) / 0.4)] == 2
    assert (tracks["floor"] == 4).any()  # the backchannel
    bg = tracks["bg"]
    assert (bg >= 0).sum() == sum(len(ids) for _, ids in conv.background)
    assert bg[arrival_turn(conv.background[0][0], 0.2)] == conv.background[0][1][0]
    # every assistant token lands somewhere, in order, K per micro-turn at most
    emitted = [int(i) for i in tracks["text"].reshape(-1) if i != PAD]
    assert emitted == [i for speaker, *_, ids in conv.words if speaker == "assistant" for i in ids]


def test_the_wait_act_and_pause_tracks_mark_wait_acts_and_user_pauses_only(tmp_path):
    """The label tracks the wait-act and pause gate weights read: on where a wait act ("hmm,") is said,
    off for the assistant's other speech; on through a user's pause event, off elsewhere."""
    corpus = write_corpus(tmp_path / "c", n=1)
    path = corpus / "train0" / "timeline.json"
    timeline = json.loads(path.read_text())
    asst = [i for i, u in enumerate(timeline["utterances"]) if u["speaker"] == "assistant"]
    timeline["utterances"][asst[0]]["kind"] = "filler"  # its first turn taken as a wait act
    timeline["events"] = [{"type": "pause", "speaker": "user", "start": 0.6, "end": 1.4}]
    path.write_text(json.dumps(timeline))
    tracks = render_tracks(read_conversations(corpus, fixture_tokenizer())[0], get_config("tiny"))
    assert np.flatnonzero(tracks["user_pause"]).tolist() == [3, 4, 5, 6]
    wait, speaking = tracks["wait_act"], tracks["speaking"].astype(bool)
    act = timeline["utterances"][asst[0]]
    assert wait[int((act["start"] + act["end"]) / 0.4)] and not (wait & ~speaking).any()
    later = timeline["utterances"][asst[1]]
    assert (
        speaking[int((later["start"] + later["end"]) / 0.4)]
        and not wait[int(later["start"] / 0.2) + 1 :].any()
    )


def test_crops_have_model_shapes_and_are_reproducible(tmp_path):
    corpus = write_corpus(tmp_path / "c", n=2)
    tok = fixture_tokenizer()
    cfg = get_config("tiny")
    convs = read_conversations(corpus, tok)
    sampler = CropSampler(CropRenderer(convs, cfg), CropPlan(20, 30, 3), seed=4)
    a, b = sampler.batch(7), sampler.batch(7)
    t = a.user_dmel.shape[1]
    assert 20 <= t <= 30 and a.user_dmel.shape == (3, t, cfg.frames, cfg.n_mels)
    assert a.text.shape == (3, t, cfg.text_slots) and a.mel.shape == (3, t, cfg.frames, cfg.n_mels)
    for k, v in vars(a).items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, getattr(b, k)), k
    assert not torch.equal(sampler.batch(8).user_dmel[0, :20], a.user_dmel[0, :20])
    assert a.mel.min() >= -1 and a.mel.max() <= 1
    # the out token hears exactly what plays: loud bins only where the assistant speaks
    silent = a.speaking == 0
    assert (a.out_dmel[silent] == 0).all() and (a.out_dmel[~silent] > 0).any()
    valid = validation_batches(convs, cfg, CropPlan(20, 30, 2), n_batches=1)[0]
    assert valid.user_dmel.shape[1] == 30 and valid.gap.sum() == 0


def test_augmentation_keeps_length_and_timing():
    rng = np.random.default_rng(0)
    n = 16000
    t = np.arange(n) / 16000
    x = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    x[: n // 2] = 0  # speech starts half-way
    for f in (
        lambda: pitch_shift(x, 2.0),
        lambda: mu_law_codec(x),
        lambda: ola_stretch(x, n),
        lambda: augment_user(x, x, rng),
    ):
        y = f()
        assert y.shape == x.shape and y.dtype == np.float32
    shifted = pitch_shift(x, 2.0)
    # energy stays where the speech is (timing kept), pitch moves up
    assert np.abs(shifted[: n // 2 - 800]).max() < 0.05 and np.abs(shifted[n // 2 + 800 :]).mean() > 0.1
    power = np.abs(np.fft.rfft(shifted[n // 2 :])[50:200]) ** 2  # 100-400 Hz in 2 Hz bins
    centroid = float((power * np.arange(100, 400, 2)).sum() / power.sum())
    assert 212 < centroid < 240  # 200 Hz * 2^(2/12) = 224 Hz (plain OLA smears it a little)
    assert not np.allclose(
        augment_user(x, x, np.random.default_rng(1)), augment_user(x, x, np.random.default_rng(2))
    )


def test_crop_longer_than_the_conversation_is_padded_and_masked(tmp_path):
    corpus = write_corpus(tmp_path / "c", n=1)
    cfg = get_config("tiny")
    renderer = CropRenderer(read_conversations(corpus, fixture_tokenizer()), cfg, augment=None)
    n = renderer.n_turns(0, 0)
    sample = renderer.render(0, 0, 0, n + 40, np.random.default_rng(0))
    assert sample["text"].shape == (n + 40, cfg.text_slots) and sample["bg_tokens"].shape == (n + 40,)
    assert sample["valid"][: n - 1].all() and not sample["valid"][n - 1 :].any()
    assert (sample["speaking"][n:] == 0).all() and (sample["bg_tokens"][n:] == -1).all()


def test_speed_segment_equals_slicing_the_resampled_signal():
    from microturn.train.dataset import _speed_segment

    x = np.random.default_rng(0).standard_normal(64000).astype(np.float32)
    for src, dst in ((20, 19), (19, 20), (1, 1)):
        full = audio.resample(x, src, dst)
        assert np.array_equal(_speed_segment(x, 20000, 40000, src, dst), full[20000:40000])


def test_a_conversation_that_vanishes_is_skipped(tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "c", n=2)
    sampler = CropSampler(
        CropRenderer(read_conversations(corpus, fixture_tokenizer()), get_config("tiny")),
        CropPlan(20, 20, 4),
        0,
    )
    (corpus / "train1" / "user.wav").unlink()
    monkeypatch.setattr("microturn.train.dataset.time.sleep", lambda s: None)  # no waiting in the test
    assert sampler.batch(0).user_dmel.shape[0] == 4
    assert [c.id for c in read_conversations(corpus, fixture_tokenizer())] == ["train0"]
