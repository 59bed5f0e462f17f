"""Proactive episodes: the assistant speaks because something happened on video, because time passed, or
because the user said a cue word, not because a turn ended.

Shapes (`--shape`, variants drawn in turn across a corpus so that every kind is equally represented):
  visual_cue  "tell me when the light turns green / the ball stops / my hand goes up"   (light|ball|hand)
  reps        "count my reps": "one", "two", ... shortly after each rep completes        (squat|arms)
  start_stop  "say start when it begins and stop when it ends" around an action           (wave|spin)
  time        "remind me every N seconds", "tell me when N seconds have passed",
              "how long did that take me?"                                               (every|after|elapsed)
  cue_word    "whenever i say X, say Y"; X alone or mid-sentence while the user goes on  (standalone|inline)
The user's instruction is a templated sentence; the rest of the user's talk is chat text of the split
(held-out text for held-out splits). Every assistant utterance here is its own act (acknowledgement:
kind `turn`; the proactive words: kind `proactive`): none is in the background-text stream. Ground truth
for evaluation is in the timeline's events (`visual_change`, `rep`, `action`, `timer`, `cue`, each with the
expected words as `text`), and the scene of a video episode in `video.json` (see `video.py`).
"""

from __future__ import annotations

from microturn.audio import SAMPLE_RATE
from microturn.data import video
from microturn.data.chitchat import Chat
from microturn.data.corpus import Conversation, Event
from microturn.data.synth import ConversationSpec, _finish, _Renderer, samples
from microturn.data.voices import ASSISTANT_VOICE

PROACTIVE_SHAPES = ("visual_cue", "reps", "start_stop", "time", "cue_word")
VARIANTS = {
    "visual_cue": ("light", "ball", "hand"),
    "reps": ("squat", "arms"),
    "start_stop": ("wave", "spin"),
    "time": ("every", "after", "elapsed"),
    "cue_word": ("standalone", "inline"),
}
VIDEO_SHAPES = ("visual_cue", "reps", "start_stop")
EPISODE_S = (20.0, 60.0)
# the planner's estimate of a rendered episode, per shape (means of 30-episode corpora)
PLANNED_EPISODE_S = {"visual_cue": 28.0, "reps": 33.0, "start_stop": 26.0, "time": 38.0, "cue_word": 43.0}

ACKS = ("okay.", "sure.", "got it.", "okay, will do.", "sure thing.", "alright.", "okay, i'm on it.")
VISUAL = {
    "light": (
        (
            "tell me when the light turns green.",
            "let me know when the light goes green.",
            "watch the traffic light and tell me when it's green.",
            "can you tell me when the light changes to green?",
        ),
        ("it's green now.", "it's green.", "green light!", "it turned green."),
    ),
    "ball": (
        (
            "tell me when the ball stops.",
            "let me know when the ball stops moving.",
            "watch the ball and tell me when it stops.",
            "can you say when the ball stops?",
        ),
        ("the ball stopped.", "it stopped.", "the ball stopped moving.", "it's stopped now."),
    ),
    "hand": (
        (
            "tell me when my hand goes up.",
            "let me know when i raise my hand.",
            "say something when you see my hand up.",
            "watch me and tell me when i put my hand up.",
        ),
        ("your hand is up.", "hand up!", "i see your hand.", "your hand went up."),
    ),
}
REPS_ASK = {
    "squat": (
        "count my reps.",
        "can you count my squats?",
        "i'm doing squats, count them for me.",
        "count my squats out loud please.",
    ),
    "arms": (
        "count my reps.",
        "can you count my arm raises?",
        "count my reps out loud please.",
        "i'm going to raise my arms, count them for me.",
    ),
}
START_STOP_ASK = {
    "wave": (
        "say start when i start waving and stop when i stop.",
        "say start when it begins and stop when it ends.",
        "when i wave, say start, and say stop when i stop waving.",
    ),
    "spin": (
        "say start when the wheel starts spinning and stop when it stops.",
        "say start when it begins and stop when it ends.",
        "watch the wheel, say start when it spins and stop when it stops.",
    ),
}
EVERY_ASK = ("remind me every {n} seconds to {task}.", "every {n} seconds, remind me to {task}.")
TASKS = (
    "drink water",
    "stretch",
    "check the oven",
    "take a breath",
    "stand up",
    "look away from the screen",
    "relax your shoulders",
)
AFTER_ASK = (
    "tell me when {n} seconds have passed.",
    "let me know when {n} seconds are up.",
    "set a timer for {n} seconds.",
    "tell me when {n} seconds are over.",
)
AFTER_SAY = ("{n} seconds.", "time's up.", "that's {n} seconds.", "time's up, {n} seconds.")
GO = ("time me. ready, go!", "start the clock, go!", "okay, time me, go!", "ready, set, go!")
DONE = (
    "done! how long did that take?",
    "okay, done. how long was that?",
    "finished. how long did that take me?",
    "done, how long did that take?",
)
ELAPSED_SAY = ("that took {n} seconds.", "about {n} seconds.", "{n} seconds.", "that was {n} seconds.")
CUE_ASK = (
    "whenever i say {x}, say {y}.",
    "every time i say {x}, you say {y}.",
    "when you hear me say {x}, say {y}.",
)
CUE_WORDS = (
    "banana", "pineapple", "purple", "rocket", "zebra", "umbrella", "tango", "kangaroo", "avocado",
    "volcano", "jellyfish", "lighthouse", "octopus", "waffle", "sunflower", "dinosaur",
)  # fmt: skip
# replies Whisper tiny.en transcribes right when piper joe says them alone (the evaluation hears them so)
CUE_REPLIES = (
    "bingo", "hooray", "check", "gotcha", "nice", "yay", "perfect", "correct", "awesome", "cheers",
    "score", "wow", "excellent", "splendid", "cool",
)  # fmt: skip
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """0..99 as spoken words ("twenty three")."""
    if not 0 <= n < 100:
        raise ValueError(f"number_words: {n} is out of range 0..99")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


