"""The conversation record the background model is sent: both sides, with times, as they happened.

- The assistant's words are the session's own transcript (`Session.transcript`): what it actually said,
  already cut where a client reported the user stopped hearing it (`Session.truncate`). Its utterances
  end where it yielded to the user; those are marked as interrupted.
- The user's words are Whisper tiny.en transcriptions (`microturn.eval.transcribe.transcribe`) of the
  user's speech segments: the stretches the interaction model itself perceived as user speech (its floor
  head, `MicroTurnOutput.user_speaking`), cut from the exact audio the model heard (the session's input
  tap). Transcription is blocking and runs off the real-time path, on the record's own worker thread.
- Typed user text joins the record as it is pushed.
All methods are thread-safe: the engine thread feeds audio and outputs, the worker reads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from microturn.audio import SAMPLE_RATE
from microturn.runtime.session import MicroTurnOutput

ASSISTANT_PAUSE_S = 1.0  # a longer silence between the assistant's words starts a new utterance
SEGMENT_LEAD_S = 0.6  # the floor head notices the user a little late: cut the audio from this earlier
SEGMENT_TAIL_S = 0.2


@dataclass
class Utterance:
    speaker: str  # user | assistant
    text: str
    start: float  # session seconds
    end: float
    interrupted: bool = False  # the assistant yielded to the user mid-utterance
    typed: bool = False  # user text typed rather than spoken


@dataclass
class Segment:
    """A stretch of user speech as the model perceived it (session seconds)."""

    start: float
    end: float


class ConversationRecord:
    def __init__(
        self,
        turn_s: float = 0.2,
        keep_s: float = 600.0,
        transcribe: Callable[[np.ndarray], dict] | None = None,
        on_utterance: Callable[[Utterance], None] | None = None,
    ):
        self.turn_s = turn_s
        self.on_utterance = on_utterance  # each transcribed user utterance, on the record's thread
        self._audio: deque[tuple[int, np.ndarray]] = deque(maxlen=int(keep_s / turn_s))  # (turn, chunk)
        self._user: list[Utterance] = []
        self._yields: list[float] = []  # session seconds at which the assistant yielded to the user
        self._segment_start: float | None = None
        self._was_speaking = False
        self._transcribe = transcribe
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="microturn-asr")
        self._pending: list[Future] = []
        self._lock = threading.Lock()

    # ---- feeding (engine thread) ----
    def observe_input(self, turn: int, samples: np.ndarray) -> None:
        """The 16 kHz chunk the model heard at micro-turn `turn` (the session's input tap)."""
        with self._lock:
            self._audio.append((turn, samples))

    def observe_output(self, output: MicroTurnOutput) -> Segment | None:
        """Track the model's perception of the user and its yields; returns a user speech segment when
        one ends (its transcription is then under way)."""
        turn_start = output.index * self.turn_s
        finished = None
        with self._lock:
            if output.floor == "yielding" or (
                self._was_speaking and not output.speaking and output.user_speaking
            ):
                self._yields.append(turn_start)
            self._was_speaking = output.speaking
            if output.user_speaking and self._segment_start is None:
                self._segment_start = max(0.0, turn_start - SEGMENT_LEAD_S)
            elif not output.user_speaking and self._segment_start is not None:
                finished = Segment(self._segment_start, turn_start + SEGMENT_TAIL_S)
                self._segment_start = None
        if finished is not None:
            self.transcribe_segment(finished)
        return finished

    def add_typed(self, text: str, at_s: float) -> None:
        with self._lock:
            self._user.append(Utterance("user", text, at_s, at_s, typed=True))

    # ---- transcription (the record's worker thread) ----
    def segment_audio(self, segment: Segment) -> np.ndarray:
        first, last = int(segment.start / self.turn_s), int(np.ceil(segment.end / self.turn_s))
        with self._lock:
            chunks = [c for t, c in self._audio if first <= t < last]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)

    def transcribe_segment(self, segment: Segment) -> Future:
        """Starts transcribing on the record's thread; `wait()` waits for every pending one."""
        future = self._executor.submit(self._transcribe_now, segment)
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()] + [future]
        return future

    def _transcribe_now(self, segment: Segment) -> Utterance | None:
        if self._transcribe is None:
            from microturn.eval.transcribe import transcribe  # loads Whisper once per process

            self._transcribe = transcribe
        samples = self.segment_audio(segment)
        if len(samples) < SAMPLE_RATE // 10:
            return None
        result = self._transcribe(samples)
        if not result["text"].strip():
            return None
        chunks = result["chunks"]
        start = segment.start + (chunks[0]["timestamp"][0] if chunks else 0.0)
        end = segment.start + (chunks[-1]["timestamp"][1] if chunks else segment.end - segment.start)
        utterance = Utterance("user", result["text"].strip(), round(start, 2), round(end, 2))
        with self._lock:
            self._user.append(utterance)
        if self.on_utterance is not None:
            self.on_utterance(utterance)
        return utterance

    def wait(self, timeout: float | None = None) -> None:
        """Block until the transcriptions started so far are done (call from a worker thread)."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.result(timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- reading ----
    def utterances(self, assistant_words: list[dict]) -> list[Utterance]:
        """Both sides in time order. `assistant_words`: the session transcript ({"text", "start", "end"})."""
        with self._lock:
            user, yields = list(self._user), list(self._yields)
        said: list[Utterance] = []
        for word in assistant_words:
            if said and word["start"] - said[-1].end <= ASSISTANT_PAUSE_S:
                said[-1].text += " " + word["text"]
                said[-1].end = word["end"]
            else:
                said.append(Utterance("assistant", word["text"], word["start"], word["end"]))
        # a yield (only ever right after speech) ends the utterance it follows: the rest was never said,
        # and what a client did not play is already cut from the transcript
        for i, utterance in enumerate(said):
            until = said[i + 1].start if i + 1 < len(said) else float("inf")
            utterance.interrupted = any(utterance.start <= y < until for y in yields)
        return sorted(user + said, key=lambda u: u.start)

    def messages(self, system_prompt: str, assistant_words: list[dict]) -> list[dict]:
        """The chat-completions messages: the system prompt, then each side's utterances with times."""
        messages = [{"role": "system", "content": system_prompt}]
        for u in self.utterances(assistant_words):
            note = " (interrupted by the user)" if u.interrupted else " (typed)" if u.typed else ""
            line = f"[{u.start:.1f}-{u.end:.1f} s] {u.text}{note}"
            if len(messages) > 1 and messages[-1]["role"] == u.speaker:
                messages[-1]["content"] += "\n" + line
            else:
                messages.append({"role": u.speaker, "content": line})
        return messages
