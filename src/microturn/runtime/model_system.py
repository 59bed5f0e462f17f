"""The interaction model as a `DuplexSystem`: one session on its own engine, stepped by hand.

`simulate` and `eval fdbench` drive it through `stream_loop.run_stream`, the same loop as the harness
baseline. Background text is released to the session at the first micro-turn whose step could have seen
it (`model.queues.arrival_turn`, the rule the training data uses). With a `background_model` (an
`OfflineBackground`, e.g. `background.offline.SimulatedBackground`) the text comes instead from a real
background model on the loop's simulated clock: it hears the session's input, sees each step's output in
`after_step` (not counted as the step's compute), and its answers are released the same way, as are
its Whisper transcripts into the session's heard-words memory.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from microturn.audio import SAMPLE_RATE
from microturn.model.interaction import InteractionModel
from microturn.model.queues import arrival_turn
from microturn.model.tokenizer import TextTokenizer
from microturn.runtime.checkpoint import load_runtime
from microturn.runtime.engine import Engine, EngineConfig
from microturn.runtime.session import MicroTurnOutput, Session
from microturn.runtime.system import BackgroundText, OfflineBackground, StepResult
from microturn.runtime.vocoder import Vocoder


class ModelSystem:
    def __init__(
        self,
        model: InteractionModel,
        tokenizer: TextTokenizer,
        vocoder: Vocoder,
        config: EngineConfig | None = None,
        seed: int = 0,
        background_model: OfflineBackground | None = None,
    ):
        self.engine = Engine(config or EngineConfig(), model, tokenizer, vocoder)
        self.seed = seed
        self.session: Session | None = None
        self.background: list[BackgroundText] = []
        self.last_output: MicroTurnOutput | None = None  # the full output of the last step (words with times)
        self.background_model = background_model

    @property
    def background_log(self) -> list[dict] | None:
        """The background model's task records of the current session (None without one)."""
        return None if self.background_model is None else self.background_model.tasks

    def reset(self, background: list[BackgroundText]) -> None:
        if self.session is not None:
            self.engine.close_session(self.session)
        self.session = self.engine.open_session(seed=self.seed)
        self.background = sorted(background, key=lambda b: b.time)
        self.last_output = None
        if self.background_model is not None:
            self.background_model.reset()
            self.session.input_tap = self.background_model.observe_input

    def step(self, chunk: np.ndarray) -> StepResult:
        if self.session is None:
            raise RuntimeError("ModelSystem.step called before reset()")
        session = self.session
        while self.background and arrival_turn(self.background[0].time, self.engine.turn_s) <= session.turn:
            session.push_background(self.background.pop(0).text)
        if self.background_model is not None:
            for item in self.background_model.take(session.turn):
                session.push_background(item.text, item.task)
            for text in self.background_model.take_heard(session.turn):  # as live: Whisper's words
                session.push_heard(text)
        session.push_audio(np.asarray(chunk, dtype=np.float32), SAMPLE_RATE)
        out = self.engine.step_once()[session]
        self.last_output = out
        return StepResult(audio=out.audio_16k, words=[w["text"] for w in out.words], floor=out.floor)

    def after_step(self, index: int, done_s: float, play_s: float) -> None:
        """The loop's hook after step `index`: the background model sees its output at `done_s`."""
        if self.background_model is not None and self.last_output is not None:
            self.background_model.observe(self.last_output, done_s, list(self.session.transcript))


def model_system_factory(
    checkpoint: str | None,
    seed: int = 0,
    background_model: OfflineBackground | None = None,
    voice: str = "words",
) -> Callable[[], ModelSystem]:
    """Loads the checkpoint once; each call gives a fresh `ModelSystem` on it (the evaluations' factory).
    One torch thread: the real-time budget is one core per engine, as live."""
    torch.set_num_threads(1)
    models = load_runtime(checkpoint)
    return lambda: ModelSystem(
        models.model,
        models.tokenizer,
        models.vocoder,
        EngineConfig(voice=voice),
        seed=seed,
        background_model=background_model,
    )
