"""Sweeps: a base preset plus axes of overrides, run locally by N workers or on a cluster, resumable.

    python -m experiments.sweep --config shakespeare-char-cpu --set train.steps=500 \\
        --grid model.n_heads=1,4,16 --grid train.seed=0,1 --out runs/sweep-heads --workers 2
    python -m experiments.sweep --spec runs/sweep-heads/sweep.json            # resume: finished points are skipped
    python -m experiments.sweep --spec runs/sweep-heads/sweep.json --report   # only collect results, table and plots
    python -m experiments.sweep --spec runs/sweep-heads/sweep.json --print-commands   # one `python -m train` per line
    python -m experiments.sweep --spec runs/sweep-heads/sweep.json --slurm runs/sweep-heads/sweep.slurm
    python -m experiments.sweep --config mqar --random 8 --seed 0 --grid train.lr=log:1e-4:1e-2 --grid model.n_layers=1,2

A point is the base preset (``--config``) with the fixed overrides (``--set``) and one value of each
axis (``--grid KEY=V1,V2,...``); grids are the cartesian product in the order the axes are given.
``--random N`` instead draws N points: each axis value uniformly from its list, or from a range
``log:LO:HI`` (log-uniform), ``uniform:LO:HI`` or ``int:LO:HI`` (inclusive), with ``--seed``.

Each point is one run of ``python -m train`` (a subprocess: a crash or an out-of-memory kill stays
in its process) in ``OUT/runs/<point id>``, its output in ``OUT/logs/<point id>.log``. A point is
finished when its run directory has ``summary.json`` (written at the end of training); finished
points are skipped, a run directory with a checkpoint but no summary is continued with
``--resume``. A point that fails is recorded (``OUT/logs/<point id>.json``: return code, the last
error line) and the other points go on; the next invocation retries it. Final metrics are read from
each run's ``metrics.jsonl`` (its last evaluation record).

Outputs in OUT: ``sweep.json`` (the spec), ``results.jsonl`` and ``results.csv`` (one row per point),
``results.md`` (a markdown table), ``curves.png`` (validation loss against step, every point) and
``final.png`` (the final metric against the first axis).

On a cluster: ``--slurm FILE`` writes an array job with one task per point; each task runs
``python -m experiments.sweep --spec OUT/sweep.json --point $SLURM_ARRAY_TASK_ID`` (the same skipping
and recording), and ``--report`` afterwards collects everything.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.common import eval_records, fmt, markdown_table, pyplot

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC_FILE = "sweep.json"
RANGE_RE = re.compile(r"^(log|uniform|int):([-+0-9.eE]+):([-+0-9.eE]+)$")
METRIC_COLUMNS = ("train_loss", "val_loss", "val_accuracy")


class SweepError(ValueError):
    """A bad sweep specification or invocation; the message is one line naming the fix."""


# ---------------------------------------------------------------------------- the specification
def value_text(v: Any) -> str:
    """An override's text for a Python value: true/false, none, numbers and strings as written."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@dataclass(frozen=True)
