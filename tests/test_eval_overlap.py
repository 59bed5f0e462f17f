"""v1.5 overlap scenarios: generated from a conversation, run through the harness, classified."""

import json

import numpy as np
import pytest

from microturn.data.corpus import Conversation, Utterance, write_conversation, write_manifest
from microturn.data.tts import TtsCache
from microturn.eval.activity import active_at
from microturn.eval.harness import CascadeHarness
from microturn.eval.overlap import export_overlap, plan_scenarios, write_scenario_sample
from microturn.eval.runner import run_fdbench
from microturn.eval.samples import read_sample

CHUNK = 3200


def lockstep(system, samples, background):
    """The loop without compute accounting (step t's output plays from (t + 1) * 0.2 s), so that the
    behaviour tested here does not depend on how loaded the machine is."""
    system.reset(background)
    out = np.zeros(len(samples) + CHUNK, np.float32)
    for t in range(len(samples) // CHUNK):
        out[(t + 1) * CHUNK : (t + 2) * CHUNK] = system.step(samples[t * CHUNK : (t + 1) * CHUNK]).audio
    return out[: len(samples)]


USER_VOICE = "espeak:en-us+m3:p=45:s=170"


def conversation():
    turns = [
        ("user", "hi there. what did you do at the weekend?"),
        (
            "assistant",
            "i went hiking in the mountains with my brother, and we camped by a lake for two nights.",
        ),
        ("assistant", "the weather was perfect and we saw a family of deer near the tent every morning."),
        ("user", "that sounds lovely."),
        ("assistant", "it was. next time i want to bring a better camera."),
    ]
    utterances = [
        Utterance(s, t, 3.0 * i, 3.0 * i + 2.5, "turn", USER_VOICE if s == "user" else "piper:joe:ls=1.00")
        for i, (s, t) in enumerate(turns)
    ]
    silent = np.zeros(16000, np.float32)
    return Conversation("c1", "test", "test", 15.0, [], utterances, [], [], silent, silent)


@pytest.fixture(scope="module")
def scenario_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("overlap")
    rng = np.random.default_rng(1)
    plans = plan_scenarios(conversation(), rng)
    assert [p.scenario for p in plans] == ["interrupt", "backchannel", "side_talk", "background_speech"]
    tts = TtsCache(root / "tts")
    for plan in plans:  # the harness test runs two of them (time): those go under run/
        group = "run" if plan.scenario in ("interrupt", "backchannel") else "other"
        write_scenario_sample(root / group / plan.scenario, plan, tts, rng)
    return root


def test_generated_samples(scenario_dir):
    for scenario in ("interrupt", "backchannel", "side_talk", "background_speech"):
        group = "run" if scenario in ("interrupt", "backchannel") else "other"
        sample = read_sample(scenario_dir / group / scenario, task="overlap")
        overlap = sample.annotations[0]
        assert overlap.extra["scenario"] == scenario
        assert overlap.extra["reply"].startswith("i went hiking")
        reply_time = sample.background[0].time
        assert (
            reply_time + 3.0 <= overlap.start <= reply_time + 5.0
        )  # 2-4 s into a reply ~1 s after the question
        assert active_at(sample.input, overlap.start, overlap.end)
        assert not active_at(sample.input, overlap.end + 0.05, sample.duration_s)
        # only the interruption brings new content to answer with
        assert len(sample.background) == (2 if scenario == "interrupt" else 1)


def test_harness_behaviour(scenario_dir):
    run = run_fdbench(
        scenario_dir / "run", CascadeHarness, lockstep, scenario_dir / "out", system_name="harness"
    )
    behaviour = {r["scenario"]: r["behaviour"] for r in run.records}
    # VAD barge-in: stops for every overlap heard as speech; answers only where there is something to say
    assert behaviour["interrupt"] == "stop_and_respond"
    assert behaviour["backchannel"] == "stop"
    assert run.metrics["v15_interrupt"] == 100.0 and run.metrics["v15_backchannel"] == 0.0
    assert run.metrics["n_overlap"] == 2
    assert json.loads((scenario_dir / "out" / "harness" / "interrupt" / "output.json").read_text())["chunks"]


def test_export_beside_the_v1_tasks(tmp_path):
    """The README's order: v1 task folders first, then the overlap scenarios into the same set; a second
    export into it is refused and changes nothing."""
    corpus = tmp_path / "corpus"
    conv = conversation()
    conv.user = conv.assistant = np.zeros(int(conv.duration_s * 16000), np.float32)  # as long as its turns
    write_conversation(corpus / conv.id, conv)
    write_manifest(corpus, [{"id": conv.id, "split": "test", "path": conv.id, "duration_s": conv.duration_s}])
    fdbench = tmp_path / "fdbench"
    (fdbench / "pause" / "0001").mkdir(parents=True)
    tts = tmp_path / "tts"
    assert export_overlap(corpus, fdbench, 1, tts_cache=tts) == 4
    assert sorted(p.name for p in fdbench.iterdir()) == [
        "overlap_backchannel",
        "overlap_background_speech",
        "overlap_interrupt",
        "overlap_side_talk",
        "pause",
    ]
    before = sorted(str(p) for p in fdbench.rglob("*"))
    with pytest.raises(ValueError, match="already has overlap samples"):
        export_overlap(corpus, fdbench, 1, tts_cache=tts)
    assert sorted(str(p) for p in fdbench.rglob("*")) == before
