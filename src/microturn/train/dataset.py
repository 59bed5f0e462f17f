"""Training data: random crops of corpus conversations rendered into the model's micro-turn view.

At start every complete conversation of the manifest is read once and its timeline rendered into label
tracks per micro-turn (kept in memory, small); the audio is re-read per crop (the OS page cache keeps
it cheap) so memory stays flat however large the corpus is. A crop's user channel is augmented on the
fly, then both channels go through the shared causal log-mel of `audio`.

Label tracks are indexed by global micro-turn. For the heads at in_t (which predict micro-turn t + 1):
`speaking`/`floor`/`mel_phones`/`mel_phone_frac` are indexed by the window they describe, `text` (and its
copy candidates `text_copy`) by the in token that must emit it (the word's window - 1), `user_text` by the
in token that names it (the word's window + delay), `bg` by the in token that receives it (the shared
queue rule of `model.queues`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import audio
from ..data import video as scenes
from ..data.corpus import is_complete, load_conversation, load_manifest
from ..model.config import ModelConfig
from ..model.copying import NO_CANDIDATE, CopyPointer
from ..model.interaction import SILENT_LOG_MEL, TurnBatch, emitted_log_mel
from ..model.layers import resize_video
from ..model.queues import arrival_turn, render_queued_stream
from ..model.speech import TokenPhones, frame_condition, word_spans
from ..model.tokenizer import PAD, TextTokenizer
from .augment import AugmentConfig, augment_user

# Conversation-level tempo (speed) perturbation: (resample from, to) pairs; 20 -> 19 plays 5% faster.
SPEEDS = ((1, 1), (20, 19), (19, 20))
SPEED_WEIGHTS = (0.7, 0.15, 0.15)
MIN_WORD_OVERLAP_S = 0.005  # a word makes a window active from half a mel frame on: no onset is cut
DEFAULT_AUGMENT = AugmentConfig()
GAP_RATE = 0.01  # micro-turns whose input is replaced by a runtime-style gap (silence + gap marker)
VIDEO_DROP_RATE = 0.02  # frames dropped in training (a live camera misses some)
MAX_MISSING_DRAWS = 120  # consecutive crops whose audio vanished (about 2 minutes) before giving up


@dataclass
class ConversationText:
    """What the label renderer needs from a timeline (times in seconds at normal speed)."""

    id: str
    folder: Path
    duration_s: float
    words: list[tuple[str, str, float, float, tuple[int, ...]]]  # speaker, utterance kind, start, end, ids
    background: list[tuple[float, list[int]]]  # arrival time, token ids
    spoken: list[tuple[int, ...]]  # per word: the phone ids said (model/speech.py), from its tokens
    video: dict | None = None  # the scene spec of a video episode (data/video.py), rendered per crop
    pauses: tuple[tuple[float, float], ...] = ()  # the user's pauses inside a turn (start, end)


def read_conversations(
    corpus_dir: str | Path, tokenizer: TextTokenizer, known: list[ConversationText] = ()
) -> list[ConversationText]:
    """Every conversation of the manifest(s) whose folder is complete (a corpus may still be growing);
    `corpus_dir` may name several corpora, comma-separated (a training mixture). Those in `known` (an
    earlier read) are reused, not read again."""
    dirs = [Path(d) for d in str(corpus_dir).split(",") if d]
    cached = {c.folder: c for c in known}
    token_phones = TokenPhones.of(tokenizer)
    out = []
    for corpus_dir, entry in ((d, e) for d in dirs for e in load_manifest(d)):
        folder = corpus_dir / entry["path"]
        if folder in cached:
            out.append(cached[folder])
            continue
        if not is_complete(folder):
            continue
        try:
            conv = load_conversation(folder)
        except (audio.AudioError, FileNotFoundError) as exc:  # vanished since the manifest was written
            print(f"skipping {folder} ({exc})", flush=True)
            continue
        kinds = [u.kind for u in conv.utterances]
        words = [
            (
                w.speaker,
                kinds[w.utterance] if w.utterance >= 0 else "turn",
                w.start,
                w.end,
                tuple(i for part in w.text.split() for i in tokenizer.encode_word(part)),
            )
            for w in conv.words
        ]
        background = [(b.time, tokenizer.encode_message(b.text)) for b in conv.background]  # one message each
        spec = conv.video["spec"] if conv.video is not None else None
        spoken = [token_phones.word(ids) for *_, ids in words]
        pauses = tuple((e.start, e.end) for e in conv.events if e.type == "pause" and e.speaker == "user")
        out.append(
            ConversationText(conv.id, folder, conv.duration_s, words, background, spoken, spec, pauses)
        )
    if not out:
        raise ValueError(f"{','.join(map(str, dirs))}: no complete conversations in the manifest")
    return out


def corpus_texts(conversations: list[ConversationText], tokenizer: TextTokenizer) -> list[str]:
    return [tokenizer.decode(ids) for c in conversations for *_, ids in c.words]


def _active_windows(spans: list[tuple[float, float]], n: int, turn_s: float) -> np.ndarray:
    active = np.zeros(n, dtype=bool)
    for start, end in spans:
        for g in range(int(start / turn_s), min(int(end / turn_s) + 1, n)):
            if min(end, (g + 1) * turn_s) - max(start, g * turn_s) >= MIN_WORD_OVERLAP_S:
                active[g] = True
    return active


def _slots(released: list[list[int]], k: int) -> np.ndarray:
    out = np.full((len(released), k), PAD, dtype=np.int64)
    for t, ids in enumerate(released):
        out[t, : len(ids)] = ids
    return out


def render_tracks(conv: ConversationText, cfg: ModelConfig, time_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Per-micro-turn label tracks for the whole conversation; times are multiplied by `time_scale`."""
    ts, k = cfg.micro_turn_ms / 1000.0, cfg.text_slots
    n = int(math.ceil(conv.duration_s * time_scale / ts)) + 2
    words = [(spk, kind, s * time_scale, e * time_scale, ids) for spk, kind, s, e, ids in conv.words]
    assistant = [(s, e) for spk, _, s, e, _ in words if spk == "assistant"]
    assistant_bc = [(s, e) for spk, kind, s, e, _ in words if spk == "assistant" and kind == "backchannel"]
    assistant_pro = [(s, e) for spk, kind, s, e, _ in words if spk == "assistant" and kind == "proactive"]
    assistant_wait = [(s, e) for spk, kind, s, e, _ in words if spk == "assistant" and kind == "filler"]
    user = _active_windows([(s, e) for spk, _, s, e, _ in words if spk == "user"], n, ts)
    speaking = _active_windows(assistant, n, ts)
    backchannel = _active_windows(assistant_bc, n, ts)
    proactive = _active_windows(assistant_pro, n, ts)
    wait_act = _active_windows(assistant_wait, n, ts)
    user_pause = _active_windows([(s * time_scale, e * time_scale) for s, e in conv.pauses], n, ts)
    floor = np.select([backchannel, speaking & user, speaking, user], [4, 3, 2, 1], default=0)
    text = render_queued_stream(
        [(int(s / ts) - 1, list(ids)) for spk, _, s, _, ids in words if spk == "assistant"], n, k
    )
    user_text = render_queued_stream(
        [
            (int(s / ts) + cfg.user_transcript_delay, list(ids))
            for spk, _, s, _, ids in words
            if spk == "user"
        ],
        n,
        k,
    )
    bg = render_queued_stream(
        [(arrival_turn(t * time_scale, ts), ids) for t, ids in conv.background], n, 1, supersede=True
    )
    mel_phones, mel_phone_frac = _frame_phones(conv, words, n, cfg)
    pointer, text_copy = CopyPointer(), np.full((n, k), NO_CANDIDATE, dtype=np.int64)
    for t in range(n):  # what the streaming step's pointer offers each slot (model/copying.py)
        pointer.hear(bg[t])
        text_copy[t] = pointer.slot_candidates(text[t], k, PAD)
    return {
        "text_copy": text_copy,
        "mel_phones": mel_phones,
        "mel_phone_frac": mel_phone_frac,
        "speaking": speaking.astype(np.int64),
        "proactive": proactive,
        "wait_act": wait_act,
        "user_pause": user_pause,
        "floor": floor.astype(np.int64),
        "text": _slots(text, k),
        "user_text": _slots(user_text, k),
        "bg": np.array([ids[0] if ids else -1 for ids in bg], dtype=np.int64),
    }


