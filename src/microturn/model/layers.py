"""Building blocks of the interaction model: a pre-norm causal transformer with RoPE and a sliding window.

Every attention layer has two entry points that compute the same function: `forward` over a whole
sequence (training; a banded causal mask) and `step` over one new token per session with a ring-buffer KV
cache of exactly `window` slots (streaming). Keys are cached after RoPE at their absolute position, so the
cache never needs rewriting and a ring slot simply holds the latest token at `position % window`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused op (step latency)


def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [..., 1, n, head_dim // 2] (broadcast over heads) for integer positions [..., n]; angles in
    float64 so that long sessions keep exact relative phases."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[..., None, :, None] * inv_freq
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :h/2], x[..., h/2:]); cos/sin broadcast over heads."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def sliding_causal_mask(n: int, window: int) -> torch.Tensor:
    """[n, n] bool, True where query i may attend key j: i - window < j <= i."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    return (j <= i) & (j > i - window)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim, self.rope_base = cfg.n_heads, cfg.head_dim, cfg.rope_base
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def _qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """x [B, N, d] at positions 0..N-1; mask [N, N] bool; rope = rope_tables(positions) [1, N, hd/2]."""
        b, n, d = x.shape
        q, k, v = self._qkv(x, rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))

    def step(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        slots: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        mask_bias: torch.Tensor,
    ) -> torch.Tensor:
        """x [B, 1, d], one token per session, rope [B, 1, 1, hd/2] at its position, `slots` [B] its ring
        slot (position % window). Writes the token's key/value into its ring slot (cache_* [B, H, W, hd],
        updated in place) and attends over the first F ring slots, F = mask_bias.shape[-1] (the ring fills
        slots in order, so F < W while every session is younger than the window); `mask_bias` [B, 1, 1, F]
        is 0 for filled slots and -inf for empty ones (`ring_mask_bias`)."""
        b = x.shape[0]
        q, k, v = self._qkv(x, rope)  # [B, H, 1, hd]
        rows = torch.arange(b)
        cache_k[rows, :, slots] = k[:, :, 0]
        cache_v[rows, :, slots] = v[:, :, 0]
        filled = mask_bias.shape[-1]
        # Two batched matmuls over strided views of the ring: reading the ring is the cost (memory-bound at
        # large batches), and this reads it once per product, with no copy and no per-session loop.
        scores = (q * self.head_dim**-0.5) @ cache_k[:, :, :filled].transpose(-1, -2) + mask_bias
        y = scores.softmax(-1) @ cache_v[:, :, :filled]
        return self.proj(y.transpose(1, 2).reshape(b, 1, -1))


def ring_mask_bias(slot_pos: torch.Tensor) -> torch.Tensor:
    """slot_pos [B, W] (-1 = empty) -> additive attention bias [B, 1, 1, F] over the first F slots, where F
    is one past the last filled slot of any session (every slot from F on is empty in every row)."""
    filled = slot_pos >= 0
    width = int(filled.any(0).nonzero().max()) + 1
    bias = torch.zeros(filled.shape[0], 1, 1, width, device=slot_pos.device)
    return bias.masked_fill_(~filled[:, None, None, :width], float("-inf"))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, kind: str = "swiglu"):
        super().__init__()
        if kind not in ("swiglu", "gelu"):
            raise ValueError(f"unknown MLP kind {kind!r}: use swiglu or gelu")
        self.kind = kind
        self.up = nn.Linear(dim, hidden * (2 if kind == "swiglu" else 1), bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.kind == "swiglu":
            gate, val = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * val)
        return self.down(F.gelu(h))


def mlp_hidden(cfg: ModelConfig) -> int:
    return int(round(cfg.mlp_ratio * cfg.d_model / 32)) * 32


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(cfg.d_model), RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg.d_model, mlp_hidden(cfg), cfg.mlp)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask, rope)
        return x + self.mlp(self.norm2(x))

    def step(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        slots: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        mask_bias: torch.Tensor,
    ) -> torch.Tensor:
        x = x + self.attn.step(self.norm1(x), rope, slots, cache_k, cache_v, mask_bias)
        return x + self.mlp(self.norm2(x))


