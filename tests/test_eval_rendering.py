"""`eval rendering`: the mel head's teacher-forced rendering scored by Whisper against the true words."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_dataset import fixture_tokenizer, write_corpus

from microturn.eval.rendering import rendering_wer
from microturn.model.config import get_config
from microturn.model.interaction import InteractionModel
from microturn.runtime.checkpoint import DEFAULT_VOCODER, RuntimeModels, load_vocoder


def test_rendering_scores_every_speaking_crop_against_its_words(tmp_path):
    corpus = write_corpus(tmp_path / "valid", "valid", n=2)
    torch.manual_seed(0)
    models = RuntimeModels(
        InteractionModel(get_config("tiny")),
        fixture_tokenizer(),
        load_vocoder(DEFAULT_VOCODER),
        tmp_path,
        DEFAULT_VOCODER,
        False,
    )
    models.model.attach_tokenizer(models.tokenizer)  # the streaming schedule needs each token's phones
    result = rendering_wer(models, corpus, crops=1, crop_turns=40, plot=tmp_path / "mel.png")
    assert result.crops >= 1 and result.words > 0
    assert result.wer_scheduled is not None and (tmp_path / "mel.png").stat().st_size > 10_000
    timelines = [json.loads((corpus / f"valid{i}" / "timeline.json").read_text()) for i in range(2)]
    said = {w["text"].strip(".,?!") for t in timelines for w in t["words"] if w["speaker"] == "assistant"}
    for example in result.examples:  # what the crop's assistant said, in words of the timelines
        assert example["said"] and set(example["said"].replace(",", " ").split()) <= said
    # an untrained mel head renders noise: Whisper hears (almost) none of the words
    assert result.wer_model is not None and result.wer_model >= 0.5
    with pytest.raises(FileNotFoundError):
        rendering_wer(models, tmp_path / "missing")
