"""`eval onsets`: when the model should start speaking, does it know *when*, and does it know *what*?

A free-running score of zero (no rep counted, no cue word said) hides which of two things failed: the gate
(the model never decided to speak) or the text head (it spoke, but the wrong words). This check separates
them, teacher-forced on held-out episodes: the trunk hears the real user and its own real past, and at
every micro-turn where the corpus's assistant starts speaking (an onset), it reads
- the gate: did its start probability pass the start threshold (`gate_start_threshold`, summed over the
  `gate_start_window` as streaming decides) in that micro-turn or the `lead` before it (the head spreads
  an onset's timing over its neighbours);
- the text head: is its first token, pad excluded (as streaming decodes an onset), the corpus's.
Beside them, how often the gate passes the threshold where the assistant is silent (its false starts).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_text
from ..model.interaction import InteractionModel, advance_start_window
from ..model.tokenizer import PAD, TextTokenizer
from ..train.dataset import CropRenderer, collate, read_conversations

SKIP_TURNS = 15  # the first 3 s: a crop's first onsets have too little past to judge


@dataclass
class OnsetResult:
    corpus: str
    episodes: int
    onsets: int
    gate_fires: float | None  # share of onsets where the gate passed the start threshold in time
    first_token_right: float | None  # share of onsets where the first word piece is the corpus's
    both: float | None  # both at once: what a free-running model needs
    silent_fires: float | None  # share of silent micro-turns (not just stopped) where it would start
    examples: list[str] = field(default_factory=list)  # "want -> got" for the first onsets

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _share(values: list[bool]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def _start_probs(prob: torch.Tensor, talked: torch.Tensor, window: int) -> torch.Tensor:
    """Streaming's start probability at each micro-turn of a teacher-forced crop [T] (`talked` [T]: the
    corpus's assistant spoke in the micro-turn before)."""
    recent, out = prob.new_zeros(1, window), []
    for p, t in zip(prob, talked, strict=True):
        recent, start = advance_start_window(recent, p[None], t[None])
        out.append(start)
    return torch.cat(out)


@torch.no_grad()
def onset_scores(
    model: InteractionModel,
    tokenizer: TextTokenizer,
    corpus: str | Path,
    episodes: int = 8,
    max_turns: int = 256,
    lead: int = 3,
) -> OnsetResult:
    """Teacher-forced gate and first-token scores at the assistant's onsets of the first `episodes`
    conversations of `corpus` (their first `max_turns` micro-turns each)."""
    conversations = read_conversations(corpus, tokenizer)[:episodes]
    if not conversations:
        raise FileNotFoundError(f"{corpus}: no conversations")
    cfg = model.cfg
    renderer = CropRenderer(conversations, cfg, augment=None)
    fires, right, both, silent, examples = [], [], [], [], []
    model.eval()
    for i in range(len(conversations)):
        length = min(renderer.n_turns(i, 0) - 1, max_turns)
        batch = collate([renderer.render(i, 0, 0, length, np.random.default_rng(0))])
        hidden = model(batch)
        scores = model.text_scores(hidden, batch)
        speaking, valid = batch.speaking[0].bool(), batch.valid[0]
        talked = torch.cat([speaking.new_zeros(1), speaking[:-1]])  # each index predicts the next turn
        start_prob = _start_probs(torch.sigmoid(model.gate(hidden)[0, :, 0]), talked, cfg.gate_start_window)
        onsets = (speaking[1:] & ~speaking[:-1]).nonzero()[:, 0] + 1
        for t in onsets.tolist():
            if t < SKIP_TURNS:
                continue
            first = scores[0, t, 0].clone()
            first[PAD] = float("-inf")
            want, got = int(batch.text[0, t, 0]), int(first.argmax())
            fired = bool((start_prob[max(0, t - lead) : t + 1] > cfg.start_threshold).any())
            fires.append(fired)
            right.append(want == got)
            both.append(fired and want == got)
            if len(examples) < 12:
                examples.append(f"{tokenizer.decode([want])!r} -> {tokenizer.decode([got])!r}")
        quiet = ~speaking & ~talked & valid  # where streaming would start, not go on
        quiet[:SKIP_TURNS] = False
        silent += (start_prob[quiet] > cfg.start_threshold).tolist()
    return OnsetResult(
        str(corpus),
        len(conversations),
        len(fires),
        _share(fires),
        _share(right),
        _share(both),
        _share(silent),
        examples,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "onsets", help="at the assistant's onsets (teacher-forced): does the gate fire, right words?"
    )
    p.add_argument("corpora", nargs="+", help="held-out corpus folders (e.g. corpora/test_reps)")
    p.add_argument("--checkpoint", default=None, help="model checkpoint folder (default: the embedded one)")
    p.add_argument("--episodes", type=int, default=8, help="conversations per corpus")
    p.add_argument("--max-turns", type=int, default=256, help="micro-turns read per conversation")
    p.add_argument("--json", default=None, help="also write the results here")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from ..model.checkpoint import load_checkpoint
    from ..runtime.checkpoint import default_checkpoint_path

    torch.set_num_threads(1)
    model, tokenizer, _ = load_checkpoint(args.checkpoint or default_checkpoint_path())  # no vocoder needed
    results = []
    for corpus in args.corpora:
        result = onset_scores(model, tokenizer, corpus, args.episodes, args.max_turns).as_dict()
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(results, indent=1) + "\n")
    return 0
