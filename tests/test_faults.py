"""Faults (issue 7): corrupted checkpoints, NaN/Inf steps, unwritable or full disks, determinism, no code loading.

Real runs of a tiny induction model in-process (their compilations are shared through
train.step.build_steps's cache), real Orbax checkpoints on disk, real tmpfs mounts for the disk faults
(skipped when the test cannot mount). The kill -9 test is in tests/test_faults_kill.py (slow).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

import train.data as data
from model.config import ModelConfig
from train.checkpoint import Checkpointer, CheckpointError, tree_equal
from train.config import RunConfig, RunDirError, TrainConfig, load_run_config
from train.data import DataConfig
from train.loop import NonFiniteError, train
from train.report import read_metrics
from train.step import build_steps

T = 16
MODEL = ModelConfig(vocab_size=16, max_len=T, n_layers=2, d_model=32, n_heads=4, mlp=False)
TC = TrainConfig(
    batch_size=8,
    steps=6,
    lr=1e-2,
    warmup_steps=2,
    decay_steps=10,  # the schedule then ignores train.steps: runs of any length share one compilation
    log_every=1,
    eval_every=3,
    eval_batches=1,
    checkpoint_every=2,
    keep_checkpoints=5,
)
TIMING = ("ms_per_step", "tokens_per_s")  # wall-clock fields: the only ones allowed to differ between runs
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


def config(run_dir: Path, **train_changes) -> RunConfig:
    return RunConfig(
        name="faults",
        model=MODEL,
        data=DataConfig(task="induction", vocab_size=8),
        train=dataclasses.replace(TC, **train_changes),
        run_dir=str(run_dir),
    )


def run(cfg: RunConfig, **kw):
    return train(cfg, progress=False, plots=False, log=lambda m: None, **kw)


def curve(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


def abstract(cfg: RunConfig):
    return build_steps(cfg.model, cfg.train, cfg.seq_len).abstract_state()


# ---------------------------------------------------------------------------- determinism
@pytest.mark.slow  # three (two) runs with their own compilation: ~30-45 s on a loaded 2-core box
def test_same_config_and_seed_give_identical_metrics(tmp_path):
    a, b = config(tmp_path / "a"), config(tmp_path / "b")
    run(a), run(b)
    ca, cb = curve(tmp_path / "a"), curve(tmp_path / "b")
    assert len(ca) == len([r for r in ca if r["kind"] == "train"]) + 3  # eval at 0, 3, 6
    assert ca == cb  # every float, bit for bit (JSON round-trips float64 exactly)
    # and a different seed does change them, so the comparison can fail
    run(config(tmp_path / "c", seed=1))
    assert curve(tmp_path / "c") != ca


# ---------------------------------------------------------------------------- corrupted checkpoints
def _corrupt(step_dir: Path, how: str) -> int:
    """Damage every array/metadata file of a checkpoint step directory; returns how many files."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    for p in files:
        if how == "truncate":
            with open(p, "r+b") as f:
                f.truncate(p.stat().st_size // 2)
        else:  # overwrite with garbage of the same size
            p.write_bytes(np.random.default_rng(0).integers(0, 256, p.stat().st_size, dtype=np.uint8).tobytes())
    return len(files)


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, how):
    cfg = config(tmp_path / "r")
    run(cfg)
    ck_dir = tmp_path / "r" / "checkpoints"
    with Checkpointer(ck_dir, async_save=False) as ck:
        assert ck.all_steps() == [2, 4, 6]
        good4, _ = ck.restore(abstract(cfg), step=4)
    reference = curve(tmp_path / "r")
    assert _corrupt(ck_dir / "6", how) > 0

    warnings: list[str] = []
    with Checkpointer(ck_dir, async_save=False) as ck:
        state, meta = ck.restore(abstract(cfg), warn=warnings.append)
        assert meta["step"] == 4 and tree_equal(state, good4)
        assert ck.all_steps() == [2, 4]  # the broken one is set aside (renamed), not re-read or overwritten
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert "checkpoint 6" in warnings[0] and "unreadable" in warnings[0] and "previous" in warnings[0]
    assert "restored step 4" in warnings[1]

    # resuming after the corruption retrains steps 5..6 and logs exactly the curve of the first run
    messages: list[str] = []
    r = train(cfg, resume=True, progress=False, plots=False, log=messages.append)
    assert r.step == 6 and any("from step 4" in m for m in messages)
    assert curve(tmp_path / "r") == reference


