"""`data stats DIR`: size, phenomena and timing percentiles of a corpus (read from the timelines only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from microturn.data.corpus import TIMELINE, load_manifest


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p10": None, "p50": None, "p90": None}
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {
        "n": len(values),
        "p10": round(float(p10), 3),
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
    }


def corpus_stats(corpus_dir: str | Path) -> dict[str, Any]:
    """Hours, conversations, events per type, and p10/p50/p90 of gaps (floor-transfer offsets at turn
    ends: negative = overlap), pauses inside turns and overlapping speech."""
    corpus_dir = Path(corpus_dir)
    entries = load_manifest(corpus_dir)
    counts: dict[str, int] = {}
    gaps, pauses, overlaps = [], [], []
    seconds = 0.0
    for entry in entries:
        path = corpus_dir / entry["path"] / TIMELINE
        try:
            timeline = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read timeline ({exc})") from exc
        seconds += float(timeline.get("duration_s", entry["duration_s"]))
        for event in timeline.get("events", []):
            kind = event["type"]
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "turn_end" and "gap" in event:
                gaps.append(event["gap"])
            elif kind == "pause":
                pauses.append(event["end"] - event["start"])
            elif kind == "overlap":
                overlaps.append(event["end"] - event["start"])
    return {
        "corpus": str(corpus_dir),
        "hours": round(seconds / 3600, 3),
        "conversations": len(entries),
        "phenomena": dict(sorted(counts.items())),
        "gap_s": _percentiles(gaps),
        "pause_s": _percentiles(pauses),
        "overlap_s": _percentiles(overlaps),
    }
