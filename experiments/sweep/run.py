"""Running a sweep: each point a `python -m train` process (or in this process), N workers, stale runs refused."""

from __future__ import annotations

import contextlib
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
from pathlib import Path
from typing import Any

from experiments.common import fmt
from experiments.sweep.results import REPO_ROOT, result_row, write_outputs
from experiments.sweep.spec import (
    Point,
    Sweep,
    SweepError,
    config_errors,
    is_finished,
    run_dir_of,
    status_path,
    write_spec,
)
from train.cli import PARENT_ENV
from train.files import write_json
from train.lock import DirLock, LockedError, holder

# Seconds a point waits for its run directory held by another process (a run of a killed sweep saving).
LOCK_WAIT = 120.0

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


def _wait_until_free(run_dir: Path, point: Point, wait: float, log: Callable[[str], None]) -> bool:
    """True once no live process holds ``run_dir``'s lock (train/lock.py), False if one still does after ``wait`` s.

    A training process of a sweep that was killed gets SIGTERM with it, then saves a checkpoint and
    exits: a rerun started meanwhile waits for that instead of failing the point or writing beside it.
    """
    pid = holder(run_dir)
    if pid is None:
        return True
    log(f"{point.id}: its run directory is in use by process {pid} (still saving?): waiting up to {wait:g} s")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if holder(run_dir) is None:
            log(f"{point.id}: process {pid} released its run directory; going on")
            return True
    log(f"{point.id}: skipped: {run_dir} is still in use by process {pid}; rerun the sweep once it has finished")
    return False


def run_point(
    sweep: Sweep,
    point: Point,
    out: Path,
    *,
    runner: str = "subprocess",
    timeout: float | None = None,
    lock_wait: float = LOCK_WAIT,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one point (skipped when finished) and return its result row; never raises for a failed run.

    A run directory held by a live process is waited for (``lock_wait`` seconds), then left pending.
    """
    run_dir = run_dir_of(out, point)
    if is_finished(run_dir):
        return result_row(sweep, point, out)
    if not _wait_until_free(run_dir, point, lock_wait, log) or is_finished(run_dir):
        return result_row(sweep, point, out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log_path = out / "logs" / f"{point.id}.log"
    cmd = train_command(sweep, point, out, python=sys.executable)
    t0 = time.perf_counter()
    if runner == "subprocess":
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        env[PARENT_ENV] = str(os.getpid())  # the run gets SIGTERM (and checkpoints) if this process dies
        try:
            with open(log_path, "w") as log_file:
                log_file.write("$ " + shlex.join(cmd) + "\n")
                log_file.flush()
                proc = subprocess.run(
                    cmd, stdout=log_file, stderr=subprocess.STDOUT, timeout=timeout, env=env, check=False
                )
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
    write_json(status_path(out, point), status)
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
    # every point's config resolves before anything is created or trained: a bad grid value is named now,
    # not after the good points have trained
    bad = config_errors(sweep, [p for p in sweep.points() if only is None or p.index in only])
    if bad:
        pid, why = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more point(s))" if len(bad) > 1 else ""
        raise SweepError(f"point {pid}: {why}{more}; nothing was trained")
    try:  # one sweep process per OUT; the tasks of an array job (``only``) share it
        lock = DirLock(out, shared=only is not None, what="sweep directory")
    except LockedError as e:
        raise SweepError(str(e)) from None
    with lock:
        return _run_sweep(sweep, out, workers=workers, runner=runner, timeout=timeout, only=only, log=log)


def _run_sweep(sweep, out, *, workers, runner, timeout, only, log) -> list[dict[str, Any]]:
    points = sweep.points()
    out.mkdir(parents=True, exist_ok=True)
    stale = stale_points(sweep, out, [p for p in points if only is None or p.index in only])
    if stale:
        pid, why = next(iter(stale.items()))
        raise SweepError(
            f"{len(stale)} run(s) in {out / 'runs'} were trained with another config (e.g. {pid}: {why}): "
            f"the sweep changed; use a new --out, or delete those run directories to retrain them"
        )
    write_spec(sweep, out)
    todo = [p for p in points if (only is None or p.index in only) and not is_finished(run_dir_of(out, p))]
    skipped = sum(1 for p in points if is_finished(run_dir_of(out, p)))
    if skipped:
        log(f"{sweep.name}: {skipped} of {len(points)} points already finished, skipped")
    lock = threading.Lock()
    done = [0]

    def one(p: Point) -> dict[str, Any]:
        row = run_point(sweep, p, out, runner=runner, timeout=timeout, log=log)
        with lock:
            done[0] += 1
            if row["status"] == "ok":
                msg = f"val_loss {fmt(row.get('val_loss'))}"
            else:
                msg = f"FAILED: {row.get('error')}" if row["status"] == "failed" else row["status"]
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


def print_commands(sweep: Sweep, out: Path, stream=None) -> None:
    """One ``python -m train ...`` line per unfinished point (for GNU parallel, a job scheduler, a shell loop)."""
    stream = stream or sys.stdout
    for p in sweep.points():
        if not is_finished(run_dir_of(out, p)):
            print(shlex.join(train_command(sweep, p, out)), file=stream)
