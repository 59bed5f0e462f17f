"""The background worker: runs the background model beside a live session without ever blocking it.

A task starts at every user turn end (the interaction model's own perception: its floor head's
user_speaking going from true to false, via `observe(output)`) and whenever `request()` is called (the
model's delegate signal, a client, a timer). A task waits for the user's last words to be transcribed, sends
the whole conversation record to the backend, runs the tools the backend calls, and streams the answer into
`session.push_background` as it arrives (`AnswerStream`: its first sentence word by word, then
sentence by sentence). A newer task supersedes (cancels) a running
one (the conversation moved on) once it has the user's words: a turn end in which Whisper heard no words
(a cough, noise, the floor head flickering) leaves the running answer alone. A backend that fails or
exceeds `WorkerConfig.timeout_s` ends the task as failed and the session gets a short apology to voice;
the engine never waits on any of this.

Events (`on_event(dict)`, called on the worker's event loop), the duplex extension's
`microturn.background`: {"task_id", "reason", "status": started | progress | done | failed | cancelled,
"text" (progress: the sentence delivered; done: the whole answer), "tool" (progress: a tool was called),
"error" (failed)}.

The trigger (`turn_end_trigger`) and the task (`run_task`: context package, backend, tools, sentences,
timeout, apology) are module functions, shared with the offline loop's simulated-clock background
(`background.offline.SimulatedBackground`), so the live and the offline background are one code path.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from microturn.background.backends import Backend, ToolCall
from microturn.background.conversation import ConversationRecord, Segment
from microturn.background.tools import Timers, ToolRegistry, default_registry
from microturn.runtime.session import MicroTurnOutput, Session

SYSTEM_PROMPT = (
    "You help a voice assistant during a live spoken conversation. Below is the conversation so far, "
    "with times in seconds; the user's words come from speech recognition and may contain errors. "
    "Give the assistant the content of its next reply to the user's last words: one to three short, "
    "plain spoken sentences, no lists, no markup. Use the tools for facts you do not know. "
    "If the user's last words need no facts, tools or thought, answer exactly NONE."
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_TIME_TAG = re.compile(r"\[[\d.\s-]+s\]\s*")  # small models copy the record's "[1.6-2.7 s]" line tags


@dataclass
class WorkerConfig:
    timeout_s: float = 30.0  # a whole task, tool calls included
    transcribe_timeout_s: float = 20.0
    max_tool_rounds: int = 3
    on_turn_end: bool = True  # start a task at every user turn end
    apology: str = "Sorry, I could not get that."
    # the answer's first sentence reaches the session word by word once this many are written; 0:
    # sentence by sentence (`AnswerStream`)
    opening_words: int = 1
    system_prompt: str = SYSTEM_PROMPT


class LoopThread:
    """An asyncio loop on a daemon thread, for callers that have no loop of their own (evaluation, tests)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="microturn-background", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5.0)


def split_sentences(buffer: str) -> tuple[list[str], str]:
    """Complete sentences of `buffer`, and the unfinished rest."""
    parts = _SENTENCE_END.split(buffer)
    return [p.strip() for p in parts[:-1] if p.strip()], parts[-1]


def _is_none(text: str) -> bool:
    return re.sub(r"[^a-z]", "", text.lower()) == "none"


