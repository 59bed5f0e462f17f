"""The evaluation report: report.md (one row per system and background mode), metrics.json, plots."""

from __future__ import annotations

import json
from pathlib import Path

from microturn.audio import read_wav
from microturn.eval.activity import speech_segments
from microturn.eval.fdbench import words_from_transcript
from microturn.eval.plots import latency_histogram, timeline_plot
from microturn.eval.runner import BACKGROUND_MODES, BenchRun
from microturn.eval.samples import TASK_FILES, read_annotations

# (key, column title); the arrow says which way is better
COLUMNS = [
    ("pause_tor", "pause TOR ↓"),
    ("turn_taking_tor", "turn-taking TOR ↑"),
    ("turn_taking_latency_s", "turn-taking latency s ↓"),
    ("interruption_tor", "interruption TOR ↑"),
    ("interruption_latency_s", "interruption latency s ↓"),
    ("interruption_stop_s", "stop latency s ↓"),
    ("backchannel_tor", "backchannel TOR ↓"),
    ("backchannel_freq", "backchannel freq /s ↑"),
    ("backchannel_jsd", "backchannel JSD ↓"),
    ("v15_average", "v1.5 average ↑"),
    ("speech_wer", "speech WER ↓"),
]
V15_COLUMNS = [
    (f"v15_{s}", f"v1.5 {s}") for s in ("interrupt", "backchannel", "side_talk", "background_speech")
]


def run_label(run: BenchRun, runs: list[BenchRun]) -> str:
    """The system name, with the background mode when one system appears in several modes."""
    same = [r for r in runs if r.system == run.system]
    return run.system if len(same) == 1 else f"{run.system}:{run.background}"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def badness(record: dict) -> float:
    """How badly a sample went, to pick the timelines worth looking at (larger is worse)."""
    task = record["task"]
    if task == "pause":
        return float(record["to"])
    if task == "turn_taking":
        return 100.0 if not record["to"] else record["latency_s"]
    if task == "interruption":
        return (0.0 if record["stop_s"] is None else record["stop_s"]) + (0.0 if record["to"] else 100.0)
    if task == "backchannel":
        return record["to"] * 10.0 + record["jsd"]
    return 0.0 if record["expected"] else 1.0


def sample_timeline(record: dict, path: Path, title: str) -> None:
    """Timeline of one scored sample from its files: input speech (silero) vs the system's words."""
    input_dir, output_dir = Path(record["input"]), Path(record["output"])
    user, _ = read_wav(input_dir / "input.wav")
    output, _ = read_wav(output_dir / "output.wav")
    transcript = json.loads((output_dir / "output.json").read_text())
    marks = [
        (record["task"], a.start, a.end)
        for a in read_annotations(input_dir / TASK_FILES[record["task"]], record["task"])
    ]
    timeline_plot(
        path,
        [(s.start, s.end) for s in speech_segments(user)],
        [(w.text, w.start, w.end) for w in words_from_transcript(transcript)],
        system_segments=[(s.start, s.end) for s in speech_segments(output)],
        marks=marks,
        duration_s=len(user) / 16_000,
        title=title,
    )


BACKGROUND_COLUMNS = [
    ("bg_tasks", "tasks"),
    ("bg_failed", "failed"),
    ("bg_cancelled", "superseded"),
    ("bg_first_text_s_p50", "first text s p50"),
    ("bg_first_text_s_p90", "first text s p90"),
    ("bg_answer_s_p50", "whole answer s p50"),
    ("bg_answer_s_p90", "whole answer s p90"),
]


def background_table(labels: list[str], runs: list[BenchRun]) -> list[str]:
    """The real background model's tasks and latencies (from a trigger to its first delivered text and to
    the end of its answer, measured), for the runs that had one."""
    rows = [(label, run) for label, run in zip(labels, runs, strict=True) if "bg_tasks" in run.metrics]
    if not rows:
        return []
    lines = [
        "",
        "Background model: tasks started at the system's turn ends (`bg_triggers` minus those where Whisper "
        "heard no words), and the measured latency from the trigger to the first delivered text and to the "
        "whole answer entering the system's background input.",
        "",
        "| system | background | " + " | ".join(t for _, t in BACKGROUND_COLUMNS) + " |",
        "|---|---|" + "---|" * len(BACKGROUND_COLUMNS),
    ]
    for label, run in rows:
        cells = [_cell(run.metrics.get(k)) for k, _ in BACKGROUND_COLUMNS]
        lines.append(f"| {label} | {run.background} | " + " | ".join(cells) + " |")
    return lines


