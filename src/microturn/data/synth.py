"""The conversation renderer: one chitchat chat segment -> two channels and an exact timeline.

The two senders of a chat become the user and the assistant. Words are placed one by one from cached
word units (tts.py), so every label is exact. Timing follows distributions measured in human conversation
(sources in docs/corpus.md): floor-transfer offsets with a mode near 200 ms and some overlap, pauses of
0.3-1.5 s inside turns, fillers, self-repairs, backchannels from the listener, interruptions of the
assistant (which stops within 200-400 ms), side talk, background talk, echo of the assistant, noise.
The assistant's content turns arrive as background text first and are never voiced before they arrive;
its own short acts (backchannels, acknowledgements, fillers, greetings) need no background text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

from microturn.audio import SAMPLE_RATE
from microturn.data import effects
from microturn.data.chitchat import Chat
from microturn.data.corpus import BackgroundText, Conversation, Event, Utterance, Word
from microturn.data.tts import TtsCache
from microturn.data.voices import ASSISTANT_VOICE, Voice, sample_other_voice, sample_user_voice

FDB_SHAPES = ("conversation", "pause", "turn_taking", "interruption", "backchannel")
# proactive episodes (proactive.py): the assistant speaks on what it sees, its clock, or a cue word
PROACTIVE_SHAPES = ("visual_cue", "reps", "start_stop", "time", "cue_word")
SHAPES = FDB_SHAPES + PROACTIVE_SHAPES

BACKCHANNELS = ("mm-hm", "yeah", "right", "okay", "uh-huh", "i see", "sure", "oh", "yeah yeah", "wow")
USER_FILLERS = ("um,", "uh,", "um", "uh", "you know,", "i mean,", "like,")
WAIT_ACTS = ("um,", "hmm,", "let me see,", "okay,", "one moment,", "so,", "well,")
# what an interruption may open with (`interruption_opener_p`): said alone these are backchannels, so the
# assistant goes on through them and stops only once the words after them show the user takes the floor
INTERRUPTION_OPENERS = ("yeah,", "right,", "okay,", "mm-hm,", "sure,", "oh,", "yeah yeah,")
LATE_CONTENT_S = (2.0, 6.0)  # seconds from the user's turn end to late background text (`late_content_p`)
# An assistant chat turn made only of these words is one of its own acts (greeting, acknowledgement):
# it needs no background text.
OWN_ACT_WORDS = frozenset(
    "hi hello hey there hiya yo good morning evening afternoon okay ok alright right "
    "sure yeah yes yep cool nice great haha hahaha oh wow mm-hm thanks thank you bye".split()
)
SIDE_REMARKS = (
    "hang on a second, honey.",
    "can you close the door please?",
    "i'm on the phone, give me a minute.",
    "yeah, just put it on the table.",
    "no, the blue one.",
    "thanks, i'll be right there.",
    "hold on, i'm talking to someone.",
    "did you feed the dog?",
    "not now, i'm busy.",
    "okay, see you later.",
)
# Words after which a pause leaves the clause audibly unfinished (a pause inside a clause).
_UNFINISHED = frozenset(
    "the a an and but or so to of in on at with my your his her their our is was are "
    "i you we they it that because if when for".split()
)


@dataclass(frozen=True)
class SynthConfig:
    """Probabilities and ranges of the renderer; docs/corpus.md gives the sources of the timing."""

    max_turn_words: int = 60
    fto_overlap_p: float = 0.12  # share of turn transitions that start in overlap (Heldner & Edlund 2010)
    fto_median_s: float = 0.30  # lognormal gap: median 300 ms, mode ~245 ms (Stivers et al. 2009)
    fto_sigma: float = 0.45
    pause_p: float = 0.2  # per word boundary candidate inside a user turn
    pause_p_assistant: float = 0.03
    filler_p: float = 0.12  # per clause start, user
    self_correction_p: float = 0.08  # per clause of >= 3 words, user
    assistant_backchannel_p: float = 0.55  # per eligible boundary in a user turn
    user_backchannel_p: float = 0.3  # per eligible boundary in an assistant turn
    interruption_p: float = 0.3  # per assistant content turn of >= 2.5 s followed by a user turn
    # share of interruptions that open with a backchannel word ("yeah, but ..."): the assistant stops
    # 0.2-0.4 s after the first word after it, not after the interruption's start
    interruption_opener_p: float = 0.0
    side_speech_p: float = 0.1  # per user turn: the user talks to someone else first
    side_speech_during_assistant_p: float = 0.05  # per eligible boundary in an assistant turn
    long_silence_p: float = 0.05  # per turn transition: both silent 2-6 s
    background_speech_p: float = 0.35  # per conversation
    echo_p: float = 0.4  # per conversation
    noise_p: float = 0.75  # per conversation
    min_snr_db: float = 5.0
    max_snr_db: float = 35.0
    early_background_p: float = 0.12  # background text arrives before the user finished
    wait_act_p: float = 0.6  # the assistant fills a wait for its content with an own act ...
    wait_act_after_s: float = 0.6  # ... when the content would start this much after its turn could
    # share of content turns whose background text comes LATE_CONTENT_S after the user's turn end (a slow
    # background model, a tool: the live system's delays; the default timing above is a quick one's)
    late_content_p: float = 0.0

    @staticmethod
    def for_shape(shape: str) -> SynthConfig:
        """Episode shapes for Full-Duplex-Bench samples: the one phenomenon, no distractors."""
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
        if shape == "conversation":
            return SynthConfig()
        quiet = dict(
            max_turn_words=45,
            side_speech_p=0.0,
            side_speech_during_assistant_p=0.0,
            long_silence_p=0.0,
            background_speech_p=0.0,
            echo_p=0.0,
            noise_p=0.5,
            min_snr_db=25.0,
            user_backchannel_p=0.0,
        )
        if shape in PROACTIVE_SHAPES:  # a person doing something and talking now and then
            return replace(
                SynthConfig(),
                **quiet | dict(echo_p=0.2, min_snr_db=15.0, max_turn_words=30, noise_p=0.6),
                self_correction_p=0.0,
                interruption_p=0.0,
                assistant_backchannel_p=0.25,
                pause_p=0.1,
            )
        per_shape = {
            "pause": dict(
                pause_p=0.0,
                filler_p=0.0,
                self_correction_p=0.0,
                assistant_backchannel_p=0.0,
                interruption_p=0.0,
            ),
            "turn_taking": dict(
                pause_p=0.0, assistant_backchannel_p=0.0, interruption_p=0.0, fto_overlap_p=0.0
            ),
            "interruption": dict(pause_p=0.0, assistant_backchannel_p=0.0, interruption_p=1.0),
            "backchannel": dict(pause_p=0.25, interruption_p=0.0, assistant_backchannel_p=0.7),
        }
        return replace(SynthConfig(), **quiet, **per_shape[shape])


@dataclass(frozen=True)
class ConversationSpec:
    """Turns [first_turn, first_turn + n_turns) of a chat to render; sender `user_sender` is the user."""

    id: str
    split: str
    chat_key: str
    first_turn: int
    n_turns: int
    user_sender: int
    shape: str = "conversation"
    other_keys: tuple[str, ...] = ()  # chats whose lines become background talk (proactive: user talk)
    variant: str = ""  # proactive shapes: which kind of episode (proactive.VARIANTS)


def conversation_rng(seed: int, conversation_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{conversation_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def samples(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def seconds(n: int) -> float:
    return round(n / SAMPLE_RATE, 5)


def is_own_act(text: str) -> bool:
    return all(w.strip(".,?!") in OWN_ACT_WORDS for w in text.split())


def _clauses(text: str, max_words: int) -> list[list[str]]:
    """Words grouped into clauses (a clause ends with , . ? !), at most max_words words in all."""
    words = text.split()[:max_words]
    if words and words[-1][-1] not in ".,?!":
        words[-1] += "."
    clauses, current = [], []
    for w in words:
        current.append(w)
        if w[-1] in ".,?!":
            clauses.append(current)
            current = []
    return clauses


@dataclass
class _Utt:
    speaker: str
    kind: str
    voice: Voice
    words: list[Word] = field(default_factory=list)
    truncated: bool = False


class _Renderer:
    """Mutable state of one conversation being rendered (times in samples until the timeline is built)."""

    def __init__(
        self,
        spec: ConversationSpec,
        config: SynthConfig,
        cache: TtsCache,
        rng: np.random.Generator,
        voice_rng: np.random.Generator,
    ):
        self.spec, self.cfg, self.cache, self.rng = spec, config, cache, rng
        self.user_voice = sample_user_voice(voice_rng)
        self.other_voice = sample_other_voice(voice_rng, self.user_voice)  # background talk
        self.user_gain = effects.db_to_gain(rng.uniform(-6.0, 0.0))
        self.utts: list[_Utt] = []
        self.events: list[Event] = []
        self.background: list[tuple[int, str, _Utt]] = []  # (arrival time, text, the utterance voicing it)
        # placed audio per channel: (start sample, samples, the utterance it belongs to)
        self.tracks: dict[str, list[tuple[int, np.ndarray, _Utt]]] = {"user": [], "assistant": []}
        self.last_bc = {"user": -(10**9), "assistant": -(10**9)}

    # --- placing speech -------------------------------------------------------------------------------
    def say(self, utt: _Utt, word: str, start: int, channel: str, gain: float, effect=None) -> int:
        """Place one word unit; returns its end sample (start if the voice says nothing)."""
        unit = self.cache.unit(utt.voice, word)
        if len(unit) == 0:
            return start
        audio = unit * gain
        if effect is not None:
            audio = effect(audio)
        self.tracks[channel].append((start, audio, utt))
        phones = self.cache.phones(utt.voice, word)
        utt.words.append(Word(utt.speaker, word, start, start + len(unit), phones=phones))
        return start + len(unit)

    def new_utt(self, speaker: str, kind: str, voice: Voice) -> _Utt:
        utt = _Utt(speaker, kind, voice)
        self.utts.append(utt)
        return utt

    def word_gap(self) -> int:
        return samples(self.rng.uniform(0.02, 0.09))

    def phrase(
        self,
        speaker: str,
        kind: str,
        voice: Voice,
        text: str,
        start: int,
        channel: str,
        gain: float,
        effect=None,
    ) -> _Utt:
        """A short utterance said in one breath (backchannel, filler, side remark)."""
        utt = self.new_utt(speaker, kind, voice)
        t = start
        for word in text.split():
            t = self.say(utt, word, t, channel, gain, effect) + self.word_gap()
        if not utt.words:
            self.utts.pop()
        return utt

    def fto(self) -> float:
        """Floor-transfer offset: the next speaker's start minus the previous speaker's end."""
        if self.rng.random() < self.cfg.fto_overlap_p:
            return -float(self.rng.uniform(0.05, 0.4))
        return float(
            np.clip(self.rng.lognormal(np.log(self.cfg.fto_median_s), self.cfg.fto_sigma), 0.02, 2.0)
        )

    def pause_s(self, shape_pause: bool) -> float:
        if shape_pause:  # Full-Duplex-Bench pause recipe: 0.4-1.0 s
            return float(self.rng.uniform(0.4, 1.0))
        return float(np.clip(self.rng.lognormal(np.log(0.55), 0.45), 0.3, 1.5))

    # --- turns --------------------------------------------------------------------------------------------
    def turn(self, speaker: str, text: str, start: int, force_pause: bool = False) -> _Utt:
        """A turn of content: clause by clause, with pauses, fillers, self-repairs (user), listener
        backchannels from the other side at clause boundaries and pauses."""
        cfg, rng = self.cfg, self.rng
        is_user = speaker == "user"
        voice = self.user_voice if is_user else ASSISTANT_VOICE
        gain = self.user_gain if is_user else 1.0
        utt = self.new_utt(speaker, "turn", voice)
        clauses = _clauses(text, cfg.max_turn_words)
        n_words = sum(len(c) for c in clauses)
        listener = "assistant" if is_user else "user"
        bc_p = cfg.assistant_backchannel_p if is_user else cfg.user_backchannel_p
        pause_p = cfg.pause_p if is_user else cfg.pause_p_assistant
        forced_at = int(rng.integers(max(1, n_words // 3), max(2, 2 * n_words // 3))) if force_pause else -1
        t, spoken, paused = start, 0, False
        for ci, clause in enumerate(clauses):
            if is_user and rng.random() < cfg.filler_p:
                filler = self.phrase("user", "filler", voice, str(rng.choice(USER_FILLERS)), t, "user", gain)
                if filler.words:
                    t = filler.words[-1].end + samples(rng.uniform(0.1, 0.3))
            repair_at = (
                int(rng.integers(1, len(clause)))
                if (is_user and len(clause) >= 3 and rng.random() < cfg.self_correction_p)
                else -1
            )
            for wi, word in enumerate(clause):
                if wi == repair_at and not paused:  # a repair right after a pause would hide the pause's end
                    t = self.self_correction(utt, clause, wi, t, gain)
                if not is_user and wi == 0 and ci > 0 and rng.random() < cfg.side_speech_during_assistant_p:
                    self.side_speech(t)
                t = self.say(utt, word, t, speaker, gain)
                spoken += 1
                if spoken == n_words:
                    break
                # the silence before the next word: a pause, a clause gap or a word gap
                at_clause_end = wi == len(clause) - 1
                candidate = at_clause_end or word.strip(".,?!") in _UNFINISHED
                paused = spoken == forced_at or (
                    forced_at < 0
                    and candidate
                    and rng.random() < pause_p
                    and (at_clause_end or rng.random() < 0.4)
                )
                if paused:
                    gap = samples(self.pause_s(force_pause))
                    self.events.append(Event("pause", speaker, t, t + gap))
                    if t - start > samples(1.5):
                        self.maybe_backchannel(listener, t + samples(rng.uniform(0.15, 0.35)), bc_p * 1.3)
                elif at_clause_end:
                    gap = samples(rng.uniform(0.08, 0.22) if word[-1] == "," else rng.uniform(0.15, 0.28))
                    if t - start > samples(2.0) and n_words - spoken >= 3:
                        self.maybe_backchannel(listener, t + samples(rng.uniform(0.0, 0.25)), bc_p)
                else:
                    gap = self.word_gap()
                t += gap
        return utt

    def self_correction(self, utt: _Utt, clause: list[str], at: int, t: int, gain: float) -> int:
        """'i went to the, to the store': the words before `at` are said; break off and restart 1-2 back."""
        back = min(int(self.rng.integers(1, 3)), at, len(utt.words))
        start = utt.words[-back].start
        t += samples(self.rng.uniform(0.12, 0.3))
        for word in clause[at - back : at]:
            t = self.say(utt, word, t, "user", gain) + self.word_gap()
        self.events.append(Event("self_correction", "user", start, t, " ".join(clause[at - back : at])))
        return t

    def maybe_backchannel(self, listener: str, start: int, p: float) -> None:
        if start - self.last_bc[listener] < samples(3.0) or self.rng.random() >= p:
            return
        voice = self.user_voice if listener == "user" else ASSISTANT_VOICE
        gain = (self.user_gain if listener == "user" else 1.0) * effects.db_to_gain(
            self.rng.uniform(-4.0, 0.0)
        )
        bc = self.phrase(
            listener, "backchannel", voice, str(self.rng.choice(BACKCHANNELS)), start, listener, gain
        )
        if bc.words:
            self.last_bc[listener] = start

    def side_speech(self, start: int) -> int:
        """The user talks to someone in the room: quieter and muffled (away from the microphone)."""
        cutoff = float(self.rng.uniform(1500, 3000))
        gain = self.user_gain * effects.db_to_gain(self.rng.uniform(-14.0, -8.0))
        utt = self.phrase(
            "other",
            "side_speech",
            self.user_voice,
            str(self.rng.choice(SIDE_REMARKS)),
            start,
            "user",
            gain,
            effect=lambda a: effects.lowpass(a, cutoff),
        )
        return utt.words[-1].end if utt.words else start

    def truncate(self, utt: _Utt, cut: int) -> None:
        """The speaker stops at `cut`: later words vanish, a word spanning it is cut (with a 10 ms fade)."""
        min_part = samples(0.06)  # less than 60 ms of a word is no word: it is dropped with its audio
        kept = [w for w in utt.words if w.start < cut and not (w.end > cut and cut - w.start < min_part)]
        if kept and kept[-1].end > cut:
            last = kept[-1]
            last.end, last.truncated = cut, True
            if last.phones is not None:  # the phones begun before the cut, the last one cut short
                said = (cut - last.start) / SAMPLE_RATE
                begun = [
                    (p, end)
                    for i, (p, end) in enumerate(last.phones)
                    if i == 0 or last.phones[i - 1][1] < said
                ]
                last.phones = tuple((p, round(min(end, said), 4)) for p, end in begun)
        utt.words, utt.truncated = kept, True
        fade = samples(0.01)
        track = []
        for start, audio, owner in self.tracks[utt.speaker]:
            if owner is utt and (start >= cut or (cut < start + len(audio) and cut - start < min_part)):
                continue
            if owner is utt and cut < start + len(audio):
                audio = audio[: cut - start].copy()
                n = min(fade, len(audio))
                audio[len(audio) - n :] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
            track.append((start, audio, owner))
        self.tracks[utt.speaker] = track
        self.drop_reactions(utt.speaker, cut)
        self.events = [e for e in self.events if not (e.speaker == utt.speaker and e.end > cut)]

    def drop_reactions(self, speaker: str, after: int) -> None:
        """Listener reactions to `speaker` planned from `after` on no longer happen (it stopped, or the
        listener takes the floor)."""
        for other in self.utts:
            if (
                other.speaker != speaker
                and other.kind in ("backchannel", "side_speech")
                and other.words
                and other.words[0].start >= after
            ):
                self.drop(other)

    def drop(self, utt: _Utt) -> None:
        for channel in self.tracks:
            self.tracks[channel] = [item for item in self.tracks[channel] if item[2] is not utt]
        utt.words = []


def render(
    spec: ConversationSpec,
    chats: dict[str, Chat],
    cache: TtsCache,
    seed: int,
    config: SynthConfig | None = None,
    timing_seed: int | None = None,
) -> Conversation:
    """Render one conversation; deterministic in (seed, timing_seed, spec.id) (the cache only saves time).

    The voices come from `seed`; every other choice (timing, phenomena, levels) from `timing_seed`
    (default: `seed`), so a new timing seed re-assembles the same talk from cached units with new timing.
    """
    cfg = config or SynthConfig.for_shape(spec.shape)
    rng = conversation_rng(seed if timing_seed is None else timing_seed, spec.id)
    r = _Renderer(spec, cfg, cache, rng, conversation_rng(seed, spec.id + "/voices"))
    if spec.shape in PROACTIVE_SHAPES:
        from microturn.data.proactive import render_episode

        return render_episode(spec, r, chats)
    turns = chats[spec.chat_key].turns[spec.first_turn : spec.first_turn + spec.n_turns]
    roles = ["user" if t.sender == spec.user_sender else "assistant" for t in turns]
    t = samples(rng.uniform(0.3, 1.5))
    prev_end, prev_start, user_end = t, 0, None
    interrupt_at: int | None = None
    # an interruption opening with a backchannel word: (the opener, the answer it cuts, samples from the
    # word after the opener to the answer's stop), cut once the user's words are placed
    opened: tuple[str, _Utt, int] | None = None
    for i, (turn, role) in enumerate(zip(turns, roles, strict=True)):
        if i == 0:
            start = t
        elif interrupt_at is not None:
            start = interrupt_at
        else:
            start = max(prev_end + samples(r.fto()), prev_start + samples(0.5))
            if rng.random() < cfg.long_silence_p:
                start = prev_end + samples(rng.uniform(2.0, 6.0))
            if role == "user" and rng.random() < cfg.side_speech_p:
                side_end = r.side_speech(prev_end + samples(rng.uniform(0.3, 1.0)))
                start = max(start, side_end + samples(rng.uniform(0.6, 1.5)))
        if role == "user":
            force_pause = spec.shape == "pause" and i == roles.index("user")
            text = turn.text if opened is None else f"{opened[0]} {turn.text}"
            utt = r.turn("user", text, start, force_pause=force_pause)
            if interrupt_at is not None:
                if opened is not None:
                    opener, interrupted, stop_after = opened
                    after = len(opener.split())  # the first word after the opener
                    heard = utt.words[after].start if len(utt.words) > after else start
                    prev_end = heard + stop_after
                    r.truncate(interrupted, prev_end)
                r.events.append(
                    Event(
                        "interruption",
                        "user",
                        start,
                        utt.words[-1].end if utt.words else start,
                        text,
                        {"assistant_stop": seconds(prev_end)},
                    )
                )
                interrupt_at, opened = None, None
            prev_start, prev_end = start, (utt.words[-1].end if utt.words else start)
            user_end = prev_end
            continue
        # assistant
        if is_own_act(turn.text):
            utt = r.turn("assistant", turn.text, start)
        else:
            react = samples(rng.uniform(0.05, 0.25))
            if user_end is None:  # the segment opens with the assistant: its content arrived earlier
                arrival = max(0, start - samples(rng.uniform(0.2, 1.0)))
            elif rng.random() < cfg.early_background_p:
                arrival = max(prev_start, user_end - samples(rng.uniform(0.0, 0.8)))
            elif cfg.late_content_p > 0 and rng.random() < cfg.late_content_p:  # no draw at 0: old corpora
                arrival = user_end + samples(rng.uniform(*LATE_CONTENT_S))
            else:
                arrival = user_end + samples(np.clip(rng.lognormal(np.log(0.6), 0.5), 0.2, 2.0))
            content_start = max(start, arrival + react)
            if content_start - start > samples(cfg.wait_act_after_s) and rng.random() < cfg.wait_act_p:
                act = r.phrase(
                    "assistant",
                    "filler",
                    ASSISTANT_VOICE,
                    str(rng.choice(WAIT_ACTS)),
                    start,
                    "assistant",
                    1.0,
                )
                if act.words:
                    content_start = max(content_start, act.words[-1].end + samples(rng.uniform(0.1, 0.3)))
            utt = r.turn("assistant", turn.text, content_start)
            r.background.append((arrival, " ".join(turn.text.split()[: cfg.max_turn_words]), utt))
            start = content_start
        end = utt.words[-1].end if utt.words else start
        next_is_user = i + 1 < len(roles) and roles[i + 1] == "user"
        if (
            next_is_user
            and not is_own_act(turn.text)
            and end - start >= samples(2.5)
            and rng.random() < cfg.interruption_p
        ):
            lo, hi = (3.0, 7.0) if spec.shape == "interruption" else (1.0, 6.0)
            latest = (end - start) / SAMPLE_RATE - 0.8
            interrupt_at = start + samples(rng.uniform(min(lo, latest), min(hi, latest)))
            stop_after = samples(rng.uniform(0.2, 0.4))
            if cfg.interruption_opener_p > 0 and rng.random() < cfg.interruption_opener_p:  # no draw at 0
                opened = (str(rng.choice(INTERRUPTION_OPENERS)), utt, stop_after)
                r.drop_reactions("assistant", interrupt_at)
            else:
                end = interrupt_at + stop_after
                r.truncate(utt, end)
        prev_start, prev_end = start, end
    return _finish(r, spec, chats, prev_end)


def _finish(r: _Renderer, spec: ConversationSpec, chats: dict[str, Chat], last_end: int) -> Conversation:
    rng, cfg = r.rng, r.cfg
    r.utts = [u for u in r.utts if u.words]
    n = max([last_end] + [w.end for u in r.utts for w in u.words]) + samples(rng.uniform(0.5, 2.0))
    if rng.random() < cfg.background_speech_p and spec.other_keys:
        _background_speech(r, spec, chats, n)
    assistant = _mix(r.tracks["assistant"], n)
    user = _mix(r.tracks["user"], n)
    events = list(r.events)
    utterances, words, index = [], [], {}
    order = sorted(range(len(r.utts)), key=lambda k: (r.utts[k].words[0].start, r.utts[k].speaker))
    for new, old in enumerate(order):
        index[id(r.utts[old])] = new
    for u in (r.utts[k] for k in order):
        utterances.append(
            Utterance(
                u.speaker,
                " ".join(w.text for w in u.words),
                seconds(u.words[0].start),
                seconds(u.words[-1].end),
                u.kind,
                u.voice.id,
                u.truncated,
            )
        )
        words += [
            Word(w.speaker, w.text, seconds(w.start), seconds(w.end), index[id(u)], w.truncated, w.phones)
            for w in u.words
        ]
    words.sort(key=lambda w: (w.start, w.speaker))
    background = sorted(
        (BackgroundText(seconds(t), text, index[id(u)]) for t, text, u in r.background if id(u) in index),
        key=lambda b: b.time,
    )
    events = [Event(e.type, e.speaker, seconds(e.start), seconds(e.end), e.text, e.detail) for e in events]
    if rng.random() < cfg.echo_p:
        delay, level = float(rng.uniform(0.05, 0.15)), float(rng.uniform(-25.0, -10.0))
        user += effects.echo(assistant, delay, level, rng)
        events += [
            Event(
                "echo",
                "assistant",
                min(round(u.start + delay, 5), seconds(n)),
                min(round(u.end + delay, 5), seconds(n)),
                detail={"level_db": round(level, 1), "delay_s": round(delay, 3)},
            )
            for u in utterances
            if u.speaker == "assistant"
        ]
    if rng.random() < cfg.noise_p:
        colour = str(rng.choice(effects.NOISE_COLOURS))
        snr = float(rng.uniform(cfg.min_snr_db, cfg.max_snr_db))
        speech_rms = 0.07 * r.user_gain  # typical RMS of a voiced unit at this conversation's user gain
        user += effects.noise(n, colour, rng) * speech_rms * effects.db_to_gain(-snr)
        events.append(Event("noise", "other", 0.0, seconds(n), colour, {"snr_db": round(snr, 1)}))
    events += _derived_events(utterances, words, background, seconds(n))
    events.sort(key=lambda e: (e.start, e.type))
    return Conversation(
        id=spec.id,
        split=spec.split,
        source=f"chitchat:{spec.chat_key}",
        duration_s=seconds(n),
        words=words,
        utterances=utterances,
        events=events,
        background=background,
        user=user,
        assistant=assistant,
    )


def _background_speech(r: _Renderer, spec: ConversationSpec, chats: dict[str, Chat], n: int) -> None:
    """Another person talking nearby (a TV, a colleague): another voice, 14-24 dB quieter, muffled."""
    voice = r.other_voice
    for _ in range(int(r.rng.integers(1, 3))):
        chat = chats[str(r.rng.choice(spec.other_keys))]
        text = " ".join(chat.turns[int(r.rng.integers(len(chat.turns)))].text.split()[:20])
        start = samples(r.rng.uniform(0, max(0.1, n / SAMPLE_RATE - 4.0)))
        gain = r.user_gain * effects.db_to_gain(r.rng.uniform(-24.0, -14.0))
        cutoff = float(r.rng.uniform(2500, 5000))
        utt = r.phrase(
            "other",
            "background_speech",
            voice,
            text,
            start,
            "user",
            gain,
            effect=lambda a, c=cutoff: effects.lowpass(a, c),
        )
        over = [w for w in utt.words if w.end > n]
        if over:  # keep the talk inside the conversation
            r.drop(utt)
            r.utts.remove(utt)


def _mix(track: list[tuple[int, np.ndarray, _Utt]], n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    for start, audio, _ in track:
        out[start : start + len(audio)] += audio[: n - start]
    return out


def _derived_events(
    utterances: list[Utterance], words: list[Word], background: list[BackgroundText], duration: float
) -> list[Event]:
    """Events read off the finished timeline: turn ends with their gaps, overlaps, silences, and one event
    per backchannel / filler / side or background speech utterance and per background-text arrival."""
    events = []
    turns = [u for u in utterances if u.kind == "turn" and u.speaker in ("user", "assistant")]
    for k, u in enumerate(turns):
        if u.truncated:
            continue
        following = next((v for v in turns[k + 1 :] if v.speaker != u.speaker), None)
        if following is None:
            events.append(Event("turn_end", u.speaker, u.end, duration))
        else:
            gap = round(following.start - u.end, 5)
            events.append(
                Event("turn_end", u.speaker, u.end, max(u.end, following.start), None, {"gap": gap})
            )
    kinds = {
        "backchannel": "backchannel",
        "filler": "filler",
        "side_speech": "side_speech",
        "background_speech": "background_speech",
    }
    events += [Event(kinds[u.kind], u.speaker, u.start, u.end, u.text) for u in utterances if u.kind in kinds]
    events += [
        Event("background_text", "assistant", b.time, b.time, b.text, {"utterance": b.utterance})
        for b in background
    ]
    spans = {s: _merge([(w.start, w.end) for w in words if w.speaker == s]) for s in ("user", "assistant")}
    for a0, a1 in spans["user"]:
        for b0, b1 in spans["assistant"]:
            lo, hi = max(a0, b0), min(a1, b1)
            if hi - lo >= 0.05:
                events.append(Event("overlap", "both", round(lo, 5), round(hi, 5)))
    both = _merge(spans["user"] + spans["assistant"])
    edges = [0.0] + [x for span in both for x in span] + [duration]
    for lo, hi in zip(edges[::2], edges[1::2], strict=True):
        if hi - lo >= 1.5:
            events.append(Event("silence", "both", round(lo, 5), round(hi, 5)))
    return events


def _merge(spans: list[tuple[float, float]], bridge: float = 0.0) -> list[tuple[float, float]]:
    merged: list[list[float]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + bridge:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]
