"""Output heads that read the hidden state at an input token: the text slot decoder and the mel flow head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .copying import HEARD_CONTEXT, CopyPointer, HeardMemory
from .layers import MLP, RMSNorm
from .speech import N_PHONE_IDS, WIDTH


class SlotTextDecoder(nn.Module):
    """Up to K text tokens per micro-turn, autoregressive over slots: slot i sees the hidden state, the token
    of slot i-1 (BOS for slot 0) and its slot position. Unembedding is tied to the shared text table. Each
    slot may have a copy candidate (model/copying.py: the next unsaid background token), whose logit gets
    a learned bonus."""

    def __init__(self, cfg: ModelConfig, text_embedding: nn.Embedding):
        super().__init__()
        self.text_embedding = text_embedding
        self.slots = cfg.text_slots
        self.from_hidden = nn.Linear(cfg.d_model, cfg.d_model)
        self.slot_pos = nn.Parameter(torch.randn(cfg.text_slots, cfg.d_model) * 0.02)
        self.norm1, self.norm2 = RMSNorm(cfg.d_model), RMSNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, 2 * cfg.d_model, "gelu")
        self.copy_bonus = nn.Linear(cfg.d_model, 1)
        self.hears = cfg.heard_tokens > 0
        if self.hears:
            self.heard_key = nn.Linear(HEARD_CONTEXT * cfg.d_model, cfg.d_model, bias=False)
            self.heard_query = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
            self.heard_mix = nn.Linear(cfg.d_model, 1)  # the logit of saying a heard word

    def heard_keys(self, contexts: torch.Tensor) -> torch.Tensor:
        """[..., HEARD_CONTEXT] token ids (-1 none) -> keys [..., d]."""
        e = self.text_embedding(contexts.clamp(min=0)) * (contexts >= 0)[..., None]
        return self.heard_key(e.flatten(-2))

    def _point_at_heard(
        self, x: torch.Tensor, logits: torch.Tensor, heard: HeardMemory
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [L, ..., S, d] slot states, logits [L, ..., S, V]; heard rows L -> (mixture log-probabilities,
        the attention over the heard words [L, ..., S, M])."""
        lead, d = x.shape[:-1], x.shape[-1]
        q = self.heard_query(x).reshape(lead[0], -1, d)
        scores = (q @ heard.keys.transpose(1, 2)).reshape(*lead, -1) / math.sqrt(d)
        # a large negative rather than -inf: a query with nothing heard stays finite (its share is 0)
        attention = scores.masked_fill(~heard.visible, -1e4).softmax(-1)
        share = torch.sigmoid(self.heard_mix(x)) * heard.visible.any(-1, keepdim=True)
        tokens = heard.tokens.clamp(min=0).reshape(lead[0], *[1] * (len(lead) - 1), -1).expand_as(attention)
        probs = (logits.softmax(-1) * (1 - share)).scatter_add(-1, tokens, attention * share)
        return (probs + 1e-9).log(), attention

    def _slot_logits(
        self,
        base: torch.Tensor,
        prev_tokens: torch.Tensor,
        first_slot: int,
        candidates: torch.Tensor,
        heard: HeardMemory | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scores [..., S, V], the attention over the heard words [..., S, M] or None)."""
        s = prev_tokens.shape[-1]
        x = base[..., None, :] + self.text_embedding(prev_tokens) + self.slot_pos[first_slot : first_slot + s]
        x = self.norm2(x + self.mlp(self.norm1(x)))
        logits = x @ self.text_embedding.weight.T
        bonus = self.copy_bonus(x) * (candidates >= 0)[..., None]
        logits = logits.scatter_add(-1, candidates.clamp(min=0)[..., None], bonus)
        return (logits, None) if heard is None else self._point_at_heard(x, logits, heard)

    def logits(
        self,
        hidden: torch.Tensor,
        prev_tokens: torch.Tensor,
        candidates: torch.Tensor,
        heard: HeardMemory | None = None,
    ) -> torch.Tensor:
        """Teacher forcing: hidden [L, ..., d], prev_tokens [L, ..., K] (BOS, then slots 0..K-2), copy
        candidates [L, ..., K] (-1 none), heard words per leading row -> [L, ..., K, V]."""
        return self._slot_logits(self.from_hidden(hidden), prev_tokens, 0, candidates, heard)[0]

    def greedy(
        self,
        hidden: torch.Tensor,
        bos: int,
        pad: int,
        pointers: list[CopyPointer],
        starts: torch.Tensor | None = None,
        heard: HeardMemory | None = None,
        resume: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Streaming decode: tokens [B, K], pad after the first pad; each row's copy pointer follows what it
        says. Slots depend on each other only through the previous token, so each slot costs one vocabulary
        projection, and none once every row ended. Rows where `starts` [B] bool (the session starts
        speaking) take their first token from the words alone: in the corpus every window that begins an
        utterance begins a word, but the head, trained on every micro-turn, spreads the onset's timing over
        neighbouring windows, and a greedy pad there would voice a word-less mumble. A word started by
        copying a heard token (the token the pointer attends to most) is finished as heard, in the next
        micro-turn if it must: the head, trained with the true next piece, otherwise drifts to another
        word's. Returns (tokens, each row's heard position of the piece still to say, -1 none, or None
        without heard words). Rows where `resume` [B] bool (speaking on with room for a word:
        `ModelConfig.text_no_silent_window`) take the copy pointer's next word first."""
        base = self.from_hidden(hidden)
        token = torch.full((hidden.shape[0],), bos, dtype=torch.long, device=hidden.device)
        tokens = torch.full((hidden.shape[0], self.slots), pad, dtype=torch.long, device=hidden.device)
        ended = torch.zeros_like(token, dtype=torch.bool)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        follows = None if heard is None else heard.follows
        rest_at = torch.full_like(token, -1)  # the heard position of a copied word's next piece, -1 none
        if heard is not None and heard.word_rest_at is not None:
            rest_at = heard.word_rest_at.clone()
        for i in range(self.slots):
            candidates = torch.tensor([p.candidate() for p in pointers], device=hidden.device)
            logits, attention = self._slot_logits(base, token[:, None], i, candidates[:, None], heard)
            logits = logits[:, 0]
            if i == 0 and starts is not None:
                logits[:, pad] = logits[:, pad].masked_fill(starts, float("-inf"))
            token = logits.argmax(-1)
            if i == 0 and resume is not None:
                token = torch.where(resume, candidates, token)
            if follows is not None and attention is not None:
                forced = rest_at >= 0
                token = torch.where(forced, heard.tokens[rows, rest_at.clamp(min=0)], token)
                at = torch.where(forced, rest_at, attention[:, 0].argmax(-1))
                copied = forced | (heard.tokens[rows, at] == token)
                rest_at = torch.where(copied & (follows[rows, at] >= 0), at + 1, -1)
            token = token.masked_fill(ended, pad)
            tokens[:, i] = token
            ended |= token == pad
            for pointer, said, done in zip(pointers, token.tolist(), ended.tolist(), strict=True):
                if not done:
                    pointer.said(said)
            if bool(ended.all()):
                break
        return tokens, (None if follows is None else rest_at.masked_fill(ended, -1))


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Flow time in [0, 1] -> [.., dim] sinusoidal features."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    angles = 1000.0 * t[..., None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FlowBlock(nn.Module):
    """Depthwise conv across the frames of the micro-turn (so frames agree), then a per-frame MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(dim), RMSNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.mlp = MLP(dim, 2 * dim, "gelu")

    @torch.no_grad()
    def start_as_identity(self) -> None:
        """Zero both residual branches: a block added to a trained head (a grown `flow_layers`) then starts
        as the identity, so fine-tuning begins from the trained head's output instead of a perturbed one."""
        self.conv.weight.zero_()
        self.conv.bias.zero_()
        self.mlp.down.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, frames, dim]. The depthwise conv (zero padding 1, the `nn.Conv1d` parameters) is three
        shifted multiply-adds on the channels-last frames: no transposes, and at one micro-turn of 20 frames
        far cheaper than the conv kernel's fixed overhead (same function)."""
        h = F.pad(self.norm1(x), (0, 0, 1, 1))
        w, n = self.conv.weight[:, 0].t().contiguous(), x.shape[1]  # [3, dim]: contiguous rows are 3x faster
        conv = torch.addcmul(self.conv.bias, h[:, :n], w[0])
        conv = conv.addcmul_(h[:, 1 : n + 1], w[1]).addcmul_(h[:, 2:], w[2])
        x = x + conv
        return x + self.mlp(self.norm2(x))


