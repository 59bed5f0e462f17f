"""The background model on the offline loop's simulated clock, honest about its latency.

The offline streaming loop (`runtime.stream_loop`, used by `simulate` and `eval fdbench`) steps a system
micro-turn by micro-turn, faster or slower than real time; the live `BackgroundWorker` runs on wall-clock
threads. `SimulatedBackground` joins the two without a second copy of the worker's logic:
- the trigger is the worker's own (`worker.turn_end_trigger`: a user turn end as the system itself
  perceived it, fed every micro-turn's output through the same `ConversationRecord`, whose Whisper
  transcribes the user's speech segments from the exact chunks the system heard);
- the task is the worker's own (`worker.run_task`: the same context package, backend call, tools,
  sentence splitting, timeout and apology), run to its end synchronously, at the moment the trigger
  fires, on an event loop of its own, while the simulated clock stands still;
- every sentence it delivers is stamped with the wall time it took to arrive (transcription wait
  included, as live) and enters the system's background input at trigger time + that time, so the system
  hears it exactly as late as it would live on this machine;
- a newer task supersedes a running one as live, once it has the user's words (trigger + its measured
  wait for Whisper): the older task's sentences stamped later are dropped (and its apology, if it would
  have failed later), and it is recorded as `cancelled`.

Where it differs from live: the call runs alone (live, it shares the CPU with the interaction model's
steps and any earlier task still running); the assistant transcript it is sent is the one at the
trigger (live, words said during the transcription wait would join); timers set by a tool never expire.

`tasks` records each task: trigger time, status, the wait for the user's words (`context_s`), the
backend's first piece (`first_piece_s`), each delivered sentence with its latency, the whole task's wall
time, the error of a failed one, and the context package sent (`messages`, the system prompt aside).

As live, Whisper's words also fill the model's heard-words memory (`take_heard`), each utterance as late
as its transcription took. `SimulatedHearing` is that part alone, with no backend: what `eval proactive
--heard whisper` runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import numpy as np

from microturn.background.backends import Backend, ToolCall
from microturn.background.conversation import ConversationRecord, Segment, Utterance
from microturn.background.tools import Timers, ToolRegistry, default_registry
from microturn.background.worker import WorkerConfig, run_task, turn_end_trigger
from microturn.model.queues import arrival_turn
from microturn.runtime.session import MicroTurnOutput
from microturn.runtime.system import BackgroundText

FINAL = ("done", "failed", "cancelled")


class _TimedBackend:
    """The backend, with the time each piece arrived (seconds since the task's start)."""

    def __init__(self, backend: Backend, clock: Callable[[], float], times: list[float]):
        self.backend, self.clock, self.times = backend, clock, times
        self.name = getattr(backend, "name", type(backend).__name__)

    async def complete(self, messages: list[dict], tools: list[dict]) -> AsyncIterator[str | ToolCall]:
        async for piece in self.backend.complete(messages, tools):
            self.times.append(self.clock())
            yield piece


class SimulatedHearing:
    """The background side's ears on the simulated clock, with no backend: the conversation record (its
    Whisper transcribes each user speech segment the model perceived, when the segment ends) and the
    heard-words feed (each utterance arrives as late as its transcription took, measured). One per system;
    `reset()` before each session. `take` (background text) is always empty here."""

    def __init__(self, transcribe: Callable[[np.ndarray], dict] | None = None, turn_s: float = 0.2):
        self.transcribe = transcribe
        self.turn_s = turn_s
        self.record: ConversationRecord | None = None
        self.reset()

    def warm_up(self) -> None:
        """Load Whisper now, so that no latency counts loading."""
        if self.transcribe is None:
            from microturn.eval.transcribe import whisper_model

            whisper_model()

    def reset(self) -> None:
        """A new session: a new conversation record, nothing pending, an empty log."""
        if self.record is not None:
            self.record.close()
        self.record = ConversationRecord(
            turn_s=self.turn_s, transcribe=self.transcribe, on_utterance=self._heard
        )
        self.pending: list[BackgroundText] = []
        self.heard: list[tuple[float, str]] = []  # (arrival on the simulated clock, text)
        self._heard_lock = threading.Lock()  # appended on the record's thread, taken on the system's
        self.tasks: list[dict] = []
        self._clock = (0.0, time.perf_counter())  # (simulated seconds, wall clock) of the last output seen

    def close(self) -> None:
        if self.record is not None:
            self.record.close()

    def _heard(self, utterance: Utterance) -> None:  # on the record's thread, when a transcription is done
        now_s, seen = self._clock
        with self._heard_lock:
            self.heard.append((now_s + time.perf_counter() - seen, utterance.text))

    # ---- fed by the system, on the simulated clock ----
    def observe_input(self, turn: int, samples: np.ndarray) -> None:
        """The 16 kHz chunk the system heard at micro-turn `turn` (the session's input tap)."""
        self.record.observe_input(turn, samples)

    def observe(self, output: MicroTurnOutput, now_s: float, transcript: list[dict]) -> None:
        """One micro-turn's output, seen at `now_s` (when its step finished on the live clock); a user
        segment's end is transcribed now, while the simulated clock stands still."""
        self._clock = (now_s, time.perf_counter())
        if self.record.observe_output(output) is not None:
            self.record.wait()

    def take(self, turn: int) -> list[BackgroundText]:
        """The text that has arrived by the step of micro-turn `turn` (`model.queues.arrival_turn`)."""
        due = [b for b in self.pending if arrival_turn(b.time, self.turn_s) <= turn]
        if due:
            self.pending = [b for b in self.pending if arrival_turn(b.time, self.turn_s) > turn]
        return sorted(due, key=lambda b: b.time)

    def take_heard(self, turn: int) -> list[str]:
        """The user's transcribed words that have arrived by the step of micro-turn `turn`."""
        with self._heard_lock:
            due = sorted(h for h in self.heard if arrival_turn(h[0], self.turn_s) <= turn)
            self.heard = [h for h in self.heard if arrival_turn(h[0], self.turn_s) > turn]
        return [text for _, text in due]


class SimulatedBackground(SimulatedHearing):
    """See the module docstring. One per system; `reset()` before each session."""

    def __init__(
        self,
        backend: Backend,
        config: WorkerConfig | None = None,
        tools: ToolRegistry | None = None,
        transcribe: Callable[[np.ndarray], dict] | None = None,
        turn_s: float = 0.2,
    ):
        self.backend = backend
        self.config = config or WorkerConfig()
        self.timers = Timers()
        self.tools = tools if tools is not None else default_registry(timers=self.timers)
        super().__init__(transcribe, turn_s)

    @property
    def name(self) -> str:
        return getattr(self.backend, "name", type(self.backend).__name__)

    def warm_up(self) -> None:
        """Load the backend's model and Whisper now, so that no task's latency counts loading."""
        load = getattr(self.backend, "load", None)
        if load is not None:
            load()
        super().warm_up()

    def reset(self) -> None:
        super().reset()
        self.current_task: str | None = None  # the latest task triggered (a system may wait for its answer)
        self._count = 0

    def close(self) -> None:
        super().close()
        self.timers.cancel_all()

    def observe(self, output: MicroTurnOutput, now_s: float, transcript: list[dict]) -> None:
        """One micro-turn's output, seen at `now_s` (when its step finished on the live clock), with the
        assistant's words so far; a user turn end runs a task now."""
        self._clock = (now_s, time.perf_counter())
        segment = turn_end_trigger(self.record, output, self.config)
        if segment is not None:
            self.run("turn_end", segment, now_s, transcript)

    def request(self, reason: str, now_s: float, transcript: list[dict]) -> dict:
        """A task at `now_s` for another reason (a delegate signal, typed text); returns its record."""
        return self.run(reason, None, now_s, transcript)

    # ---- a task, run now, stamped on the simulated clock ----
    def _supersede(self, now_s: float) -> None:
        """A task still running at `now_s` (live) is cancelled there: what it would have delivered later is
        dropped."""
        for task in self.tasks:
            if task["status"] in ("no_words", "cancelled") or task["trigger_s"] + task["wall_s"] <= now_s:
                continue
            self.pending = [b for b in self.pending if not (b.task == task["task_id"] and b.time > now_s)]
            for delivery in task["deliveries"]:
                if delivery["at_s"] > now_s:
                    delivery["dropped"] = True
            task["status"], task["cancelled_s"] = "cancelled", round(now_s, 3)

    def run(self, reason: str, segment: Segment | None, now_s: float, transcript: list[dict]) -> dict:
        self._count += 1
        task_id = self.current_task = f"bg{self._count}"
        entry: dict = {
            "task_id": task_id,
            "reason": reason,
            "trigger_s": round(now_s, 3),
            "status": "no_words",  # until the task starts: Whisper heard no words, nothing was sent
            "deliveries": [],
        }
        started = time.perf_counter()

        def elapsed() -> float:
            return time.perf_counter() - started

        def push(text: str) -> None:
            latency = elapsed()
            self.pending.append(BackgroundText(now_s + latency, text, task_id))
            entry["deliveries"].append(
                {"latency_s": round(latency, 3), "at_s": round(now_s + latency, 3), "text": text.strip()}
            )

        def emit(status: str, **fields) -> None:
            latency = round(elapsed(), 3)
            if status == "started":
                entry["status"], entry["context_s"] = "started", latency
                entry["messages"] = fields["messages"][1:]  # the context package, the system prompt aside
            elif status in FINAL:
                entry["status"], entry["end_s"] = status, latency
                entry["text"] = fields.get("text", "")
                if "error" in fields:
                    entry["error"] = fields["error"]
            elif "error" in fields:
                entry.setdefault("errors", []).append(fields["error"])
            elif "tool" in fields:
                entry.setdefault("tools", []).append({"tool": fields["tool"], "latency_s": latency})

        async def supersede() -> None:  # once this task has the user's words, as live
            self._supersede(now_s + elapsed())

        pieces: list[float] = []
        asyncio.run(  # a loop of its own per task, its streams and threads closed at the end
            run_task(
                reason,
                segment,
                record=self.record,
                transcript=lambda: list(transcript),
                backend=_TimedBackend(self.backend, elapsed, pieces),
                tools=self.tools,
                config=self.config,
                push=push,
                emit=emit,
                supersede=supersede,
            )
        )
        entry["wall_s"] = round(elapsed(), 3)
        if pieces:
            entry["first_piece_s"], entry["pieces"] = round(pieces[0], 3), len(pieces)
        self.timers.cancel_all()  # offline, a timer would never expire in simulated time
        self.tasks.append(entry)
        return entry


def background_stats(tasks: list[dict]) -> dict:
    """Flat figures over the task records of a run: tasks started, failed and cancelled, and the latency
    from the trigger to the first delivered text and to the end of the answer (median, p90), over
    the tasks that delivered something (the apology of a failed task counts as delivered)."""
    started = [t for t in tasks if t["status"] != "no_words"]
    first = [t["deliveries"][0]["latency_s"] for t in started if t["deliveries"]]
    answer = [t["end_s"] for t in started if "end_s" in t and t["status"] == "done"]

    def quantile(values: list[float], q: float) -> float | None:
        return round(float(np.quantile(values, q)), 3) if values else None

    return {
        "bg_triggers": len(tasks),
        "bg_tasks": len(started),
        "bg_failed": sum(t["status"] == "failed" for t in started),
        "bg_cancelled": sum(t["status"] == "cancelled" for t in started),
        "bg_first_text_s_p50": quantile(first, 0.5),
        "bg_first_text_s_p90": quantile(first, 0.9),
        "bg_answer_s_p50": quantile(answer, 0.5),
        "bg_answer_s_p90": quantile(answer, 0.9),
    }