def test_every_checkpoint_corrupted_is_one_clear_error(tmp_path):
    cfg = config(tmp_path / "r", steps=2)
    run(cfg)
    ck_dir = tmp_path / "r" / "checkpoints"
    _corrupt(ck_dir / "2", "truncate")
    with Checkpointer(ck_dir, async_save=False) as ck, pytest.raises(CheckpointError, match="no readable checkpoint"):
        ck.restore(abstract(cfg), warn=lambda m: None)


# ---------------------------------------------------------------------------- NaN / Inf
def test_nonfinite_update_is_refused_and_state_kept_bit_for_bit(tmp_path):
    cfg = config(tmp_path / "unused")
    steps = build_steps(cfg.model, cfg.train, cfg.seq_len)
    ds = data.build_dataset(cfg.data, cfg.seq_len)
    batch = ds.batch("train", 0, cfg.train.batch_size, cfg.seq_len)
    state = steps.init()
    bad_params = jax.tree.map(lambda x: x, state.params)
    emb = next(k for k in bad_params if "emb" in k)
    first = jax.tree.leaves(bad_params[emb])[0]
    bad_leaf = first.at[0, 0].set(np.inf)
    bad_params[emb] = jax.tree.map(lambda x: bad_leaf if x is first else x, bad_params[emb])
    bad = state.replace(params=bad_params)
    before = jax.device_get(bad)  # host copies: the step donates its input
    after, metrics = steps.train_step(bad, batch)
    assert int(metrics["nonfinite"]) == 1 and not np.isfinite(float(metrics["loss"]))
    after = jax.device_get(after)
    assert int(after.step) == int(before.step) + 1  # the batch is consumed ...
    for x, y in zip(
        jax.tree.leaves((before.params, before.opt_state)),
        jax.tree.leaves((after.params, after.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)  # ... but params and optimizer state are unchanged (inf stays inf)

    good, metrics = steps.train_step(steps.init(), batch)  # and a finite step does update
    assert int(metrics["nonfinite"]) == 0
    assert not tree_equal(jax.device_get(good.params), jax.device_get(steps.init().params))


@pytest.mark.slow  # three (two) runs with their own compilation: ~30-45 s on a loaded 2-core box
def test_run_with_exploding_lr_refuses_updates_counts_them_and_stops_naming_the_steps(tmp_path):
    # lr=1e38: the first AdamW update (~lr per weight, then the decay lr*wd*w) overflows float32 to inf
    cfg = config(tmp_path / "r", lr=1e38, min_lr=0.0, warmup_steps=0, decay_steps=None, schedule="constant")
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, max_nonfinite=3, checkpoint_every=1, steps=20))
    with pytest.raises(NonFiniteError) as e:
        run(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "steps 1..3" in msg and "stopped at step 3" in msg
    assert "train.max_nonfinite=3" in msg and "last good checkpoint is step" in msg
    recs = [r for r in read_metrics(tmp_path / "r") if r["kind"] == "train"]
    assert [r["nonfinite_steps"] for r in recs] == [1, 2, 3]
    init = build_steps(cfg.model, cfg.train, cfg.seq_len).init()
    with Checkpointer(tmp_path / "r" / "checkpoints", async_save=False) as ck:
        assert ck.all_steps() == [1, 2]  # none saved at the stop
        state, _ = ck.restore(abstract(cfg), step=2)
    assert tree_equal(state.params, init.params)  # the refused updates never touched the params


def test_nonfinite_limit_is_validated():
    with pytest.raises(ValueError, match="max_nonfinite"):
        TrainConfig(max_nonfinite=0)


# ---------------------------------------------------------------------------- disks
@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tiny tmpfs (needs root); yields (mountpoint, remount) where remount(opts) changes its options."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def mount(*opts: str) -> None:
        subprocess.run(["mount", *opts, str(mnt)], check=True, capture_output=True)

    try:
        mount("-t", "tmpfs", "-o", "size=4m", "tmpfs")
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt, lambda o: mount("-o", f"remount,{o}")
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)