class FlowMelHead(nn.Module):
    """Conditional flow matching (Lipman et al. 2022, OT path) over one micro-turn of normalised log-mel
    [frames, n_mels], conditioned on the hidden state plus the embeddings of the chosen text tokens, and
    per frame on the phones being said (model/speech.py: context ids [N, frames, WIDTH], fraction
    [N, frames])."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        fd = cfg.flow_dim
        self.sigma_min, self.steps = cfg.flow_sigma_min, cfg.flow_steps
        self.cond = nn.Linear(cfg.d_model, fd)
        self.inp = nn.Linear(cfg.n_mels, fd)
        self.frame_pos = nn.Parameter(torch.randn(cfg.frames, fd) * 0.02)
        self.phones = nn.Embedding(WIDTH * N_PHONE_IDS, fd)  # one table per context offset
        self.phone_frac = nn.Linear(1, fd)
        self.time = nn.Sequential(nn.Linear(fd, fd), nn.SiLU(), nn.Linear(fd, fd))
        self.blocks = nn.ModuleList(FlowBlock(fd) for _ in range(cfg.flow_layers))
        self.norm = RMSNorm(fd)
        self.out = nn.Linear(fd, cfg.n_mels)

    def frame_features(self, phone_ids: torch.Tensor, phone_frac: torch.Tensor) -> torch.Tensor:
        """[N, frames, WIDTH] ids and [N, frames] fractions -> [N, frames, flow_dim]."""
        offsets = torch.arange(WIDTH, device=phone_ids.device) * N_PHONE_IDS
        return self.phones(phone_ids + offsets).sum(-2) + self.phone_frac(phone_frac[..., None])

    def time_features(self, t: torch.Tensor) -> torch.Tensor:
        """Flow times [..] -> [.., flow_dim]."""
        return self.time(sinusoid(t, self.frame_pos.shape[1]))

    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor | None,
        cond_features: torch.Tensor,
        time_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [N, frames, n_mels], t [N], cond_features = self.cond(hidden + text)[:, None] + frame_features
        [N, frames, flow_dim] -> predicted velocity like x. `time_features` = self.time_features(t) if
        already computed."""
        if time_features is None:
            time_features = self.time_features(t)
        h = self.inp(x) + self.frame_pos + cond_features + time_features.unsqueeze(-2)
        for block in self.blocks:
            h = block(h)
        return self.out(self.norm(h))

    def condition(
        self, cond: torch.Tensor, phone_ids: torch.Tensor, phone_frac: torch.Tensor
    ) -> torch.Tensor:
        """Everything but x and t, the same at every Euler step: [N, frames, flow_dim]."""
        return self.cond(cond)[:, None] + self.frame_features(phone_ids, phone_frac)

    def loss(
        self,
        target: torch.Tensor,
        cond: torch.Tensor,
        phone_ids: torch.Tensor,
        phone_frac: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Flow-matching MSE for targets [N, frames, n_mels] in [-1, 1]."""
        x0 = torch.randn(target.shape, generator=generator).to(target.device)
        t = torch.rand(target.shape[0], generator=generator).to(target.device)
        tt = t[:, None, None]
        xt = (1 - (1 - self.sigma_min) * tt) * x0 + tt * target
        v_target = target - (1 - self.sigma_min) * x0
        return F.mse_loss(self.velocity(xt, t, self.condition(cond, phone_ids, phone_frac)), v_target)

    def sample(
        self,
        noise: torch.Tensor,
        cond: torch.Tensor,
        phone_ids: torch.Tensor,
        phone_frac: torch.Tensor,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Euler integration from noise [N, frames, n_mels] at t=0 to t=1."""
        steps = steps or self.steps
        x, cond_features = noise, self.condition(cond, phone_ids, phone_frac)  # the same at every step
        # so are the time features of step i for every row: one call for all steps, whatever the batch
        times = self.time_features(torch.tensor([i / steps for i in range(steps)], device=x.device))
        for i in range(steps):
            x = x + self.velocity(x, None, cond_features, times[i]) / steps
        return x
