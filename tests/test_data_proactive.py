"""Proactive episodes: procedural scenes, the new corpus shapes (the assistant's own words in the right
windows after the ground-truth events), and training on video (frames per micro-turn in the batch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train_dataset import fixture_tokenizer, write_corpus

from microturn.data import video
from microturn.data.build import synth_corpus
from microturn.data.corpus import VIDEO, load_corpus
from microturn.data.proactive import PLANNED_EPISODE_S, VARIANTS, number_words
from microturn.model.config import get_config
from microturn.model.interaction import InteractionModel
from microturn.train.dataset import CropRenderer, collate, read_conversations, render_tracks

torch.set_num_threads(1)


def _light_scene(change: float, noise: float = 3.0) -> dict:
    rng = np.random.default_rng(3)
    bg = {"top": [200, 200, 210], "bottom": [180, 180, 190], "clutter": []}
    light = {"type": "light", "x": 60.0, "y": 20.0, "w": 24.0, "change": change, "housing": [20, 20, 20]}
    ball = video.random_ball(rng, None, video.background_colours(bg))
    return {"size": 160, "seed": 5, "noise": noise, "background": bg, "objects": [light, ball]}


def _lamp(frame: np.ndarray, spec: dict, k: int) -> np.ndarray:
    """Mean RGB around the centre of lamp k (0 red, 2 green) of the scene's light."""
    o = spec["objects"][0]
    cx, cy = o["x"] + o["w"] / 2, o["y"] + 2.6 * o["w"] * (k + 0.5) / 3
    return frame[int(cy) - 3 : int(cy) + 3, int(cx) - 3 : int(cx) + 3].reshape(-1, 3).mean(0)


def test_scene_is_deterministic_and_the_light_turns_green():
    spec = _light_scene(change=4.0)
    a, b = video.render_frame(spec, 3.9), video.render_frame(json.loads(json.dumps(spec)), 3.9)
    assert a.dtype == np.uint8 and a.shape == (160, 160, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, video.render_frame(spec, 3.7))  # the ball moves, the noise changes
    before, after = video.render_frame(spec, 3.9), video.render_frame(spec, 4.1)
    red_before, green_before = _lamp(before, spec, 0), _lamp(before, spec, 2)
    red_after, green_after = _lamp(after, spec, 0), _lamp(after, spec, 2)
    assert red_before[0] > 200 and green_before[1] < 100  # red lit, green dark
    assert red_after[0] < 100 and green_after[1] > 200  # and the other way round after the change


def test_ball_stops_and_hand_goes_up():
    rng = np.random.default_rng(0)
    bg = video.random_background(rng)
    ball = video.random_ball(rng, 2.0, video.background_colours(bg))
    spec = video.scene(rng, bg, [ball]) | {"noise": 0.0}
    moving = [video.render_frame(spec, t) for t in (1.0, 1.4, 1.8)]
    still = [video.render_frame(spec, t) for t in (2.2, 3.0, 9.0)]
    assert not np.array_equal(moving[0], moving[1]) and not np.array_equal(moving[1], moving[2])
    assert np.array_equal(still[0], still[1]) and np.array_equal(still[1], still[2])
    figure = video.random_figure(rng, {"kind": "hand_up", "time": 2.0, "arm": "left"}, [bg["top"]])
    spec = video.scene(rng, bg, [figure]) | {"noise": 0.0}
    down, up = video.render_frame(spec, 1.9), video.render_frame(spec, 2.5)
    changed = np.argwhere((down != up).any(-1))
    assert len(changed) > 50
    # the change is above the shoulders: the raised arm
    shoulder_y = figure["y"] - 0.42 * figure["scale"] - 0.38 * figure["scale"]
    assert (changed[:, 0] < shoulder_y).mean() > 0.5


def test_number_words():
    assert [number_words(n) for n in (1, 13, 20, 42)] == ["one", "thirteen", "twenty", "forty two"]


@pytest.fixture(scope="session")
def tts_dir(request) -> Path:
    return Path(request.config.cache.mkdir("microturn_tts"))


@pytest.fixture(scope="session")
def episodes(tmp_path_factory, tts_dir) -> dict[str, Path]:
    """One episode per variant of every proactive shape."""
    root = tmp_path_factory.mktemp("proactive")
    out = {}
    for shape, variants in VARIANTS.items():
        minutes = len(variants) * PLANNED_EPISODE_S[shape] / 60
        synth_corpus(root / shape, minutes, 7, "test", shape, cache_dir=tts_dir, progress=False)
        out[shape] = root / shape
    return out


