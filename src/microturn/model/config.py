"""Model configurations: one dataclass, four named sizes, serialised as JSON next to every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

# Floor states predicted by the auxiliary floor head (index = class id).
FLOOR_STATES = ("listening", "user", "assistant", "overlap", "assistant_backchannel")


@dataclass(frozen=True)
class ModelConfig:
    # transformer
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    mlp: str = "swiglu"  # swiglu | gelu
    mlp_ratio: float = (
        8 / 3
    )  # hidden = ratio * d_model (8/3 keeps SwiGLU at the parameter count of a 4x GELU)
    window: int = 512  # sliding attention window in tokens (2 tokens per micro-turn: 512 = 51.2 s)
    rope_base: float = 10_000.0
    # micro-turn geometry
    micro_turn_ms: int = 200
    n_mels: int = 80
    # inputs
    dmel_bins: int = 16
    dmel_dim: int = 32  # per-(channel, bin) embedding size; summed over channels, concatenated over frames
    time_periods: int = 16  # sinusoidal elapsed-time features: periods from 0.4 s to one hour
    video_patch: int = 40  # pixels; the hMLP stem reads 4x4 -> 2x2 -> 1 sub-patches of a patch
    video_size: int = 160  # frames are resized by the caller to video_size x video_size RGB
    video_fps: float = 5.0  # how often the runtime passes a frame: one per micro-turn, as in training
    # the video stem also reads each frame's change since the session's previous frame (a ball that stops,
    # a spinner that starts: motion one frame cannot show)
    video_motion: bool = False
    # outputs
    vocab_size: int = 4096  # BPE vocabulary, specials included
    text_slots: int = 3  # K: text tokens per micro-turn
    flow_dim: int = 256  # width of the per-frame flow-matching MLP
    flow_layers: int = 3
    flow_steps: int = 6  # Euler steps at inference
    flow_sigma_min: float = 1e-4
    # start-noise scale at inference (Grad-TTS's temperature): below 1 trades variety for clarity, which
    # a few Euler steps of a small head need (eval rendering measures it)
    flow_temperature: float = 1.0
    gate_threshold: float = 0.5
    # the threshold to start speaking (the session was silent in the last window); None: gate_threshold.
    # Above it, a costly barge-in into a pause needs more confidence than going on with a turn does
    gate_start_threshold: float | None = None
    # micro-turns over which the start probability adds up: start when the probability that the
    # assistant starts in one of the last W silent micro-turns, 1 - prod(1 - p), passes the start
    # threshold. 1: on each micro-turn alone. A start the model spreads over a few micro-turns, no one of
    # them sure (after a missed moment, while an answer is read in), happens with W > 1; summed over a
    # whole user turn (no window) its backchannel chances would barge into the pauses
    gate_start_window: int = 1
    # 0: speak when the gate's probability is above gate_threshold; > 0: speak with probability
    # sigmoid(logit / gate_temperature), drawn per session from (seed, micro-turn) like the flow noise
    gate_temperature: float = 0.0
    # while the gate goes on speaking and what is left to play ends (with a word gap) inside the next
    # window, that window's first text slot is the background text's next word, not a pad: the text head,
    # unsure which word comes next, otherwise stalls mid-answer in windows that are "speaking" yet silent
    # (BENCHMARKS.md, "No silent windows")
    text_no_silent_window: bool = False
    # the streaming speech schedule (model/speech.py): a word of n phones lasts word + n * phone frames and
    # follows the previous one after gap frames; fitted to the corpus voice (least squares over 7.8k
    # assistant words of corpora/train: 59 ms + 56 ms per phone symbol, median gap 59 ms)
    speech_word_frames: float = 5.9
    speech_phone_frames: float = 5.6
    speech_gap_frames: float = 6.0
    user_transcript_delay: int = 2  # micro-turns: the aux transcript names user words started 400 ms ago
    # the text head points at this many of the user's last heard words (model/copying.py); 0: it does not
    heard_tokens: int = 0

    def __post_init__(self) -> None:
        if self.gate_start_window < 1:  # an empty window would never start: say so, not stay silent
            raise ValueError(f"gate_start_window must be at least 1 micro-turn, got {self.gate_start_window}")

    @property
    def start_threshold(self) -> float:
        """The start probability a silent session must pass to start (`gate_start_threshold`, else
        `gate_threshold`)."""
        return self.gate_threshold if self.gate_start_threshold is None else self.gate_start_threshold

    @property
    def frames(self) -> int:
        """Mel frames per micro-turn (10 ms hop)."""
        return self.micro_turn_ms // 10

    @property
    def speech_rates(self) -> tuple[float, float, float]:
        """(word, phone, gap) frames of the streaming speech schedule."""
        return (self.speech_word_frames, self.speech_phone_frames, self.speech_gap_frames)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


CONFIGS: dict[str, ModelConfig] = {
    # The test suite trains this one in seconds.
    "tiny": ModelConfig(
        d_model=64,
        n_layers=2,
        n_heads=2,
        window=64,
        vocab_size=512,
        dmel_dim=8,
        flow_dim=64,
        flow_layers=2,
        flow_steps=4,
    ),
    # The CPU default: one micro-turn of one session within 10 ms on one core.
    "small": ModelConfig(
        d_model=256,
        n_layers=4,
        n_heads=4,
        vocab_size=2048,
        flow_dim=192,
        flow_layers=2,
        flow_steps=4,
        flow_temperature=0.0,  # eval rendering WER 0.68 at 0, 0.82 at 0.3 (stage 4, step 1,000)
        # valid FDB: stage 4, 0.6 alone: pause TOR 0.05 -> 0.00, turn-taking 0.95 -> 1.00; stage 11, 0.7
        # over 3 micro-turns: interruption latency 1.69 -> 0.85 s, turn-taking 0.44 -> 0.31 s, pauses alike
        gate_start_threshold=0.7,
        gate_start_window=3,
        # v1.5 overlaps (stage 14 at 0.8): valid 63.3 -> 81.7, test 56.7 -> 83.3 (BENCHMARKS.md)
        text_no_silent_window=True,
        video_motion=True,
        heard_tokens=256,  # the user's last 256 words: a cue-word instruction stays readable for minutes
    ),
    # GPU sizes.
    "base": ModelConfig(
        d_model=768,
        n_layers=12,
        n_heads=12,
        window=1024,
        vocab_size=8192,
        dmel_dim=64,
        flow_dim=512,
        flow_layers=4,
        flow_steps=8,
    ),
    "large": ModelConfig(
        d_model=1536,
        n_layers=24,
        n_heads=16,
        window=2048,
        vocab_size=16384,
        dmel_dim=96,
        flow_dim=1024,
        flow_layers=6,
        flow_steps=8,
    ),
}


def get_config(name: str, **overrides) -> ModelConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}")
    return replace(CONFIGS[name], **overrides)
