"""The copy pointer over background text: one rule for the dataset and the streaming step, and a text head
that is told to copy says the background text word for word."""

from __future__ import annotations

import torch

from microturn.model.config import get_config
from microturn.model.copying import NO_CANDIDATE, CopyPointer
from microturn.model.interaction import InteractionModel
from microturn.model.streaming import StepInputs
from microturn.model.tokenizer import BOS, PAD


def test_pointer_follows_what_is_said_and_skips_an_abandoned_answer():
    pointer = CopyPointer()
    assert pointer.candidate() == NO_CANDIDATE
    pointer.hear([10, 11, 12, -1])  # -1: no token this micro-turn
    assert pointer.slot_candidates([10, 11, PAD], 3, PAD) == [10, 11, 12]
    assert pointer.candidate() == 12
    pointer.said(99)  # a word of its own: the pointer waits
    assert pointer.candidate() == 12
    pointer.hear([20, 21])  # the next answer arrives; the assistant starts it, leaving 12 unsaid
    assert pointer.slot_candidates([20, PAD, PAD], 3, PAD) == [12, 21, 21]
    copy = pointer.copy()
    copy.said(21)
    assert pointer.candidate() == 21 and copy.candidate() == NO_CANDIDATE  # copies are independent


def test_a_new_message_restarts_the_pointer_however_much_was_left_unsaid():
    pointer = CopyPointer()
    for answer in range(5):  # five abandoned answers of 30 tokens: 150 unsaid, beyond the look-ahead
        pointer.hear([BOS, *range(100 * answer, 100 * answer + 30)])
    assert pointer.candidate() == 400  # the newest message's first token, not the oldest's
    pointer.hear([BOS, 7, 8])
    assert pointer.slot_candidates([7, 8, PAD], 3, PAD) == [7, 8, NO_CANDIDATE]


def test_a_text_head_told_to_copy_says_the_background_text_in_order():
    torch.manual_seed(0)
    model = InteractionModel(get_config("tiny")).eval()
    with torch.no_grad():
        model.gate.bias.fill_(5.0)  # speak every micro-turn
        model.text_head.copy_bonus.bias.fill_(100.0)  # copying beats every other token
    cfg = model.cfg
    background = [40, 41, 42, 43, 44, 45]
    state = model.new_state(1, [0])
    silent = torch.zeros(1, cfg.frames, cfg.n_mels, dtype=torch.long)
    listen = torch.tensor([0])
    for token in background:  # the answer arrives while the model is forced to listen
        out = model.step(state, StepInputs(silent, torch.tensor([token]), speaking_override=listen))
        assert not out.speaking[0] and (out.text == PAD).all()
    said = []
    for _ in range(2):  # then it speaks: K = 3 tokens per micro-turn, all of them the answer, in order
        out = model.step(state, StepInputs(silent))
        said += out.text[0].tolist()
    assert said == background
    assert model.new_state(1).copy[0].candidate() == NO_CANDIDATE  # each session has its own pointer
