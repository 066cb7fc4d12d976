"""What a run writes besides checkpoints: the metrics log (metrics.jsonl), summary.json and the plots.

    log = MetricsLog(run_dir / METRICS_FILE)     # one JSON line per record, flushed as it is written
    read_metrics(run_dir)                        # [{"step", "kind": "train"|"eval", metrics...}, ...]
    plot_losses(records, run_dir / "loss.png", title)
    plot_attention(patterns, labels, run_dir / "attention.png", title)   # patterns [L, H, T, T]

``experiments/show_attention.py`` draws its prompt's patterns with the same :func:`plot_attention`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from train.files import _warn, parse_jsonl, read_jsonl, write_atomic, write_json

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"  # the run's TensorBoard event files: tensorboard --logdir runs/
TICK_LIMIT = 48  # plot_attention(ticks=True) labels the axes with the tokens up to this many tokens


# ====================================================================== metrics log
class MetricsLog:
    """metrics.jsonl: appends one JSON line per record and flushes it (a killed run keeps what it logged).

    A run killed mid-write leaves a torn last line: reading keeps the complete records and ``warn`` says
    in one line what was dropped; :meth:`truncate_after` (called when a run starts or resumes) rewrites
    the file atomically without it, so the next record starts on a line of its own.
    """

    def __init__(self, path: Path, warn: Callable[[str], None] = _warn):
        self.path = path
        self.warn = warn
        self.events = None  # the TensorBoard writer, opened by truncate_after (where the run's first step is known)

    def truncate_after(self, step: int) -> None:
        """Drop records with step > ``step`` (logged after the checkpoint a run resumes from); step < 0 drops all.

        The TensorBoard events (RUN_DIR/tensorboard/) are cut at the same step: the writer opens with
        ``purge_step=step + 1``, so a resumed run's curves continue without the steps it trains again.
        """
        self.open_events(step + 1)
        if not self.path.exists():
            return
        text = self.path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if line.strip()]
        records = [parse_jsonl(line, self.path, None) for line in lines]  # [] for a torn line
        if any(not r for r in records):
            parse_jsonl(text, self.path, self.warn)  # one line saying what is dropped
        keep = [
            line
            for line, r in zip(lines, records, strict=True)
            if r and isinstance(r[0], dict) and r[0].get("step", 0) <= step
        ]
        new = "".join(line + "\n" for line in keep)
        if new != text:
            write_atomic(self.path, new)

    def open_events(self, purge_step: int) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # JSONL stays the record; the events are a view of it
            return
        self.close()
        self.events = SummaryWriter(str(self.path.parent / TENSORBOARD_DIR), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.events is not None:
            kind, step = record.get("kind", "train"), record.get("step", 0)
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, int | float) and not isinstance(value, bool):
                    self.events.add_scalar(f"{kind}/{key}", value, step)
            self.events.flush()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None

    def read(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path, self.warn)


class NoLog(MetricsLog):
    """The metrics log of processes other than 0 in a multi-process run: only process 0 writes files."""

    def truncate_after(self, step: int) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass

    def read(self) -> list[dict[str, Any]]:
        return []


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The complete records of ``run_dir/metrics.jsonl`` in the order they were written (a torn tail dropped)."""
    return MetricsLog(Path(run_dir) / METRICS_FILE).read()


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """summary.json (written atomically): final metrics, the success criterion, timings."""
    return write_json(run_dir / SUMMARY_FILE, summary)


# ====================================================================== plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(records: list[dict[str, Any]], path: Path, title: str) -> Path:
    """loss.png: the logged training loss and the evaluations' train/val loss (and accuracy) against step."""
    plt = _pyplot()
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.6, label="train (batch)")
    for split, style in [("train", "o-"), ("val", "s-")]:
        ax.plot([r["step"] for r in evals], [r[f"{split}_loss"] for r in evals], style, ms=3, label=f"{split} (eval)")
    ax.set(xlabel="step", ylabel="cross-entropy (nats / token)", title=f"{title}: loss")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[1]
    for split, style in [("train", "o-"), ("val", "s-")]:
        ax.plot([r["step"] for r in evals], [r[f"{split}_accuracy"] for r in evals], style, ms=3, label=split)
    ax.set(xlabel="step", ylabel="next-token accuracy (scored positions)", title=f"{title}: accuracy", ylim=(0, 1))
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def join_labels(labels: list[str]) -> str:
    """Token labels as one string: concatenated when every token is one character, else space-separated."""
    return "".join(labels) if all(len(s) == 1 for s in labels) else " ".join(labels)


def excerpt(text: str, limit: int) -> str:
    """``text`` quoted for a title, cut to ``limit`` characters with a note saying so when it is longer."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... (the first {limit} of {len(text)} characters)"


def _tick(label: str) -> str:
    return {"\n": "\\n", " ": "␣", "\t": "\\t"}.get(label, label)


def plot_attention(
    patterns: np.ndarray, labels: list[str], path: Path, title: str, *, ticks: bool = False, dpi: int = 110
) -> Path:
    """One panel per (layer, head) of ``patterns`` ``[L, H, T, T]`` (rows: queries, columns: keys) into ``path``.

    ``title`` is the figure's whole title. ``ticks``: label the axes with the tokens ``labels`` (when
    there are at most TICK_LIMIT of them), with panels sized to the sequence; otherwise fixed-size
    panels with position ticks (a run's attention.png). One colour bar gives the weights' scale (0 to 1).
    """
    plt = _pyplot()
    n_layers, n_heads, t, _ = patterns.shape
    size = 2.2 + 0.06 * min(t, TICK_LIMIT) if ticks else 2.6
    fig, axes = plt.subplots(
        n_layers, n_heads, figsize=(size * n_heads + 1.0, size * n_layers), squeeze=False, layout="constrained"
    )
    names = [_tick(s) for s in labels]
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            image = ax.imshow(patterns[layer, head], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            if ticks and t <= TICK_LIMIT:
                ax.set_xticks(range(t), names, fontsize=5, rotation=90)
                ax.set_yticks(range(t), names, fontsize=5)
            else:  # positions: matplotlib's integer ticks
                ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("key position" if not ticks or t > TICK_LIMIT else "key token")
    axes[-1, 0].set_ylabel("query position" if not ticks or t > TICK_LIMIT else "query token")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
