"""Sample folders (validation, errors naming the folder) and a whole benchmark run with the harness."""

import json

import numpy as np
import pytest
from test_eval_harness import espeak, speech_end_s

from microturn.audio import SAMPLE_RATE, write_wav
from microturn.eval.harness import CascadeHarness
from microturn.eval.report import write_report
from microturn.eval.runner import run_fdbench
from microturn.eval.samples import find_sample_dirs, read_sample
from microturn.eval.transcribe import validate_transcript
from microturn.runtime.stream_loop import stream_output


def make_sample(folder, annotation_name, entries, audio=None, background=None):
    folder.mkdir(parents=True)
    write_wav(folder / "input.wav", np.zeros(SAMPLE_RATE, np.float32) if audio is None else audio)
    (folder / annotation_name).write_text(json.dumps(entries))
    if background is not None:
        (folder / "background.json").write_text(json.dumps(background))
    return folder


PAUSE = [{"text": "", "timestamp": [1.0, 1.6]}]


def test_folder_errors_name_the_folder(tmp_path):
    good = make_sample(tmp_path / "a", "pause.json", PAUSE)
    assert read_sample(good).task == "pause" and read_sample(good).background == []
    with pytest.raises(ValueError, match=r"a: a pause sample \(pause.json\), expected a turn_taking sample"):
        read_sample(good, task="turn_taking")
    (good / "input.wav").unlink()
    with pytest.raises(ValueError, match=r"/a: input.wav is missing"):
        read_sample(good)
    bare = tmp_path / "b"
    bare.mkdir()
    write_wav(bare / "input.wav", np.zeros(SAMPLE_RATE, np.float32))
    with pytest.raises(ValueError, match=r"/b: no annotation file"):
        read_sample(bare)
    broken = make_sample(tmp_path / "c", "interrupt.json", [{"text": "x", "timestamp": [3.0]}])
    with pytest.raises(ValueError, match=r"/c/interrupt.json: entry 0 has no valid 'timestamp'"):
        read_sample(broken)
    make_sample(tmp_path / "d", "overlap.json", [])
    (tmp_path / "d" / "overlap.json").write_text("[{]")
    with pytest.raises(ValueError, match=r"/d/overlap.json: not valid JSON"):
        read_sample(tmp_path / "d")
    assert [p.name for p in find_sample_dirs(tmp_path)] == ["a", "b", "c", "d"]
    # a run checks every folder before running any system
    with pytest.raises(ValueError, match=r"/a: input.wav is missing"):
        run_fdbench(tmp_path, CascadeHarness, stream_output, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_transcript_schema_errors():
    validate_transcript({"text": "hi", "chunks": [{"text": "hi", "timestamp": [0.1, 0.3]}]}, "x.json")
    with pytest.raises(ValueError, match="x.json: chunk 0"):
        validate_transcript({"text": "hi", "chunks": [{"text": "hi", "timestamp": [0.3, 0.1]}]}, "x.json")
    with pytest.raises(ValueError, match="x.json: expected"):
        validate_transcript({"chunks": []}, "x.json")


def test_turn_taking_run_with_the_harness_and_report(tmp_path):
    question = espeak("Can you recommend a good book about the sea?")
    # 12 s: room for the reply to play even when a loaded machine's compute delays it by seconds
    audio = np.zeros(int(12.0 * SAMPLE_RATE), np.float32)
    audio[int(0.5 * SAMPLE_RATE) :][: len(question)] += question
    user_end = speech_end_s(question, 0.5)
    data = tmp_path / "data" / "turn_taking"
    make_sample(
        data / "s1",
        "turn_taking.json",
        [{"text": "", "timestamp": [round(user_end, 3), round(user_end + 0.4, 3)]}],
        audio,
        [{"time": round(user_end, 3), "text": "Moby Dick is a classic. It is long but worth every page."}],
    )
    run = run_fdbench(
        tmp_path / "data", CascadeHarness, stream_output, tmp_path / "out", system_name="harness"
    )
    assert run.metrics["n_turn_taking"] == 1 and run.metrics["turn_taking_tor"] == 1.0
    # 500 ms end-of-turn silence, then the compute of the end-of-turn step (whisper + the first piper
    # sentence, about 1 s on an idle machine, more on a loaded one) delays the playout
    assert 0.5 <= run.metrics["turn_taking_latency_s"] <= 8.0
    sample_out = tmp_path / "out" / "harness" / "turn_taking" / "s1"
    transcript = validate_transcript(json.loads((sample_out / "output.json").read_text()), "output.json")
    assert "moby" in transcript["text"].lower()
    assert (sample_out / "output.wav").exists() and not (data / "s1" / "output.wav").exists()

    report = write_report(tmp_path / "report", [run])
    text = report.read_text()
    assert "| harness | oracle |" in text
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["turn_taking_tor"] == 1.0 and metrics["background"] == "oracle"
    assert (tmp_path / "report" / "latency_hist.png").stat().st_size > 1000
    assert (tmp_path / "report" / "timeline_harness_turn_taking_s1.png").exists()

    # a real background mode needs the system to carry a background model; an unknown mode is refused
    with pytest.raises(ValueError, match="background mode 'embedded' needs a background_model"):
        run_fdbench(
            tmp_path / "data", CascadeHarness, stream_output, tmp_path / "out2", background_mode="embedded"
        )
    with pytest.raises(ValueError, match="background mode 'psychic': expected oracle"):
        run_fdbench(
            tmp_path / "data", CascadeHarness, stream_output, tmp_path / "out3", background_mode="psychic"
        )
