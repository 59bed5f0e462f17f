"""The interaction model as a `DuplexSystem`: one session on its own engine, stepped by hand.

`simulate` and `eval fdbench` drive it through `stream_loop.run_stream`, the same loop as the harness
baseline. Background text is released to the session at the first micro-turn whose step could have seen
it (`model.queues.arrival_turn`, the rule the training data uses).
"""

from __future__ import annotations

import numpy as np

from microturn.audio import SAMPLE_RATE
from microturn.model.interaction import InteractionModel
from microturn.model.queues import arrival_turn
from microturn.model.tokenizer import TextTokenizer
from microturn.runtime.engine import Engine, EngineConfig
from microturn.runtime.session import MicroTurnOutput, Session
from microturn.runtime.system import BackgroundText, StepResult
from microturn.runtime.vocoder import Vocoder


class ModelSystem:
    def __init__(
        self,
        model: InteractionModel,
        tokenizer: TextTokenizer,
        vocoder: Vocoder,
        config: EngineConfig | None = None,
        seed: int = 0,
    ):
        self.engine = Engine(config or EngineConfig(), model, tokenizer, vocoder)
        self.seed = seed
        self.session: Session | None = None
        self.background: list[BackgroundText] = []
        self.last_output: MicroTurnOutput | None = None  # the full output of the last step (words with times)

    def reset(self, background: list[BackgroundText]) -> None:
        if self.session is not None:
            self.engine.close_session(self.session)
        self.session = self.engine.open_session(seed=self.seed)
        self.background = sorted(background, key=lambda b: b.time)

    def step(self, chunk: np.ndarray) -> StepResult:
        if self.session is None:
            raise RuntimeError("ModelSystem.step called before reset()")
        session = self.session
        while self.background and arrival_turn(self.background[0].time, self.engine.turn_s) <= session.turn:
            session.push_background(self.background.pop(0).text)
        session.push_audio(np.asarray(chunk, dtype=np.float32), SAMPLE_RATE)
        out = self.engine.step_once()[session]
        self.last_output = out
        return StepResult(audio=out.audio_16k, words=[w["text"] for w in out.words], floor=out.floor)
