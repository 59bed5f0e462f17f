"""Building blocks of the interaction model: a pre-norm causal transformer with RoPE and a sliding window.

Every attention layer has two entry points that compute the same function: `forward` over a whole
sequence (training; a banded causal mask) and `step` over a few new tokens per session with a ring-buffer
KV cache of exactly `window` slots (streaming). Keys are cached after RoPE at their absolute position, so the
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
        qkv = self.qkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(qkv[:2], *rope)  # queries and keys rotated by the same ops at once
        return q, k, qkv[2]

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
        bias: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x [B, n, d]: n new tokens per session at consecutive positions, rope [B, 1, n, hd/2] at those
        positions, `slots` [B, n] their ring slots (position % window). The ring holds keys as
        cache_k [B, H, W, hd] and values transposed, cache_v [B, H, hd, W]. Each new token attends over the
        ring as it was before this call (its first F slots, F = the bias's width) and over the new tokens up
        to itself; `bias` = (ring [B, 1, n, F], new [B, 1, n, n]) additive masks (`ring_step_bias`). Then
        the new keys/values are written into their ring slots (in place): attending before writing keeps
        the keys that the writes evict but the earlier new tokens still see (a ring of exactly W slots
        holds each token's whole window)."""
        b, n, _ = x.shape
        q, k, v = self._qkv(x, rope)  # [B, H, n, hd]
        ring_bias, new_bias = bias
        filled = ring_bias.shape[-1]
        q = q * self.head_dim**-0.5
        # Batched matmuls over strided views of the ring: reading the ring is the cost (memory-bound at
        # large batches), and this reads it once for all n queries, with no copy and no per-session loop.
        # Values are stored transposed because [hd, W] @ [W, n] streams through the ring twice as fast as
        # [n, W] @ [W, hd] on CPU (measured: 7.3 against 15 ms for 32 sessions' rings of 4 layers).
        ring_scores = q @ cache_k[:, :, :filled].transpose(-1, -2) + ring_bias
        scores = torch.cat([ring_scores, q @ k.transpose(-1, -2) + new_bias], -1).softmax(-1)
        y = (cache_v[..., :filled] @ scores[..., :filled].transpose(-1, -2)).transpose(-1, -2)
        y = y + scores[..., filled:] @ v
        rows = torch.arange(b)[:, None]
        cache_k[rows, :, slots] = k.transpose(1, 2)
        cache_v[rows, :, :, slots] = v.transpose(1, 2)
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


def ring_step_bias(
    slot_pos: torch.Tensor, positions: torch.Tensor, window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive attention masks for `Attention.step`, shared by every layer. slot_pos [B, W]: the position
    each ring slot holds before the step (-1 = empty); positions [B, n]: the new tokens' (consecutive; a
    negative one is a placeholder that no other token sees). Query at position p sees keys p - W < j <= p.
    Returns (ring [B, 1, n, F], new [B, 1, n, n]) with 0 where visible and -inf elsewhere, F = one past the
    last filled slot of any session (every slot from F on is empty in every row: the ring fills in order, so
    sessions younger than the window read fewer slots)."""
    filled = slot_pos >= 0
    occupied = filled.any(0).nonzero()
    width = int(occupied.max()) + 1 if len(occupied) else 1
    held = slot_pos[:, None, :width]
    visible = filled[:, None, :width] & (held > positions[:, :, None] - window)
    ring = torch.zeros(visible.shape, device=slot_pos.device).masked_fill_(~visible, float("-inf"))
    n = positions.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=slot_pos.device).tril()
    own = torch.eye(n, dtype=torch.bool, device=slot_pos.device)
    seen = causal & ((positions >= 0)[:, None, :] | own)  # [B, n, n]
    new = torch.zeros(seen.shape, device=slot_pos.device).masked_fill_(~seen, float("-inf"))
    return ring[:, None], new[:, None]


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
        bias: tuple[torch.Tensor, torch.Tensor],
        last_only: bool = False,
    ) -> torch.Tensor:
        """One streaming step of n tokens per session (`Attention.step`); `last_only` returns only the last
        token's output (the final layer, where the earlier tokens' outputs are not needed)."""
        x = x + self.attn.step(self.norm1(x), rope, slots, cache_k, cache_v, bias)
        if last_only:
            x = x[:, -1:]
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


def resize_video(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Frames [N, 3, H, W] (float) to the model's square input size: the one resize of the runtime (live
    camera frames) and the training crops (scenes drawn at another size), so both see the same filter."""
    return F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True)


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
        # the change since the previous frame enters beside the frame itself (zero at initialisation, so
        # a fine-tune that adds it starts where the model was)
        self.motion = nn.Conv2d(3, c1, sub, stride=sub, bias=False) if cfg.video_motion else None
        grid = cfg.video_size // cfg.video_patch
        self.patch_pos = nn.Parameter(torch.zeros(d, grid, grid))
        self.proj = nn.Linear(d, d)

    def forward(self, frames: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """frames [N, 3, S, S] float in [0, 1] (or uint8 0-255) -> [N, d_model]; with `video_motion`, also
        `previous` [N, 3, S, S] (the frame before each, or the frame itself where there was none).

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
        if self.motion is not None:
            if previous is None:
                raise ValueError("VideoStem: video_motion needs the previous frames")
            change = (frames.to(conv1.weight.dtype) - previous.to(conv1.weight.dtype)).permute(0, 2, 3, 1)
            x = x + F.linear(_blocks(change, conv1.kernel_size[0]), self.motion.weight.flatten(1) * scale)
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
