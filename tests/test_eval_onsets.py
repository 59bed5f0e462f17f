"""`eval onsets`: the gate and the first word piece, teacher-forced, at the assistant's onsets."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_train_dataset import fixture_tokenizer, write_corpus

from microturn.eval.onsets import onset_scores
from microturn.model.config import get_config
from microturn.model.interaction import InteractionModel


@pytest.mark.parametrize("bias", [20.0, -20.0])
def test_a_gate_that_always_or_never_fires_is_read_as_such(tmp_path, bias):
    corpus = write_corpus(tmp_path / "test", "test", n=2)
    torch.manual_seed(0)
    model = InteractionModel(get_config("tiny"))
    with torch.no_grad():  # the gate's decision no longer depends on what the trunk heard
        model.gate.weight.zero_()
        model.gate.bias.fill_(bias)
    result = onset_scores(model, fixture_tokenizer(), corpus, episodes=2)
    assert result.episodes == 2 and result.onsets > 0 and len(result.examples) == min(result.onsets, 12)
    fires = 1.0 if bias > 0 else 0.0
    assert result.gate_fires == fires and result.silent_fires == fires
    assert result.both <= min(result.gate_fires, result.first_token_right)
    assert "->" in result.examples[0]


def test_a_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        onset_scores(InteractionModel(get_config("tiny")), fixture_tokenizer(), tmp_path / "missing")


def test_onsets_read_the_gate_over_the_start_window_as_streaming_does(tmp_path):
    corpus = write_corpus(tmp_path / "test", "test", n=2)
    results = {}
    for window in (1, 3):
        torch.manual_seed(0)
        model = InteractionModel(
            replace(get_config("tiny"), gate_start_window=window, gate_start_threshold=0.5)
        )
        with torch.no_grad():
            model.gate.weight.zero_()
            model.gate.bias.fill_(-1.0986)  # p = 0.25: one micro-turn alone never passes 0.5, three do
        results[window] = onset_scores(model, fixture_tokenizer(), corpus, episodes=2)
    assert results[1].gate_fires == 0.0 and results[1].silent_fires == 0.0
    assert results[3].gate_fires > 0.0 and results[3].silent_fires > 0.0
