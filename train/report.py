"""What a run writes besides checkpoints: the metrics log (metrics.jsonl), its TensorBoard and W&B views,
summary.json, the plots, the progress bar and profiler traces.

    log = MetricsLog(run_dir / METRICS_FILE)     # one JSON line per record, flushed as it is written
    read_metrics(run_dir)                        # [{"step", "kind": "train"|"eval", metrics...}, ...]
    plot_losses(records, run_dir / "loss.png", title, also=log.figure_at(step, "loss"))
    plot_attention(patterns, labels, run_dir / "attention.png", title)   # patterns [L, H, T, T]
    bar = Progress(total, initial)               # tqdm: "compiling" until the first step ends, then the rate
    profiler = StepProfiler((3, 5), run_dir / PROFILE_DIR)   # a jax.profiler trace of steps 3..5

metrics.jsonl is the record a resume relies on; RUN_DIR/tensorboard/ (tensorboardX) and, with ``wandb=True``,
RUN_DIR/wandb/ (Weights & Biases; ``WANDB_MODE=offline`` writes it without a network) are views of it that
also hold the two figures. ``experiments/show_attention.py`` draws its prompt's patterns with the same
:func:`plot_attention`.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from train.errors import SetupError
from train.files import _warn, parse_jsonl, read_jsonl, write_atomic, write_json

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"  # the run's TensorBoard event files: tensorboard --logdir runs/
WANDB_DIR = "wandb"  # --wandb: the W&B run files (wandb's own layout: RUN_DIR/wandb/{offline-,}run-<time>-<id>/)
WANDB_ID_FILE = "wandb-id"  # inside WANDB_DIR: the W&B run id, so that a resumed run continues the same W&B run
PROFILE_DIR = "profile"  # train.profile=START:STOP: jax.profiler's trace, RUN_DIR/profile/plugins/profile/<time>/
WANDB_MISSING = "--wandb needs the wandb package: pip install -e '.[wandb]' (or drop --wandb)"
TICK_LIMIT = 48  # plot_attention(ticks=True) labels the axes with the tokens up to this many tokens


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's numbers as ``{"<kind>/<key>": value}`` (the tags of both views)."""
    kind = record.get("kind", "train")
    return {
        f"{kind}/{k}": v
        for k, v in record.items()
        if k not in ("step", "kind") and isinstance(v, int | float) and not isinstance(v, bool)
    }