class AnswerStream:
    """The backend's text as it is written -> what is pushed to the session. Sentence by sentence, each
    dropped if it repeats one already delivered (small models loop) or is NONE, with the record's copied
    time tags taken out; but the answer's first sentence, which the user is waiting for, goes out word
    by word once `opening_words` of its words are written (the model reads one token per micro-turn,
    slower than the backend writes, so waiting for the sentence end only delays it: about 1.3 s of
    SmolLM2's 2.6 s to a first sentence on the CPU, and each further word waited for costs a loaded CPU
    0.1-0.3 s). 0 keeps whole sentences (a cascade's TTS wants them)."""

    def __init__(
        self,
        push: Callable[[str], None],
        emit: Callable[..., None],
        opening_words: int,
    ):
        self.push, self.emit, self.opening_words = push, emit, opening_words
        self.delivered: list[str] = []  # the sentences pushed
        self.buffer = ""
        self.streamed = ""  # the first sentence's words pushed so far

    def said(self) -> str:
        """What the session was given: the sentences, and the words of one still being streamed."""
        return " ".join(self.delivered + ([self.streamed] if self.streamed else []))

    def feed(self, piece: str) -> None:
        self.buffer += piece
        sentences, self.buffer = split_sentences(self.buffer)
        for sentence in sentences:
            self._sentence(sentence)
        if self.opening_words and not self.delivered:
            self._opening()

    def finish(self) -> None:
        """The backend stopped writing (its answer is done, or it calls tools): deliver the rest."""
        if self.buffer.strip():
            self._sentence(self.buffer)
        self.buffer = ""

    def _opening(self) -> None:
        head = _TIME_TAG.sub("", self.buffer).lstrip()
        if "[" in head:  # perhaps a time tag still being written
            return
        words = head[: max(head.rfind(" "), 0)]  # the complete words
        if _is_none(words):  # perhaps the whole answer is NONE
            return
        if len(words.split()) >= self.opening_words and len(words) > len(self.streamed):
            self.push(words[len(self.streamed) :].strip() + " ")
            self.streamed = words

    def _sentence(self, sentence: str) -> None:
        sentence = _TIME_TAG.sub("", sentence).strip()
        if not sentence or _is_none(sentence) or sentence in self.delivered:
            return
        rest = sentence[len(self.streamed) :].strip() if sentence.startswith(self.streamed) else sentence
        if rest:
            self.push(rest + " ")
        self.streamed = ""
        self.delivered.append(sentence)
        self.emit("progress", text=sentence)


def turn_end_trigger(
    record: ConversationRecord, output: MicroTurnOutput, config: WorkerConfig
) -> Segment | None:
    """The trigger, shared by the live worker and the offline simulation (`background.offline`): feed one
    micro-turn's output to the record; a user turn end as the interaction model itself perceived it (its
    floor head's `user_speaking` going false) returns the user's speech segment, whose transcription is then
    under way, and starts a task when `config.on_turn_end`."""
    segment = record.observe_output(output)
    return segment if config.on_turn_end else None


async def run_task(
    reason: str,
    segment: Segment | None,
    *,
    record: ConversationRecord,
    transcript: Callable[[], list[dict]],
    backend: Backend,
    tools: ToolRegistry,
    config: WorkerConfig,
    push: Callable[[str], None],
    emit: Callable[..., None],
    supersede: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """One background task, the same code live and offline: wait for the user's words, `supersede` the
    older tasks (only now: a turn end without words leaves a running answer alone), send the whole
    conversation record (`transcript()`: the assistant's words as said), run the tools the backend calls,
    `push` the answer as `AnswerStream` cuts it, and report through `emit(status, **fields)`. A backend that
    fails or exceeds `config.timeout_s` ends the task as failed (the apology is pushed if nothing was);
    cancellation (a newer task) is reported and re-raised."""
    try:
        await asyncio.to_thread(record.wait, config.transcribe_timeout_s)
    except Exception as exc:  # a failed transcription leaves the record without those words
        emit("progress", error=f"transcription failed: {exc!r}")
    words = transcript()
    utterances = record.utterances(words)
    if segment is not None and not any(u.speaker == "user" and u.end >= segment.start for u in utterances):
        return  # the model perceived speech but Whisper heard no words: nothing to answer
    if supersede is not None:
        await supersede()
    messages = record.messages(config.system_prompt, words)
    emit("started", messages=messages)
    answer = AnswerStream(push, emit, config.opening_words)
    try:
        async with asyncio.timeout(config.timeout_s):
            await _answer(backend, tools, config, messages, answer, emit)
    except asyncio.CancelledError:
        emit("cancelled", text=answer.said())
        raise
    except Exception as exc:  # slow, failing, malformed: the conversation goes on without the answer
        error = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        if not answer.said():
            push(config.apology)
        emit("failed", error=error, text=answer.said())
        return
    emit("done", text=answer.said())


async def _answer(
    backend: Backend,
    tools: ToolRegistry,
    config: WorkerConfig,
    messages: list[dict],
    answer: AnswerStream,
    emit: Callable[..., None],
) -> None:
    for _round in range(config.max_tool_rounds + 1):
        calls = []
        schemas = tools.schemas() if _round < config.max_tool_rounds else []
        async for piece in backend.complete(messages, schemas):
            if isinstance(piece, ToolCall):
                calls.append(piece)
            else:
                answer.feed(piece)
        answer.finish()
        if not calls:
            return
        messages = messages + [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ],
            }
        ]
        for call in calls:
            emit("progress", tool=call.name)
            result = await tools.call(call.name, call.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})


