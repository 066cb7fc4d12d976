"""A run directory before anything is written: checked, the data built, the config resolved (and, when
resuming, compared with the saved one). ``train/loop.py`` calls :func:`prepare` first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from train.config import CONFIG_FILE, RunConfig, RunDirError, load_run_config
from train.data import build_dataset, load_dataset_for_run
from train.init_from import check_vocab

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


def prepare(cfg: RunConfig, *, resume: bool = False, log: Callable[[str], None] = print):
    """Check the run directory and build the data; returns (resolved cfg, run_dir, dataset, resuming).

    Raises RunDirError / ConfigError / ValueError (one line each) before anything is written.
    """
    run_dir = Path(cfg.run_dir if cfg.run_dir is not None else cfg.default_run_dir())
    exists = run_dir.is_dir() and any(run_dir.iterdir())  # a file in the way is reported below
    if exists and not resume:
        raise RunDirError(
            f"run directory {run_dir} already exists and is not empty: pass --resume to continue it, "
            f"or choose a new run_dir=..."
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run_dir={str(run_dir)!r} is a file, not a directory: choose another run_dir")
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
