"""Faults, round two (issues 16 and 20), in-process: torn files, the run-directory lock, names that are paths,
resumes that would silently start over, NaN streaks caught within a step and counted across a resume.

The same faults on real processes (kill -9, two processes at once, a sweep runner killed) are in
tests/test_faults_procs.py.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import train.data as data
from model.config import ModelConfig
from train.config import ConfigError, RunConfig, RunDirError, TrainConfig, apply_overrides, get_preset
from train.data import DataConfig
from train.files import read_json, read_jsonl, write_json
from train.lock import DirLock, LockedError, holder
from train.loop import NonFiniteError, train
from train.report import MetricsLog, read_metrics

T = 16
MODEL = ModelConfig(vocab_size=16, max_len=T, n_layers=1, d_model=16, n_heads=2, mlp=False)
TC = TrainConfig(
    batch_size=4,
    steps=6,
    lr=1e-2,
    warmup_steps=2,
    decay_steps=10,
    log_every=1,
    eval_every=3,
    eval_batches=1,
    checkpoint_every=2,
    keep_checkpoints=5,
    async_checkpoint=False,
)
TIMING = ("ms_per_step", "tokens_per_s")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


def config(run_dir: Path, **train_changes) -> RunConfig:
    return RunConfig(
        name="faults2",
        model=MODEL,
        data=DataConfig(task="induction", vocab_size=8),
        train=dataclasses.replace(TC, **train_changes),
        run_dir=str(run_dir),
    )


def run(cfg: RunConfig, **kw):
    return train(cfg, progress=False, plots=False, log=lambda m: None, **kw)


def curve(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


# ---------------------------------------------------------------------------- torn files (16.1)
def test_torn_tail_keeps_the_complete_records_and_says_what_was_dropped(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "kind": "train"}\n{"step": 2, "kind": "train"}\n{"step": 3, "ki')
    warnings: list[str] = []
    assert read_jsonl(path, warn=warnings.append) == [{"step": 1, "kind": "train"}, {"step": 2, "kind": "train"}]
    assert len(warnings) == 1 and "dropped 1 incomplete record" in warnings[0] and "last line" in warnings[0]
    log = MetricsLog(path, warn=warnings.append)
    log.truncate_after(1)  # the rewrite drops the torn line too, so the next record starts on its own line
    log.write({"step": 2, "kind": "eval"})
    assert path.read_text() == '{"step": 1, "kind": "train"}\n{"step": 2, "kind": "eval"}\n'
    (tmp_path / "s.json").write_text('{"step": 4, "fin')
    assert read_json(tmp_path / "s.json", warn=warnings.append) is None and "not valid JSON" in warnings[-1]
    write_json(tmp_path / "s.json", {"a": 1})
    assert read_json(tmp_path / "s.json") == {"a": 1} and not list(tmp_path.glob(".*.tmp"))


def test_resume_after_a_torn_metrics_line_keeps_every_complete_record(tmp_path, capsys):
    cfg = config(tmp_path / "r")
    run(cfg, stop_after=4)
    path = tmp_path / "r" / "metrics.jsonl"
    before = curve(tmp_path / "r")
    with open(path, "a") as f:
        f.write('{"step": 5, "kind": "train", "loss": 1.2')  # a kill in the middle of a write
    r = run(cfg, resume=True)
    assert r.step == 6
    err = capsys.readouterr().err
    assert err.count("dropped 1 incomplete record") == 1
    after = curve(tmp_path / "r")
    assert after[: len(before)] == before  # every complete record kept, as it was
    keys = [(x["step"], x["kind"]) for x in after]
    assert len(keys) == len(set(keys)) and keys[-1] == (6, "eval")


def test_sweep_results_survive_torn_files(tmp_path):
    from experiments import sweep as sw
    from experiments.sweep.spec import status_path

    s = sw.Sweep.make("t", "induction", axes={"train.seed": [0]})
    p = s.points()[0]
    run_dir = sw.run_dir_of(tmp_path, p)
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "kind": "eval", "val_loss": 2.0}\n{"step": 3, "kind": "ev')
    (run_dir / "summary.json").write_text('{"step": 3, "fi')
    (tmp_path / "logs").mkdir()
    status_path(tmp_path, p).write_text('{"status": "fai')
    row = sw.result_row(s, p, tmp_path)
    assert row["status"] == "ok" and row["step"] == 0 and row["val_loss"] == 2.0


def test_the_induction_experiment_reads_its_final_record_past_a_torn_tail(tmp_path, capsys):
    from experiments.induction import final_record

    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "kind": "eval"}\n{"step": 9, "kind": "eval"}\n{"step": 9, "k')
    assert final_record(tmp_path) == {"step": 9, "kind": "eval"}
    assert capsys.readouterr().err.count("dropped 1 incomplete record") == 1


# ---------------------------------------------------------------------------- one writer per run directory (16.2)
def test_lock_names_the_pid_and_is_released(tmp_path):
    with DirLock(tmp_path / "d"):
        assert holder(tmp_path / "d") == os.getpid()
        with pytest.raises(LockedError, match=f"in use by process {os.getpid()}") as e:
            DirLock(tmp_path / "d")
        assert e.value.pid == os.getpid() and "\n" not in str(e.value)
    assert holder(tmp_path / "d") is None
    DirLock(tmp_path / "d").release()


def test_a_lock_taken_a_moment_ago_still_names_its_holder(tmp_path):
    """The holder writes its PID just after it takes the lock: a second process arriving in between (two
    processes started together, as CI once saw) waits for the PID instead of naming 'another process'."""
    d = tmp_path / "d"
    d.mkdir()
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held, PID not yet written
    writer = threading.Timer(0.2, lambda: os.pwrite(fd, b"4242\n", 0))
    writer.start()
    try:
        with pytest.raises(LockedError, match="in use by process 4242") as e:
            DirLock(d)
        assert e.value.pid == 4242
    finally:
        writer.join()
        os.close(fd)


def test_lock_of_a_killed_process_is_free(tmp_path):
    code = f"from train.lock import DirLock; import os; DirLock({str(tmp_path / 'd')!r}); os.kill(os.getpid(), 9)"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert (tmp_path / "d" / ".lock").exists() and holder(tmp_path / "d") is None


def test_a_held_run_directory_is_refused_before_anything_is_written(tmp_path):
    with DirLock(tmp_path / "r"), pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
        run(config(tmp_path / "r"))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [".lock"]
    run(config(tmp_path / "r"), stop_after=2)  # a directory holding only a free lock file is still empty


# ---------------------------------------------------------------------------- names are not paths (16.4)
@pytest.mark.parametrize("name", ["../../tmp/escape", "a/b", "..", ".hidden", "a\\b"])
def test_a_name_is_not_a_path(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="a name is not a path"):
        apply_overrides(get_preset("induction"), [f"name={name}"])


# ---------------------------------------------------------------------------- silent fresh starts (16.5)
def test_resume_of_nothing_is_refused(tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume, the directory does not exist"):
        run(config(tmp_path / "none"), resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="nothing to resume, the directory is empty"):
        run(config(tmp_path / "empty"), resume=True)
    assert not (tmp_path / "none").exists() and not list((tmp_path / "empty").iterdir())


def test_resume_without_its_checkpoints_is_refused(tmp_path):
    cfg = config(tmp_path / "r", steps=12, checkpoint_every=2)
    run(cfg, stop_after=6)
    shutil.rmtree(tmp_path / "r" / "checkpoints")
    metrics = (tmp_path / "r" / "metrics.jsonl").read_text()
    for _ in range(2):  # refused again: the first refusal leaves no empty checkpoints/ that would let it through
        with pytest.raises(RunDirError, match="checkpoints is missing but .* training up to step 6"):
            run(cfg, resume=True)
    (tmp_path / "r" / "checkpoints").mkdir()
    with pytest.raises(RunDirError, match="checkpoints holds no checkpoint but .* up to step 6.*delete"):
        run(cfg, resume=True)
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == metrics  # nothing rewritten


def test_resume_before_the_first_checkpoint_restarts_with_a_notice(tmp_path):
    cfg = config(tmp_path / "r", steps=8, checkpoint_every=4)
    run(cfg, stop_after=3)  # saves 3 at the stop: remove it, as if killed before the first save (step 4)
    shutil.rmtree(tmp_path / "r" / "checkpoints" / "3")
    messages: list[str] = []
    r = train(cfg, resume=True, progress=False, plots=False, log=messages.append)
    assert r.step == 8 and any("training from step 0" in m for m in messages)


# ---------------------------------------------------------------------------- NaN streaks (16.9)
def nan_config(run_dir: Path, **changes) -> RunConfig:
    # lr=1e38: the first AdamW update overflows float32 to inf, and every later step is non-finite
    return config(run_dir, lr=1e38, min_lr=0.0, warmup_steps=0, decay_steps=None, schedule="constant", **changes)


@pytest.mark.slow  # its own compilation (lr=1e38): ~10 s, ~50 s on a loaded 2-core box
def test_a_nan_streak_stops_within_one_step_not_at_the_next_log(tmp_path):
    cfg = nan_config(tmp_path / "r", steps=40, log_every=20, checkpoint_every=20, max_nonfinite=3)
    with pytest.raises(NonFiniteError) as e:
        run(cfg)
    assert "steps 1..3" in str(e.value) and "stopped at step 4" in str(e.value)
    assert not [r for r in read_metrics(tmp_path / "r") if r["kind"] == "train"]  # nothing of step 4 logged


@pytest.mark.slow  # two runs and a resume
def test_the_nonfinite_count_is_restored_on_resume(tmp_path):
    cfg = nan_config(tmp_path / "a", steps=6, max_nonfinite=100)
    run(cfg)
    reference = curve(tmp_path / "a")
    assert [r["nonfinite_steps"] for r in reference if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    cfg = nan_config(tmp_path / "b", steps=6, max_nonfinite=100)
    run(cfg, stop_after=4)
    run(cfg, resume=True)
    assert curve(tmp_path / "b") == reference
