"""The training loop: AdamW + warmup/cosine, a loss per stream, validation, atomic checkpoints, resume.

Reproducibility: the model is initialised from the seed, and batch `step` (crops, augmentation, flow-matching
noise) is a pure function of (seed, step, rank). Nothing else is random, so the same seed gives the same
weights, and a run resumed from the checkpoint at step s continues exactly as the uninterrupted run did.
Data parallel: run under torchrun (WORLD_SIZE > 1): DDP (gloo on CPU, nccl on GPU), or FSDP with --fsdp.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from microturn.files import atomic_write_text

from ..data.chitchat import load_chats
from ..model.checkpoint import (
    OPTIMIZER_FILE,
    init_from_checkpoint,
    load_checkpoint,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
)
from ..model.config import ModelConfig, get_config
from ..model.interaction import InteractionModel, TurnBatch
from ..model.tokenizer import TextTokenizer
from .dataset import CropPlan, CropRenderer, CropSampler, read_conversations, validation_batches

STREAMS = ("gate", "text", "mel", "floor", "user_text")
CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainOptions:
    config: str
    data: str
    out: str
    valid: str | None = None
    steps: int = 2000
    seed: int = 0
    batch_size: int = 8
    min_turns: int = 100
    max_turns: int = 200
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 100
    valid_batches: int = 4
    checkpoint_every: int = 200  # steps
    checkpoint_minutes: float = 5.0  # ... or this much wall time, whichever comes first
    tokenizer: str | None = None  # an existing tokenizer.json; default: train one on the chitchat train split
    init: str | None = None  # start from this checkpoint's weights and tokenizer (fresh optimizer, step 0)
    trainable: str | None = None  # comma-separated parameter-name prefixes to train; the rest stay frozen
    model_set: tuple[str, ...] = ()  # "field=value" overrides of the named model config (a grown head)
    threads: int = 1
    fsdp: bool = False
    refresh_minutes: float = 0.0  # > 0: re-read the manifest this often (a growing corpus; not reproducible)
    stop_after: int | None = None  # stop (as if killed) after this step's checkpoint; tests use it
    proactive_gate_weight: float = 1.0  # the gate loss's weight where proactive speech starts or stops
    stop_gate_weight: float = 1.0  # ... and where other speech stops (model.interaction.gate_weights)
    wait_act_gate_weight: float = 1.0  # ... and where a wait act ("hmm,") starts
    pause_gate_weight: float = 1.0  # ... and where it stays quiet through a user's pause


class StreamLosses(nn.Module):
    """The module DDP/FSDP wrap: its forward is the model's per-stream losses."""

    def __init__(self, model: InteractionModel, **gate_weights: float):
        super().__init__()
        self.model = model
        self.gate_weights = gate_weights  # model.losses' *_gate_weight keywords

    def forward(self, batch: TurnBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        # validation (eval mode) stays unweighted: its losses compare across runs
        return self.model.losses(batch, generator, **(self.gate_weights if self.training else {}))


def config_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, object]:
    """["flow_layers=4", ...] -> {"flow_layers": 4}: each value parsed as its `ModelConfig` field's type."""
    defaults = {f.name: f.default for f in fields(ModelConfig)}
    # a field whose default is None (gate_start_threshold) takes a float, or "none"
    types = {name: float if d is None else type(d) for name, d in defaults.items()}
    out: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in types:
            raise ValueError(f"--model-set {pair!r}: expected FIELD=VALUE with FIELD one of {sorted(types)}")
        kind = types[name]
        try:
            if value.lower() == "none" and defaults[name] is None:
                out[name] = None
                continue
            if kind is bool and value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            out[name] = value.lower() in ("true", "1") if kind is bool else kind(value)
        except ValueError as e:
            raise ValueError(f"--model-set {pair!r}: {value!r} is not a {kind.__name__}") from e
    return out


