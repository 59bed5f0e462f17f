"""`eval rendering`: how intelligible the mel head is on its own.

The free-running word error rate mixes three failures: wrong words, wrong timing, and rendering. This check
isolates the last one: on held-out conversation crops, the trunk is teacher-forced (it hears the real user
and its own real past), the mel head samples every speaking micro-turn from noise given the true words of
that micro-turn, the vocoder turns the result into audio, and Whisper tiny.en transcribes it. The same crops'
ground-truth mel through the same vocoder is the ceiling (it measures vocoder + Whisper, not the model).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_text
from ..model.interaction import emitted_log_mel
from ..runtime.checkpoint import RuntimeModels
from ..train.dataset import CropPlan, read_conversations, validation_batches
from .fdbench import pooled_wer, speech_errors
from .transcribe import transcribe


@dataclass
class RenderingResult:
    crops: int
    words: int
    wer_model: float | None  # the mel head's rendering, teacher-forced trunk
    wer_ground_truth: float | None  # the corpus mel through the same vocoder
    examples: list[dict]

    def as_dict(self) -> dict:
        return {
            "crops": self.crops,
            "words": self.words,
            "wer_model_rendering": self.wer_model,
            "wer_ground_truth_mel": self.wer_ground_truth,
            "examples": self.examples,
        }


def _vocode(models: RuntimeModels, log_mel: torch.Tensor) -> np.ndarray:
    samples, _ = models.vocoder.synthesize(log_mel[None])
    return samples[0].numpy()


@torch.inference_mode()
def rendering_wer(
    models: RuntimeModels, corpus: str | Path, crops: int = 6, crop_turns: int = 150, seed: int = 0
) -> RenderingResult:
    """Word error rate of teacher-forced mel-head rendering vs ground-truth mel, over fixed held-out crops."""
    model, tokenizer = models.model.eval(), models.tokenizer
    conversations = read_conversations(corpus, tokenizer)
    batch = validation_batches(conversations, model.cfg, CropPlan(crop_turns, crop_turns, crops), 1)[0]
    hidden = model(batch)
    model_errors, truth_errors, examples = [], [], []
    for row in range(batch.text.shape[0]):
        speaking = batch.speaking[row].bool() & batch.valid[row]
        if int(speaking.sum()) < 5:  # a crop where the assistant hardly speaks says nothing about rendering
            continue
        text = batch.text[row][speaking]
        cond = hidden[row][speaking] + model.embed_text_slots(text)
        generator = torch.Generator().manual_seed(seed + row)
        noise = torch.randn(int(speaking.sum()), model.cfg.frames, model.cfg.n_mels, generator=generator)
        mel = batch.mel[row].clone()
        mel[speaking] = model.mel_head.sample(noise, cond).clamp(-1.0, 1.0)
        rendered = emitted_log_mel(mel, speaking).flatten(0, 1)
        truth = emitted_log_mel(batch.mel[row], speaking).flatten(0, 1)
        ref = tokenizer.decode([int(t) for t in batch.text[row][speaking].flatten()])
        heard_model = transcribe(_vocode(models, rendered))["text"]
        heard_truth = transcribe(_vocode(models, truth))["text"]
        model_errors.append(speech_errors([ref], [heard_model]))
        truth_errors.append(speech_errors([ref], [heard_truth]))
        examples.append({"said": ref, "heard_model": heard_model, "heard_ground_truth": heard_truth})
    if not examples:
        raise ValueError(f"{corpus}: no crop in which the assistant speaks")
    words = sum(e["speech_words"] for e in model_errors)
    return RenderingResult(len(examples), words, pooled_wer(model_errors), pooled_wer(truth_errors), examples)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rendering", help="intelligibility of the mel head alone (teacher-forced trunk)")
    p.add_argument("--corpus", default="corpora/valid", help="held-out corpus folder (valid or test split)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint folder (default: the embedded one)")
    p.add_argument("--crops", type=int, default=6, help="crops of --crop-turns micro-turns")
    p.add_argument("--crop-turns", type=int, default=150)
    p.add_argument("--json", default=None, help="also write the result here")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from ..runtime.checkpoint import load_runtime

    torch.set_num_threads(1)
    result = rendering_wer(load_runtime(args.checkpoint), args.corpus, args.crops, args.crop_turns).as_dict()
    text = json.dumps(result, indent=2)
    if args.json:
        atomic_write_text(Path(args.json), text + "\n")
    print(text)
    return 0