class _Episode:
    """One episode being rendered on a `_Renderer` (times in samples, as the renderer keeps them)."""

    def __init__(self, r: _Renderer, spec: ConversationSpec, chats: dict[str, Chat]):
        self.r, self.rng, self.spec = r, r.rng, spec
        texts = []
        for key in (spec.chat_key, *spec.other_keys):
            texts += [" ".join(t.text.split()[:28]) for t in chats[key].turns if len(t.text.split()) >= 8]
        self.texts = texts or ["so anyway i was thinking about what we should do this weekend, maybe go out."]
        self.next_text = int(self.rng.integers(len(self.texts)))
        self.user_free = 0  # the user is silent from this sample on
        self.assistant_free = 0
        self.video: dict | None = None

    def s(self, seconds: float) -> int:
        return samples(seconds)

    def pick(self, options) -> str:
        return str(options[int(self.rng.integers(len(options)))])

    def user(self, text: str, start: int) -> tuple[int, int]:
        """A user turn; returns (start, end) of its words."""
        utt = self.r.turn("user", text, max(start, self.user_free))
        if not utt.words:
            return start, start
        self.user_free = utt.words[-1].end + self.s(0.2)
        return utt.words[0].start, utt.words[-1].end

    def talk(self, start: int) -> tuple[int, int]:
        """The user talks about something else (chat text of the split)."""
        text = self.texts[self.next_text % len(self.texts)]
        self.next_text += 1
        return self.user(text, start)

    def say(self, text: str, start: int, kind: str = "proactive") -> tuple[int, int]:
        """An assistant act; never over its own previous words."""
        start = max(start, self.assistant_free)
        utt = self.r.phrase("assistant", kind, ASSISTANT_VOICE, text, start, "assistant", 1.0)
        if not utt.words:
            return start, start
        self.assistant_free = utt.words[-1].end + self.s(0.15)
        return utt.words[0].start, utt.words[-1].end

    def instruct(self, text: str, start: int, ack_p: float = 0.9) -> int:
        """The user's instruction and (usually) a short acknowledgement; returns the instruction's end."""
        _, end = self.user(text, start)
        if self.rng.random() < ack_p:
            self.say(self.pick(ACKS), end + self.s(self.rng.uniform(0.2, 0.6)), kind="turn")
        return end

    def event(self, type_: str, speaker: str, start: int, end: int, text: str, **detail) -> None:
        self.r.events.append(Event(type_, speaker, start, end, text, detail))

    def distract(self, lo: int, hi: int, p: float) -> None:
        """With probability p the user talks about something else somewhere in [lo, hi)."""
        if hi - lo > self.s(6.0) and self.rng.random() < p:
            self.talk(int(self.rng.integers(lo, hi - self.s(5.0))))

    # --- shapes ---------------------------------------------------------------------------------------------
    def visual_cue(self, variant: str) -> int:
        rng = self.rng
        asks, replies = VISUAL[variant]
        end = self.instruct(self.pick(asks), self.s(rng.uniform(0.3, 1.5)))
        change = end + self.s(rng.uniform(3.0, 28.0))
        change_s = change / SAMPLE_RATE
        bg = video.random_background(rng)
        avoid = video.background_colours(bg)
        objects: list[dict] = []
        if variant == "light":
            objects.append(video.random_light(rng, change_s))
            if rng.random() < 0.5:  # a ball that never stops
                objects.append(video.random_ball(rng, None, avoid))
        elif variant == "ball":
            if rng.random() < 0.3:  # a light that changes at another time: not what was asked about
                objects.append(video.random_light(rng, float(rng.uniform(1.0, 50.0))))
            objects.append(video.random_ball(rng, change_s, avoid))
        else:
            if rng.random() < 0.3:
                objects.append(video.random_ball(rng, None, avoid))
            motion = {"kind": "hand_up", "time": round(change_s, 3), "arm": self.pick(("left", "right"))}
            objects.append(video.random_figure(rng, motion, avoid))
        self.video = video.scene(rng, bg, objects)
        if rng.random() < 0.4:  # the user is talking when it happens; the assistant speaks over them
            self.talk(change - self.s(rng.uniform(0.5, 2.5)))
        else:
            self.distract(end + self.s(1.0), change - self.s(1.0), 0.5)
        reply = self.pick(replies)
        self.say(reply, change + self.s(rng.uniform(0.3, 0.6)))
        self.event("visual_change", "video", change, change, reply, kind=variant)
        tail = change + self.s(rng.uniform(3.0, 10.0))
        self.distract(change + self.s(2.0), tail, 0.3)
        return tail

    def reps(self, variant: str) -> int:
        rng = self.rng
        end = self.instruct(self.pick(REPS_ASK[variant]), self.s(rng.uniform(0.3, 1.5)))
        t = end / SAMPLE_RATE + float(rng.uniform(1.5, 4.0))
        period = float(rng.uniform(1.5, 3.0))
        limit = float(rng.uniform(EPISODE_S[0], EPISODE_S[1])) - 3.0
        spans = []
        for _ in range(int(rng.integers(4, 16))):
            length = period * float(rng.uniform(0.85, 1.15))
            if t + length > limit and len(spans) >= 3:
                break
            spans.append((round(t, 3), round(t + length, 3)))
            t += length + float(rng.uniform(0.0, 0.6))
        bg = video.random_background(rng)
        motion = {"kind": "reps", "style": variant, "reps": [list(s) for s in spans]}
        self.video = video.scene(rng, bg, [video.random_figure(rng, motion, video.background_colours(bg))])
        if rng.random() < 0.3:  # the user says something in the middle of the set
            mid = spans[len(spans) // 2][0]
            self.talk(self.s(mid))
        for n, (a, b) in enumerate(spans, 1):
            word = number_words(n) + "."
            self.say(word, self.s(b + rng.uniform(0.2, 0.5)))
            self.event("rep", "video", self.s(a), self.s(b), word, count=n, kind=variant)
        return self.s(spans[-1][1] + rng.uniform(2.5, 6.0))

    def start_stop(self, variant: str) -> int:
        rng = self.rng
        end = self.instruct(self.pick(START_STOP_ASK[variant]), self.s(rng.uniform(0.3, 1.5)))
        a = round(end / SAMPLE_RATE + float(rng.uniform(2.0, 10.0)), 3)
        b = round(a + float(rng.uniform(3.0, 14.0)), 3)
        bg = video.random_background(rng)
        avoid = video.background_colours(bg)
        if variant == "wave":
            motion = {"kind": "wave", "start": a, "end": b, "arm": self.pick(("left", "right"))}
            motion["rate"] = round(float(rng.uniform(1.5, 3.0)), 2)
            objects = [video.random_figure(rng, motion, avoid)]
        else:
            objects = [video.random_spinner(rng, a, b, avoid)]
            if rng.random() < 0.3:
                objects.append(video.random_ball(rng, None, avoid))
        self.video = video.scene(rng, bg, objects)
        self.distract(end + self.s(1.0), self.s(a) - self.s(0.5), 0.4)
        self.say("start.", self.s(a + rng.uniform(0.3, 0.6)))
        self.say("stop.", self.s(b + rng.uniform(0.3, 0.6)))
        self.event("action", "video", self.s(a), self.s(b), "start stop", kind=variant)
        return self.s(b + rng.uniform(3.0, 8.0))

    def time(self, variant: str) -> int:
        rng = self.rng
        start = self.s(rng.uniform(0.3, 1.5))
        if variant == "every":
            n = int(rng.choice([5, 8, 10, 12, 15, 20]))
            task = self.pick(TASKS)
            end = self.instruct(self.pick(EVERY_ASK).format(n=number_words(n), task=task), start)
            limit = float(rng.uniform(EPISODE_S[0], EPISODE_S[1]))
            count = max(2, int((limit - end / SAMPLE_RATE - 2.0) // n))
            reply = f"time to {task}."
            for k in range(1, count + 1):
                due = end + self.s(k * n)
                self.say(reply, due + self.s(rng.uniform(0.0, 0.3)))
                self.event("timer", "clock", end, due, reply, kind="every", seconds=k * n)
                if k < count:
                    self.distract(due + self.s(2.0), due + self.s(n - 1.0), 0.25)
            return end + self.s(count * n + rng.uniform(3.0, 6.0))
        if variant == "after":
            n = int(rng.choice([5, 8, 10, 12, 15, 20, 25, 30, 40]))
            end = self.instruct(self.pick(AFTER_ASK).format(n=number_words(n)), start)
            due = end + self.s(n)
            self.distract(end + self.s(1.5), due - self.s(1.0), 0.5)
            reply = self.pick(AFTER_SAY).format(n=number_words(n))
            self.say(reply, due + self.s(rng.uniform(0.0, 0.3)))
            self.event("timer", "clock", end, due, reply, kind="after", seconds=n)
            return due + self.s(rng.uniform(3.0, 10.0))
        # elapsed: "go" ... "done, how long did that take?" -> "that took N seconds"
        _, go = self.user(self.pick(GO), start)
        if rng.random() < 0.5:
            self.say(
                self.pick(("okay.", "go!", "timing.", "started.")), go + self.s(rng.uniform(0.2, 0.5)), "turn"
            )
        done_at = go + self.s(rng.uniform(5.0, 45.0))
        self.distract(go + self.s(1.5), done_at - self.s(0.5), 0.5)
        done_start, done_end = self.user(self.pick(DONE), done_at)
        n = int(round((done_start - go) / SAMPLE_RATE))
        reply = self.pick(ELAPSED_SAY).format(n=number_words(n))
        self.say(reply, done_end + self.s(rng.uniform(0.3, 0.7)))
        self.event(
            "timer", "clock", go, done_start, reply, kind="elapsed", seconds=n, asked=done_end / SAMPLE_RATE
        )
        return done_end + self.s(rng.uniform(4.0, 8.0))

    def cue_word(self, variant: str) -> int:
        rng = self.rng
        x, y = self.pick(CUE_WORDS), self.pick(CUE_REPLIES)
        end = self.instruct(self.pick(CUE_ASK).format(x=x, y=y), self.s(rng.uniform(0.3, 1.5)))
        limit = self.s(rng.uniform(EPISODE_S[0], EPISODE_S[1]) - 3.0)
        t = end + self.s(rng.uniform(1.5, 4.0))
        said = 0
        while t < limit or said < 2:
            if said >= 5:
                break
            if variant == "standalone":
                if rng.random() < 0.6:  # some talk first
                    _, t = self.talk(t)
                    t += self.s(rng.uniform(0.4, 1.5))
                a, b = self.user(x + self.pick(("!", ".", "")), t)
                kind_words = [(a, b)]
            else:
                words = self.texts[self.next_text % len(self.texts)].split()
                self.next_text += 1
                at = int(rng.integers(1, max(2, len(words) - 2)))
                words.insert(at, x + ("," if rng.random() < 0.3 else ""))
                utt = self.r.turn("user", " ".join(words), max(t, self.user_free))
                self.user_free = utt.words[-1].end + self.s(0.2)
                kind_words = [(w.start, w.end) for w in utt.words if w.text.strip(".,?!") == x]
            for a, b in kind_words:
                self.say(y + ".", b + self.s(rng.uniform(0.2, 0.5)))
                self.event("cue", "user", a, b, y, cue=x, kind=variant)
                said += 1
            t = self.user_free + self.s(rng.uniform(0.8, 3.0))
        return max(t, self.assistant_free) + self.s(rng.uniform(1.0, 4.0))


def render_episode(spec: ConversationSpec, r: _Renderer, chats: dict[str, Chat]) -> Conversation:
    """Render one proactive episode on a fresh renderer (see synth.render, which calls this)."""
    variant = spec.variant or VARIANTS[spec.shape][0]
    if variant not in VARIANTS[spec.shape]:
        raise ValueError(f"{spec.id}: unknown {spec.shape} variant {variant!r}")
    episode = _Episode(r, spec, chats)
    last = getattr(episode, spec.shape)(variant)
    last = max(last, r.rng.integers(samples(EPISODE_S[0]) - samples(1.0), samples(EPISODE_S[0]) + 1))
    # an assistant backchannel must not collide with its own proactive words
    own = [
        (u.words[0].start, u.words[-1].end)
        for u in r.utts
        if u.speaker == "assistant" and u.kind != "backchannel" and u.words
    ]
    margin = samples(0.5)
    for u in r.utts:
        if u.kind == "backchannel" and u.speaker == "assistant" and u.words:
            a, b = u.words[0].start, u.words[-1].end
            if any(a < e + margin and s < b + margin for s, e in own):
                r.drop(u)
    conv = _finish(r, spec, chats, int(last))
    if episode.video is not None:
        events = [e for e in conv.events if e.type in ("visual_change", "rep", "action")]
        keys = sorted({round(x, 3) for e in events for x in (e.start, e.end)})
        conv.video = {
            "spec": episode.video,
            "frame_phase": video.FRAME_PHASE,
            "key_times": keys,  # when the scene changes in a way the assistant must react to
        }
    return conv