def test_read_only_disk_fails_before_training_with_one_line(tmp_path, tmpfs):
    mnt, remount = tmpfs
    remount("ro")
    with pytest.raises(RunDirError) as e:
        run(config(mnt / "run"))
    assert "\n" not in str(e.value) and "cannot write the run directory" in str(e.value)
    assert "Read-only file system" in str(e.value)


def test_checkpoint_dir_not_writable_is_caught_before_training(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (tmp_path / "blocker").write_text("a file where a directory should be")
    with pytest.raises(CheckpointError, match="cannot write checkpoints to") as e:
        Checkpointer(tmp_path / "blocker" / "checkpoints")
    assert "\n" not in str(e.value)


def test_full_disk_at_a_save_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, tmpfs):
    mnt, remount = tmpfs
    cfg = config(mnt / "run", steps=4, async_checkpoint=True)
    first = run(cfg, stop_after=2)
    assert first.interrupted == "stop_after"
    with Checkpointer(mnt / "run" / "checkpoints", async_save=False) as ck:
        good, _ = ck.restore(abstract(cfg))
    # fill the disk to the last byte, leaving room for the small files the loop appends, not a checkpoint
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    os.truncate(filler, filler.stat().st_size - 32768)
    with pytest.raises(CheckpointError) as e:
        train(cfg, resume=True, progress=False, plots=False, log=lambda m: None)
    msg = str(e.value)
    assert "\n" not in msg and "No space left" in msg and "newest intact checkpoint is step 2" in msg, msg
    assert "saving checkpoint 4" in msg
    filler.unlink()
    with Checkpointer(mnt / "run" / "checkpoints", async_save=False) as ck:
        assert ck.all_steps() == [2]
        state, meta = ck.restore(abstract(cfg))
    assert meta["step"] == 2 and tree_equal(state, good)


# ---------------------------------------------------------------------------- no code is ever loaded
FORBIDDEN = re.compile(
    r"\bimport (pickle|cPickle|dill|cloudpickle|marshal|shelve)\b|\b(pickle|dill|cloudpickle|marshal|shelve)\.\w|"
    r"\beval\(|\bexec\(|yaml\.load\(|yaml\.unsafe_load|allow_pickle\s*=\s*True|__import__\(|"
    r"torch\.load\((?![^)]*weights_only\s*=\s*True)"  # torch.load only with its restricted unpickler
)
KNOWN: set[str] = set()  # files allowed to use pickle/eval/exec: none


def _hits(paths) -> list[str]:
    hits = []
    for p in paths:
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if FORBIDDEN.search(code):
                hits.append(f"{p.relative_to(REPO)}:{i}: {line.strip()}")
    return hits


def test_package_sources_never_unpickle_eval_or_exec():
    sources = [p for d in ("model", "train", "experiments") for p in sorted((REPO / d).rglob("*.py"))]
    sources = [p for p in sources if str(p.relative_to(REPO)) not in KNOWN]
    assert len(sources) > 10
    hits = _hits(sources)
    assert not hits, "\n".join(hits)
    for bad in ["import pickle", "state = pickle.loads(blob)", "cfg = eval(text)", "yaml.load(f)", "exec(code)",
                "torch.load(path)", "torch.load(path, weights_only=False)"]:  # fmt: skip
        assert FORBIDDEN.search(bad), bad  # the check bites
    assert not FORBIDDEN.search('torch.load(path, map_location="cpu", weights_only=True)')
    assert not FORBIDDEN.search("written without pickle, as JSON")  # prose is not code


def test_malicious_looking_config_strings_stay_strings(tmp_path, monkeypatch):
    cfg = config(tmp_path / "r", steps=1)
    run(cfg)
    path = tmp_path / "r" / "config.json"
    d = json.loads(path.read_text())
    monkeypatch.chdir(tmp_path)  # executed, the payload would write tmp_path/pwned (a name holds no '/')
    payload = "__import__('os').system('touch pwned')"
    d["name"] = payload
    d["goal"] = None
    d["data"]["task"] = "induction"
    path.write_text(json.dumps(d))
    loaded = load_run_config(tmp_path / "r")
    assert loaded.name == payload and isinstance(loaded.name, str)
    assert not (tmp_path / "pwned").exists()
    # a value where a number belongs is refused, not evaluated
    d["train"]["lr"] = "__import__('os').getcwd()"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="train|lr|TrainConfig"):
        load_run_config(tmp_path / "r")