def _said(conv, text: str) -> list[float]:
    """Starts of the assistant's proactive utterances saying `text`."""
    return [
        u.start
        for u in conv.utterances
        if u.speaker == "assistant" and u.kind == "proactive" and u.text == text
    ]


def _inside(starts: list[float], lo: float, hi: float) -> bool:
    return any(lo - 1e-3 <= s <= hi + 1e-3 for s in starts)


@pytest.mark.parametrize("shape", list(VARIANTS))
def test_proactive_words_follow_their_events(episodes, shape):
    convs = load_corpus(episodes[shape])
    kinds = set()
    for conv in convs:
        assert 19.0 <= conv.duration_s <= 66.0, conv.id
        assert (conv.video is not None) == (shape in ("visual_cue", "reps", "start_stop"))
        assert (conv.path / VIDEO).exists() == (conv.video is not None)
        truth = [e for e in conv.events if e.type in ("visual_change", "rep", "action", "timer", "cue")]
        assert truth, conv.id
        # the proactive words are the assistant's own acts: never background text
        assert not conv.background
        proactive = [u for u in conv.utterances if u.kind == "proactive"]
        assert proactive and all(u.speaker == "assistant" for u in proactive)
        own = sorted((u.start, u.end) for u in conv.utterances if u.speaker == "assistant")
        assert all(a[1] <= b[0] for a, b in zip(own, own[1:], strict=False)), "the assistant overlaps itself"
        for e in truth:
            kinds.add(e.detail["kind"])
            if e.type == "visual_change":
                assert _inside(_said(conv, e.text), e.start + 0.3, e.start + 0.6), (conv.id, e)
                assert abs(e.start - conv.video["key_times"][0]) < 1e-3
            elif e.type == "rep":
                assert _inside(_said(conv, e.text), e.end + 0.2, e.end + 0.5), (conv.id, e)
                assert e.text == number_words(e.detail["count"]) + "."
            elif e.type == "action":
                assert _inside(_said(conv, "start."), e.start + 0.3, e.start + 0.6), (conv.id, e)
                assert _inside(_said(conv, "stop."), e.end + 0.3, e.end + 0.6), (conv.id, e)
            elif e.type == "timer" and e.detail["kind"] in ("every", "after"):
                assert abs(e.end - e.start - e.detail["seconds"]) < 1e-3
                assert _inside(_said(conv, e.text), e.end, e.end + 0.3), (conv.id, e)
            elif e.type == "timer":  # elapsed: the answer names the measured seconds
                assert e.detail["seconds"] == round(e.end - e.start)
                assert number_words(e.detail["seconds"]) in e.text
                asked = e.detail["asked"]
                assert _inside(_said(conv, e.text), asked + 0.3, asked + 0.7), (conv.id, e)
            else:  # cue: said by the user; the reply 200-500 ms after it, over the user if they go on
                cue = [w for w in conv.words if w.speaker == "user" and abs(w.start - e.start) < 1e-3]
                assert cue and cue[0].text.strip(".,?!") == e.detail["cue"]
                assert _inside(_said(conv, e.text + "."), e.end + 0.2, e.end + 0.5), (conv.id, e)
    assert kinds == set(VARIANTS[shape])
    if shape == "cue_word":  # inline cues: the user keeps talking while the assistant answers
        user = [(w.start, w.end) for c in convs for w in c.words if w.speaker == "user"]
        replies = [u for c in convs for u in c.utterances if u.kind == "proactive"]
        assert any(any(s < u.end and u.start < e for s, e in user) for u in replies)


def test_the_proactive_track_marks_unprompted_speech_only(episodes):
    """The label track the proactive gate weight uses: on where a proactive word is said, off for the
    assistant's ordinary turns (the acknowledgement) and wherever it is silent."""
    conv = read_conversations(episodes["visual_cue"], fixture_tokenizer())[0]
    tracks = render_tracks(conv, get_config("tiny"))
    proactive, speaking = tracks["proactive"], tracks["speaking"].astype(bool)
    assert proactive.any() and (speaking & ~proactive).any()
    assert not (proactive & ~speaking).any()
    first = next(s for spk, kind, s, _, _ in conv.words if spk == "assistant" and kind == "proactive")
    assert proactive[int(first / 0.2)] and not proactive[int(first / 0.2) - 2]