class _TensorBoard:
    """RUN_DIR/tensorboard/ through tensorboardX; ``purge_step`` hides the events of steps >= it in earlier files."""

    def __init__(self, run_dir: Path, purge_step: int):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def figure(self, tag: str, fig, step: int) -> None:
        self.writer.add_figure(tag, fig, step, close=False)  # rendered by its own canvas, as savefig does
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    """RUN_DIR/wandb/ through wandb; its run id is kept beside it, so a resumed run continues the same W&B run.

    W&B keeps one value per step and never goes back: after a crash, the steps that the resumed run trains
    again (those after its checkpoint) keep the values logged first, which metrics.jsonl and TensorBoard
    have replaced. ``WANDB_MODE=offline`` writes everything under RUN_DIR/wandb/ (``wandb sync`` uploads it).
    """

    def __init__(self, run_dir: Path, name: str, config: dict[str, Any] | None):
        import wandb

        directory = run_dir / WANDB_DIR
        directory.mkdir(exist_ok=True)
        id_file = directory / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        write_atomic(id_file, run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(
            dir=str(run_dir), id=run_id, resume="allow", name=name, config=config, reinit="create_new"
        )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def figure(self, tag: str, fig, step: int) -> None:
        self.run.log({f"figures/{tag}": self.wandb.Image(fig)}, step=step)

    def close(self) -> None:
        self.run.finish()
        # finish() returns before wandb's service has written the run's file (seen: an empty .wandb right after
        # it); shutting the service down waits for that, so RUN_DIR/wandb/ is complete when train() returns
        self.wandb.teardown()


def wandb_available() -> bool:
    """Whether ``--wandb`` can work (the optional extra: pip install -e '.[wandb]')."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


# ====================================================================== metrics log
class MetricsLog:
    """metrics.jsonl: appends one JSON line per record and flushes it (a killed run keeps what it logged).

    A run killed mid-write leaves a torn last line: reading keeps the complete records and ``warn`` says
    in one line what was dropped; :meth:`truncate_after` (called when a run starts or resumes) rewrites
    the file atomically without it, so the next record starts on a line of its own. Every record is also
    written to the views (TensorBoard always, W&B with ``wandb=True``), which :meth:`truncate_after` opens.
    """

    def __init__(
        self,
        path: Path,
        warn: Callable[[str], None] = _warn,
        *,
        wandb: bool = False,
        name: str | None = None,
        config: dict[str, Any] | None = None,
    ):
        self.path = path
        self.warn = warn
        self.wandb, self.name, self.config = wandb, name, config  # the W&B run's name and config
        self.views: list[Any] = []  # opened by truncate_after (where the run's first step is known)

    def truncate_after(self, step: int) -> None:
        """Drop records with step > ``step`` (logged after the checkpoint a run resumes from); step < 0 drops all.

        The TensorBoard events (RUN_DIR/tensorboard/) are cut at the same step: the writer opens with
        ``purge_step=step + 1``, so a resumed run's curves continue without the steps it trains again.
        """
        self.open_views(step + 1)
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

    def open_views(self, purge_step: int) -> None:
        self.close()
        with contextlib.suppress(ImportError):  # JSONL stays the record; the events are a view of it
            self.views.append(_TensorBoard(self.path.parent, purge_step))
        if self.wandb:
            if not wandb_available():
                raise SetupError(WANDB_MISSING)
            self.views.append(_Wandb(self.path.parent, self.name or self.path.parent.name, self.config))

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.views:
            values = _scalars(record)
            for view in self.views:
                view.scalars(record.get("step", 0), values)

    def figure_at(self, step: int, tag: str) -> Callable[[Any], None] | None:
        """A plot function's ``also=``: hands its matplotlib figure to the views as image ``tag`` at ``step``."""
        if not self.views:
            return None

        def add(fig) -> None:
            for view in self.views:
                view.figure(tag, fig, step)

        return add

    def close(self) -> None:
        views, self.views = self.views, []
        for view in views:
            view.close()

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


def _save(fig, path: Path, dpi: int, also: Callable[[Any], None] | None) -> Path:
    """Write ``fig`` to ``path``, hand it to ``also`` (the run's TensorBoard and W&B views), then close it."""
    plt = _pyplot()
    try:
        fig.savefig(path, dpi=dpi)
        if also is not None:
            also(fig)
    finally:
        plt.close(fig)
    return path


def plot_losses(
    records: list[dict[str, Any]], path: Path, title: str, also: Callable[[Any], None] | None = None
) -> Path:
    """loss.png: the logged training loss and the evaluations' train/val loss (and accuracy) against step.

    ``also``: called with the figure once it is saved (:meth:`MetricsLog.figure_at`), before it is closed.
    """
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
    return _save(fig, path, 110, also)


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
    patterns: np.ndarray,
    labels: list[str],
    path: Path,
    title: str,
    *,
    ticks: bool = False,
    dpi: int = 110,
    also: Callable[[Any], None] | None = None,
) -> Path:
    """One panel per (layer, head) of ``patterns`` ``[L, H, T, T]`` (rows: queries, columns: keys) into ``path``.

    ``title`` is the figure's whole title. ``ticks``: label the axes with the tokens ``labels`` (when
    there are at most TICK_LIMIT of them), with panels sized to the sequence; otherwise fixed-size
    panels with position ticks (a run's attention.png). One colour bar gives the weights' scale (0 to 1).
    ``also``: as for :func:`plot_losses`.
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
    return _save(fig, path, dpi, also)


# ====================================================================== what a person sees while it runs
class Progress:
    """The run's tqdm bar: "compiling" until the first step ends, then steps with the rate and ETA of steps alone.

    The first step compiles (seconds to minutes), so a rate counted from the bar's start would promise an
    ETA of (steps) x (compile time). Until :meth:`compiled` the bar shows only "compiling" and the time
    spent, redrawn every second by a thread (the main thread is inside XLA); :meth:`compiled` replaces it (the
    compiling line is erased) by a bar that starts counting then.
    ``disable``: tqdm's (None: only on a terminal); ``file``: where the bar is drawn (tqdm's default: stderr).
    """

    def __init__(self, total: int, initial: int, *, disable: bool | None = None, file=None):
        from tqdm import tqdm

        self._tqdm, self.total, self.disable, self.file = tqdm, total, disable, file
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc="compiling",
            bar_format="{desc} (the first step): {n_fmt}/{total_fmt} steps [{elapsed}]",
            leave=False,
            disable=disable,
            file=file,
        )
        self.compiling = True
        self._done = threading.Event()
        self._clock = threading.Thread(target=self._tick, name="progress-clock", daemon=True)
        if not self.bar.disable:
            self._clock.start()

    def _tick(self) -> None:
        while not self._done.wait(1.0):
            self.bar.refresh()

    def _stop_clock(self) -> None:
        self._done.set()
        if self._clock.is_alive():
            self._clock.join()

    def compiled(self) -> None:
        """The first step is done: the bar counts it and shows the rate and ETA of the steps from here on."""
        self._stop_clock()
        done = self.bar.n + 1
        self.bar.close()
        self.bar = self._tqdm(total=self.total, initial=done, unit="step", disable=self.disable, file=self.file)
        self.compiling = False

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, **kwargs) -> None:
        self.bar.set_postfix(**kwargs)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self._stop_clock()
        self.bar.close()


class StepProfiler:
    """``train.profile=START:STOP``: a jax.profiler trace of steps START..STOP (as the log numbers them).

    :meth:`step` wraps the dispatch of step ``n``: before the window's first step it waits for the steps
    before it (so none of their work is in the trace) and starts the trace; each step in the window is
    marked (``StepTraceAnnotation('train', step_num=n)``, the profile plugin's step view). :meth:`after`
    waits for step STOP and stops the trace, which jax writes as
    ``directory/plugins/profile/<time>/<host>.xplane.pb`` (TensorBoard's profile plugin) and
    ``perfetto_trace.json.gz`` beside it (ui.perfetto.dev). A resumed run traces what is left of the window;
    a multi-process run traces process 0 (train/loop.py passes no window to the others).
    """

    def __init__(self, window: tuple[int, int] | None, directory: Path):
        self.window, self.directory = window, directory
        self.tracing = False
        self.written: Path | None = None  # the trace's folder, once written
        self.write_s = 0.0  # seconds stop_trace took to write it

    def step(self, n: int, state):
        if self.window is None or not self.window[0] <= n <= self.window[1]:
            return contextlib.nullcontext()
        import jax

        if not self.tracing:
            jax.block_until_ready(state)
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=True)
            self.tracing = True
        return jax.profiler.StepTraceAnnotation("train", step_num=n)

    def after(self, n: int, out) -> Path | None:
        """The trace's folder when step ``n`` ended the window (the trace is then written), else None."""
        if not self.tracing or n < self.window[1]:
            return None
        import jax

        jax.block_until_ready(out)
        return self.stop()

    def stop(self) -> Path | None:
        """Stop and write the trace if one is running (a run that ends inside the window keeps what it traced)."""
        if not self.tracing:
            return None
        import jax

        t = time.perf_counter()
        jax.profiler.stop_trace()
        self.write_s, self.tracing = time.perf_counter() - t, False
        self.written = max((self.directory / "plugins" / "profile").iterdir(), key=lambda p: p.stat().st_mtime)
        return self.written
