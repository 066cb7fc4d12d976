"""Multi-process training: two real processes on localhost (gloo CPU collectives), 2 CPU devices each.

`python -m train` in each process, with JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID;
the 4 devices form one data-parallel mesh (mesh.data=-1) over the same global batch as the
single-device run in this process. fp32 losses agree within 1e-5. Only process 0 writes metrics.jsonl.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from train.config import ConfigError, apply_overrides, get_preset
from train.data import CACHE_ENV
from train.distributed import initialize
from train.loop import train
from train.report import read_metrics

OVERRIDES = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.dtype=float32",
    "train.steps=3",
    "train.batch_size=8",
    "train.log_every=1",
    "train.eval_every=100",
    "train.eval_batches=1",
    "train.warmup_steps=1",
    "train.async_checkpoint=false",
]
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir: Path) -> np.ndarray:
    return np.array([r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"])


def test_partial_environment_is_one_clear_error():
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID not"):
        initialize({"JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_NUM_PROCESSES": "2"})
    assert initialize({}) is False


@pytest.mark.slow  # two processes compile the step: ~1 min on 2 busy cores
def test_two_processes_match_one(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # the subprocesses inherit it
    ref_dir = tmp_path / "single"
    train(apply_overrides(get_preset("induction"), [*OVERRIDES, f"run_dir={ref_dir}"]), progress=False, log=print)
    reference = _losses(ref_dir)

    run_dir = tmp_path / "multi"
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ)
        env.update(
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_PLATFORMS="cpu",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(pid),
        )
        cmd = [sys.executable, "-m", "train", "--config", "induction", *OVERRIDES, "mesh.data=-1", f"run_dir={run_dir}"]
        log = open(tmp_path / f"process{pid}.log", "wb")  # noqa: SIM115 (closed when the process ends)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    for p in procs:
        p.wait(timeout=600)
    outs = [(tmp_path / f"process{pid}.log").read_text() for pid in range(2)]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert "over 4 devices" in outs[0], outs[0][-2000:]
    got = _losses(run_dir)
    assert got.shape == reference.shape == (3,)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5)
    assert (run_dir / "checkpoints").is_dir()
    assert not list(run_dir.glob("*.png"))  # multi-process runs skip the plots (see train/loop.py)