class Sweep:
    """A base preset, fixed overrides and axes; ``random`` > 0 draws that many points instead of the grid."""

    name: str  # shown in tables and the SLURM job name
    base: str  # a preset of train/config.py (python -m train --list)
    fixed: tuple[str, ...] = ()  # KEY=VALUE overrides applied to every point
    axes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (KEY, values); a value may be a range for random search
    random: int = 0  # 0: the full grid; N > 0: N points drawn at random
    seed: int = 0  # the random search's seed

    @classmethod
    def make(cls, name: str, base: str, fixed: Sequence[str] = (), axes: dict[str, Sequence[Any]] | None = None, **kw):
        """Build from Python values (``axes={"model.n_heads": [1, 4]}``); values become override text."""
        axes_t = tuple((k, tuple(value_text(v) for v in vs)) for k, vs in (axes or {}).items())
        return cls(name=name, base=base, fixed=tuple(fixed), axes=axes_t, **kw)

    def __post_init__(self):
        from train.config import PRESETS

        if self.base not in PRESETS:
            raise SweepError(f"unknown config {self.base!r}; choose one of {', '.join(PRESETS)}")
        keys = [k for k, _ in self.axes]
        for item in list(self.fixed) + [f"{k}=x" for k in keys]:
            key = item.partition("=")[0].strip()
            if "=" not in item or not key:
                raise SweepError(f"override {item!r}: write it as KEY=VALUE, e.g. train.lr=3e-4")
            if key == "run_dir":
                raise SweepError("run_dir is set by the sweep (OUT/runs/<point id>): remove it from the overrides")
        if len(set(keys)) != len(keys):
            raise SweepError(f"an axis is given twice among {keys}: give each key one --grid")
        fixed_keys = {item.partition("=")[0].strip() for item in self.fixed}
        both = fixed_keys & set(keys)
        if both:
            raise SweepError(f"{sorted(both)[0]} is both a fixed override and an axis: keep one")
        for k, vs in self.axes:
            if not vs:
                raise SweepError(f"axis {k} has no values: write --grid {k}=V1,V2")
            for v in vs:
                if RANGE_RE.match(v) and not self.random:
                    raise SweepError(f"axis {k}: the range {v!r} needs random search (--random N)")
        if self.random < 0:
            raise SweepError(f"random={self.random}: must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "fixed": list(self.fixed),
            "axes": {k: list(vs) for k, vs in self.axes},
            "random": self.random,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sweep:
        return cls(
            name=d["name"],
            base=d["base"],
            fixed=tuple(d.get("fixed", ())),
            axes=tuple((k, tuple(vs)) for k, vs in d.get("axes", {}).items()),
            random=int(d.get("random", 0)),
            seed=int(d.get("seed", 0)),
        )

    def check(self) -> None:
        """Resolve every point's config (no training): the first bad key or value raises SweepError."""
        for pid, err in config_errors(self, self.points()).items():
            raise SweepError(f"point {pid}: {err}")

    def points(self) -> list[Point]:
        """The points in a fixed order (the grid's, or the random draws')."""
        keys = [k for k, _ in self.axes]
        if self.random:
            import numpy as np

            rng = np.random.default_rng(self.seed)
            combos = [tuple(_draw(v, rng) for _, v in self.axes) for _ in range(self.random)]
        else:
            combos = list(itertools.product(*[vs for _, vs in self.axes]))
        short = _short_names(keys)
        pts = []
        for i, combo in enumerate(combos):
            slug = ",".join(f"{short[k]}={v}" for k, v in zip(keys, combo, strict=True)) or "base"
            slug = re.sub(r"[^A-Za-z0-9_=.,+-]", "-", slug)
            pid = f"{i:03d}-{slug}" if self.random else slug
            pts.append(Point(index=i, id=pid, values=dict(zip(keys, combo, strict=True))))
        return pts


@dataclass(frozen=True)
class Point:
    """One configuration of a sweep: its position, a stable id (its directory name) and the axis values."""

    index: int
    id: str
    values: dict[str, str] = field(default_factory=dict)

    def overrides(self, sweep: Sweep) -> list[str]:
        return list(sweep.fixed) + [f"{k}={v}" for k, v in self.values.items()]


def config_errors(sweep: Sweep, points: Sequence[Point]) -> dict[str, str]:
    """Point id -> the one-line reason, for the points whose overrides make no valid RunConfig (no training)."""
    from train.config import ConfigError, apply_overrides, get_preset

    errors = {}
    for p in points:
        try:
            apply_overrides(get_preset(sweep.base), p.overrides(sweep))
        except ConfigError as e:
            errors[p.id] = str(e)
    return errors


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """'model.n_heads' -> 'n_heads' unless two axes share the field name (then the full key)."""
    fields_ = [k.rpartition(".")[2] for k in keys]
    return {k: (f if fields_.count(f) == 1 else k) for k, f in zip(keys, fields_, strict=True)}


def _draw(spec: tuple[str, ...], rng) -> str:
    """One random value of an axis: a list entry, or a draw from its single range spec."""
    if len(spec) == 1 and (m := RANGE_RE.match(spec[0])):
        kind, lo, hi = m.group(1), float(m.group(2)), float(m.group(3))
        if kind == "int":
            return str(int(rng.integers(int(lo), int(hi) + 1)))
        if kind == "log":
            if lo <= 0 or hi <= 0:
                raise SweepError(f"range {spec[0]!r}: log ranges need positive bounds")
            return f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.4g}"
        return f"{rng.uniform(lo, hi):.4g}"
    return spec[int(rng.integers(len(spec)))]


