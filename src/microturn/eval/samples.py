"""Full-Duplex-Bench sample folders: finding them, telling their task, reading them with validation.

A sample folder holds `input.wav` (16 kHz mono) and exactly one task annotation file. Each annotation
file is a JSON list of `{"text": str, "timestamp": [start_s, end_s], ...}`. Our extensions, ignored by
the public tools: `background.json` (the oracle background text, a list of `{"time", "text"}`) and the
v1.5 task file `overlap.json` (see docs/evaluation.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from microturn.audio import SAMPLE_RATE, read_wav
from microturn.runtime.system import BackgroundText

TASK_FILES = {
    "pause": "pause.json",
    "turn_taking": "turn_taking.json",
    "interruption": "interrupt.json",
    "backchannel": "backchannel.json",
    "overlap": "overlap.json",
}
OVERLAP_SCENARIOS = ("interrupt", "backchannel", "side_talk", "background_speech")
# tasks whose annotation may be an empty list (a story with no reference backchannel)
_MAY_BE_EMPTY = {"backchannel"}


@dataclass
class Annotation:
    text: str
    start: float
    end: float
    extra: dict = field(default_factory=dict)  # every other key of the entry (context, scenario, ...)


@dataclass
class Sample:
    path: Path
    task: str
    input: np.ndarray  # 16 kHz mono float32
    annotations: list[Annotation]
    background: list[BackgroundText]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def duration_s(self) -> float:
        return len(self.input) / SAMPLE_RATE


def detect_task(folder: Path) -> str:
    """The task of a sample folder, from the one annotation file it holds."""
    found = [task for task, name in TASK_FILES.items() if (folder / name).is_file()]
    if not found:
        names = ", ".join(TASK_FILES.values())
        raise ValueError(f"{folder}: no annotation file (expected one of {names})")
    if len(found) > 1:
        raise ValueError(f"{folder}: several annotation files ({', '.join(TASK_FILES[t] for t in found)})")
    return found[0]


def find_sample_dirs(root: str | Path) -> list[Path]:
    """Every folder under `root` (root included) that holds input.wav or an annotation file, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of Full-Duplex-Bench samples")
    markers = ("input.wav", *TASK_FILES.values())
    # "*.tmp" folders are samples an interrupted export left half-written
    dirs = {p.parent for name in markers for p in root.rglob(name) if not p.parent.name.endswith(".tmp")}
    if not dirs:
        raise ValueError(f"{root}: holds no sample folder (no input.wav or annotation file)")
    return sorted(dirs)


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def read_annotations(path: Path, task: str) -> list[Annotation]:
    data = _load_json(path)
    if not isinstance(data, list) or (not data and task not in _MAY_BE_EMPTY):
        raise ValueError(f"{path}: expected a non-empty JSON list of {{'text', 'timestamp': [start, end]}}")
    out = []
    for i, entry in enumerate(data):
        stamp = entry.get("timestamp") if isinstance(entry, dict) else None
        if (
            not isinstance(stamp, list)
            or len(stamp) != 2
            or not all(isinstance(t, int | float) for t in stamp)
            or stamp[1] < stamp[0]
        ):
            raise ValueError(f"{path}: entry {i} has no valid 'timestamp': [start, end]")
        extra = {k: v for k, v in entry.items() if k not in ("text", "timestamp")}
        if task == "overlap" and (
            extra.get("scenario") not in OVERLAP_SCENARIOS or not isinstance(extra.get("reply"), str)
        ):
            raise ValueError(
                f"{path}: entry {i} needs 'reply' (text) and 'scenario' ({', '.join(OVERLAP_SCENARIOS)})"
            )
        out.append(Annotation(str(entry.get("text", "")), float(stamp[0]), float(stamp[1]), extra))
    return out


def read_background(path: Path) -> list[BackgroundText]:
    """Our `background.json` extension; absent means no background text."""
    if not path.exists():
        return []
    data = _load_json(path)
    if not isinstance(data, list) or not all(
        isinstance(b, dict) and isinstance(b.get("time"), int | float) and isinstance(b.get("text"), str)
        for b in data
    ):
        raise ValueError(f"{path}: expected a JSON list of {{'time': seconds, 'text': str}}")
    return sorted((BackgroundText(float(b["time"]), b["text"]) for b in data), key=lambda b: b.time)


def check_sample(folder: str | Path, task: str | None = None) -> str:
    """Check one sample folder without reading its audio; returns its task. `task` (if given) is the
    task the caller expects."""
    folder = Path(folder)
    found = detect_task(folder)
    if task is not None and found != task:
        raise ValueError(f"{folder}: a {found} sample ({TASK_FILES[found]}), expected a {task} sample")
    if not (folder / "input.wav").is_file():
        raise ValueError(f"{folder}: input.wav is missing")
    read_annotations(folder / TASK_FILES[found], found)
    read_background(folder / "background.json")
    return found


def read_sample(folder: str | Path, task: str | None = None) -> Sample:
    """Read and check one sample folder."""
    folder = Path(folder)
    found = check_sample(folder, task)
    samples, _rate = read_wav(folder / "input.wav")
    annotations = read_annotations(folder / TASK_FILES[found], found)
    return Sample(folder, found, samples, annotations, read_background(folder / "background.json"))