class DMelBag(nn.Module):
    """dMel frames -> one vector: a (channel, bin) embedding summed over channels per frame (EmbeddingBag,
    so no [.., 80, dim] intermediate), the frame vectors concatenated, then a linear map to d_model."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.bins, self.n_mels, self.frames = cfg.dmel_bins, cfg.n_mels, cfg.frames
        self.bag = nn.EmbeddingBag(cfg.n_mels * cfg.dmel_bins, cfg.dmel_dim, mode="sum")
        self.proj = nn.Linear(cfg.frames * cfg.dmel_dim, cfg.d_model)
        self.register_buffer("offsets", torch.arange(cfg.n_mels) * cfg.dmel_bins, persistent=False)

    def forward(self, bins: torch.Tensor) -> torch.Tensor:
        """bins [..., frames, n_mels] long in [0, dmel_bins) -> [..., d_model]."""
        lead = bins.shape[:-2]
        flat = (bins + self.offsets).reshape(-1, self.n_mels)
        per_frame = self.bag(flat).reshape(*lead, self.frames * self.bag.embedding_dim)
        return self.proj(per_frame)


class ElapsedTime(nn.Module):
    """Seconds since session start -> sinusoidal features (periods 0.4 s .. 1 h) -> linear."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        periods = torch.logspace(math.log10(0.4), math.log10(3600.0), cfg.time_periods, dtype=torch.float64)
        self.register_buffer("freqs", 2 * math.pi / periods, persistent=False)
        self.proj = nn.Linear(2 * cfg.time_periods, cfg.d_model)

    def forward(self, seconds: torch.Tensor) -> torch.Tensor:
        angles = seconds.to(torch.float64)[..., None] * self.freqs
        return self.proj(torch.cat([angles.sin(), angles.cos()], dim=-1).float())


class VideoStem(nn.Module):
    """hMLP patch stem (Touvron et al. 2022): per 40x40 patch, linear layers over 4x4 sub-patches of 10x10
    pixels, then 2x2 merges, then 1 (convolutions with kernel == stride are exactly per-patch linear maps),
    plus a per-patch position embedding, mean-pooled to one vector per frame."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.video_size % cfg.video_patch or cfg.video_patch % 4:
            raise ValueError(
                f"video_size {cfg.video_size} must be a multiple of video_patch {cfg.video_patch}, "
                "itself a multiple of 4"
            )
        d, sub = cfg.d_model, cfg.video_patch // 4
        c1, c2 = max(d // 4, 8), max(d // 2, 8)
        self.size = cfg.video_size
        self.stem = nn.Sequential(
            nn.Conv2d(3, c1, sub, stride=sub),
            nn.GroupNorm(1, c1),
            nn.GELU(),
            nn.Conv2d(c1, c2, 2, stride=2),
            nn.GroupNorm(1, c2),
            nn.GELU(),
            nn.Conv2d(c2, d, 2, stride=2),
        )
        grid = cfg.video_size // cfg.video_patch
        self.patch_pos = nn.Parameter(torch.zeros(d, grid, grid))
        self.proj = nn.Linear(d, d)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, S, S] float in [0, 1] (or uint8 0-255) -> [N, d_model].

        The same function as `self.stem` on frames * 2 - 1, computed channels-last with matmuls: each
        convolution has kernel == stride, so it is a linear map of non-overlapping blocks, and the input's
        scaling folds into the first weight. On a CPU this is about 3x faster than the convolutions in
        training (no float copy of the frames, no strided-convolution kernels)."""
        if frames.shape[-2:] != (self.size, self.size):
            raise ValueError(f"video frames must be {self.size}x{self.size}, got {tuple(frames.shape[-2:])}")
        conv1, norm1, _, conv2, norm2, _, conv3 = self.stem
        scale = 2.0 / 255.0 if frames.dtype == torch.uint8 else 2.0
        x = _blocks(frames.permute(0, 2, 3, 1), conv1.kernel_size[0]).to(conv1.weight.dtype)
        w1 = conv1.weight.flatten(1)  # [c1, 3 k k] in (channel, row, column) order, as _blocks lays out
        x = F.linear(x, w1 * scale, conv1.bias - w1.sum(1))  # conv1(frames * 2 - 1)
        for norm, conv in ((norm1, conv2), (norm2, conv3)):
            x = F.gelu(_channels_last_group_norm(x, norm))
            x = F.linear(_blocks(x, 2), conv.weight.flatten(1), conv.bias)
        patches = x + self.patch_pos.permute(1, 2, 0)
        return self.proj(patches.mean(dim=(1, 2)))


def _blocks(x: torch.Tensor, k: int) -> torch.Tensor:
    """Channels-last [N, H, W, C] -> [N, H/k, W/k, C k k] non-overlapping k x k blocks, flattened in a
    convolution weight's (channel, row, column) order."""
    n, h, w, c = x.shape
    return (
        x.reshape(n, h // k, k, w // k, k, c).permute(0, 1, 3, 5, 2, 4).reshape(n, h // k, w // k, c * k * k)
    )


def _channels_last_group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """nn.GroupNorm with one group on a channels-last [N, H, W, C] tensor."""
    return F.layer_norm(x, x.shape[1:], eps=norm.eps) * norm.weight + norm.bias