def parse_axis(text: str) -> tuple[str, tuple[str, ...]]:
    """'model.n_heads=1,2,4' -> ('model.n_heads', ('1', '2', '4'))."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise SweepError(f"--grid {text!r}: write it as KEY=V1,V2,... (e.g. model.n_heads=1,2,4)")
    return key.strip(), tuple(v.strip() for v in values.split(",") if v.strip())


# ---------------------------------------------------------------------------- running one point
def run_dir_of(out: Path, point: Point) -> Path:
    return out / "runs" / point.id


def _status_path(out: Path, point: Point) -> Path:
    return out / "logs" / f"{point.id}.json"


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()


# Saved-config fields that may differ from a point's resolved config without making its run another one:
# where it lives, its name, and the vocabulary the loop raises to fit the data.
_IGNORED_FIELDS = ("run_dir", "name", "model.vocab_size")


def stale_points(sweep: Sweep, out: Path, points: Sequence[Point]) -> dict[str, str]:
    """Point id -> the first differing field, for started points whose saved config.json is not the point's config.

    Point ids come from the axis values only, so after the base or the fixed overrides change, an old
    run directory would otherwise pass for a finished point of the new sweep.
    """
    from train.config import ConfigError, apply_overrides, get_preset, load_run_config

    stale = {}
    for p in points:
        run_dir = run_dir_of(out, p)
        if not (run_dir / "config.json").is_file():
            continue
        try:
            want = _flat(apply_overrides(get_preset(sweep.base), p.overrides(sweep)).to_dict())
            have = _flat(load_run_config(run_dir).to_dict())
        except (ConfigError, ValueError):
            continue  # a bad config is reported as the point's failure
        for key in sorted(set(want) | set(have)):
            if key not in _IGNORED_FIELDS and want.get(key) != have.get(key):
                stale[p.id] = f"{key}={have.get(key)!r} in {run_dir / 'config.json'}, the sweep says {want.get(key)!r}"
                break
    return stale


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def train_command(sweep: Sweep, point: Point, out: Path, *, python: str = "python") -> list[str]:
    """The ``python -m train`` command of a point: a fresh run, or ``--resume`` of its run directory."""
    run_dir = run_dir_of(out, point)
    cmd = [python, "-m", "train", "--no-progress"]
    if (run_dir / "config.json").is_file():  # started before: continue from its newest checkpoint
        return cmd + ["--resume", str(run_dir), *point.overrides(sweep)]
    return cmd + ["--config", sweep.base, *point.overrides(sweep), f"run_dir={run_dir}"]


def _last_error(text: str) -> str:
    """The most telling line of a failed run's output: the 'error: ...' line or the last non-empty one."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:") or re.match(r"^\w*(Error|Exception)\b", ln):
            return ln[:500]
    return lines[-1][:500] if lines else "(no output)"


