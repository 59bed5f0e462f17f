"""What the streaming step reads, keeps and returns: explicit per-session state, batch-indexable.

A `StreamState` holds a batch of sessions. Sessions join and leave between micro-turns with `select`
(keep some rows) and `concat` (stack states), so a serving engine keeps one state for all live sessions.
Text queues (background, typed) are not here: the runtime owns them (see `model.queues`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .copying import CopyPointer, HeardWords
from .speech import SpeechSchedule


@dataclass
class StreamState:
    keys: list[torch.Tensor]  # per layer [B, heads, window, head_dim], RoPE already applied
    values: list[torch.Tensor]  # per layer [B, heads, head_dim, window] (transposed: Attention.step)
    slot_pos: torch.Tensor  # [B, window] long: token position held by each ring slot, -1 = empty
    turn: torch.Tensor  # [B] long: index of the next micro-turn (0 at session start)
    seeds: torch.Tensor  # [B] long: per-session seed of the flow-matching noise
    # [B, d_model]: the embedding of the last micro-turn's out token (position 2 * turn - 1), not yet in the
    # KV rings: it enters the trunk together with the next in token (one pass for both); zeros at turn 0
    out_token: torch.Tensor
    speech: list[SpeechSchedule]  # per session: the phones still to be said (mel head condition)
    copy: list[CopyPointer]  # per session: the background tokens not yet said (text head copy candidates)
    heard: list[HeardWords]  # per session: the user's last words and their keys (cfg.heard_tokens > 0)
    last_frame: (
        torch.Tensor
    )  # [B, 3, S, S] float in [0, 1]: the last video frame (cfg.video_motion; S = 0 without)
    has_frame: torch.Tensor  # [B] bool: a frame has been seen
    # [B, gate_start_window] float: the gate's probabilities in the last silent micro-turns, newest last
    # (0 where the session talked)
    recent_start_probs: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.turn.shape[0]

    def select(self, index: torch.Tensor | list[int]) -> StreamState:
        """The sessions at `index`, in that order (copies, so the result is independent)."""
        index = torch.as_tensor(index, dtype=torch.long)
        return StreamState(
            keys=[k[index] for k in self.keys],
            values=[v[index] for v in self.values],
            slot_pos=self.slot_pos[index],
            turn=self.turn[index],
            seeds=self.seeds[index],
            out_token=self.out_token[index],
            speech=[self.speech[i].copy() for i in index.tolist()],
            copy=[self.copy[i].copy() for i in index.tolist()],
            heard=[self.heard[i].copy() for i in index.tolist()],
            last_frame=self.last_frame[index],
            has_frame=self.has_frame[index],
            recent_start_probs=self.recent_start_probs[index],
        )

    @staticmethod
    def concat(states: list[StreamState]) -> StreamState:
        if not states:
            raise ValueError("StreamState.concat needs at least one state")
        return StreamState(
            keys=[torch.cat(ks) for ks in zip(*(s.keys for s in states), strict=True)],
            values=[torch.cat(vs) for vs in zip(*(s.values for s in states), strict=True)],
            slot_pos=torch.cat([s.slot_pos for s in states]),
            turn=torch.cat([s.turn for s in states]),
            seeds=torch.cat([s.seeds for s in states]),
            out_token=torch.cat([s.out_token for s in states]),
            speech=[schedule.copy() for s in states for schedule in s.speech],
            copy=[pointer.copy() for s in states for pointer in s.copy],
            heard=[words.copy() for s in states for words in s.heard],
            last_frame=torch.cat([s.last_frame for s in states]),
            has_frame=torch.cat([s.has_frame for s in states]),
            recent_start_probs=torch.cat([s.recent_start_probs for s in states]),
        )


@dataclass
class StepTeacher:
    """Forces what the model emits (teacher forcing in tests, scripted output in the runtime)."""

    text: torch.Tensor  # [B, K] long, pad = 0
    mel: torch.Tensor  # [B, frames, n_mels] normalised log-mel (audio.normalise_log_mel)
    speaking: torch.Tensor  # [B] long 0/1
    # [B, K] the user's words heard this micro-turn (pad 0) in place of the user-transcript head's: what
    # training's heard-words memory reads
    user_text: torch.Tensor | None = None


@dataclass
class StepInputs:
    """One micro-turn of input per session."""

    user_dmel: torch.Tensor  # [B, frames, n_mels] long: audio.dmel(audio.log_mel(chunk, history), bins)
    bg_token: torch.Tensor | None = None  # [B] long, -1 = none this micro-turn
    typed_token: torch.Tensor | None = None  # [B] long, -1 = none
    gap: torch.Tensor | None = None  # [B] bool: the runtime filled lost input
    video: torch.Tensor | None = None  # [B, 3, S, S] float in [0, 1]; rows without a frame are ignored
    video_present: torch.Tensor | None = None  # [B] bool
    speaking_override: torch.Tensor | None = None  # [B] long: -1 model decides, 0 force silence, 1 speak
    teacher: StepTeacher | None = None
    # per session, the user's words a transcriber (say Whisper, off the real-time path) heard since the last
    # micro-turn, as token ids; None: none this time. A session fed so keeps its heard-words memory from
    # these alone (no longer from the user-transcript head)
    heard: list[list[int] | None] | None = None


@dataclass
class StepOutput:
    """One micro-turn of output per session: what plays during the next 200 ms."""

    speaking: torch.Tensor  # [B] bool
    speaking_prob: torch.Tensor  # [B]
    wants: torch.Tensor  # [B] bool: the gate's own decision (before any speaking_override)
    text: torch.Tensor  # [B, K] long token ids, pad (0) = no token
    mel: torch.Tensor  # [B, frames, n_mels] log-mel (natural log; the log floor when silent)
    floor_probs: torch.Tensor  # [B, len(FLOOR_STATES)]
    user_text: torch.Tensor | None  # [B, K] aux transcript of user words started `user_transcript_delay`
    # micro-turns ago (step(..., transcribe_user=True) only)
    hidden: torch.Tensor  # [B, d_model] the hidden state the heads read
    gate_logit: torch.Tensor  # [B]
    text_logits: torch.Tensor | None  # [B, K, V] under teacher forcing (greedy decoding skips ended slots)
    floor_logits: torch.Tensor  # [B, len(FLOOR_STATES)]
