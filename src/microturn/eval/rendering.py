"""`eval rendering`: how intelligible the mel head is on its own.

The free-running word error rate mixes three failures: wrong words, wrong timing, and rendering. This check
isolates the last one: on held-out conversation crops, the trunk is teacher-forced (it hears the real user
and its own real past), the mel head samples every speaking micro-turn from noise given the true words of
that micro-turn, the vocoder turns the result into audio, and Whisper tiny.en transcribes it. The head's
per-frame phones come once from the corpus's word times and once from the streaming speech schedule
(what a free-running session gives it: the same tokens, timed at the voice's average rate). The same crops'
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
from ..model.interaction import InteractionModel, emitted_log_mel
from ..model.speech import SpeechSchedule, schedule_condition
from ..runtime.checkpoint import RuntimeModels
from ..train.dataset import CropPlan, read_conversations, validation_batches
from .fdbench import pooled_wer, speech_errors
from .plots import mel_panels
from .transcribe import transcribe


@dataclass
class RenderingResult:
    crops: int
    words: int
    wer_model: float | None  # the mel head's rendering, teacher-forced trunk, phones at the true times
    wer_scheduled: float | None  # the same, phones timed by the streaming speech schedule
    wer_ground_truth: float | None  # the corpus mel through the same vocoder
    examples: list[dict]

    def as_dict(self) -> dict:
        return {
            "crops": self.crops,
            "words": self.words,
            "wer_model_rendering": self.wer_model,
            "wer_model_rendering_scheduled": self.wer_scheduled,
            "wer_ground_truth_mel": self.wer_ground_truth,
            "examples": self.examples,
        }


def _vocode(models: RuntimeModels, log_mel: torch.Tensor) -> np.ndarray:
    samples, _ = models.vocoder.synthesize(log_mel[None])
    return samples[0].numpy()


def _scheduled_condition(
    model: InteractionModel, text: torch.Tensor, speaking: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-frame phones the streaming step would give the head for this crop's tokens [T, K] and
    speaking track [T]: the same `SpeechSchedule`, one micro-turn at a time."""
    schedule, ids, frac = SpeechSchedule(), [], []
    for tokens, talking in zip(text.tolist(), speaking.tolist(), strict=True):
        schedule.say(tokens, talking, model.token_phones, model.cfg.speech_rates, model.cfg.frames)
        window_ids, window_frac = schedule_condition([schedule], model.cfg.frames)
        schedule.advance(model.cfg.frames)
        ids.append(window_ids[0])
        frac.append(window_frac[0])
    return torch.stack(ids), torch.stack(frac)


@torch.inference_mode()
def rendering_wer(
    models: RuntimeModels,
    corpus: str | Path,
    crops: int = 6,
    crop_turns: int = 150,
    seed: int = 0,
    plot: str | Path | None = None,
) -> RenderingResult:
    """Word error rate of teacher-forced mel-head rendering vs ground-truth mel, over fixed held-out crops;
    `plot` draws the first scored crop's spectrograms (true, rendered at true times, scheduled)."""
    model, tokenizer = models.model.eval(), models.tokenizer
    conversations = read_conversations(corpus, tokenizer)
    batch = validation_batches(conversations, model.cfg, CropPlan(crop_turns, crop_turns, crops), 1)[0]
    hidden = model(batch)
    errors: dict[str, list[dict]] = {"model": [], "scheduled": [], "truth": []}
    examples = []
    for row in range(batch.text.shape[0]):
        speaking = batch.speaking[row].bool() & batch.valid[row]
        if int(speaking.sum()) < 5:  # a crop where the assistant hardly speaks says nothing about rendering
            continue
        text = batch.text[row][speaking]
        cond = hidden[row][speaking] + model.embed_text_slots(text)
        scheduled = _scheduled_condition(model, batch.text[row], speaking)
        conditions = {
            "model": (batch.mel_phones[row][speaking], batch.mel_phone_frac[row][speaking]),
            "scheduled": (scheduled[0][speaking], scheduled[1][speaking]),
        }
        ref = tokenizer.decode([int(t) for t in batch.text[row][speaking].flatten()])
        heard, mels = {}, {"truth": emitted_log_mel(batch.mel[row], speaking).flatten(0, 1)}
        for name, (phones, frac) in conditions.items():
            generator = torch.Generator().manual_seed(seed + row)
            shape = (int(speaking.sum()), model.cfg.frames, model.cfg.n_mels)
            noise = torch.randn(shape, generator=generator) * model.cfg.flow_temperature
            mel = batch.mel[row].clone()
            mel[speaking] = model.mel_head.sample(noise, cond, phones, frac).clamp(-1.0, 1.0)
            mels[name] = emitted_log_mel(mel, speaking).flatten(0, 1)
            heard[name] = transcribe(_vocode(models, mels[name]))["text"]
        heard["truth"] = transcribe(_vocode(models, mels["truth"]))["text"]
        if plot is not None and not examples:
            labels = {"truth": "the corpus's mel", "model": "mel head, phones at the true times"}
            labels["scheduled"] = "mel head, phones from the streaming schedule"
            mel_panels({labels[k]: mels[k].numpy() for k in ("truth", "model", "scheduled")}, plot)
        for name, said in heard.items():
            errors[name].append(speech_errors([ref], [said]))
        examples.append(
            {
                "said": ref,
                "heard_model": heard["model"],
                "heard_model_scheduled": heard["scheduled"],
                "heard_ground_truth": heard["truth"],
            }
        )
    if not examples:
        raise ValueError(f"{corpus}: no crop in which the assistant speaks")
    words = sum(e["speech_words"] for e in errors["model"])
    return RenderingResult(
        len(examples),
        words,
        pooled_wer(errors["model"]),
        pooled_wer(errors["scheduled"]),
        pooled_wer(errors["truth"]),
        examples,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rendering", help="intelligibility of the mel head alone (teacher-forced trunk)")
    p.add_argument("--corpus", default="corpora/valid", help="held-out corpus folder (valid or test split)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint folder (default: the embedded one)")
    # Whisper on this borderline speech turns float-rounding changes of the mel into other words: 6-8 crops
    # (~230 words) moved by 0.05 between runs, so the default is 32 (~1,000 words, ~5 minutes)
    p.add_argument("--crops", type=int, default=32, help="crops of --crop-turns micro-turns")
    p.add_argument("--crop-turns", type=int, default=150)
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--plot", default=None, help="PNG: the first crop's spectrograms, true and rendered")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from ..runtime.checkpoint import load_runtime

    torch.set_num_threads(1)
    models = load_runtime(args.checkpoint)
    result = rendering_wer(models, args.corpus, args.crops, args.crop_turns, plot=args.plot).as_dict()
    text = json.dumps(result, indent=2)
    if args.json:
        atomic_write_text(Path(args.json), text + "\n")
    print(text)
    return 0
