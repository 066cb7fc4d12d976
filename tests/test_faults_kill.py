"""kill -9 at five moments of a real ``python -m train`` run (some during an asynchronous checkpoint save).

Each time the run is resumed with ``--resume``; it restarts from its newest complete checkpoint (a
save killed half-way leaves only an Orbax tmp directory, which is dropped), so it loses at most the
steps since then, and its final metrics curve equals that of a run never killed, bit for bit on CPU.
Slow (seven subprocesses of the induction preset, shrunk; each pays its own compilation).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHECKPOINT_EVERY = 3
STEPS = 36
OVERRIDES = [
    f"train.steps={STEPS}",
    "train.batch_size=8",
    "train.eval_every=12",
    "train.eval_batches=1",
    "train.log_every=1",
    f"train.checkpoint_every={CHECKPOINT_EVERY}",
    "train.keep_checkpoints=2",
    "train.async_checkpoint=true",
]
KILL_AT = [4, 10, 17, 24, 31]  # kill once the log shows this step (plus a random 0-0.2 s: lands in saves too)
TIMING = ("ms_per_step", "tokens_per_s")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("XLA_FLAGS", None)  # one CPU device: the subprocesses need no fake mesh
    e["JAX_PLATFORMS"] = "cpu"
    return e


def command(run_dir: Path, resume: bool) -> list[str]:
    if resume:
        return [sys.executable, "-m", "train", "--no-progress", "--resume", str(run_dir)]
    return [sys.executable, "-m", "train", "--no-progress", "--config", "induction", *OVERRIDES, f"run_dir={run_dir}"]


def logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return -1
    steps = [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=-1)


def curve(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.mark.slow
def test_kill_9_five_times_then_resume_equals_an_uninterrupted_run(tmp_path):
    rng = random.Random(7)
    a = subprocess.run(command(tmp_path / "a", False), env=env(), capture_output=True, text=True, timeout=900)
    assert a.returncode == 0, a.stderr[-2000:]

    run_dir = tmp_path / "b"
    previous_kill = -1
    for i, target in enumerate(KILL_AT):
        proc = subprocess.Popen(
            command(run_dir, i > 0), env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 600
        while logged_step(run_dir) < target:
            assert proc.poll() is None, f"run ended before the kill at step {target}: {proc.stdout.read()[-2000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0]
        assert proc.returncode == -signal.SIGKILL
        killed_at = logged_step(run_dir)
        if i > 0:  # it resumed from a checkpoint taken before the previous kill, at most 2 intervals back
            m = re.search(r"resuming \S+ from step (\d+)", out)
            resumed = int(m.group(1)) if m else 0  # 0: killed before its first checkpoint was committed
            assert previous_kill - 2 * CHECKPOINT_EVERY <= resumed <= previous_kill
            assert resumed % CHECKPOINT_EVERY == 0
        previous_kill = killed_at
    final = subprocess.run(command(run_dir, True), env=env(), capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "resuming" in final.stdout

    curve_a, curve_b = curve(tmp_path / "a"), curve(run_dir)
    assert [r["step"] for r in curve_a if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert curve_b == curve_a  # every logged float, bit for bit
    assert (
        json.loads((run_dir / "summary.json").read_text())["final"]
        == json.loads((tmp_path / "a" / "summary.json").read_text())["final"]
    )