def run_point(
    sweep: Sweep, point: Point, out: Path, *, runner: str = "subprocess", timeout: float | None = None
) -> dict[str, Any]:
    """Train one point (skipped when finished) and return its result row; never raises for a failed run."""
    run_dir = run_dir_of(out, point)
    if is_finished(run_dir):
        return result_row(sweep, point, out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log_path = out / "logs" / f"{point.id}.log"
    cmd = train_command(sweep, point, out, python=sys.executable)
    t0 = time.perf_counter()
    if runner == "subprocess":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        try:
            with open(log_path, "w") as log:
                log.write("$ " + shlex.join(cmd) + "\n")
                log.flush()
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, env=env, check=False)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    elif runner == "inprocess":
        code = _run_inprocess(cmd[3:], log_path)
    else:
        raise SweepError(f"runner={runner!r}: choose 'subprocess' or 'inprocess'")
    seconds = time.perf_counter() - t0
    ok = code == 0 and is_finished(run_dir)
    status = {"status": "ok" if ok else "failed", "returncode": code, "seconds": seconds, "command": shlex.join(cmd)}
    if not ok:
        status["error"] = (
            f"timed out after {timeout} s" if code == "timeout" else _last_error(log_path.read_text(errors="replace"))
        )
    _status_path(out, point).write_text(json.dumps(status, indent=1) + "\n")
    return result_row(sweep, point, out)


def _run_inprocess(argv: list[str], log_path: Path) -> int | str:
    """``python -m train ARGV`` in this process, its output into ``log_path``; the exit code (or 'exception')."""
    from train.cli import main

    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print("$ python -m train " + shlex.join(argv), flush=True)
        try:
            return main(argv)
        except Exception:  # a failed point is recorded, the sweep goes on
            traceback.print_exc(file=log)
            return "exception"


