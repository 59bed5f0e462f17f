"""A small causal streaming vocoder: log-mel frames in, 16 kHz waveform out.

Vocos-style (Siuzdenko 2023): causal ConvNeXt blocks over the mel frames predict, for every frame, the STFT
of the waveform at the same hop (log magnitude and a phase angle), and an inverse FFT with overlap-add
turns those frames into samples. Everything is causal, so the model streams chunk by chunk with a little
explicit state: each causal convolution keeps its last `kernel - 1` input frames, and the overlap-add keeps
the not yet finished tail of the last frames.

Timing: synthesis frame j covers the n_fft samples that end where mel frame j ends ((j + 1) * HOP), like
the causal analysis frames of `audio.log_mel`. A sample is finished only once every frame overlapping it has
arrived, so the output stream is the speech delayed by `n_fft - hop` samples (30 ms at n_fft 640): every
call with T frames returns exactly T * HOP finished samples, and the first call starts with that delay.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from microturn.audio import HOP, LOG_MEL_MAX, LOG_MEL_MIN, N_MELS
from microturn.files import atomic_write, read_safetensors

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "vocoder"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_LOG_MAGNITUDE = 7.0  # exp(7) ~ 1100: far above any real speech bin, keeps an untrained head finite


@dataclass(frozen=True)
class VocoderConfig:
    n_mels: int = N_MELS
    dim: int = 160
    hidden: int = 480
    blocks: int = 4
    kernel: int = 7
    n_fft: int = 640
    hop: int = HOP

    @property
    def delay(self) -> int:
        """Samples by which the output stream lags the speech the mel frames describe."""
        return self.n_fft - self.hop

    @property
    def receptive_field(self) -> int:
        """Mel frames (including the current one) that one output frame depends on."""
        return (self.kernel - 1) * (self.blocks + 1) + 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> VocoderConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}: not valid JSON ({exc})") from exc
        known = {f.name for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) - known:
            raise ValueError(f"{source}: expected a vocoder config with keys {sorted(known)}, got {raw!r}")
        config = cls(**raw)
        if config.n_fft % config.hop:
            raise ValueError(f"{source}: n_fft {config.n_fft} must be a multiple of hop {config.hop}")
        return config


@dataclass
class VocoderState:
    """Per-stream memory: the last `kernel - 1` inputs of each causal conv, and the overlap-add tail."""

    conv_inputs: list[torch.Tensor]  # each [B, kernel - 1, channels]
    ola_tail: torch.Tensor  # [B, n_fft - hop]: partial sums of samples that later frames still add to

    @property
    def batch(self) -> int:
        return self.ola_tail.shape[0]

    @staticmethod
    def cat(states: list[VocoderState]) -> VocoderState:
        """One batched state from per-session states (sessions come and go between micro-turns)."""
        return VocoderState(
            conv_inputs=[torch.cat(parts) for parts in zip(*(s.conv_inputs for s in states), strict=True)],
            ola_tail=torch.cat([s.ola_tail for s in states]),
        )

    def split(self) -> list[VocoderState]:
        """Per-session states (batch 1 each) from a batched one."""
        return [
            VocoderState([c[i : i + 1] for c in self.conv_inputs], self.ola_tail[i : i + 1])
            for i in range(self.batch)
        ]


class CausalConv(nn.Module):
    """Convolution over time on channels-last frames [B, T, C]: output t sees inputs t - kernel + 1 .. t.

    The left context (the previous `kernel - 1` inputs) is passed in and the new one returned, so a stream
    cut into chunks gives exactly the output of the whole. Written as unfold + matmul/einsum rather than
    Conv1d because at 20 frames per call the conv kernels' fixed overhead dominated (measured).
    """

    def __init__(self, channels_in: int, channels_out: int, kernel: int, depthwise: bool = False):
        super().__init__()
        if depthwise and channels_in != channels_out:
            raise ValueError("a depthwise conv keeps the channel count")
        self.kernel, self.depthwise = kernel, depthwise
        fan_in = kernel if depthwise else channels_in * kernel
        bound = 1.0 / math.sqrt(fan_in)
        shape = (channels_out, kernel) if depthwise else (channels_out, channels_in * kernel)
        self.weight = nn.Parameter(torch.empty(shape).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        full = torch.cat([context, x], dim=1)
        if self.depthwise:  # kernel shifted multiply-adds: far cheaper than an einsum (a bmm with copies)
            n, w = x.shape[1], self.weight.t().contiguous()  # [kernel, C]: contiguous rows, 3x faster
            out = torch.addcmul(self.bias, full[:, :n], w[0])
            for k in range(1, self.kernel):
                out = out.addcmul_(full[:, k : k + n], w[k])
        else:
            windows = full.unfold(1, self.kernel, 1)  # [B, T, C, kernel]
            out = F.linear(windows.reshape(*windows.shape[:2], -1), self.weight, self.bias)
        return out, full[:, full.shape[1] - context.shape[1] :]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, kernel: int):
        super().__init__()
        self.dwconv = CausalConv(dim, dim, kernel, depthwise=True)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.scale = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, context = self.dwconv(x, context)  # [B, T, dim]
        h = self.down(F.gelu(self.up(self.norm(h))))
        return x + self.scale * h, context


class Vocoder(nn.Module):
    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.config = config
        self.embed = CausalConv(config.n_mels, config.dim, config.kernel)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(config.dim, config.hidden, config.kernel) for _ in range(config.blocks)
        )
        self.norm = nn.LayerNorm(config.dim)
        self.bins = config.n_fft // 2 + 1
        self.head = nn.Linear(config.dim, 2 * self.bins)
        # Synthesis window scaled so that overlap-added squared windows sum to one (steady state; it
        # holds for every output sample because output starts `delay` samples late).
        window = torch.hann_window(config.n_fft)
        self.register_buffer("window", window / (window.pow(2).sum() / config.hop), persistent=False)

    def new_state(self, batch: int = 1) -> VocoderState:
        c = self.config
        conv_inputs = [torch.zeros(batch, c.kernel - 1, c.n_mels)]
        conv_inputs += [torch.zeros(batch, c.kernel - 1, c.dim) for _ in range(c.blocks)]
        return VocoderState(conv_inputs, torch.zeros(batch, c.delay))

    def spectrum(
        self, log_mel: torch.Tensor, state: VocoderState
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Predicted log magnitude and phase [B, T, n_fft // 2 + 1] for log-mel [B, T, n_mels]."""
        # Shift so that silence is ~0: the zero context a fresh stream starts with then means silence.
        x = (log_mel - LOG_MEL_MIN) / (LOG_MEL_MAX - LOG_MEL_MIN)
        x, first = self.embed(x, state.conv_inputs[0])
        contexts = [first]
        for block, context in zip(self.blocks, state.conv_inputs[1:], strict=True):
            x, context = block(x, context)
            contexts.append(context)
        log_magnitude, phase = self.head(self.norm(x)).split(self.bins, dim=-1)
        return log_magnitude.clamp(max=MAX_LOG_MAGNITUDE), phase, contexts

    def overlap_add(self, frames: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windowed frames [B, T, n_fft] plus the previous tail -> (T * hop finished samples, new tail)."""
        batch, n_frames, _ = frames.shape
        hop, parts = self.config.hop, self.config.n_fft // self.config.hop
        out = F.pad(tail, (0, n_frames * hop))  # [B, (T + parts - 1) * hop]
        for k in range(parts):  # part k of frame j lands on output block j + k
            out[:, k * hop : (k + n_frames) * hop] += frames[:, :, k * hop : (k + 1) * hop].reshape(batch, -1)
        return out[:, : n_frames * hop], out[:, n_frames * hop :]

    def forward(
        self, log_mel: torch.Tensor, state: VocoderState | None = None
    ) -> tuple[torch.Tensor, VocoderState, torch.Tensor, torch.Tensor]:
        """log-mel [B, T, n_mels] -> (samples [B, T * hop], new state, log magnitude, phase).

        The samples are stream positions [start - delay, start + T * hop - delay) where `start` is the
        first frame's start; pass the returned state to the next call to continue the stream.
        """
        if log_mel.dim() != 3 or log_mel.shape[-1] != self.config.n_mels:
            raise ValueError(
                f"vocoder expects log-mel [batch, frames, {self.config.n_mels}], got {tuple(log_mel.shape)}"
            )
        if state is None:
            state = self.new_state(log_mel.shape[0])
        log_magnitude, phase, contexts = self.spectrum(log_mel, state)
        magnitude = log_magnitude.exp()  # torch.polar computes the same, 2.5x slower on CPU (measured)
        spec = torch.complex(magnitude * phase.cos(), magnitude * phase.sin())
        frames = torch.fft.irfft(spec, n=self.config.n_fft, dim=-1) * self.window
        samples, tail = self.overlap_add(frames, state.ola_tail)
        return samples, VocoderState(contexts, tail), log_magnitude, phase

    @torch.inference_mode()
    def synthesize(
        self, log_mel: torch.Tensor, state: VocoderState | None = None
    ) -> tuple[torch.Tensor, VocoderState]:
        """Inference: samples [B, T * hop] and the state to continue from."""
        samples, state, _, _ = self(log_mel, state)
        return samples, state


class VocoderStream:
    """One session's stream in numpy: push [T, n_mels] log-mel frames, get T * hop float32 samples back."""

    def __init__(self, vocoder: Vocoder):
        self.vocoder = vocoder
        self.state = vocoder.new_state(1)

    def push(self, log_mel: np.ndarray) -> np.ndarray:
        samples, self.state = self.vocoder.synthesize(
            torch.as_tensor(log_mel, dtype=torch.float32)[None], self.state
        )
        return samples[0].numpy()


def save_vocoder(model: Vocoder, directory: str | Path) -> None:
    """model.safetensors + config.json, each written under a temporary name first."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
    atomic_write(directory / CONFIG_FILE, lambda p: p.write_text(model.config.to_json()))


def load_vocoder(directory: str | Path) -> Vocoder:
    """A vocoder in eval mode from a directory written by `save_vocoder`; clear errors for bad files."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: vocoder checkpoint file not found")
    config = VocoderConfig.from_json(config_path.read_text(), source=str(config_path))
    tensors = read_safetensors(weights_path)
    model = Vocoder(config)
    expected = model.state_dict()
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise ValueError(
            f"{weights_path}: weights do not match {config_path} (missing {missing}, unexpected {extra})"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{weights_path}: {name} has shape {tuple(tensor.shape)}, "
                f"{config_path} needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors)
    return model.eval()


def load_default_vocoder() -> Vocoder:
    """The vocoder trained on the assistant's voice that ships inside the package."""
    return load_vocoder(DEFAULT_CHECKPOINT)