def _frame_phones(
    conv: ConversationText, words: list[tuple], n: int, cfg: ModelConfig
) -> tuple[np.ndarray, np.ndarray]:
    """What the assistant says at every mel frame of micro-turns 0..n-1 (model/speech.py), from the
    (time-scaled) word times: uint8 ids [n, frames, WIDTH], float16 fractions [n, frames]."""
    per_s = cfg.frames * 1000.0 / cfg.micro_turn_ms  # frames per second
    spans = word_spans(
        sorted(
            (s * per_s, e * per_s, phones)
            for (spk, _, s, e, _), phones in zip(words, conv.spoken, strict=True)
            if spk == "assistant" and phones and e > s
        )
    )
    times = torch.arange(n * cfg.frames, dtype=torch.float64)[None] + 0.5
    ids, frac = frame_condition(*spans, times)
    return (
        ids.view(n, cfg.frames, -1).numpy().astype(np.uint8),
        frac.view(n, cfg.frames).numpy().astype(np.float16),
    )


def _segment(wave: np.ndarray, begin: int, end: int) -> np.ndarray:
    """wave[begin:end] with zeros outside the signal."""
    out = np.zeros(end - begin, dtype=np.float32)
    lo, hi = max(begin, 0), min(end, len(wave))
    if hi > lo:
        out[lo - begin : hi - begin] = wave[lo:hi]
    return out