def test_batches_carry_video_exactly_for_video_episodes(episodes, tmp_path):
    tok = fixture_tokenizer()
    cfg = get_config("tiny")
    tones = write_corpus(tmp_path / "tones", n=1)
    convs = read_conversations(f"{episodes['visual_cue']},{tones}", tok)
    renderer = CropRenderer(convs, cfg, augment=None)
    rng = np.random.default_rng(0)
    light = next(i for i, c in enumerate(convs) if c.video and c.video["objects"][0]["type"] == "light")
    spec = convs[light].video
    change = spec["objects"][0]["change"]
    turn = int(change / 0.2)  # the micro-turn during which the light changes
    start, length = turn - 10, 20
    crop = renderer.render(light, 0, start, length, rng)
    plain = renderer.render(len(convs) - 1, 0, 0, length, rng)
    batch = collate([crop, plain])
    assert batch.video.dtype == torch.uint8 and batch.video.shape == (2, length, 3, 160, 160)
    assert batch.video_present[0].all() and not batch.video_present[1].any()
    for i in (0, 9, 10, 19):  # frame i is the scene at the middle of micro-turn start + i
        frame = video.render_frame(spec, video.frame_time(start + i))
        assert torch.equal(batch.video[0, i], torch.from_numpy(frame).permute(2, 0, 1))
    greens = [_lamp(batch.video[0, i].permute(1, 2, 0).numpy(), spec, 2)[1] for i in range(length)]
    lit = [video.frame_time(start + i) >= change for i in range(length)]
    assert all((g > 200) == on for g, on in zip(greens, lit, strict=True)) and any(lit) and not all(lit)
    # training forward with video: runs, and the video stem learns from it
    torch.manual_seed(0)
    model = InteractionModel(cfg)
    losses = model.losses(batch)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.video.stem[0].weight.grad.abs().sum() > 0
    # the frames reach the model exactly as the runtime's session passes them (float in [0, 1])
    as_float = collate([crop]).video.float() / 255.0
    a = model.embed_in(
        batch.user_dmel[:1], batch.turn_index[:1], batch.bg_tokens[:1], batch.typed_tokens[:1],
        batch.gap[:1], batch.video[:1], batch.video_present[:1],
    )  # fmt: skip
    b = model.embed_in(
        batch.user_dmel[:1], batch.turn_index[:1], batch.bg_tokens[:1], batch.typed_tokens[:1],
        batch.gap[:1], as_float, batch.video_present[:1],
    )  # fmt: skip
    assert torch.allclose(a, b, atol=1e-6)


def test_the_runtime_passes_one_frame_per_micro_turn():
    from microturn.runtime.engine import EngineConfig
    from microturn.runtime.session import Session

    assert EngineConfig().video_interval_ms == 200
    session = Session(fixture_tokenizer(), 3200, 10, 160, max(1, 200 // 200))
    spec = _light_scene(change=0.3)
    frames = []
    for t in range(3):
        frame = video.render_frame(spec, video.frame_time(t))
        session.push_video(frame)
        session.push_audio(np.zeros(3200, np.float32), 16_000)
        inputs = session.take_inputs()
        session.turn += 1
        frames.append((inputs.video, frame))
    for passed, frame in frames:  # every micro-turn gets its frame, unchanged by the 160 -> 160 resize
        assert passed is not None
        assert torch.allclose(passed, torch.from_numpy(frame).permute(2, 0, 1).float() / 255.0, atol=1 / 255)


def test_video_stem_is_the_strided_convolutions():
    """The stem's matmul form computes the hMLP convolutions on frames * 2 - 1, for floats and bytes."""
    torch.manual_seed(0)
    stem = InteractionModel(get_config("tiny")).video
    with torch.no_grad():
        for p in stem.parameters():
            p.normal_(0, 0.1)
    frames = torch.randint(0, 256, (4, 3, 160, 160), dtype=torch.uint8)
    as_float = frames.float() / 255.0
    reference = stem.proj((stem.stem(as_float * 2 - 1) + stem.patch_pos).mean(dim=(-2, -1)))
    assert torch.allclose(stem(as_float), reference, atol=1e-5)
    assert torch.allclose(stem(frames), reference, atol=1e-5)
