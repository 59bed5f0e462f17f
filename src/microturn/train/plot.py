"""Loss curves of a training run (RUN/metrics.jsonl): validation loss per stream vs step, one panel each."""

from __future__ import annotations

import json
from pathlib import Path

from .loop import METRICS_FILE, STREAMS


def plot_run(run: str | Path, out: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = Path(run) / METRICS_FILE
    if not metrics.exists():
        raise FileNotFoundError(f"{metrics}: file not found (is {run} a training run?)")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, len(STREAMS), figsize=(4 * len(STREAMS), 3.2))
    for ax, stream in zip(axes, STREAMS, strict=True):
        for split, style in (("train", dict(alpha=0.35, lw=1)), ("valid", dict(marker="o", ms=3, lw=1.5))):
            points = [(r["step"], r[stream]) for r in records if r["split"] == split and stream in r]
            if points:
                ax.plot(*zip(*points, strict=True), label=split, **style)
        ax.set_title(stream)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    axes[0].legend()
    fig.suptitle(title or f"{run}: loss per stream")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
