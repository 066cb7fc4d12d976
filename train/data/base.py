"""DataConfig, the Dataset interface and the helpers every dataset shares (seeded generators, atomic writes).

Every batch is a pure function of ``(cfg.seed, split, step)`` (plus the batch shape): the random
generator is seeded with ``SeedSequence([seed, split_id, step])``, so a run resumed at step ``s``
sees exactly the batches it would have seen without the interruption, and no iterator state has
to be checkpointed.
"""

from __future__ import annotations

import abc
import json
import operator
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.config_base import ConfigBase
from train.data.tokenizers import TOKENIZERS

TASK_NAMES = ("text", "induction", "shifted_induction", "mqar", "copy")
LEVELS = tuple(TOKENIZERS)  # the text tokenizers by name: ("char", "byte", "gpt2")
SPLITS = {"train": 0, "val": 1}  # the split's id enters the seed, so train and val never share a stream
VOCAB_FILE = "vocab.json"  # the file in a run directory that carries the vocabulary


# ====================================================================== config
@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """What the model reads: a text corpus or a synthetic task. Validated on construction."""

    task: str = "induction"  # 'text' | 'induction' | 'shifted_induction' | 'mqar' | 'copy'
    # text: a local text file; None -> tiny Shakespeare (see resolve_text_path). Also token ids already
    # encoded (train/data/tokens.py): a .npy array, or a directory holding nanoGPT's train.bin + val.bin (uint16)
    path: str | None = None
    # text: 'char' (vocabulary = the corpus's distinct characters) | 'byte' (256 ids) | 'gpt2' (GPT-2's BPE)
    level: str = "char"
    bpe_dir: str | None = None  # level gpt2: encoder.json + vocab.bpe (or vocab.json + merges.txt); None = tiktoken's
    val_fraction: float = 0.1  # text: the last fraction of the tokens is validation (nanoGPT: 0.1)
    vocab_size: int = 16  # synthetic: ordinary tokens 0..vocab_size-1; special tokens get ids above them
    n_pairs: int = 4  # mqar: key-value pairs per sequence (each key is queried once)
    seed: int = 0  # data seed: batch(split, step) draws from SeedSequence([seed, split_id, step])

    def __post_init__(self):
        self.check_types()
        if self.task not in TASK_NAMES:
            raise ValueError(f"DataConfig.task={self.task!r}: unknown task; choose one of {TASK_NAMES}")
        if self.level not in LEVELS:
            raise ValueError(f"DataConfig.level={self.level!r}: unknown level; choose one of {LEVELS}")
        if self.bpe_dir is not None and self.level != "gpt2":
            raise ValueError(f"DataConfig.bpe_dir={self.bpe_dir!r} is for data.level=gpt2, not {self.level!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"DataConfig.val_fraction={self.val_fraction}: must be strictly between 0 and 1 (nanoGPT uses 0.1)"
            )
        if self.vocab_size < 2:
            raise ValueError(f"DataConfig.vocab_size={self.vocab_size}: a synthetic task needs at least 2 tokens")
        if self.n_pairs < 1:
            raise ValueError(f"DataConfig.n_pairs={self.n_pairs}: must be at least 1")
        if self.task == "mqar" and self.vocab_size // 2 < self.n_pairs:
            raise ValueError(
                f"DataConfig.vocab_size={self.vocab_size} is too small for mqar with n_pairs={self.n_pairs}: "
                f"keys and values come from the two halves of the vocabulary, so set vocab_size >= {2 * self.n_pairs}"
            )
        if self.seed < 0:
            raise ValueError(f"DataConfig.seed={self.seed}: must be >= 0")


# ====================================================================== shared helpers
def _check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as a Python int >= minimum (numpy and 0-d JAX integers accepted), else one-line ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: expected an integer, got a bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name}={value!r}: expected an integer, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name}={value}: must be >= {minimum}")
    return value


def _rng(seed: int, split: str, step: int) -> np.random.Generator:
    """The generator of one batch: a pure function of (seed, split, step)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: unknown split; choose one of {tuple(SPLITS)}")
    step = _check_int("step", step, 0)
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], step]))


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(fileobj)`` into a temp file in the same directory, then rename.

    ``os.replace`` is atomic on POSIX and Windows, so a reader sees the old file or the complete new
    one, never a half-written one; a crash leaves at most a ``.tmp`` file, which is removed here when
    the crash is a Python exception.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a cache or a corpus should be readable like any other
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1)), mode="w")


# ====================================================================== datasets
class Dataset(abc.ABC):
    """Common interface of text corpora and synthetic tasks (see :func:`build_dataset`).

    Attributes:
      cfg: the DataConfig it was built from.
      vocab_size: token ids are in [0, vocab_size); the model's vocab_size must be >= this.
      specials: name -> id of special tokens (e.g. {'bos': 16}); empty for text.
    """

    cfg: DataConfig
    vocab_size: int
    specials: dict[str, int]

    def batch(self, split: str, step: int, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        """A pure function of (cfg.seed, split, step, batch_size, seq_len): ``inputs`` [B, T] int32,
        ``targets`` [B, T] int32 (the next token of each input), ``loss_mask`` [B, T] float32 (1 = counts)."""
        rng = _rng(self.cfg.seed, split, step)
        batch_size = _check_int("batch_size", batch_size, 1)
        seq_len = _check_int("seq_len", seq_len, 1)
        seqs, mask = self._sequences(rng, split, batch_size, seq_len)  # [B, T+1] tokens, [B, T] mask
        return {
            "inputs": seqs[:, :-1].astype(np.int32),
            "targets": seqs[:, 1:].astype(np.int32),
            "loss_mask": mask.astype(np.float32),
        }

    @abc.abstractmethod
    def _sequences(self, rng, split, batch_size, seq_len) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [B, T+1] integers, loss_mask [B, T]) drawn with ``rng``."""

    @abc.abstractmethod
    def check_seq_len(self, seq_len: int) -> None:
        """Raise a one-line ValueError if batches of ``seq_len`` tokens cannot be drawn."""

    @abc.abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """A prompt -> token ids [N] int32."""

    @abc.abstractmethod
    def decode(self, ids) -> str:
        """Token ids [N] -> text."""

    @abc.abstractmethod
    def vocab_info(self) -> dict[str, Any]:
        """What :meth:`save_vocab` writes: enough to encode and decode without the corpus."""

    def save_vocab(self, run_dir: str | os.PathLike) -> Path:
        """Write ``run_dir/vocab.json`` (atomically) so the vocabulary travels with the run."""
        path = Path(run_dir) / VOCAB_FILE
        _write_json(path, self.vocab_info())
        return path
