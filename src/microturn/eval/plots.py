"""Plots for evaluation and simulation: latency histograms and who-speaks-when timelines (matplotlib Agg).

`timeline_plot` takes plain spans and words so that any part (the runtime's `simulate`, the benchmark
report) can draw a session with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

Span = tuple[float, float]  # (start_s, end_s)
TimedWord = tuple[str, float, float]  # (text, start_s, end_s)
FLOOR_COLOURS = {
    "listening": "#dddddd",
    "speaking": "#4c72b0",
    "backchannel": "#55a868",
    "yielding": "#c44e52",
}


def latency_histogram(
    latencies: dict[str, dict[str, list[float]]], path: str | Path, bin_s: float = 0.1
) -> None:
    """One panel per latency kind (e.g. "turn-taking", "interruption"), one colour per system.
    latencies: {system label: {kind: [seconds, ...]}}."""
    # the kinds in the order given, those with at least one value
    kinds = list(dict.fromkeys(k for per_system in latencies.values() for k, v in per_system.items() if v))
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5 * max(1, len(kinds)), 3.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        values = [v for per_system in latencies.values() for v in per_system.get(kind, [])]
        top = max(values, default=1.0) + bin_s
        bins = [i * bin_s for i in range(int(top / bin_s) + 2)]
        for label, per_system in latencies.items():
            if per_system.get(kind):
                ax.hist(per_system[kind], bins=bins, alpha=0.55, label=f"{label} (n={len(per_system[kind])})")
        ax.set_title(f"{kind} latency")
        ax.set_xlabel("seconds")
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timeline_plot(
    path: str | Path,
    user_segments: Sequence[Span] = (),
    system_words: Sequence[TimedWord] = (),
    *,
    user_words: Sequence[TimedWord] = (),
    system_segments: Sequence[Span] = (),
    floor: Sequence[str] = (),
    floor_step_s: float = 0.2,
    marks: Sequence[tuple[str, float, float]] = (),
    duration_s: float | None = None,
    title: str = "",
) -> None:
    """Who speaks when: a user row (speech spans, words above), a system row (speech spans, words above),
    an optional floor row (one state per micro-turn: floor[t] covers [t, t+1) * floor_step_s), and
    labelled marks (e.g. the annotated pause or interruption) shaded across the rows."""
    ends = [e for _, e in user_segments] + [e for _, _, e in user_words] + [e for _, _, e in system_words]
    ends += [e for _, e in system_segments] + [e for _, _, e in marks] + [len(floor) * floor_step_s]
    duration = duration_s or max(ends, default=1.0) or 1.0
    fig, ax = plt.subplots(figsize=(max(8.0, min(30.0, duration * 0.6)), 3.2))
    rows = {"user": 2.0, "system": 1.0, "floor": 0.0}

    def spans(row: str, items: Sequence[Span], colour: str) -> None:
        ax.broken_barh(
            [(s, max(e - s, 0.01)) for s, e in items], (rows[row] - 0.3, 0.6), color=colour, alpha=0.6
        )

    def words(row: str, items: Sequence[TimedWord], colour: str) -> None:
        for text, s, e in items:
            ax.broken_barh([(s, max(e - s, 0.01))], (rows[row] - 0.12, 0.24), color=colour)
            # an untrained model's byte-level tokens can decode to characters the plot font lacks
            shown = "".join(c if c.isprintable() and ord(c) < 0x250 else "?" for c in text)
            ax.text(s, rows[row] + 0.33, shown, rotation=45, fontsize=7, va="bottom", ha="left")

    for label, s, e in marks:
        ax.axvspan(s, e, color="#f2c14e", alpha=0.3)
        ax.text(s, 2.9, label, fontsize=8, va="top")
    spans("user", user_segments, "#8172b2")
    words("user", user_words, "#4b3f8c")
    spans("system", system_segments, "#4c72b0")
    words("system", system_words, "#1f3f73")
    for t, state in enumerate(floor):
        ax.broken_barh(
            [(t * floor_step_s, floor_step_s)], (-0.3, 0.6), color=FLOOR_COLOURS.get(state, "#999999")
        )
    ax.set_yticks([rows["floor"], rows["system"], rows["user"]], ["floor", "system", "user"])
    ax.set_ylim(-0.5, 3.2)
    ax.set_xlim(0, duration)
    ax.set_xlabel("seconds")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def mel_panels(panels: dict[str, np.ndarray], path: str | Path, seconds_per_frame: float = 0.01) -> None:
    """Log-mel spectrograms stacked over one time axis, one panel per label (each [frames, n_mels])."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (label, mel) in zip(axes[:, 0], panels.items(), strict=True):
        frames, bins = mel.shape
        ax.imshow(
            mel.T,
            origin="lower",
            aspect="auto",
            extent=(0, frames * seconds_per_frame, 0, bins),
            cmap="magma",
        )
        ax.set_ylabel("mel bin")
        ax.set_title(label, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