def learning_rate(step: int, opts: TrainOptions) -> float:
    warmup = min(opts.warmup, max(opts.steps // 10, 1))
    if step < warmup:
        return opts.lr * (step + 1) / warmup
    progress = (step - warmup) / max(opts.steps - warmup, 1)
    return opts.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_tokenizer(vocab_size: int) -> TextTokenizer:
    texts = [turn.text for chat in load_chats("train") for turn in chat.turns]
    return TextTokenizer.train(texts, vocab_size)


def _append_metrics(run: Path, record: dict) -> None:
    with open(run / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(run: Path, step: int) -> None:
    """On resume, drop the records of the interval lost after the checkpoint (they will be redone)."""
    path = run / METRICS_FILE
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


class Distributed:
    """Process-group facts; a single process is world 1, rank 0."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = torch.device(
            f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
        )
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _wrap(module: StreamLosses, opts: TrainOptions, env: Distributed) -> nn.Module:
    if env.world == 1:
        return module
    if opts.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in module.model.blocks:
            fully_shard(block)
        return fully_shard(module)
    from torch.nn.parallel import DistributedDataParallel

    # streams absent from the corpus (video, typed text) leave parameters without gradients
    return DistributedDataParallel(
        module,
        device_ids=[env.device.index] if env.device.type == "cuda" else None,
        find_unused_parameters=True,
    )


def _state_dicts(wrapped: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state on every rank, for DDP, FSDP or a single process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(
        wrapped, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def freeze_all_but(model: nn.Module, prefixes: str) -> int:
    """Only parameters whose names start with one of the comma-separated `prefixes` keep training (a
    fine-tune of some heads that must leave the trunk's behaviour exactly as it was); returns how many."""
    wanted = tuple(p.strip() for p in prefixes.split(",") if p.strip())
    n = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(wanted))
        n += param.numel() if param.requires_grad else 0
    if n == 0:
        raise ValueError(f"--trainable {prefixes!r}: no parameter name starts with it")
    return n


def _make_optimizer(model: nn.Module, opts: TrainOptions) -> torch.optim.Optimizer:
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.dim() >= 2]
    no_decay = [p for p in trained if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opts.lr,
        betas=(0.9, 0.95),
    )


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[TurnBatch], device: torch.device) -> dict[str, float]:
    """Mean loss per stream over fixed validation crops, with fixed flow-matching noise. `model` is the
    (possibly wrapped) StreamLosses: every rank runs it, so sharded (FSDP) parameters work too."""
    model.eval()
    totals = dict.fromkeys(STREAMS, 0.0)
    for i, batch in enumerate(batches):
        losses = model(batch.to(device), torch.Generator().manual_seed(i))
        for k in STREAMS:
            totals[k] += float(losses[k]) / len(batches)
    model.train()
    return totals


def train(opts: TrainOptions, resume: bool = False) -> Path:
    """Train (or resume) into opts.out; returns the final checkpoint folder."""
    env = Distributed()
    torch.set_num_threads(opts.threads)
    run = Path(opts.out)
    ckpt = run / CHECKPOINT_DIR
    cfg = get_config(opts.config, **config_overrides(opts.model_set))
    start = 0
    if resume and (resolve_checkpoint(ckpt) / "config.json").exists():
        saved = read_config(ckpt)
        if saved.get("config_name") != opts.config:
            raise ValueError(
                f"{ckpt}: checkpoint of config {saved.get('config_name')!r}, not {opts.config!r}"
            )
        model, tokenizer, saved = load_checkpoint(ckpt, expect=cfg)
        start = int(saved["step"])
        if env.rank == 0:
            print(f"resuming {run} from step {start}", flush=True)
    else:
        if resume and env.rank == 0:
            print(f"no checkpoint in {run}: starting from scratch", flush=True)
        if opts.init:  # fine-tuning: new data/schedule; weights that fit this config's shapes are copied
            torch.manual_seed(opts.seed)  # what starts fresh is seeded
            model = InteractionModel(cfg)
            tokenizer, fresh = init_from_checkpoint(model, opts.init)
            if env.rank == 0 and fresh:
                print(f"--init {opts.init}: {len(fresh)} tensors start fresh: {', '.join(fresh)}", flush=True)
        else:
            tokenizer = _shared_tokenizer(opts, run, cfg.vocab_size, env)
            torch.manual_seed(opts.seed)
            model = InteractionModel(cfg)
    if opts.trainable:
        trained = freeze_all_but(model, opts.trainable)
        if env.rank == 0:
            print(
                f"--trainable {opts.trainable}: {trained:,} parameters train, the rest are frozen", flush=True
            )
    model.train().to(env.device)
    if env.rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(run, start)

    plan = CropPlan(opts.min_turns, opts.max_turns, opts.batch_size)
    conversations = read_conversations(opts.data, tokenizer)
    sampler = CropSampler(CropRenderer(conversations, cfg), plan, opts.seed, env.rank)
    valid = (
        validation_batches(read_conversations(opts.valid, tokenizer), cfg, plan, opts.valid_batches)
        if opts.valid
        else []
    )

    wrapped = _wrap(
        StreamLosses(
            model,
            proactive_gate_weight=opts.proactive_gate_weight,
            stop_gate_weight=opts.stop_gate_weight,
            wait_act_gate_weight=opts.wait_act_gate_weight,
            pause_gate_weight=opts.pause_gate_weight,
        ),
        opts,
        env,
    )
    optimizer = _make_optimizer(wrapped, opts)
    if start:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = torch.load(resolve_checkpoint(ckpt) / OPTIMIZER_FILE, weights_only=False)
        # strict=False: parameters that never had a gradient (unused streams) have no optimizer state
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_optimizer_state_dict(wrapped, optimizer, state, options=options)

    if env.rank == 0:
        print(
            f"{opts.config}: {model.num_params():,} parameters, {len(conversations)} training conversations, "
            f"world size {env.world}, steps {start}..{opts.steps}",
            flush=True,
        )
    t0, last_ckpt_time, last_refresh, turns_done = time.time(), time.time(), time.time(), 0
    step = start
    for step in range(start, opts.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, opts)
        if opts.refresh_minutes > 0 and time.time() - last_refresh > 60 * opts.refresh_minutes:
            conversations = read_conversations(opts.data, tokenizer, conversations)
            sampler.set_conversations(conversations)
            last_refresh = time.time()
            if env.rank == 0:
                print(f"step {step}: {len(conversations)} training conversations", flush=True)
        batch = sampler.batch(step).to(env.device)
        generator = torch.Generator().manual_seed((opts.seed * 1_000_003 + step) * 1009 + env.rank)
        losses = wrapped(batch, generator)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), opts.grad_clip)
        optimizer.step()
        turns_done += int(batch.valid.sum()) * env.world
        done = step + 1

        if env.rank == 0 and (done % opts.log_every == 0 or done == opts.steps):
            elapsed = time.time() - t0
            rate = (done - start) / elapsed
            record = {
                "step": done,
                "split": "train",
                **{k: round(v.item(), 5) for k, v in losses.items()},
                "loss": round(total.item(), 5),
                "grad_norm": round(float(grad_norm), 4),
                "lr": learning_rate(step, opts),
                "steps_per_s": round(rate, 4),
                "micro_turns_per_s": round(turns_done / elapsed, 2),
                "tokens_per_s": round(2 * turns_done / elapsed, 2),
                "time": round(time.time(), 1),
            }
            _append_metrics(run, record)
            streams = " ".join(f"{k} {losses[k].item():.3f}" for k in STREAMS)
            print(
                f"step {done}/{opts.steps} | loss {total.item():.3f} ({streams}) | {rate:.2f} steps/s "
                f"{record['micro_turns_per_s']:.0f} micro-turns/s {record['tokens_per_s']:.0f} tokens/s | "
                f"ETA {_format_duration((opts.steps - done) / max(rate, 1e-9))}",
                flush=True,
            )
        if valid and (done % opts.eval_every == 0 or done == opts.steps):
            scores = evaluate(wrapped, valid, env.device)
            if env.rank == 0:
                _append_metrics(
                    run, {"step": done, "split": "valid", **{k: round(v, 5) for k, v in scores.items()}}
                )
                print(
                    f"step {done} valid | " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True
                )

        due = (
            done % opts.checkpoint_every == 0
            or done == opts.steps
            or done == opts.stop_after
            or time.time() - last_ckpt_time > 60 * opts.checkpoint_minutes
        )
        if env.world > 1:  # every rank must agree (wall clocks differ)
            flag = torch.tensor([int(due)])
            dist.broadcast(flag, 0)
            due = bool(flag.item())
        if due:
            model_state, optim_state = _state_dicts(wrapped, optimizer)
            if env.rank == 0:
                extra = {
                    "config_name": opts.config,
                    "step": done,
                    "seed": opts.seed,
                    "world_size": env.world,
                    "train": asdict(opts),
                }
                # FSDP shards the live parameters: save a plain copy built from the gathered full state
                plain = _plain_copy(model_state, cfg) if opts.fsdp else model
                save_checkpoint(ckpt, plain, tokenizer, extra, optim_state)
            env.barrier()
            last_ckpt_time = time.time()
        if opts.stop_after is not None and done >= opts.stop_after:
            break
    env.close()
    return ckpt


def _plain_copy(state: dict, cfg) -> InteractionModel:
    copy = InteractionModel(cfg)
    copy.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    return copy


def _shared_tokenizer(opts: TrainOptions, run: Path, vocab_size: int, env: Distributed) -> TextTokenizer:
    """Rank 0 provides the tokenizer (given, or trained on the chitchat train split); the others read it."""
    staged = run / "tokenizer.staging.json"
    if env.rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        if opts.tokenizer:
            shutil.copyfile(opts.tokenizer, staged)
        else:
            print(f"training a {vocab_size}-token BPE tokenizer on the chitchat train split", flush=True)
            train_tokenizer(vocab_size).save(staged)
    env.barrier()
    tokenizer = TextTokenizer.load(staged)
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"{opts.tokenizer}: {tokenizer.vocab_size} tokens, more than the model's {vocab_size}"
        )
    return tokenizer