def write_report(out_dir: str | Path, runs: list[BenchRun], worst_per_task: int = 1) -> Path:
    """Write report.md, metrics.json, latency_hist.png and timelines of the worst samples into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [run_label(r, runs) for r in runs]
    metrics = {
        label: {**r.metrics, "background": r.background, **({"echo": r.echo.as_dict()} if r.echo else {})}
        for label, r in zip(labels, runs, strict=True)
    }
    flat = next(iter(metrics.values())) if len(runs) == 1 else metrics
    (out_dir / "metrics.json").write_text(json.dumps(flat, indent=1))

    latencies = {
        label: {
            "turn-taking": [
                x["latency_s"] for x in r.records if x["task"] == "turn_taking" and x["latency_s"] is not None
            ],
            "interruption": [
                x["latency_s"]
                for x in r.records
                if x["task"] == "interruption" and x["latency_s"] is not None
            ],
            "stop": [
                x["stop_s"] for x in r.records if x["task"] == "interruption" and x["stop_s"] is not None
            ],
        }
        for label, r in zip(labels, runs, strict=True)
    }
    latency_histogram(latencies, out_dir / "latency_hist.png")

    timelines = []
    for label, run in zip(labels, runs, strict=True):
        for task in sorted({x["task"] for x in run.records}):
            worst = sorted((x for x in run.records if x["task"] == task), key=badness, reverse=True)
            for record in worst[:worst_per_task]:
                name = f"timeline_{label.replace(':', '_')}_{record['sample'].replace('/', '_')}.png"
                sample_timeline(
                    record, out_dir / name, f"{label} ({run.background}) {task}: {record['sample']}"
                )
                timelines.append(name)

    columns = COLUMNS + [c for c in V15_COLUMNS if any(c[0] in r.metrics for r in runs)]
    counts = sorted({k for r in runs for k in r.metrics if k.startswith("n_")})
    # the input condition, shown only when some run was not clean
    conditions = [r.echo.describe() if r.echo else "clean" for r in runs]
    show_input = any(r.echo for r in runs)
    lines = [
        "# Full-Duplex-Bench evaluation",
        "",
        "Metrics as defined in docs/evaluation.md. Background mode: `oracle` feeds the held-out reply text "
        "at the corpus's delay (isolates the interaction timing); `embedded` (SmolLM2) or a URL (an "
        "OpenAI-compatible endpoint) run the real background model at each of the system's own turn ends, "
        "its answer arriving as late as the measured call took (modes: "
        + ", ".join(f"`{m}`" for m in BACKGROUND_MODES)
        + ").",
        "",
        "| system | background | "
        + ("input | " if show_input else "")
        + " | ".join(t for _, t in columns)
        + " | "
        + " | ".join(counts)
        + " |",
        "|---|---|" + "---|" * (len(columns) + len(counts) + int(show_input)),
    ]
    for label, run, condition in zip(labels, runs, conditions, strict=True):
        cells = [_cell(run.metrics.get(k)) for k, _ in columns] + [_cell(run.metrics.get(k)) for k in counts]
        head = f"| {label} | {run.background} | " + (f"{condition} | " if show_input else "")
        lines.append(head + " | ".join(cells) + " |")
    wer_tasks = sorted(
        {k[len("speech_wer_") :] for r in runs for k in r.metrics if k.startswith("speech_wer_")}
    )
    if wer_tasks:
        lines += [
            "",
            "Speech WER: Whisper tiny.en on the output against the words the system meant to say (its "
            "emitted text), pooled over the samples of each task; `speech_words` = words said.",
            "",
            "| system | " + " | ".join(f"speech WER {t}" for t in wer_tasks) + " | speech_words |",
            "|---|" + "---|" * (len(wer_tasks) + 1),
        ]
        for label, run in zip(labels, runs, strict=True):
            cells = [_cell(run.metrics.get(f"speech_wer_{t}")) for t in wer_tasks]
            lines.append(
                f"| {label} | " + " | ".join(cells) + f" | {_cell(run.metrics.get('speech_words'))} |"
            )
    lines += background_table(labels, runs)
    lines += ["", "![latencies](latency_hist.png)", "", "## Worst samples", ""]
    lines += [f"![{name}]({name})" for name in timelines]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return out_dir / "report.md"
