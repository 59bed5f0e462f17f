"""The streaming step computes what the training forward computes, is causal, windowed and batch-invariant."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from microturn import audio
from microturn.model.config import get_config
from microturn.model.copying import CopyPointer, HeardWords, heard_batch, heard_in_slots
from microturn.model.interaction import InteractionModel, TurnBatch, emitted_log_mel, previous_frames
from microturn.model.speech import N_PHONE_IDS, WIDTH
from microturn.model.streaming import StepInputs, StepTeacher, StreamState

torch.set_num_threads(1)


def random_batch(cfg, b: int, t: int, seed: int, video: bool = False) -> TurnBatch:
    """Random but well-formed micro-turn inputs and teacher-forced outputs."""
    g = torch.Generator().manual_seed(seed)
    k = cfg.text_slots
    speaking = torch.randint(0, 2, (b, t), generator=g)
    mel = torch.rand(b, t, cfg.frames, cfg.n_mels, generator=g) * 2 - 1
    text = torch.randint(3, cfg.vocab_size, (b, t, k), generator=g) * (torch.rand(b, t, k, generator=g) < 0.3)
    bg = torch.randint(3, cfg.vocab_size, (b, t), generator=g)
    bg_tokens = torch.where(torch.rand(b, t, generator=g) < 0.2, bg, -1)
    text_copy = torch.full((b, t, k), -1)
    for r in range(b):  # the candidates the streaming step's pointer offers (the dataset's rule)
        pointer = CopyPointer()
        for i in range(t):
            pointer.hear([int(bg_tokens[r, i])])
            text_copy[r, i] = torch.tensor(pointer.slot_candidates(text[r, i].tolist(), k, 0))
    batch = TurnBatch(
        user_dmel=torch.randint(0, cfg.dmel_bins, (b, t, cfg.frames, cfg.n_mels), generator=g),
        turn_index=torch.arange(t).expand(b, t).clone(),
        bg_tokens=bg_tokens,
        typed_tokens=torch.where(torch.rand(b, t, generator=g) < 0.1, bg.flip(1), -1),
        gap=torch.rand(b, t, generator=g) < 0.05,
        speaking=speaking,
        text=text,
        text_copy=text_copy,
        mel=mel,
        mel_phones=torch.randint(0, N_PHONE_IDS, (b, t, cfg.frames, WIDTH), generator=g),
        mel_phone_frac=torch.rand(b, t, cfg.frames, generator=g),
        out_dmel=audio.dmel(emitted_log_mel(mel, speaking), cfg.dmel_bins),
        floor=torch.randint(0, 5, (b, t), generator=g),
        user_text=torch.randint(0, cfg.vocab_size, (b, t, k), generator=g),
        valid=torch.ones(b, t, dtype=torch.bool),
    )
    if video:
        batch.video = torch.rand(b, t, 3, cfg.video_size, cfg.video_size, generator=g)
        batch.video_present = torch.rand(b, t, generator=g) < 0.3
    return batch


def step_inputs(batch: TurnBatch, t: int, teacher: bool = True) -> StepInputs:
    return StepInputs(
        user_dmel=batch.user_dmel[:, t],
        bg_token=batch.bg_tokens[:, t],
        typed_token=batch.typed_tokens[:, t],
        gap=batch.gap[:, t],
        video=None if batch.video is None else batch.video[:, t],
        video_present=None if batch.video_present is None else batch.video_present[:, t],
        teacher=StepTeacher(batch.text[:, t], batch.mel[:, t], batch.speaking[:, t], batch.user_text[:, t])
        if teacher
        else None,
    )


def run_steps(model: InteractionModel, batch: TurnBatch, teacher: bool = True, seeds=None):
    state = model.new_state(batch.user_dmel.shape[0], seeds)
    return [model.step(state, step_inputs(batch, t, teacher)) for t in range(batch.user_dmel.shape[1])]


def make_model(**overrides) -> InteractionModel:
    torch.manual_seed(0)
    return InteractionModel(get_config("tiny", **overrides)).eval()


@pytest.mark.parametrize("video", [False, True, "motion"])
def test_step_path_matches_training_forward_over_30_seconds(video):
    model = make_model(video_size=80, video_motion=video == "motion")  # small frames keep video fast
    batch = random_batch(model.cfg, b=2, t=150, seed=1, video=bool(video))  # 150 micro-turns = 30 s > window
    assert (batch.text_copy >= 0).float().mean() > 0.5  # the copy candidates are exercised
    with torch.no_grad():
        model.text_head.copy_bonus.bias.fill_(3.0)
        if video == "motion":  # frames present in 30% of micro-turns: the previous one is often further back
            without_motion = model(batch)
            model.video.motion.weight.normal_(0.0, 0.05)
        hidden = model(batch)
        if video == "motion":
            assert not torch.allclose(hidden, without_motion, atol=1e-3)
        prev = torch.cat([torch.full_like(batch.text[..., :1], 2), batch.text[..., :-1]], dim=-1)
        text_logits = model.text_head.logits(hidden, prev, batch.text_copy)
    outs = run_steps(model, batch)
    step_hidden = torch.stack([o.hidden for o in outs], dim=1)
    torch.testing.assert_close(step_hidden, hidden, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        torch.stack([o.text_logits for o in outs], 1), text_logits, atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        torch.stack([o.gate_logit for o in outs], 1), model.gate(hidden)[..., 0], atol=1e-4, rtol=1e-4
    )


def test_heard_words_pointer_matches_training_and_points_at_what_was_heard():
    model = make_model(heard_tokens=12)  # fewer than the crop's words: the memory's limit is exercised
    batch = random_batch(model.cfg, b=2, t=40, seed=5)
    batch.user_text *= torch.rand(batch.user_text.shape, generator=torch.Generator().manual_seed(6)) < 0.3
    with torch.no_grad():
        model.text_head.heard_mix.bias.fill_(2.0)  # most of the mass on heard words
        hidden = model(batch)
        prev = torch.cat([torch.full_like(batch.text[..., :1], 2), batch.text[..., :-1]], dim=-1)
        heard = model._heard_in_batch(batch)
        text_scores = model.text_head.logits(hidden, prev, batch.text_copy, heard)
    assert heard.visible.sum(-1).max() == 12
    outs = run_steps(model, batch)
    torch.testing.assert_close(
        torch.stack([o.text_logits for o in outs], 1), text_scores, atol=1e-4, rtol=1e-4
    )
    # the best token of a slot is one of the last 12 heard words once something was heard
    best = text_scores.argmax(-1)  # [B, T, K]
    for r in range(2):
        words = [(w, t) for t in range(40) for w in heard_in_slots(batch.user_text[r, t].tolist())]
        first = words[0][1]
        for t in range(first, 40):
            assert set(best[r, t].tolist()) <= set([w for w, at in words if at <= t][-12:])
        assert all(int(w) not in {x for x, _ in words} for w in best[r, :first].flatten())


def test_window_masks_agree_and_forget_old_input():
    model = make_model(window=8, n_layers=1)
    batch = random_batch(model.cfg, b=1, t=30, seed=2)
    changed = random_batch(model.cfg, b=1, t=30, seed=2)
    changed.user_dmel[:, 0] = (changed.user_dmel[:, 0] + 5) % model.cfg.dmel_bins
    with torch.no_grad():
        hidden, hidden_changed = model(batch), model(changed)
    step_hidden = torch.stack([o.hidden for o in run_steps(model, batch)], dim=1)
    torch.testing.assert_close(step_hidden, hidden, atol=1e-5, rtol=1e-5)
    # in_0 is token 0; with one layer and a window of 8 tokens, in_t (token 2t) sees it only while 2t < 8
    assert not torch.allclose(hidden[:, 3], hidden_changed[:, 3])
    torch.testing.assert_close(hidden[:, 4:], hidden_changed[:, 4:], atol=0, rtol=0)
    step_changed = torch.stack([o.hidden for o in run_steps(model, changed)], dim=1)
    assert torch.equal(step_changed[:, 4:], step_hidden[:, 4:])


def test_output_at_t_ignores_later_inputs():
    model = make_model()
    a = random_batch(model.cfg, b=1, t=40, seed=3)
    b = random_batch(model.cfg, b=1, t=40, seed=4)
    cut = 25
    for name in ("user_dmel", "bg_tokens", "typed_tokens", "gap", "text", "mel", "out_dmel", "speaking"):
        getattr(b, name)[:, :cut] = getattr(a, name)[:, :cut]
    out_a = run_steps(model, a, teacher=False, seeds=[7])
    out_b = run_steps(model, b, teacher=False, seeds=[7])
    for t in range(cut):
        for field in ("speaking", "text", "mel", "floor_probs"):
            assert torch.equal(getattr(out_a[t], field), getattr(out_b[t], field)), (t, field)
    with torch.no_grad():
        assert torch.equal(model(a)[:, :cut], model(b)[:, :cut])
    assert any(not torch.equal(out_a[t].hidden, out_b[t].hidden) for t in range(cut, 40))


def test_free_running_speaks_and_is_batch_invariant():
    model = make_model()
    with torch.no_grad():
        model.gate.bias.fill_(5.0)  # force speaking so the flow head and the per-session noise run
    batch = random_batch(model.cfg, b=3, t=6, seed=5)
    together = run_steps(model, batch, teacher=False, seeds=[11, 12, 13])
    for i, seed in enumerate([11, 12, 13]):
        alone_batch = TurnBatch(
            **{k: (v[i : i + 1] if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()}
        )
        alone = run_steps(model, alone_batch, teacher=False, seeds=[seed])
        for t in range(6):
            assert together[t].speaking[i] and together[t].mel[i].max() > audio.LOG_MEL_MIN
            torch.testing.assert_close(together[t].mel[i], alone[t].mel[0], atol=1e-5, rtol=0)
            assert torch.equal(together[t].text[i], alone[t].text[0])


def test_flow_steps_override_changes_only_the_mel():
    model = make_model()
    with torch.no_grad():
        model.gate.bias.fill_(5.0)
    batch = random_batch(model.cfg, b=2, t=3, seed=8)
    runs = {}
    for steps in (None, model.cfg.flow_steps, 3):
        state = model.new_state(2, [1, 2])
        runs[steps] = [model.step(state, step_inputs(batch, t, False), flow_steps=steps) for t in range(3)]
    for a, b, c in zip(runs[None], runs[model.cfg.flow_steps], runs[3], strict=True):
        assert torch.equal(a.mel, b.mel)  # None = the config's steps
        assert torch.equal(a.speaking, c.speaking) and not torch.equal(a.mel, c.mel)
    torch.testing.assert_close(runs[None][0].hidden, runs[3][0].hidden, atol=0, rtol=0)


def test_sessions_join_and_leave_between_micro_turns():
    # with everything a session carries: heard words and the last video frame too
    model = make_model(video_size=80, video_motion=True, heard_tokens=16)
    with torch.no_grad():
        model.video.motion.weight.normal_(0.0, 0.05)
        model.text_head.heard_mix.bias.fill_(2.0)
    batch = random_batch(model.cfg, b=2, t=10, seed=6, video=True)
    reference = run_steps(model, batch, seeds=[1, 2])
    # session 0 runs alone for 4 micro-turns, then session 1 joins (at its own micro-turn 0), then 0 leaves
    s0 = model.new_state(1, [1])
    for t in range(4):
        model.step(
            s0,
            step_inputs(
                TurnBatch(
                    **{k: (v[:1] if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()}
                ),
                t,
            ),
        )
    both = StreamState.concat([s0, model.new_state(1, [2])])
    assert both.turn.tolist() == [4, 0]
    for j in range(3):
        inputs = StepInputs(
            user_dmel=torch.stack([batch.user_dmel[0, 4 + j], batch.user_dmel[1, j]]),
            bg_token=torch.stack([batch.bg_tokens[0, 4 + j], batch.bg_tokens[1, j]]),
            typed_token=torch.stack([batch.typed_tokens[0, 4 + j], batch.typed_tokens[1, j]]),
            gap=torch.stack([batch.gap[0, 4 + j], batch.gap[1, j]]),
            video=torch.stack([batch.video[0, 4 + j], batch.video[1, j]]),
            video_present=torch.stack([batch.video_present[0, 4 + j], batch.video_present[1, j]]),
            teacher=StepTeacher(
                torch.stack([batch.text[0, 4 + j], batch.text[1, j]]),
                torch.stack([batch.mel[0, 4 + j], batch.mel[1, j]]),
                torch.stack([batch.speaking[0, 4 + j], batch.speaking[1, j]]),
                torch.stack([batch.user_text[0, 4 + j], batch.user_text[1, j]]),
            ),
        )
        out = model.step(both, inputs)
        for row, ref in ((0, reference[4 + j]), (1, reference[j])):
            torch.testing.assert_close(out.hidden[row], ref.hidden[row], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out.text_logits[row], ref.text_logits[row], atol=1e-5, rtol=1e-5)
    only_second = both.select([1])
    assert only_second.batch_size == 1 and only_second.turn.tolist() == [3]


def test_bad_step_input_is_rejected():
    model = make_model()
    with pytest.raises(ValueError, match="user_dmel"):
        model.step(model.new_state(2), StepInputs(user_dmel=torch.zeros(1, 20, 80, dtype=torch.long)))
    with pytest.raises(ValueError, match="seeds"):
        model.new_state(2, [1])


def test_a_sampled_gate_follows_its_probability_and_is_batch_invariant():
    model = make_model(gate_temperature=1.0)
    with torch.no_grad():
        model.gate.weight.zero_()
        model.gate.bias.fill_(-1.0986)  # p = 0.25 whatever the input
    batch = random_batch(model.cfg, b=3, t=40, seed=6)
    together = run_steps(model, batch, teacher=False, seeds=[21, 22, 23])
    decisions = torch.stack([out.wants for out in together])  # [t, b]
    assert 0.1 < decisions.float().mean() < 0.45  # about a quarter of the micro-turns, not all or none
    assert not torch.equal(decisions[:, 0], decisions[:, 1])  # each session draws its own
    alone_batch = TurnBatch(
        **{k: (v[1:2] if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()}
    )
    alone = run_steps(model, alone_batch, teacher=False, seeds=[22])
    assert torch.equal(torch.stack([out.wants[0] for out in alone]), decisions[:, 1])
    assert torch.equal(torch.stack([out.speaking[0] for out in alone]), decisions[:, 1])


def test_starting_to_speak_takes_more_confidence_than_going_on():
    model = make_model(gate_start_threshold=0.6)
    with torch.no_grad():
        model.gate.weight.zero_()
        model.gate.bias.fill_(0.2007)  # p = 0.55 whatever the input: enough to go on, not to start
    silent = torch.zeros(1, model.cfg.frames, model.cfg.n_mels, dtype=torch.long)
    state = model.new_state(1)
    assert not any(model.step(state, StepInputs(silent)).speaking[0] for _ in range(3))
    model.step(state, StepInputs(silent, speaking_override=torch.tensor([1])))  # made to start once
    assert all(model.step(state, StepInputs(silent)).speaking[0] for _ in range(3))


def test_a_start_window_adds_up_the_start_probability_of_its_silent_micro_turns():
    model = make_model(gate_start_window=3, gate_start_threshold=0.5)
    with torch.no_grad():
        model.gate.weight.zero_()
        model.gate.bias.fill_(-1.0986)  # p = 0.25 each micro-turn: one alone never starts
    silent = torch.zeros(2, model.cfg.frames, model.cfg.n_mels, dtype=torch.long)
    state = model.new_state(2)
    # 1 - 0.75^n over the last 3: 0.25, 0.44, 0.58 -> the third silent micro-turn starts; the second
    # session, made to speak in the second micro-turn, counts from the first silent one after it
    forced = [torch.tensor([-1, -1]), torch.tensor([-1, 1]), *[torch.tensor([-1, -1])] * 4]
    speaking = [model.step(state, StepInputs(silent, speaking_override=f)).speaking.tolist() for f in forced]
    # going on takes p > gate_threshold (0.5): each stops after one micro-turn and counts again
    assert [row[0] for row in speaking] == [False, False, True, False, False, False]
    assert [row[1] for row in speaking] == [False, True, False, False, False, True]
    with torch.no_grad():
        model.gate.bias.fill_(-1.7346)  # p = 0.15: 1 - 0.85^3 = 0.39, and the window holds no more
    state = model.new_state(2)
    assert not any(model.step(state, StepInputs(silent)).speaking.any() for _ in range(8))
    with pytest.raises(ValueError, match="gate_start_window"):
        replace(model.cfg, gate_start_window=0)


def test_an_utterance_starts_with_a_word_however_unsure_the_text_head_is():
    model = make_model()
    with torch.no_grad():
        model.gate.weight.zero_()
        model.gate.bias.fill_(5.0)  # speaks every micro-turn
        model.text_head.norm2.weight.zero_()  # every logit 0: greedy takes the first, "no token" (pad)
    silent = torch.zeros(1, model.cfg.frames, model.cfg.n_mels, dtype=torch.long)
    state = model.new_state(1)
    first, second = (model.step(state, StepInputs(silent)) for _ in range(2))
    assert first.speaking[0] and first.text[0, 0] != 0  # the onset says a word
    assert second.speaking[0] and (second.text[0] == 0).all()  # mid-utterance the head decides
    model.step(state, StepInputs(silent, speaking_override=torch.tensor([0])))  # silenced, then again
    assert model.step(state, StepInputs(silent)).text[0, 0] != 0


def test_force_silence_override():
    model = make_model()
    with torch.no_grad():
        model.gate.bias.fill_(5.0)
    state = model.new_state(2)
    out = model.step(
        state,
        StepInputs(
            user_dmel=torch.zeros(2, 20, 80, dtype=torch.long), speaking_override=torch.tensor([0, -1])
        ),
    )
    assert out.speaking.tolist() == [False, True]
    assert (out.text[0] == 0).all()  # a silenced session says no words
    assert torch.all(out.mel[0] < audio.LOG_MEL_MIN)


def test_previous_frame_is_the_last_one_present_before():
    video = torch.arange(5).view(1, 5, 1)  # frame t holds t
    present = torch.tensor([[False, True, False, False, True]])
    assert previous_frames(video, present)[0, :, 0].tolist() == [0, 1, 1, 1, 1]
    present = torch.tensor([[True, True, True, False, True]])
    assert previous_frames(video, present)[0, :, 0].tolist() == [0, 0, 1, 2, 2]


def test_configs_build_with_documented_sizes():
    for name in ("tiny", "small"):
        model = InteractionModel(get_config(name))
        assert model.num_params() > 0
    assert replace(get_config("tiny"), window=4).window == 4
    with pytest.raises(ValueError, match="unknown model config"):
        get_config("huge")


def test_a_word_started_by_copying_a_heard_piece_is_finished_as_heard():
    model = make_model(heard_tokens=8)
    head = model.text_head
    with torch.no_grad():
        head.heard_mix.bias.fill_(30.0)  # all the mass on heard words: A and B tie at every slot
    a, b = 40, 41  # "A" starts a word, "B" goes on with it
    word_start = torch.ones(model.cfg.vocab_size, dtype=torch.bool)
    word_start[b] = False
    words = HeardWords()
    words.hear([a, b], torch.zeros(2, model.cfg.d_model), limit=8)
    hidden = torch.randn(1, model.cfg.d_model)
    # without the rule a tie goes to the lower id: A at every slot
    tokens, rest_at = head.greedy(
        hidden, 2, 0, [CopyPointer()], None, heard_batch([words], model.cfg.d_model, "cpu")
    )
    assert tokens[0].tolist() == [a, a, a] and rest_at is None
    memory = heard_batch([words], model.cfg.d_model, hidden.device, word_start)
    tokens, rest_at = head.greedy(hidden, 2, 0, [CopyPointer()], None, memory)
    assert tokens[0].tolist() == [a, b, a] and rest_at.tolist() == [1]  # the last A's B is still to say
    words.word_rest_at = 1
    memory = heard_batch([words], model.cfg.d_model, hidden.device, word_start)
    tokens, _ = head.greedy(hidden, 2, 0, [CopyPointer()], None, memory)
    assert tokens[0, 0] == b  # said first in the next micro-turn
    words.hear([a, a], torch.zeros(2, model.cfg.d_model), limit=3)  # B moves from position 1 to 0
    assert words.word_rest_at == 0 and words.tokens[0] == b
    words.hear([a], torch.zeros(1, model.cfg.d_model), limit=3)  # and out of memory
    assert words.word_rest_at == -1
