"""A run directory before anything is written: checked, the data built, the config resolved (and, when
resuming, compared with the saved one). ``train/loop.py`` calls :func:`prepare` first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from train.config import CONFIG_FILE, RunConfig, RunDirError, load_run_config
from train.data import build_dataset, load_dataset_for_run
from train.init_from import check_vocab
from train.lock import LOCK_FILE, DirLock
from train.memory import check as memory_check
from train.report import METRICS_FILE, TENSORBOARD_DIR, WANDB_DIR

# Fields that may differ between a run's saved config and the one it is resumed with: they change
# when or how much is evaluated, logged, saved or trained, not the trajectory of steps already taken.
RESUMABLE_CHANGES = frozenset(
    {
        "name",
        "run_dir",
        "goal",
        "train.steps",
        "train.eval_every",
        "train.eval_batches",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.async_checkpoint",
        "train.max_nonfinite",
        "train.memory_check",
        "train.profile",
        # where the state lives, not what it is: a run saved on 8 devices resumes on 2 or on 1
        "mesh.data",
        "mesh.fsdp",
        "mesh.sequence",
        "mesh.tensor",
        "sharding",
        # where GPT-2's tokenizer files are read from: vocab.json's fingerprint proves they are the same table
        "data.bpe_dir",
    }
)


# A fresh run directory holds this file until its first step is done: such a directory holds nothing worth
# keeping, and prepare() lets the same command start it afresh (after a SIGKILL during set-up or compiling).
SETUP_MARKER = ".setting-up"


def discard_unstarted(run_dir: Path, created: bool) -> None:
    """Remove what a fresh run wrote before its first step (the whole directory if this run created it)."""
    import shutil

    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for name in (CONFIG_FILE, "vocab.json", METRICS_FILE, TENSORBOARD_DIR, WANDB_DIR, "checkpoints", SETUP_MARKER):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if (run_dir / LOCK_FILE).is_file() and not _entries(run_dir):  # only the lock is left: prepare made the dir for it
        shutil.rmtree(run_dir, ignore_errors=True)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resumable(saved: RunConfig, cfg: RunConfig, run_dir: Path) -> None:
    a, b = _flatten(saved.to_dict()), _flatten(cfg.to_dict())
    for key in sorted(set(a) | set(b)):
        if key not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
            raise RunDirError(
                f"{run_dir} was trained with {key}={a.get(key)!r}, not {b.get(key)!r}: resume it with its own "
                f"config (`python -m train --resume {run_dir}`) or start a new run_dir"
            )


def _entries(run_dir: Path) -> list[Path]:
    """What a directory holds besides the lock file (a run that was refused or never started leaves only that)."""
    return [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.is_dir() else []


def prepare(cfg: RunConfig, *, resume: bool = False, log: Callable[[str], None] = print, lock: bool = False):
    """Check the run directory and build the data; returns (resolved cfg, run_dir, dataset, resuming, lock).

    ``lock``: take the run directory's lock (train/lock.py: one writer per run directory) before looking
    inside it; a second process gets LockedError naming the PID that holds it. The lock (a DirLock, or
    None) is returned held; on an error it is released and whatever the lock created is removed again.
    Raises RunDirError / ConfigError / ValueError (one line each) before anything else is written.
    """
    run_dir = Path(cfg.run_dir if cfg.run_dir is not None else cfg.default_run_dir())
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run_dir={str(run_dir)!r} is a file, not a directory: choose another run_dir")
    if resume and not _entries(run_dir):
        found = "is empty" if run_dir.is_dir() else "does not exist"
        raise RunDirError(
            f"--resume {run_dir}: nothing to resume, the directory {found}; to start a new run there, "
            f"drop --resume (python -m train --config {cfg.name} run_dir={run_dir})"
        )
    created_dir, created_lock = not run_dir.exists(), not (run_dir / LOCK_FILE).exists()
    try:
        held = DirLock(run_dir) if lock else None
    except OSError as e:  # a read-only or full disk, a parent that is a file ...
        raise RunDirError(
            f"cannot write the run directory {run_dir} ({e.strerror or e}): choose another run_dir"
        ) from None
    try:
        prepared = _prepare(cfg, run_dir, resume, log)
        memory_check(prepared[0])  # from shapes, before anything is written, allocated or compiled (train/memory.py)
        return (*prepared, held)
    except BaseException:
        if held is not None:  # leave the directory as it was found
            held.release()
            with contextlib.suppress(OSError):
                if created_lock:
                    (run_dir / LOCK_FILE).unlink()
                if created_dir:
                    run_dir.rmdir()
        raise


def _prepare(cfg: RunConfig, run_dir: Path, resume: bool, log: Callable[[str], None]):
    exists = bool(_entries(run_dir))
    if exists and not resume and (run_dir / SETUP_MARKER).is_file():  # killed before its first step was done
        log(f"{run_dir} was set up but never finished a step (killed during set-up or compiling): starting afresh")
        discard_unstarted(run_dir, created=False)
        exists = bool(_entries(run_dir))
    if exists and not resume:
        raise RunDirError(
            f"run directory {run_dir} already exists and is not empty: pass --resume to continue it, "
            f"or choose a new run_dir=..."
        )
    cfg = cfg.replace(run_dir=str(run_dir))
    resuming = exists and (run_dir / CONFIG_FILE).is_file()
    if exists and not resuming:
        raise RunDirError(f"{run_dir} is not empty but holds no {CONFIG_FILE}: it is not a run; choose a new run_dir")

    if resuming:
        ds = load_dataset_for_run(run_dir, cfg.data, cfg.seq_len)
    else:
        ds = build_dataset(cfg.data, cfg.seq_len)
    check_vocab(cfg, ds.vocab_size)  # a fine-tune (cfg.init_from) cannot grow the checkpoint's vocabulary
    if cfg.model.vocab_size < ds.vocab_size:  # a larger model vocabulary is fine (unused logits)
        log(f"model.vocab_size raised to {ds.vocab_size} to fit the data (was {cfg.model.vocab_size})")
        cfg = cfg.replace(model=cfg.model.replace(vocab_size=ds.vocab_size))
    if resuming:
        _check_resumable(load_run_config(run_dir), cfg, run_dir)
    return cfg, run_dir, ds, resuming
