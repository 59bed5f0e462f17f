"""The cascade harness reacting to a scripted input, fed 200 ms at a time."""

import io
import subprocess
import time

import numpy as np
import soundfile as sf

from microturn.audio import SAMPLE_RATE, resample
from microturn.eval.activity import frame_rms
from microturn.eval.harness import CascadeHarness
from microturn.runtime.system import BackgroundText

CHUNK = 3200
REPLY = "It is sunny and warm in Paris today. You might want sunglasses. Enjoy the afternoon by the river."


def espeak(text: str) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "-v", "en-us", "--stdout", text], capture_output=True, check=True
    ).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return resample(audio, rate, SAMPLE_RATE)


def speech_end_s(audio: np.ndarray, offset_s: float) -> float:
    """End of the last 20 ms frame above -40 dBFS (espeak pads its output with silence)."""
    loud = np.flatnonzero(frame_rms(audio) >= 0.01)
    return offset_s + (loud[-1] + 1) * 0.02


def run(harness, inp):
    results, compute = [], []
    for t in range(len(inp) // CHUNK):
        start = time.perf_counter()
        results.append(harness.step(inp[t * CHUNK : (t + 1) * CHUNK]))
        compute.append(time.perf_counter() - start)
    return results, compute


def test_answers_after_end_of_turn_then_yields_to_barge_in():
    question = espeak("What is the weather like in Paris today?")
    lead = 0.6
    q_end = speech_end_s(question, lead)
    burst = espeak("wait, stop please")
    burst_at = q_end + 3.0
    inp = np.zeros(int(12.0 * SAMPLE_RATE), np.float32)
    inp[int(lead * SAMPLE_RATE) :][: len(question)] += question
    inp[int(burst_at * SAMPLE_RATE) :][: len(burst)] += burst

    harness = CascadeHarness()
    harness.reset([BackgroundText(1.0, REPLY)])
    results, compute = run(harness, inp)
    speaking = [t for t, r in enumerate(results) if r.floor == "speaking"]
    # step t's output plays from (t + 1) * 0.2 s: the reply starts 500 ms of silence after the question,
    # rounded up to the micro-turn (plus silero's trailing hangover of a few windows)
    reply_at = (speaking[0] + 1) * 0.2
    assert q_end + 0.5 <= reply_at <= q_end + 0.5 + 0.2 + 0.15, (q_end, reply_at)
    assert np.abs(results[speaking[0]].audio).max() > 0.05  # real speech comes out
    assert compute[speaking[0]] > 0.1  # whisper and piper really ran inside that step
    assert "paris" in harness.transcripts[0][1].lower()
    assert results[speaking[0]].words[0] == "It"

    # barge-in: the chunk in which the burst becomes audible, or the next, yields; silence afterwards
    burst_chunk = int(burst_at / 0.2)
    yielded = next(t for t, r in enumerate(results) if r.floor == "yielding")
    assert burst_chunk <= yielded <= burst_chunk + 1
    assert all(not r.audio.any() for r in results[yielded:])
    assert all(speaking[0] <= t < yielded for t in speaking)
    assert [e for _, e in harness.events] == ["end_of_turn", "reply", "barge_in", "end_of_turn"]


def test_waits_for_background_text():
    question = espeak("Tell me a story.")
    inp = np.zeros(int(6.0 * SAMPLE_RATE), np.float32)
    inp[int(0.4 * SAMPLE_RATE) :][: len(question)] += question
    harness = CascadeHarness()
    harness.reset([BackgroundText(4.0, "Once upon a time there was a fox.")])
    results, _ = run(harness, inp)
    first = next(t for t, r in enumerate(results) if r.floor == "speaking")
    assert (first + 1) * 0.2 >= 4.0  # the end of turn came earlier, but the reply text only at 4 s
    assert harness.events[0][1] == "end_of_turn" and harness.events[0][0] < 3.0