def _speed_segment(wave: np.ndarray, begin: int, end: int, src: int, dst: int) -> np.ndarray:
    """Samples [begin, end) of `wave` resampled src -> dst (played faster when dst < src), resampling only
    the stretch needed (plus a margin for the filter), aligned so that the result equals slicing the fully
    resampled signal."""
    if src == dst:
        return _segment(wave, begin, end)
    margin = 64  # in units of src samples: covers the polyphase filter's reach
    first = begin // dst - margin  # old sample first * src maps to new sample first * dst exactly
    last = -(-end // dst) + margin
    part = audio.resample(_segment(wave, first * src, last * src), src, dst)
    return part[begin - first * dst : end - first * dst]


class CropRenderer:
    """Turns (conversation, speed, start, length) into one sample of tensors; caches label tracks."""

    def __init__(
        self,
        conversations: list[ConversationText],
        cfg: ModelConfig,
        augment: AugmentConfig | None = DEFAULT_AUGMENT,
    ):
        self.conversations, self.cfg, self.augment = conversations, cfg, augment
        self.tracks: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    def n_turns(self, conv_index: int, speed: int) -> int:
        """Complete micro-turns of the conversation at a speed."""
        src, dst = SPEEDS[speed]
        return int(self.conversations[conv_index].duration_s * dst / src / (self.cfg.micro_turn_ms / 1000.0))

    def render(self, conv_index: int, speed: int, start: int, length: int, rng: np.random.Generator) -> dict:
        cfg, conv = self.cfg, self.conversations[conv_index]
        src, dst = SPEEDS[speed]
        key = (conv.id, speed)
        if key not in self.tracks:
            self.tracks[key] = render_tracks(conv, cfg, dst / src)
        tracks = self.tracks[key]
        step, lead = cfg.frames * audio.HOP, audio.MEL_CONTEXT
        begin, end = start * step - lead, (start + length + 1) * step  # history + one more micro-turn
        user_seg, asst_seg = (
            _speed_segment(audio.read_wav(conv.folder / name)[0], begin, end, src, dst)
            for name in ("user.wav", "assistant.wav")
        )
        if self.augment is not None:
            user_seg = augment_user(user_seg, asst_seg, rng, self.augment)
        user_lm = audio.log_mel(torch.from_numpy(user_seg[lead:-step]), torch.from_numpy(user_seg[:lead]))
        asst_lm = audio.log_mel(
            torch.from_numpy(asst_seg[lead + step :]), torch.from_numpy(asst_seg[step : step + lead])
        )
        user_dmel = audio.dmel(user_lm, cfg.dmel_bins).view(length, cfg.frames, cfg.n_mels)
        gap = (
            torch.from_numpy(rng.random(length) < GAP_RATE)
            if self.augment is not None
            else torch.zeros(length, dtype=torch.bool)
        )
        user_dmel[gap] = audio.dmel(
            torch.tensor(SILENT_LOG_MEL), cfg.dmel_bins
        )  # a gap the runtime filled with silence

        def window(name: str, offset: int) -> torch.Tensor:
            """`length` entries from start + offset; past the conversation's end: silence, no text."""
            track = tracks[name][start + offset : start + offset + length]
            fill = -1 if name in ("bg", "text_copy") else 0  # 0 = listening / not speaking / PAD
            missing = [(0, length - len(track))] + [(0, 0)] * (track.ndim - 1)
            return torch.from_numpy(np.pad(track, missing, constant_values=fill))

        video, video_present = self.video(conv, start, length, dst / src, rng)
        speaking = window("speaking", 1)
        mel = audio.normalise_log_mel(asst_lm).view(length, cfg.frames, cfg.n_mels).clamp(-1.0, 1.0)
        n_turns = self.n_turns(conv_index, speed)
        return {
            "user_dmel": user_dmel,
            "turn_index": torch.arange(start, start + length),
            "bg_tokens": window("bg", 0),
            "typed_tokens": torch.full((length,), -1, dtype=torch.long),
            "gap": gap,
            "speaking": speaking,
            "proactive": window("proactive", 1),
            "wait_act": window("wait_act", 1),
            "user_pause": window("user_pause", 1),
            "text": window("text", 0),
            "text_copy": window("text_copy", 0),
            "mel": mel,
            "mel_phones": window("mel_phones", 1).long(),
            "mel_phone_frac": window("mel_phone_frac", 1).float(),
            "out_dmel": audio.dmel(emitted_log_mel(mel, speaking), cfg.dmel_bins),
            "floor": window("floor", 1),
            "user_text": window("user_text", 0),
            "valid": torch.arange(start + 1, start + length + 1) < n_turns,
            "video": video,
            "video_present": video_present,
        }

    def video(
        self, conv: ConversationText, start: int, length: int, time_scale: float, rng: np.random.Generator
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Micro-turn t's frame is the scene at `video.frame_time(t)` (at normal speed: times / scale), as
        the runtime passes the frame captured during that micro-turn: uint8 [length, 3, S, S] (None
        without video) and the presence mask [length]."""
        if conv.video is None:
            return None, torch.zeros(length, dtype=torch.bool)
        ts = self.cfg.micro_turn_ms / 1000.0
        times = [scenes.frame_time(t, ts) / time_scale for t in range(start, start + length)]
        frames = torch.from_numpy(scenes.render_frames(conv.video, times)).permute(0, 3, 1, 2)
        size = self.cfg.video_size
        if frames.shape[-1] != size:  # the runtime's resize, kept as bytes until the model
            frames = resize_video(frames.float(), size).round().clamp(0, 255).to(torch.uint8)
        present = torch.ones(length, dtype=torch.bool)
        if self.augment is not None:
            present &= torch.from_numpy(rng.random(length) >= VIDEO_DROP_RATE)
        return frames.contiguous(), present


def collate(samples: list[dict]) -> TurnBatch:
    """Stack crops; `video` is None unless some crop has video (then zeros where a crop has none)."""
    batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0] if key != "video"}
    with_video = [s["video"] for s in samples if s.get("video") is not None]
    video = None
    if with_video:
        video = torch.zeros((len(samples), *with_video[0].shape), dtype=with_video[0].dtype)
        for i, s in enumerate(samples):
            if s.get("video") is not None:
                video[i] = s["video"]
    return TurnBatch(**batch, video=video)


@dataclass(frozen=True)
class CropPlan:
    min_turns: int = 100  # 20 s
    max_turns: int = 200  # 40 s
    batch_size: int = 8


class CropSampler:
    """Batch number `step` of process `rank` is a pure function of (seed, step, rank): runs are reproducible
    and a resumed run draws exactly the batches an uninterrupted one would have."""

    def __init__(self, renderer: CropRenderer, plan: CropPlan, seed: int, rank: int = 0):
        self.renderer, self.plan, self.seed, self.rank = renderer, plan, seed, rank
        self.set_conversations(renderer.conversations)

    def set_conversations(self, conversations: list[ConversationText]) -> None:
        """Sample from a new list (a grown corpus); conversations are drawn in proportion to duration."""
        self.renderer.conversations = conversations
        weights = np.array([c.duration_s for c in conversations])
        self.weights = weights / weights.sum()

    def batch(self, step: int) -> TurnBatch:
        plan = self.plan
        length = int(np.random.default_rng([self.seed, step]).integers(plan.min_turns, plan.max_turns + 1))
        rng = np.random.default_rng([self.seed, step, self.rank, 1])
        samples, failures = [], 0
        while len(samples) < plan.batch_size:
            conv = int(rng.choice(len(self.weights), p=self.weights))
            speed = int(rng.choice(len(SPEEDS), p=SPEED_WEIGHTS))
            start = int(rng.integers(0, max(self.renderer.n_turns(conv, speed) - length, 0) + 1))
            try:
                samples.append(self.renderer.render(conv, speed, start, length, rng))
                failures = 0
            except (audio.AudioError, FileNotFoundError) as exc:  # a folder being re-rendered: draw again
                failures += 1
                if failures > MAX_MISSING_DRAWS:
                    raise
                print(f"skipping a crop ({exc})", flush=True)
                time.sleep(1.0)
        return collate(samples)


def validation_batches(
    conversations: list[ConversationText], cfg: ModelConfig, plan: CropPlan, n_batches: int
) -> list[TurnBatch]:
    """Fixed crops (no augmentation, normal speed): the same every evaluation, so losses are comparable."""
    renderer = CropRenderer(conversations, cfg, augment=None)
    rng = np.random.default_rng(0)
    batches = []
    for b in range(n_batches):
        samples = []
        for i in range(plan.batch_size):
            conv = (b * plan.batch_size + i) % len(conversations)
            start = int(rng.integers(0, max(renderer.n_turns(conv, 0) - plan.max_turns, 0) + 1))
            samples.append(renderer.render(conv, 0, start, plan.max_turns, rng))
        batches.append(collate(samples))
    return batches
