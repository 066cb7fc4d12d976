"""A sweep's results: one row per point, results.jsonl/.csv/.md, curves.png and final.png, and the SLURM array script."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.common import eval_records, markdown_table, pyplot
from experiments.sweep.spec import (
    SPEC_FILE,
    Point,
    Sweep,
    SweepError,
    is_finished,
    run_dir_of,
    short_names,
    status_path,
)
from train.files import read_json, write_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
METRIC_COLUMNS = ("train_loss", "val_loss", "val_accuracy")


def result_row(sweep: Sweep, point: Point, out: Path) -> dict[str, Any]:
    """What is known about a point: status (ok / failed / pending), final metrics, timings, the error if any."""
    run_dir = run_dir_of(out, point)
    row: dict[str, Any] = {"id": point.id, "index": point.index, **point.values, "run_dir": str(run_dir)}
    status_file = status_path(out, point)
    status = read_json(status_file) or {}
    evals = eval_records(run_dir) if is_finished(run_dir) else []
    if evals:
        last = evals[-1]
        summary = read_json(run_dir / "summary.json") or {}
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


def collect(sweep: Sweep, out: str | Path) -> list[dict[str, Any]]:
    """One result row per point, in the sweep's order (pending points included)."""
    return [result_row(sweep, p, Path(out)) for p in sweep.points()]


# ---------------------------------------------------------------------------- outputs
def write_outputs(sweep: Sweep, out: str | Path, metric: str = "val_loss") -> list[dict[str, Any]]:
    """results.jsonl, results.csv, results.md, curves.png and final.png from the run directories; returns the rows."""
    out = Path(out)
    rows = collect(sweep, out)
    write_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(out / "results.csv", buf.getvalue())
    write_atomic(out / "results.md", results_markdown(sweep, rows) + "\n")
    if any(r["status"] == "ok" for r in rows):
        plot_curves(sweep, out, rows, out / "curves.png", metric)
        plot_final(sweep, rows, out / "final.png", metric)
    return rows


def results_markdown(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    keys = [k for k, _ in sweep.axes]
    short = short_names(keys)
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
{platform}{python} -m experiments.sweep --spec {spec} --point "$SLURM_ARRAY_TASK_ID"
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
    gpus: int = 0,
    partition: str | None = None,
    account: str | None = None,
    extra: Sequence[str] = (),
    python: str = "python",
) -> str:
    """The text of a SLURM array script running every point of ``sweep`` (spec at OUT/sweep.json).

    ``gpus`` > 0 asks for that many GPUs per task (``--gpus-per-task``) and lets jax pick them
    (JAX_PLATFORMS unset; the environment needs ``jax[cuda12]``); ``extra`` are more ``#SBATCH``
    lines, given with or without the ``#SBATCH`` prefix (``--qos=high``, ``--constraint=a100``).
    """
    n = len(sweep.points())
    job = re.sub(r"[^A-Za-z0-9_.-]", "-", sweep.name)
    lines = [f"--partition={partition}"] * bool(partition) + [f"--account={account}"] * bool(account)
    lines += [f"--gpus-per-task={gpus}"] * (gpus > 0)
    lines += [e.removeprefix("#SBATCH").strip() for e in extra]
    for line in lines:
        if "\n" in line or not line.startswith("-"):
            raise SweepError(f"#SBATCH line {line!r}: give one option such as --qos=high")
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
        extra="\n".join(f"#SBATCH {e}" for e in lines),
        platform="" if gpus > 0 else "JAX_PLATFORMS=cpu ",
        repo=shlex.quote(str(REPO_ROOT)),
    )
