"""The two entry points: a config's dataset (:func:`build_dataset`) and a run's (:func:`load_dataset_for_run`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from train.data.base import VOCAB_FILE, DataConfig, Dataset, _check_int
from train.data.synthetic import SyntheticDataset
from train.data.text import TextDataset, _text_dataset, tokenizer_options
from train.data.tokenizers import TOKENIZERS
from train.data.tokens import is_token_path, token_dataset


def build_dataset(cfg: DataConfig, seq_len: int, *, cache: str | os.PathLike | None = None) -> Dataset:
    """The dataset of ``cfg``, checked to yield windows of ``seq_len`` tokens (one-line ValueError if not).

    ``cache`` overrides the token-cache directory (default :func:`cache_dir`).
    """
    if not isinstance(cfg, DataConfig):
        raise ValueError(f"build_dataset expects a DataConfig, got {type(cfg).__name__}")
    seq_len = _check_int("seq_len", seq_len, 1)
    if cfg.task != "text":
        ds = SyntheticDataset(cfg)
    elif is_token_path(cfg.path):
        ds = token_dataset(cfg)
    else:
        ds = _text_dataset(cfg, None if cache is None else Path(cache))
    ds.check_seq_len(seq_len)
    return ds


def load_dataset_for_run(
    run_dir: str | os.PathLike,
    cfg: DataConfig,
    seq_len: int | None = None,
    *,
    cache: str | os.PathLike | None = None,
) -> Dataset:
    """The dataset of a run whose vocabulary was saved with :meth:`Dataset.save_vocab`.

    ``seq_len=None``: encode/decode only, from ``run_dir/vocab.json`` alone (the corpus need not
    exist; for sampling). ``seq_len`` given: the full dataset (for resuming), checked to have the
    vocabulary the run was trained with.
    """
    path = Path(run_dir) / VOCAB_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"{path} not found: the run has no saved vocabulary; train it with `python -m train` "
            f"or call dataset.save_vocab(run_dir)"
        ) from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}); delete the run or restore the file") from None
    if info.get("task") != cfg.task:
        raise ValueError(
            f"{path} is for task {info.get('task')!r} but data.task={cfg.task!r}: use the run's data config"
        )
    if cfg.task == "text" and info.get("level") != cfg.level:
        raise ValueError(
            f"{path} is for level {info.get('level')!r} but data.level={cfg.level!r}: use the run's data config"
        )
    if seq_len is None:
        if cfg.task == "text":
            source = str(info.get("source"))
            tokenizer = TOKENIZERS[cfg.level].from_state(info, source, **tokenizer_options(cfg))
            ds = TextDataset(cfg, tokenizer=tokenizer, tokens=None, source=source, sha256=None)
            ds.vocab_size = info.get("vocab_size", ds.vocab_size)  # a token corpus may use fewer ids than its tokenizer
            return ds
        ds = SyntheticDataset(cfg)
    else:
        ds = build_dataset(cfg, seq_len, cache=cache)
    got = getattr(getattr(ds, "tokenizer", None), "fingerprint", None)
    if info.get("bpe_sha256") is not None and got is not None and got != info["bpe_sha256"]:
        raise ValueError(
            f"the GPT-2 tokenizer of data.bpe_dir={cfg.bpe_dir!r} has merge-table fingerprint {got[:12]}, not the "
            f"{info['bpe_sha256'][:12]} saved in {path}: use the tokenizer files the run was trained with"
        )
    if ds.vocab_size != info.get("vocab_size") or getattr(ds, "chars", None) != info.get("chars"):
        raise ValueError(
            f"the {cfg.task} data (data.path={cfg.path!r}) has a vocabulary of {ds.vocab_size} tokens different from "
            f"the {info.get('vocab_size')} saved in {path}: use the data config and file the run was trained on"
        )
    return ds