def result_row(sweep: Sweep, point: Point, out: Path) -> dict[str, Any]:
    """What is known about a point: status (ok / failed / pending), final metrics, timings, the error if any."""
    run_dir = run_dir_of(out, point)
    row: dict[str, Any] = {"id": point.id, "index": point.index, **point.values, "run_dir": str(run_dir)}
    status_file = _status_path(out, point)
    status = json.loads(status_file.read_text()) if status_file.is_file() else {}
    if is_finished(run_dir):
        last = eval_records(run_dir)[-1]
        summary = json.loads((run_dir / "summary.json").read_text())
        row.update(status="ok", step=last["step"])
        row.update({k: last.get(k) for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")})
        stats = summary.get("stats", {})
        row.update(
            tokens_per_s=stats.get("tokens_per_s"),
            ms_per_step=stats.get("ms_per_step_median"),
            wall_s=stats.get("wall_s"),
            success=summary.get("success"),
        )
    elif status.get("status") == "failed":
        row.update(status="failed", error=status.get("error"), returncode=status.get("returncode"))
    else:
        row.update(status="pending")
    return row


# ---------------------------------------------------------------------------- running a sweep
def run_sweep(
    sweep: Sweep,
    out: str | Path,
    *,
    workers: int = 1,
    runner: str = "subprocess",
    timeout: float | None = None,
    only: Sequence[int] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run every unfinished point with ``workers`` at once; write the spec, results and plots; return the rows.

    ``only``: point indices to run (the others are still collected). In-process running uses one worker.
    """
    out = Path(out)
    if workers < 1:
        raise SweepError(f"workers={workers}: must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    points = sweep.points()
    stale = stale_points(sweep, out, [p for p in points if only is None or p.index in only])
    if stale:
        pid, why = next(iter(stale.items()))
        raise SweepError(
            f"{len(stale)} run(s) in {out / 'runs'} were trained with another config (e.g. {pid}: {why}): "
            f"the sweep changed; use a new --out, or delete those run directories to retrain them"
        )
    write_spec(sweep, out)
    todo = [p for p in points if (only is None or p.index in only) and not is_finished(run_dir_of(out, p))]
    bad = config_errors(sweep, todo)
    for p in todo:  # a bad config is recorded like any failed point; the others still run
        if p.id in bad:
            (out / "logs").mkdir(parents=True, exist_ok=True)
            status = {"status": "failed", "returncode": 2, "seconds": 0.0, "error": f"error: {bad[p.id]}"}
            _status_path(out, p).write_text(json.dumps(status, indent=1) + "\n")
            log(f"{p.id}: FAILED (config): {bad[p.id]}")
    todo = [p for p in todo if p.id not in bad]
    skipped = sum(1 for p in points if is_finished(run_dir_of(out, p)))
    if skipped:
        log(f"{sweep.name}: {skipped} of {len(points)} points already finished, skipped")
    lock = threading.Lock()
    done = [0]

    def one(p: Point) -> dict[str, Any]:
        row = run_point(sweep, p, out, runner=runner, timeout=timeout)
        with lock:
            done[0] += 1
            msg = f"val_loss {fmt(row.get('val_loss'))}" if row["status"] == "ok" else f"FAILED: {row.get('error')}"
            log(f"[{done[0]}/{len(todo)}] {p.id}: {msg}")
        return row

    if runner == "inprocess" or workers == 1:
        for p in todo:
            one(p)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait on their subprocess
            list(pool.map(one, todo))
    if only is not None:  # one task of many (a SLURM array): `--report` collects when all are done
        return [result_row(sweep, p, out) for p in points if p.index in only]
    return write_outputs(sweep, out)


def write_spec(sweep: Sweep, out: Path) -> Path:
    """OUT/sweep.json, written atomically and only when it changes (array tasks may start side by side)."""
    path = out / SPEC_FILE
    text = json.dumps(sweep.to_dict(), indent=1) + "\n"
    if not path.is_file() or path.read_text() != text:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def load_spec(path: str | Path) -> Sweep:
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    if not path.is_file():
        raise SweepError(f"{path} not found: pass the sweep.json a sweep wrote (or its output directory)")
    try:
        return Sweep.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError) as e:
        raise SweepError(f"{path} is not a sweep spec ({e}): rewrite it or start the sweep again") from None


def collect(sweep: Sweep, out: str | Path) -> list[dict[str, Any]]:
    """One result row per point, in the sweep's order (pending points included)."""
    return [result_row(sweep, p, Path(out)) for p in sweep.points()]


# ---------------------------------------------------------------------------- outputs
def write_outputs(sweep: Sweep, out: str | Path, metric: str = "val_loss") -> list[dict[str, Any]]:
    """results.jsonl, results.csv, results.md, curves.png and final.png from the run directories; returns the rows."""
    out = Path(out)
    rows = collect(sweep, out)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    (out / "results.csv").write_text(buf.getvalue())
    (out / "results.md").write_text(results_markdown(sweep, rows) + "\n")
    if any(r["status"] == "ok" for r in rows):
        plot_curves(sweep, out, rows, out / "curves.png", metric)
        plot_final(sweep, rows, out / "final.png", metric)
    return rows


def results_markdown(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    keys = [k for k, _ in sweep.axes]
    short = _short_names(keys)
    headers = [short[k] for k in keys] + ["status", "step", *METRIC_COLUMNS, "tokens/s", "wall s"]
    table = []
    for r in rows:
        cells = [r.get(k) for k in keys]
        status = r["status"] if r["status"] != "failed" else f"failed: {r.get('error')}"
        cells += [status, r.get("step"), *(r.get(m) for m in METRIC_COLUMNS)]
        tps = r.get("tokens_per_s")
        cells += [None if tps is None else int(round(tps)), r.get("wall_s")]
        table.append(cells)
    fixed = " ".join(sweep.fixed)
    head = f"### Sweep {sweep.name}: `python -m train --config {sweep.base} {fixed}` over {', '.join(keys) or '-'}"
    return head + "\n\n" + markdown_table(headers, table, digits=4)


def plot_curves(sweep: Sweep, out: Path, rows: list[dict[str, Any]], path: Path, metric: str = "val_loss") -> Path:
    """``metric`` against step for every finished point (one line each)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in rows:
        if r["status"] != "ok":
            continue
        recs = eval_records(r["run_dir"])
        ax.plot([x["step"] for x in recs], [x.get(metric) for x in recs], marker=".", label=r["id"])
    ax.set(xlabel="step", ylabel=metric, title=f"{sweep.name}: {metric} during training")
    ax.grid(alpha=0.3)
    if sum(r["status"] == "ok" for r in rows) <= 16:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_final(sweep: Sweep, rows: list[dict[str, Any]], path: Path, metric: str = "val_loss") -> Path:
    """The final ``metric`` against the first axis; one line per combination of the other axes."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    keys = [k for k, _ in sweep.axes]
    ok = [r for r in rows if r["status"] == "ok"]
    if not keys:
        ax.bar(["base"], [ok[0].get(metric)])
    else:
        x_key, rest = keys[0], keys[1:]
        x_values = list(dict.fromkeys(r[x_key] for r in ok))
        numeric = all(_is_number(v) for v in x_values)
        for group in dict.fromkeys(tuple(r[k] for k in rest) for r in ok):
            pts = [r for r in ok if tuple(r[k] for k in rest) == group]
            xs = [float(r[x_key]) if numeric else x_values.index(r[x_key]) for r in pts]
            label = ", ".join(f"{k.rpartition('.')[2]}={v}" for k, v in zip(rest, group, strict=True)) or metric
            ax.plot(xs, [r.get(metric) for r in pts], marker="o", label=label)
        if numeric and all(float(v) > 0 for v in x_values) and len(x_values) > 2:
            ax.set_xscale("log", base=2)
        if not numeric:
            ax.set_xticks(range(len(x_values)), x_values)
        ax.set_xlabel(x_key)
        ax.legend(fontsize=7)
    ax.set(ylabel=f"final {metric}", title=f"{sweep.name}: final {metric}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------------------- cluster
SLURM_TEMPLATE = """#!/bin/bash
# SLURM array job for the sweep {name!r}: one task per point ({n} points).
#   sbatch {script}
# Each task trains one point (a finished point is skipped; a started one is resumed from its
# checkpoint). When all tasks are done, collect the table and plots:
#   {python} -m experiments.sweep --spec {spec} --report
#SBATCH --job-name={job}
#SBATCH --array=0-{last}%{parallel}
#SBATCH --cpus-per-task={cpus}
#SBATCH --mem={mem}
#SBATCH --time={time}
#SBATCH --output={out}/logs/slurm-%A_%a.out
{extra}
set -euo pipefail
cd {repo}
{python} -m experiments.sweep --spec {spec} --point "$SLURM_ARRAY_TASK_ID"
"""


def slurm_script(
    sweep: Sweep,
    out: Path,
    script: Path,
    *,
    cpus: int = 4,
    mem: str = "8G",
    time_limit: str = "02:00:00",
    parallel: int = 32,
    extra: Sequence[str] = (),
    python: str = "python",
) -> str:
    """The text of a SLURM array script running every point of ``sweep`` (spec at OUT/sweep.json)."""
    n = len(sweep.points())
    job = re.sub(r"[^A-Za-z0-9_.-]", "-", sweep.name)
    return SLURM_TEMPLATE.format(
        name=sweep.name,
        n=n,
        script=shlex.quote(str(script)),
        python=python,
        spec=shlex.quote(str(out / SPEC_FILE)),
        job=job,
        last=n - 1,
        parallel=max(1, parallel),
        cpus=cpus,
        mem=mem,
        time=time_limit,
        out=out,
        extra="\n".join(f"#SBATCH {e}" for e in extra),
        repo=shlex.quote(str(REPO_ROOT)),
    )


def print_commands(sweep: Sweep, out: Path, stream=None) -> None:
    """One ``python -m train ...`` line per unfinished point (for GNU parallel, a job scheduler, a shell loop)."""
    stream = stream or sys.stdout
    for p in sweep.points():
        if not is_finished(run_dir_of(out, p)):
            print(shlex.join(train_command(sweep, p, out)), file=stream)


def run_for_experiment(
    sweep: Sweep, out: Path, args, log: Callable[[str], None] = print
) -> list[dict[str, Any]] | None:
    """An experiment's sweep under its command-line options (experiments.common.experiment_parser).

    ``--print-commands`` prints the training commands and ``--slurm FILE`` writes the array script
    (both return None: nothing was trained here); otherwise the points run (finished ones skipped).
    """
    out = Path(out)
    if getattr(args, "print_commands", False):
        print_commands(sweep, out)
        return None
    if getattr(args, "slurm", None):
        sweep.check()
        out.mkdir(parents=True, exist_ok=True)
        write_spec(sweep, out)
        args.slurm.write_text(slurm_script(sweep, out, args.slurm))
        print(f"wrote {args.slurm} ({len(sweep.points())} tasks); after they finish, rerun this command for the report")
        return None
    return run_sweep(sweep, out, workers=args.workers, runner=args.runner, log=log)


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.sweep",
        description="Run a sweep over config overrides of a train preset: resumable, N local workers or SLURM.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="base preset (python -m train --list)")
    p.add_argument("--spec", default=None, help="a sweep.json written by an earlier invocation (or its directory)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed override (repeatable)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="an axis (repeatable)")
    p.add_argument("--random", type=int, default=0, metavar="N", help="draw N random points instead of the grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search")
    p.add_argument("--name", default=None, help="sweep name (default: the output directory's name)")
    p.add_argument(
        "--out", default=None, help="output directory (default: runs/sweep-<config>, or the spec's directory)"
    )
    p.add_argument("--workers", type=int, default=1, help="points trained at once")
    p.add_argument("--runner", choices=("subprocess", "inprocess"), default="subprocess")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a point is stopped and failed")
    p.add_argument("--point", type=int, action="append", default=None, help="run only this point index (repeatable)")
    p.add_argument("--print-commands", action="store_true", help="print one `python -m train` line per point and exit")
    p.add_argument("--slurm", default=None, metavar="FILE", help="write a SLURM array script and exit")
    p.add_argument("--slurm-cpus", type=int, default=4)
    p.add_argument("--slurm-time", default="02:00:00")
    p.add_argument("--report", action="store_true", help="only collect the results, table and plots")
    p.add_argument("--dry-run", action="store_true", help="list the points and check their configs, train nothing")
    return p


def sweep_from_args(args: argparse.Namespace) -> tuple[Sweep, Path]:
    if args.spec:
        if args.config or args.set or args.grid:
            raise SweepError("--spec already holds the config, fixed overrides and axes: drop --config/--set/--grid")
        sweep = load_spec(args.spec)
        spec = Path(args.spec)
        out = Path(args.out) if args.out else (spec if spec.is_dir() else spec.parent)
        return sweep, out
    if not args.config:
        raise SweepError("give --config PRESET (and --grid KEY=V1,V2 axes), or --spec OUT/sweep.json")
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{args.config}"
    axes = tuple(parse_axis(g) for g in args.grid)
    sweep = Sweep(args.name or out.name, args.config, tuple(args.set), axes, random=args.random, seed=args.seed)
    return sweep, out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        sweep, out = sweep_from_args(args)
        if args.print_commands:
            print_commands(sweep, out)
            return 0
        if args.slurm:
            sweep.check()
            out.mkdir(parents=True, exist_ok=True)
            write_spec(sweep, out)
            script = Path(args.slurm)
            script.write_text(slurm_script(sweep, out, script, cpus=args.slurm_cpus, time_limit=args.slurm_time))
            print(f"wrote {script} ({len(sweep.points())} tasks); submit with: sbatch {script}")
            return 0
        if args.dry_run:
            sweep.check()
            for p in sweep.points():
                print(f"{p.index:4d} {p.id}: {' '.join(p.overrides(sweep))}")
            return 0
        if args.report:
            rows = write_outputs(sweep, out)
        else:
            n = len(sweep.points())
            if args.point is not None and any(not 0 <= i < n for i in args.point):
                raise SweepError(f"--point {args.point}: the sweep has points 0..{n - 1}")
            rows = run_sweep(
                sweep, out, workers=args.workers, runner=args.runner, timeout=args.timeout, only=args.point
            )
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(results_markdown(sweep, rows))
    print(f"\nwrote {out / 'results.md'}, results.csv, results.jsonl, curves.png, final.png")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} point(s) failed; rerun the same command to retry them (logs in {out / 'logs'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
