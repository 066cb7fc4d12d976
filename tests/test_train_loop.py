"""train/loop.py: the run directory, exact resume, signals, never overwriting a run.

The runs are tiny (a 2-layer, width-32 model, 8 sequences of 16 tokens); their compilations are shared
through train.step.build_steps's cache, so the several train() calls here compile once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import train.data as data
from model.config import ModelConfig
from train.checkpoint import Checkpointer, tree_equal
from train.config import RunConfig, RunDirError, SetupError, TrainConfig
from train.data import DataConfig
from train.loop import train
from train.report import read_metrics
from train.step import build_steps

T = 16
# dropout and 2 microbatches, so that resuming must also reproduce the dropout keys and the accumulation
MODEL = ModelConfig(vocab_size=48, max_len=T, n_layers=2, d_model=32, n_heads=4, dropout=0.1)
TC = TrainConfig(
    batch_size=8,
    grad_accum=2,
    steps=10,
    lr=1e-2,
    warmup_steps=2,
    decay_steps=10,  # the schedule then does not depend on steps: runs of any length share one compilation
    log_every=1,
    eval_every=4,
    eval_batches=2,
    checkpoint_every=100,
)
TIMING = ("ms_per_step", "tokens_per_s")  # wall-clock fields: the only ones allowed to differ between runs


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


def config(run_dir: Path, **train_changes) -> RunConfig:
    return RunConfig(
        name="tiny",
        model=MODEL,
        data=DataConfig(task="induction", vocab_size=8),
        train=dataclasses.replace(TC, **train_changes),
        run_dir=str(run_dir),
        goal="val_accuracy >= 0.0",
    )


def quiet(msg: str) -> None:
    pass


def curve(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


def final_state(run_dir: Path, cfg: RunConfig):
    steps = build_steps(cfg.model, cfg.train, cfg.seq_len)
    with Checkpointer(run_dir / "checkpoints") as ck:
        return ck.restore(steps.abstract_state())[0]


def test_stopped_and_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path):
    a = train(config(tmp_path / "a"), progress=False, plots=False, log=quiet)
    assert a.interrupted is None and a.step == 10

    b1 = train(config(tmp_path / "b"), progress=False, plots=False, log=quiet, stop_after=5)
    assert b1.interrupted == "stop_after" and b1.step == 5
    with Checkpointer(tmp_path / "b" / "checkpoints") as ck:
        assert ck.all_steps() == [5]
    messages = []
    b2 = train(config(tmp_path / "b"), resume=True, progress=False, plots=False, log=messages.append)
    assert b2.step == 10 and any("resuming" in m and "step 5" in m for m in messages)

    curve_a, curve_b = curve(tmp_path / "a"), curve(tmp_path / "b")
    assert [r["step"] for r in curve_a if r["kind"] == "train"] == list(range(1, 11))
    assert curve_b == curve_a  # every logged float, exactly
    assert tree_equal(final_state(tmp_path / "b", b2.config), final_state(tmp_path / "a", a.config))
    assert b2.final == a.final


def test_run_directory_holds_config_metrics_checkpoints_and_plots(tmp_path):
    result = train(config(tmp_path / "run"), progress=False, log=quiet)
    d = tmp_path / "run"
    for name in ("config.json", "vocab.json", "metrics.jsonl", "loss.png", "attention.png", "summary.json"):
        assert (d / name).is_file(), name
    for png in ("loss.png", "attention.png"):
        assert (d / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = RunConfig.from_dict(json.loads((d / "config.json").read_text()))
    assert saved == result.config and saved.run_dir == str(d)
    summary = json.loads((d / "summary.json").read_text())
    assert summary["success"] is True and summary["step"] == 10
    assert set(summary["final"]) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy"}
    for record in read_metrics(d):
        for key, value in record.items():
            if key not in ("step", "kind"):
                assert isinstance(value, int | float) and np.isfinite(value), (key, value)
    evals = [r for r in read_metrics(d) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 4, 8, 10]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]

    # resuming a finished run trains nothing and evaluates the same final state again
    again = train(config(d), resume=True, progress=False, plots=False, log=quiet)
    assert again.step == 10 and again.final == result.final


def test_never_overwrites_a_run_directory(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="--resume"):
        train(config(d), progress=False, log=quiet)
    with pytest.raises(RunDirError, match="holds no config.json"):
        train(config(d), resume=True, progress=False, log=quiet)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]


def test_resume_refuses_a_different_trajectory(tmp_path):
    train(config(tmp_path / "run"), progress=False, plots=False, log=quiet, stop_after=1)
    with pytest.raises(RunDirError, match=r"train\.lr=0\.01"):
        train(config(tmp_path / "run", lr=3e-3), resume=True, progress=False, log=quiet)
    with pytest.raises(SetupError, match="too short"):
        bad = config(tmp_path / "new")
        train(bad.replace(data=DataConfig(task="mqar", vocab_size=64, n_pairs=8)), progress=False, log=quiet)
    assert not (tmp_path / "new").exists()


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    d = tmp_path / "run"
    metrics = d / "metrics.jsonl"

    def send_sigterm_after_three_steps():
        for _ in range(6000):
            if metrics.exists() and metrics.read_text().count('"kind": "train"') >= 3:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=send_sigterm_after_three_steps, daemon=True)
    killer.start()
    result = train(config(d, steps=100_000), progress=False, plots=False, log=quiet)
    killer.join()
    assert result.interrupted == "SIGTERM"
    assert 3 <= result.step < 100_000
    with Checkpointer(d / "checkpoints") as ck:
        assert ck.latest_step() == result.step
    assert read_metrics(d)[-1]["step"] == result.step
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again


@pytest.mark.slow
def test_cli_sigterm_then_resume_in_a_new_process_matches_an_uninterrupted_run(tmp_path):
    """End to end through `python -m train`: SIGTERM -> exit 143 with a checkpoint; --resume in a fresh process."""
    env = dict(os.environ, ATTN_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    args = ["model.n_layers=1", "model.d_model=32", "train.batch_size=8", "train.log_every=1", "train.steps=60"]
    args += ["train.eval_every=20", "train.eval_batches=2"]
    cmd = [sys.executable, "-m", "train", "--no-progress"]
    ref = subprocess.run([*cmd, *args, f"run_dir={tmp_path / 'ref'}"], env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    metrics = tmp_path / "cut" / "metrics.jsonl"
    proc = subprocess.Popen([*cmd, *args, f"run_dir={tmp_path / 'cut'}"], env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('"kind": "train"') >= 5):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 143 and "interrupted (SIGTERM)" in out and "--resume" in out
    assert read_metrics(tmp_path / "cut")[-1]["step"] < 60
    resumed = subprocess.run([*cmd, "--resume", str(tmp_path / "cut")], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert curve(tmp_path / "cut") == curve(tmp_path / "ref")


def test_a_run_compiles_the_train_and_eval_steps_once_each(tmp_path):
    # A fresh state must be committed to the device like every state the step returns, or jit compiles
    # the step again at step 2 (the cost of a second compile in every run). Its own configs: a cold cache.
    cfg = config(tmp_path / "run", steps=6, lr=3e-3, grad_accum=1, eval_every=3)
    steps = build_steps(cfg.model, cfg.train, cfg.seq_len)
    assert steps.train_step._cache_size() == 0 and steps.eval_step._cache_size() == 0
    train(cfg, progress=False, plots=False, log=quiet)
    assert steps.train_step._cache_size() == 1
    assert steps.eval_step._cache_size() == 1
