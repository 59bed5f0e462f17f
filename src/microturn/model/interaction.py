"""The interaction model: one causal transformer over in_0, out_0, in_1, out_1, ... (one token per block).

Micro-turn t covers input audio [0.2 t, 0.2 (t+1)). The input token in_t sums everything that arrived in
it (user audio as dMel, elapsed time, at most one queued background-text and typed-text token, a video
frame, a gap marker). The heads read the hidden state at in_t and decide what plays during the next
micro-turn [0.2 (t+1), 0.2 (t+2)): whether to speak, up to K text tokens (the inner monologue) and 20 mel
frames (flow matching), plus two auxiliary predictions (floor state, delayed user transcript). The output
token out_t embeds what was emitted, so the model hears itself.

Two paths compute the same function: `forward`/`losses` over whole sequences (training, teacher-forced
out tokens) and `new_state`/`step` one micro-turn at a time for a batch of sessions (streaming).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import audio
from .config import FLOOR_STATES, ModelConfig
from .copying import (
    NO_CANDIDATE,
    CopyPointer,
    HeardMemory,
    HeardWords,
    heard_batch,
    heard_contexts,
    heard_from_transcript,
    heard_in_slots,
)
from .heads import FlowMelHead, SlotTextDecoder
from .layers import (
    Block,
    DMelBag,
    ElapsedTime,
    RMSNorm,
    VideoStem,
    ring_step_bias,
    rope_tables,
    sliding_causal_mask,
)
from .speech import SpeechSchedule, TokenPhones, schedule_condition
from .streaming import StepInputs, StepOutput, StreamState
from .tokenizer import BOS, PAD

SILENT_LOG_MEL = math.log(audio.LOG_FLOOR)  # what a silent micro-turn's mel frames hold


# Per-session random streams, drawn from (seed, micro-turn, stream) only, so a session's draws are the same
# alone or in any batch: the flow's start noise and the sampled gate's uniforms.
_FLOW_NOISE, _GATE_DRAWS = 0, 7_919


def _session_generator(state: StreamState, row: int, stream: int) -> torch.Generator:
    seed, turn = int(state.seeds[row]), int(state.turn[row])
    return torch.Generator().manual_seed((seed * 1_000_003 + turn + stream) % 2**63)


def emitted_log_mel(mel_norm: torch.Tensor, speaking: torch.Tensor) -> torch.Tensor:
    """The log-mel that plays: the (normalised) mel when speaking, the log floor when silent. Training
    renders its teacher-forced out tokens through this too, so both paths embed the same dMel."""
    silent = torch.full_like(mel_norm, SILENT_LOG_MEL)
    return torch.where(speaking.bool()[..., None, None], audio.denormalise_log_mel(mel_norm), silent)


@dataclass
class TurnBatch:
    """A batch of conversation crops, T micro-turns each. Targets at index t describe micro-turn t + 1
    (what the heads at in_t predict); the out token of micro-turn t embeds exactly those targets
    (teacher forcing)."""

    user_dmel: torch.Tensor  # [B, T, frames, n_mels] long
    turn_index: torch.Tensor  # [B, T] long: micro-turns since session start (elapsed time)
    bg_tokens: torch.Tensor  # [B, T] long, -1 none
    typed_tokens: torch.Tensor  # [B, T] long, -1 none
    gap: torch.Tensor  # [B, T] bool
    speaking: torch.Tensor  # [B, T] long 0/1
    text: torch.Tensor  # [B, T, K] long, pad 0
    text_copy: torch.Tensor  # [B, T, K] long: each slot's copy candidate (model/copying.py), -1 none
    mel: torch.Tensor  # [B, T, frames, n_mels] normalised log-mel of the assistant
    mel_phones: torch.Tensor  # [B, T, frames, speech.WIDTH] long: phones said at each frame (speech.py)
    mel_phone_frac: torch.Tensor  # [B, T, frames] float: each frame's fraction into its phone
    out_dmel: torch.Tensor  # [B, T, frames, n_mels] long: dMel of what plays (log floor when silent)
    floor: torch.Tensor  # [B, T] long, index into FLOOR_STATES
    user_text: torch.Tensor  # [B, T, K] long: user words started in micro-turn t - delay
    valid: torch.Tensor  # [B, T] bool: targets exist (inside the conversation)
    video: torch.Tensor | None = None  # [B, T, 3, S, S] float in [0, 1], or uint8 0-255 (the dataset's)
    video_present: torch.Tensor | None = None  # [B, T] bool
    proactive: torch.Tensor | None = None  # [B, T] bool: like `speaking`, for unprompted (proactive) words
    wait_act: torch.Tensor | None = None  # [B, T] bool: like `speaking`, for wait acts ("hmm," "one moment,")
    user_pause: torch.Tensor | None = None  # [B, T] bool: the user pauses inside a turn

    def to(self, device: torch.device | str) -> TurnBatch:
        return TurnBatch(
            **{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        )


def gate_weights(
    speaking: torch.Tensor,
    proactive: torch.Tensor | None,
    proactive_weight: float,
    stop_weight: float,
    wait_act: torch.Tensor | None = None,
    wait_act_weight: float = 1.0,
    user_pause: torch.Tensor | None = None,
    pause_weight: float = 1.0,
) -> torch.Tensor:
    """Each micro-turn's weight in the gate loss [B, T]: `proactive_weight` where the assistant starts or
    stops proactive speech (video, clock and cue events: rare, and nothing a user's turn end announces),
    `stop_weight` where it stops any other speech (yielding: rare, and what an interruption tests),
    `wait_act_weight` where it starts a wait act (the turn taken at the human gap before its answer's text
    has come: the one start that the user's audio alone must announce), `pause_weight` where it stays
    quiet through a user's pause (the same decision from the same kind of silence, answered no), 1
    elsewhere. Other starts keep weight 1: weighted alone, they made the gate start in the user's
    pauses."""
    weights = torch.ones(speaking.shape, dtype=torch.float32, device=speaking.device)
    before, now = speaking[:, :-1].bool(), speaking[:, 1:].bool()
    weights[:, 1:][before & ~now] = stop_weight
    if user_pause is not None:
        weights[user_pause.bool() & ~speaking.bool()] = pause_weight
    if wait_act is not None:
        weights[:, 1:][~before & now & wait_act[:, 1:].bool()] = wait_act_weight
    if proactive is not None:
        weights[:, 1:][(before != now) & (proactive[:, 1:] | proactive[:, :-1]).bool()] = proactive_weight
    return weights


def advance_start_window(
    recent: torch.Tensor, prob: torch.Tensor, talking: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-turn of the start window (`gate_start_window`): the gate's probabilities `recent` [B, W]
    in the last silent micro-turns take this one's `prob` [B] (all cleared where the session is `talking`:
    it counts from its first silent micro-turn); returns them and the probability of a start in any of
    them, 1 - prod(1 - p) [B]."""
    recent = torch.cat([recent[:, 1:], prob[:, None]], dim=1)
    recent[talking] = 0.0
    return recent, 1.0 - (1.0 - recent).prod(dim=1)


def _unit_frames(frames: torch.Tensor) -> torch.Tensor:
    """Frames as floats in [0, 1] (training keeps them as bytes until the model: 4x less memory)."""
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames


def previous_frames(video: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Each micro-turn's previous frame: the last one present before it in the crop, or its own frame where
    there is none (what the streaming state's last frame holds). video [B, T, ...], present [B, T]."""
    b, t = present.shape
    steps = torch.arange(t, device=present.device).expand(b, t)
    last = torch.where(present, steps, -1).cummax(dim=1).values  # the last present frame at or before t
    before = torch.cat([torch.full_like(last[:, :1], -1), last[:, :-1]], dim=1)
    index = torch.where(before >= 0, before, steps)
    return video[torch.arange(b, device=present.device)[:, None], index]


class InteractionModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, k = cfg.d_model, cfg.text_slots
        self.turn_seconds = cfg.micro_turn_ms / 1000.0
        # shared text table: background/typed input, assistant output, slot decoder (tied unembedding)
        self.text_embedding = nn.Embedding(cfg.vocab_size, d)
        self.stream_embedding = nn.Embedding(3, d)  # 0 background text, 1 typed text, 2 assistant text
        self.block_type = nn.Embedding(2, d)  # 0 in token, 1 out token
        # in-token parts
        self.user_audio = DMelBag(cfg)
        self.elapsed = ElapsedTime(cfg)
        self.video = VideoStem(cfg)
        self.gap_marker = nn.Parameter(torch.zeros(d))
        # out-token parts
        self.out_audio = DMelBag(cfg)
        self.out_slot_pos = nn.Parameter(torch.randn(k, d) * 0.02)
        self.speaking_flag = nn.Embedding(2, d)
        # trunk
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(d)
        # heads at in_t
        self.gate = nn.Linear(d, 1)
        self.text_head = SlotTextDecoder(cfg, self.text_embedding)
        self.mel_head = FlowMelHead(cfg)
        self.floor_head = nn.Linear(d, len(FLOOR_STATES))
        self.user_text_head = nn.Linear(d, k * d)  # K parallel slots through the tied text table
        self.apply(self._init)
        # copying starts off, so a fine-tune that adds the copy pointer starts where the model was
        nn.init.zeros_(self.text_head.copy_bonus.weight)
        if self.video.motion is not None:  # and so does seeing motion
            nn.init.zeros_(self.video.motion.weight)
        if self.text_head.hears:  # and so does pointing at heard words (5% of the mass until it learns)
            nn.init.zeros_(self.text_head.heard_mix.weight)
            nn.init.constant_(self.text_head.heard_mix.bias, -3.0)
        # the phones of each token, for the streaming speech schedule: set by `attach_tokenizer`
        # (load_checkpoint does); without it the mel head is told no phones
        self.token_phones: TokenPhones | None = None

    def attach_tokenizer(self, tokenizer) -> None:
        """Tell the streaming step which phones each token id says (a `TextTokenizer`)."""
        self.token_phones = TokenPhones.of(tokenizer)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- token embeddings (any leading dims) ----
    def _queued_text(self, tokens: torch.Tensor, stream: int) -> torch.Tensor:
        present = (tokens >= 0).unsqueeze(-1)
        return (self.text_embedding(tokens.clamp_min(0)) + self.stream_embedding.weight[stream]) * present

    def embed_in(
        self,
        user_dmel: torch.Tensor,
        turn_index: torch.Tensor,
        bg_tokens: torch.Tensor,
        typed_tokens: torch.Tensor,
        gap: torch.Tensor,
        video: torch.Tensor | None = None,
        video_present: torch.Tensor | None = None,
        video_previous: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = (
            self.user_audio(user_dmel)
            + self.elapsed(turn_index * self.turn_seconds)
            + self.block_type.weight[0]
        )
        x = x + self._queued_text(bg_tokens, 0) + self._queued_text(typed_tokens, 1)
        x = x + gap.unsqueeze(-1) * self.gap_marker
        if video is not None and video_present is not None and bool(video_present.any()):
            frames = torch.zeros_like(x)
            present = _unit_frames(video[video_present])
            previous = None if video_previous is None else _unit_frames(video_previous[video_present])
            frames[video_present] = self.video(present, previous)
            x = x + frames
        return x

    def embed_text_slots(self, text: torch.Tensor) -> torch.Tensor:
        """[..., K] emitted assistant tokens -> [..., d]: what was said this micro-turn."""
        return (self.text_embedding(text) + self.out_slot_pos).sum(-2) + self.stream_embedding.weight[2]

    def embed_out(self, text: torch.Tensor, out_dmel: torch.Tensor, speaking: torch.Tensor) -> torch.Tensor:
        return (
            self.embed_text_slots(text)
            + self.out_audio(out_dmel)
            + self.speaking_flag(speaking)
            + self.block_type.weight[1]
        )

    def user_text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        slots = self.user_text_head(hidden).unflatten(-1, (self.cfg.text_slots, self.cfg.d_model))
        return slots @ self.text_embedding.weight.T

    def _heard_in_batch(self, batch: TurnBatch) -> HeardMemory | None:
        """Training's heard-words memory: the crop's user transcript, each word readable from the micro-turn
        its transcript target names it on (as the streaming head would), the last `heard_tokens` of them."""
        if not self.text_head.hears:
            return None
        tokens, contexts, turns = heard_from_transcript(batch.user_text)
        now = torch.arange(batch.user_text.shape[1], device=tokens.device)
        visible = (turns[:, None, :] <= now[None, :, None]) & (tokens >= 0)[:, None, :]  # [B, T, M]
        order = torch.arange(tokens.shape[1], device=tokens.device)
        visible &= order >= visible.sum(-1, keepdim=True) - self.cfg.heard_tokens
        return HeardMemory(tokens, self.text_head.heard_keys(contexts), visible[:, :, None, :])

    # ---- training path ----
    def forward(self, batch: TurnBatch) -> torch.Tensor:
        """Hidden states at the in tokens [B, T, d] for a teacher-forced batch."""
        previous = None
        if self.cfg.video_motion and batch.video is not None and batch.video_present is not None:
            previous = previous_frames(batch.video, batch.video_present)
        x_in = self.embed_in(
            batch.user_dmel,
            batch.turn_index,
            batch.bg_tokens,
            batch.typed_tokens,
            batch.gap,
            batch.video,
            batch.video_present,
            previous,
        )
        x_out = self.embed_out(batch.text, batch.out_dmel, batch.speaking)
        b, t, d = x_in.shape
        x = torch.stack([x_in, x_out], dim=2).reshape(b, 2 * t, d)  # in_0, out_0, in_1, ...
        mask = sliding_causal_mask(2 * t, self.cfg.window).to(x.device)
        rope = rope_tables(torch.arange(2 * t, device=x.device), self.cfg.head_dim, self.cfg.rope_base)
        for block in self.blocks:
            x = block(x, mask, rope)
        return self.norm(x)[:, 0::2]

    def text_scores(self, hidden: torch.Tensor, batch: TurnBatch) -> torch.Tensor:
        """The text head's teacher-forced scores [B, T, K, V] over the batch's words (each slot sees the
        true previous piece, the copy pointer's candidates and the heard words)."""
        prev = torch.cat([torch.full_like(batch.text[..., :1], BOS), batch.text[..., :-1]], dim=-1)
        return self.text_head.logits(hidden, prev, batch.text_copy, self._heard_in_batch(batch))

    def losses(
        self,
        batch: TurnBatch,
        generator: torch.Generator | None = None,
        proactive_gate_weight: float = 1.0,
        stop_gate_weight: float = 1.0,
        wait_act_gate_weight: float = 1.0,
        pause_gate_weight: float = 1.0,
    ) -> dict[str, torch.Tensor]:
        """One loss per stream, averaged over valid micro-turns (mel: over valid speaking ones); the gate's
        is a weighted mean (`gate_weights`)."""
        hidden = self(batch)
        valid = batch.valid
        h = hidden[valid]
        text = batch.text[valid]
        text_scores = self.text_scores(hidden, batch)
        speaking = batch.speaking.float()
        weights = gate_weights(
            batch.speaking,
            batch.proactive,
            proactive_gate_weight,
            stop_gate_weight,
            batch.wait_act,
            wait_act_gate_weight,
            batch.user_pause,
            pause_gate_weight,
        )
        gate_weight = weights[valid]
        gate_loss = F.binary_cross_entropy_with_logits(self.gate(h)[:, 0], speaking[valid], reduction="none")
        losses = {
            "gate": (gate_loss * gate_weight).sum() / gate_weight.sum(),
            "text": F.cross_entropy(text_scores[valid].flatten(0, 1), text.flatten()),
            "floor": F.cross_entropy(self.floor_head(h), batch.floor[valid]),
            "user_text": F.cross_entropy(
                self.user_text_logits(h).flatten(0, 1), batch.user_text[valid].flatten()
            ),
        }
        speaking = batch.speaking[valid].bool()
        if bool(speaking.any()):
            cond = h[speaking] + self.embed_text_slots(text[speaking])
            phones, frac = batch.mel_phones[valid][speaking], batch.mel_phone_frac[valid][speaking]
            losses["mel"] = self.mel_head.loss(batch.mel[valid][speaking], cond, phones, frac, generator)
        else:
            losses["mel"] = hidden.sum() * 0.0  # keeps every parameter in the graph (DDP)
        return losses

    # ---- streaming path ----
    def new_state(self, batch_size: int, seeds: torch.Tensor | list[int] | None = None) -> StreamState:
        """Fresh sessions (micro-turn 0). `seeds` fix each session's flow-matching noise."""
        cfg, device = self.cfg, self.norm.weight.device
        shape = (batch_size, cfg.n_heads, cfg.window, cfg.head_dim)
        shape_v = (batch_size, cfg.n_heads, cfg.head_dim, cfg.window)  # values transposed (Attention.step)
        seeds = torch.arange(batch_size) if seeds is None else torch.as_tensor(seeds, dtype=torch.long)
        if seeds.shape != (batch_size,):
            raise ValueError(f"new_state: {batch_size} sessions but {tuple(seeds.shape)} seeds")
        return StreamState(
            keys=[torch.zeros(shape, device=device) for _ in range(cfg.n_layers)],
            values=[torch.zeros(shape_v, device=device) for _ in range(cfg.n_layers)],
            slot_pos=torch.full((batch_size, cfg.window), -1, dtype=torch.long, device=device),
            turn=torch.zeros(batch_size, dtype=torch.long, device=device),
            seeds=seeds.to(device),
            out_token=torch.zeros(batch_size, cfg.d_model, device=device),
            speech=[SpeechSchedule() for _ in range(batch_size)],
            copy=[CopyPointer() for _ in range(batch_size)],
            heard=[HeardWords() for _ in range(batch_size)],
            # the last frame each session saw (video_motion; no pixels kept without it)
            last_frame=torch.zeros(
                batch_size, 3, *(2 * [cfg.video_size if cfg.video_motion else 0]), device=device
            ),
            has_frame=torch.zeros(batch_size, dtype=torch.bool, device=device),
            recent_start_probs=torch.zeros(batch_size, cfg.gate_start_window, device=device),
        )

    def _advance(self, state: StreamState, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append n tokens per session [B, n, d] at consecutive `positions` [B, n] (a negative position is a
        placeholder: no token sees it); returns the last token's final hidden state [B, d]."""
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        slots = positions % self.cfg.window
        rope = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_base)
        bias = ring_step_bias(state.slot_pos, positions, self.cfg.window)  # shared by every layer
        h, last = x, len(self.blocks) - 1
        for i, (block, k, v) in enumerate(zip(self.blocks, state.keys, state.values, strict=True)):
            h = block.step(h, rope, slots, k, v, bias, last_only=i == last)
        state.slot_pos[rows, slots] = positions
        return self.norm(h[:, -1])

    def _previous_frames(self, state: StreamState, inputs: StepInputs) -> torch.Tensor | None:
        """With `video_motion`: each session's frame before this one (its own where it had none), and this
        micro-turn's frames become the sessions' last ones."""
        if not self.cfg.video_motion or inputs.video is None or inputs.video_present is None:
            return None
        frames, present = _unit_frames(inputs.video), inputs.video_present
        previous = torch.where(state.has_frame[:, None, None, None], state.last_frame, frames)
        state.last_frame[present] = frames[present]
        state.has_frame |= present
        return previous

    def _heard(self, state: StreamState, rows: Iterable[int]) -> HeardMemory | None:
        """The heard-words memories of these sessions, batched for the text head (None: it does not hear)."""
        if not self.text_head.hears:
            return None
        word_start = None if self.token_phones is None else self.token_phones.word_start_mask
        return heard_batch([state.heard[r] for r in rows], self.cfg.d_model, state.turn.device, word_start)

    def _hear_user(
        self, state: StreamState, user_text: torch.Tensor | None, external: list[list[int] | None] | None
    ) -> None:
        """Each session's words heard this micro-turn join its memory, keyed with the words before them (one
        key projection for all sessions): a transcriber's (`external`) where it has one, else the transcript
        head's slots up to the first pad (`user_text`: None only when every session has a transcriber)."""
        heard, contexts = [], []
        b = state.batch_size
        external = external if external is not None else [None] * b
        slot_rows = user_text.tolist() if user_text is not None else [None] * b
        for words, slots, given in zip(state.heard, slot_rows, external, strict=True):
            if given is not None:
                words.external = True
            new = list(given or []) if words.external else heard_in_slots(slots)
            heard.append(new)
            contexts += heard_contexts(new, words.tokens)
        if not contexts:
            return
        keys = self.text_head.heard_keys(torch.tensor(contexts, device=state.turn.device)).split(
            [len(new) for new in heard]
        )
        for words, new, k in zip(state.heard, heard, keys, strict=True):
            if new:
                words.hear(new, k, self.cfg.heard_tokens)

    def _stalled(self, state: StreamState, talking: torch.Tensor, floor_logits: torch.Tensor) -> torch.Tensor:
        """[B] bool (`text_no_silent_window`): sessions going on speaking with room for a word in the next
        window (what is left to play ends before it does), background words left to say, and the user, as
        the floor head sees it, not speaking: words are not pushed over the user, where the head's pad may
        be a yield the gate has not made yet. The speech schedule knows what is left only with a tokenizer
        attached."""
        if not self.cfg.text_no_silent_window or self.token_phones is None:
            return torch.zeros_like(talking)
        # the next word would start inside the next window: the last one ends, with its gap, before it does
        room = self.cfg.frames - self.cfg.speech_gap_frames
        idle = [
            (not s.phones or s.end[-1] < room) and p.candidate() != NO_CANDIDATE
            for s, p in zip(state.speech, state.copy, strict=True)
        ]
        floor = floor_logits.softmax(-1)
        user = floor[:, FLOOR_STATES.index("user")] + floor[:, FLOOR_STATES.index("overlap")] > 0.5
        return talking & ~user & torch.tensor(idle, dtype=torch.bool, device=talking.device)

    def _gate_decision(self, state: StreamState, logit: torch.Tensor, talking: torch.Tensor) -> torch.Tensor:
        """Speak or not, per session (`talking`: it spoke in the last window): go on above `gate_threshold`,
        start when the probability of a start in the last `gate_start_window` silent micro-turns passes
        `gate_start_threshold`; or a draw at `gate_temperature`."""
        cfg = self.cfg
        if cfg.gate_temperature > 0:
            rows = range(state.batch_size)
            uniform = [torch.rand((), generator=_session_generator(state, r, _GATE_DRAWS)) for r in rows]
            return torch.stack(uniform).to(logit.device) < torch.sigmoid(logit / cfg.gate_temperature)
        prob = torch.sigmoid(logit)
        recent, start_prob = advance_start_window(state.recent_start_probs, prob, talking)
        state.recent_start_probs.copy_(recent)  # in place: a runtime row view updates its batch
        return torch.where(talking, prob > cfg.gate_threshold, start_prob > cfg.start_threshold)

    def _session_noise(self, state: StreamState, rows: torch.Tensor) -> torch.Tensor:
        """Flow-matching start noise per session, from (seed, micro-turn) only: batch-independent."""
        cfg = self.cfg
        if cfg.flow_temperature == 0:  # the deterministic path: no noise to draw
            return torch.zeros(len(rows), cfg.frames, cfg.n_mels, device=state.turn.device)
        noise = []
        for r in rows.tolist():
            g = _session_generator(state, r, _FLOW_NOISE)
            noise.append(torch.randn(cfg.frames, cfg.n_mels, generator=g) * cfg.flow_temperature)
        return torch.stack(noise).to(state.turn.device) if noise else torch.zeros(0, cfg.frames, cfg.n_mels)

    @torch.no_grad()
    def step(
        self,
        state: StreamState,
        inputs: StepInputs,
        transcribe_user: bool = False,
        flow_steps: int | None = None,
        voice: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> StepOutput:
        """Advance every session by one micro-turn: in token, heads, out token. Mutates `state`.
        `transcribe_user` also runs the aux user-transcript head (off by default: K vocab projections);
        `flow_steps` overrides the config's Euler steps of the mel head. `voice` (text [B, K], speaking
        [B]) -> log-mel [B, frames, n_mels] says the emitted words itself (runtime.word_voice) in place
        of the mel head; the model hears that log-mel as what it said."""
        cfg, b = self.cfg, state.batch_size
        if inputs.user_dmel.shape != (b, cfg.frames, cfg.n_mels):
            raise ValueError(
                f"step: user_dmel must be [{b}, {cfg.frames}, {cfg.n_mels}], "
                f"got {list(inputs.user_dmel.shape)}"
            )
        none = torch.full((b,), -1, dtype=torch.long)
        bg = none if inputs.bg_token is None else inputs.bg_token
        for pointer, token in zip(state.copy, bg.tolist(), strict=True):
            pointer.hear([token])
        x_in = self.embed_in(
            inputs.user_dmel,
            state.turn,
            bg,
            none if inputs.typed_token is None else inputs.typed_token,
            torch.zeros(b, dtype=torch.bool) if inputs.gap is None else inputs.gap,
            inputs.video,
            inputs.video_present,
            self._previous_frames(state, inputs),
        )
        # The previous micro-turn's out token (position 2t - 1) enters the trunk together with this in token
        # (2t): one pass over the weights and the KV rings for both. Nothing reads the out token's own
        # output, so deferring it to here computes the same function (at micro-turn 0 it is a placeholder).
        positions = torch.stack([2 * state.turn - 1, 2 * state.turn], dim=1)
        hidden = self._advance(state, torch.stack([state.out_token, x_in], dim=1), positions)

        # the transcript head runs when asked for, or when some session hears through it (not a transcriber,
        # not the teacher's words)
        told = inputs.teacher.user_text if inputs.teacher is not None else None
        head_hears = self.text_head.hears and told is None and not all(w.external for w in state.heard)
        user_text = self.user_text_logits(hidden).argmax(-1) if transcribe_user or head_hears else None
        if self.text_head.hears:
            self._hear_user(state, user_text if told is None else told, inputs.heard)

        gate_logit = self.gate(hidden)[:, 0]
        floor_logits = self.floor_head(hidden)
        prob = torch.sigmoid(gate_logit)
        talking = torch.tensor([s.talking for s in state.speech], dtype=torch.bool, device=gate_logit.device)
        wants = self._gate_decision(state, gate_logit, talking)
        teacher = inputs.teacher
        if teacher is not None:
            speaking = teacher.speaking.bool()
            text = teacher.text
            prev = torch.cat([torch.full_like(text[:, :1], BOS), text[:, :-1]], dim=1)
            pairs = zip(state.copy, text.tolist(), strict=True)
            candidates = torch.tensor([p.slot_candidates(row, cfg.text_slots, PAD) for p, row in pairs])
            text_logits = self.text_head.logits(hidden, prev, candidates, self._heard(state, range(b)))
        else:
            text_logits = None
            speaking = wants
            if inputs.speaking_override is not None:
                speaking = torch.where(
                    inputs.speaking_override >= 0, inputs.speaking_override.bool(), speaking
                )
            # words are only said while speaking (a forced silence says nothing); silent rows skip the decoder
            text = torch.full((b, cfg.text_slots), PAD, dtype=torch.long)
            # a copied word's piece still to say, per session; a word left unfinished in silence stays so
            word_rest_at = torch.full((b,), -1, dtype=torch.long)
            if bool(speaking.any()):
                rows = speaking.nonzero()[:, 0]
                pointers = [state.copy[r] for r in rows.tolist()]
                heard = self._heard(state, rows.tolist())
                resume = self._stalled(state, talking, floor_logits)[rows]
                text[rows], rest_at = self.text_head.greedy(
                    hidden[rows], BOS, PAD, pointers, ~talking[rows], heard, resume
                )
                if rest_at is not None:
                    word_rest_at[rows] = rest_at.cpu()
            if self.text_head.hears:
                for words, at in zip(state.heard, word_rest_at.tolist(), strict=True):
                    words.word_rest_at = at

        # what each speaking session says at each frame of the next window: its schedule plus these tokens
        for schedule, tokens, talking in zip(state.speech, text.tolist(), speaking.tolist(), strict=True):
            schedule.say(tokens, talking, self.token_phones, cfg.speech_rates, cfg.frames)
        mel_norm = torch.full((b, cfg.frames, cfg.n_mels), -1.0)  # normalised log floor
        if teacher is not None:
            mel_norm = teacher.mel.clone()
        elif voice is None and bool(speaking.any()):
            rows = speaking.nonzero()[:, 0]
            cond = hidden[rows] + self.embed_text_slots(text[rows])
            phones, frac = schedule_condition([state.speech[r] for r in rows.tolist()], cfg.frames)
            noise = self._session_noise(state, rows)
            mel_norm[rows] = self.mel_head.sample(noise, cond, phones, frac, flow_steps).clamp(-1.0, 1.0)
        for schedule in state.speech:
            schedule.advance(cfg.frames)
        if voice is None or teacher is not None:
            mel = emitted_log_mel(mel_norm, speaking)
        else:
            mel = voice(text, speaking)

        out_dmel = audio.dmel(mel, cfg.dmel_bins)
        state.out_token.copy_(self.embed_out(text, out_dmel, speaking.long()))  # enters the next step
        state.turn += 1

        return StepOutput(
            speaking=speaking,
            speaking_prob=prob,
            wants=wants,
            text=text,
            mel=mel,
            floor_probs=floor_logits.softmax(-1),
            user_text=user_text if transcribe_user else None,
            hidden=hidden,
            gate_logit=gate_logit,
            text_logits=text_logits,
            floor_logits=floor_logits,
        )