class BackgroundWorker:
    def __init__(
        self,
        session: Session,
        backend: Backend,
        config: WorkerConfig | None = None,
        tools: ToolRegistry | None = None,
        on_event: Callable[[dict], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        record: ConversationRecord | None = None,
    ):
        self.session, self.backend = session, backend
        self.config = config or WorkerConfig()
        self.timers = Timers(on_expiry=self._timer_expired)
        self.tools = tools if tools is not None else default_registry(timers=self.timers)
        self.on_event = on_event
        self.own_loop = LoopThread() if loop is None else None
        self.loop = loop or self.own_loop.loop
        self.record = record or ConversationRecord(turn_s=session.turn_s)
        self.task: asyncio.Task | None = None  # the newest task
        self._running: dict[int, asyncio.Task] = {}
        self.events: list[dict] = []  # every event so far (evaluation and tests read them)
        self.first_text_at: dict[str, float] = {}  # task id -> when its first text reached the session
        self._count = 0
        session.input_tap = self.record.observe_input
        # Whisper's words are the model's heard-words memory too (model/copying.py): far more accurate than
        # its transcript head, and seconds late only for words it needs later ("whenever I say X, say Y")
        self.record.on_utterance = lambda utterance: session.push_heard(utterance.text)

    # ---- any thread ----
    def observe(self, output: MicroTurnOutput) -> None:
        """Feed every micro-turn's output (from the engine callback); a user turn end starts a task."""
        segment = turn_end_trigger(self.record, output, self.config)
        if segment is not None:
            self.loop.call_soon_threadsafe(self._start, "turn_end", segment)

    def request(self, reason: str = "request") -> None:
        """Start a task now (the model's delegate signal, a client request)."""
        self.loop.call_soon_threadsafe(self._start, reason, None)

    def close(self) -> None:
        """Cancel the running task and the timers; the session gets nothing more from this worker."""

        async def shutdown() -> None:
            self.timers.cancel_all()
            running = [t for t in self._running.values() if not t.done()]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

        self.session.input_tap = None
        self.record.on_utterance = None
        if self.own_loop is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5.0)
            self.own_loop.stop()
        else:  # a shared loop (the server's) goes on: clean up there, without blocking it
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(shutdown()))
        self.record.close()

    # ---- the loop ----
    def _emit(self, task_id: str, reason: str, status: str, **fields) -> None:
        fields.pop("messages", None)  # the context package: offline records keep it, events do not
        event = {"task_id": task_id, "reason": reason, "status": status, "time": time.monotonic(), **fields}
        self.events.append(event)
        if self.on_event is not None:
            self.on_event({k: v for k, v in event.items() if k != "time"})

    def _push(self, task_id: str, text: str) -> None:
        # on the events' clock: an answer's opening arrives word by word, before its first sentence's event
        self.first_text_at.setdefault(task_id, time.monotonic())
        self.session.push_background(text, task_id)

    def _start(self, reason: str, segment: Segment | None) -> None:
        self._count += 1
        number, task_id = self._count, f"bg{self._count}"

        async def supersede() -> None:  # the conversation moved on: older tasks are cancelled
            older = [t for n, t in self._running.items() if n < number and not t.done()]
            for task in older:
                task.cancel()
            await asyncio.gather(*older, return_exceptions=True)

        self.task = self.loop.create_task(
            run_task(
                reason,
                segment,
                record=self.record,
                transcript=lambda: list(self.session.transcript),
                backend=self.backend,
                tools=self.tools,
                config=self.config,
                push=lambda text: self._push(task_id, text),
                emit=lambda status, **fields: self._emit(task_id, reason, status, **fields),
                supersede=supersede,
            )
        )
        self._running[number] = self.task
        self.task.add_done_callback(lambda _task: self._running.pop(number, None))

    def _timer_expired(self, text: str) -> None:
        self.session.push_background(text)
        self._emit("timer", "timer", "done", text=text)
