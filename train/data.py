"""Training data: text corpora (character or byte level, memory-mapped) and synthetic recall tasks.

    ds = build_dataset(DataConfig(task="text"), seq_len=256)        # tiny Shakespeare, characters
    b = ds.batch("train", step=0, batch_size=64, seq_len=256)
    b["inputs"], b["targets"]      # [B, T] int32, targets = inputs shifted left by one token
    b["loss_mask"]                 # [B, T] float32, 1 where the loss counts

Every batch is a pure function of ``(cfg.seed, split, step)`` (plus the batch shape): the random
generator is seeded with ``SeedSequence([seed, split_id, step])``, so a run resumed at step ``s``
sees exactly the batches it would have seen without the interruption, and no iterator state has
to be checkpointed.

Text: the file named by ``DataConfig.path`` (default: tiny Shakespeare, see :func:`resolve_text_path`)
is encoded once to a ``.npy`` token array in a cache directory (``$ATTN_CACHE_DIR`` or
``~/.cache/attention-lab``), keyed by the SHA-256 of the file's bytes and the level, written
atomically (temp file + ``os.replace``) and memory-mapped afterwards. The last ``val_fraction``
of the tokens is the validation split (nanoGPT's 90/10 split of shakespeare_char).

Synthetic tasks (the table :data:`TASKS`): ``induction`` (repeated random tokens, Olsson et al. 2022),
``mqar`` (multi-query associative recall, Arora et al. 2023, "Zoology") and ``copy``; each has a
loss mask on the positions whose target is predictable from the context.

``python -m train.data download`` fetches tiny Shakespeare; ``python -m train.data bench`` prints
how long a batch takes.
"""

from __future__ import annotations

import abc
import argparse
import hashlib
import json
import operator
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.config_base import ConfigBase

TASK_NAMES = ("text", "induction", "mqar", "copy")
LEVELS = ("char", "byte")
SPLITS = {"train": 0, "val": 1}  # the split's id enters the seed, so train and val never share a stream

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the repository (…/main)
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# Where data.path=None looks, in order: the shared copy next to the repository, then the project's
# data/ directory (where `python -m train.data download` writes by default).
DEFAULT_TEXT_CANDIDATES: tuple[Path, ...] = (
    PROJECT_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    PROJECT_ROOT / "data" / "tinyshakespeare.txt",
)
DEFAULT_DOWNLOAD_PATH = PROJECT_ROOT / "data" / "tinyshakespeare.txt"
CACHE_ENV = "ATTN_CACHE_DIR"
VOCAB_FILE = "vocab.json"  # the file in a run directory that carries the vocabulary
# Zoology's power law for the gap between a key-value pair and its query (power_a = 0.01 there):
# p(slot i) ∝ i^(a - 1), i = 1..slots, so most queries come soon after the key-value pairs.
MQAR_POWER_A = 0.01

# How many times a text corpus has been encoded (cache misses) in this process; tests read it to
# check that a second build reuses the cache instead of encoding again.
ENCODE_COUNT = 0


# ====================================================================== config
@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """What the model reads: a text corpus or a synthetic task. Validated on construction."""

    task: str = "induction"  # 'text' | 'induction' | 'mqar' | 'copy'
    path: str | None = None  # text: a local file; None -> tiny Shakespeare (see resolve_text_path)
    level: str = "char"  # text: 'char' (vocabulary = the corpus's distinct characters) | 'byte' (256 ids)
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


def _as_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0:
            return np.zeros((0,), np.int64)
        raise ValueError(f"decode expects a 1-D sequence of integer ids, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64)


# ---------------------------------------------------------------------- text
class TextDataset(Dataset):
    """A text corpus as a memory-mapped token array [N] split into train [:n_train] and val [n_train:].

    level 'char': ids index ``chars`` (the corpus's distinct characters, sorted by code point, as in
    nanoGPT's prepare.py). level 'byte': ids are the file's bytes (any file works).
    ``tokens`` is None for a codec-only dataset loaded from a run's vocab.json (encode/decode only).
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        chars: list[str] | None,
        tokens: np.ndarray | None,
        source: str,
        sha256: str | None,
        cache_path: Path | None = None,
    ):
        self.cfg = cfg
        self.level = cfg.level
        self.chars = chars
        self.specials = {}
        self.vocab_size = 256 if cfg.level == "byte" else len(chars)
        self.tokens = tokens
        self.source = source
        self.sha256 = sha256
        self.cache_path = cache_path
        if cfg.level == "char":
            # code points sorted ascending: encoding is a binary search (np.searchsorted)
            self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)
        if tokens is not None:
            n = len(tokens)
            self.n_train = int(n * (1.0 - cfg.val_fraction))  # nanoGPT: data[:int(n*0.9)]
            self.splits = {"train": tokens[: self.n_train], "val": tokens[self.n_train :]}

    @property
    def n_val(self) -> int:
        return len(self.tokens) - self.n_train

    def split_tokens(self, split: str) -> np.ndarray:
        """The token ids of one split, [N_split] (a memory-mapped view)."""
        self._need_tokens()
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: unknown split; choose one of {tuple(SPLITS)}")
        return self.splits[split]

    def _need_tokens(self):
        if self.tokens is None:
            raise ValueError(
                f"this dataset holds only the vocabulary of {self.source} (loaded from a run's {VOCAB_FILE}): "
                f"use load_dataset_for_run(run_dir, cfg, seq_len) or build_dataset(cfg, seq_len) to draw batches"
            )

    def check_seq_len(self, seq_len: int) -> None:
        self._need_tokens()
        need = seq_len + 1
        for split, toks in self.splits.items():
            if len(toks) < need:
                raise ValueError(
                    f"{self.source} is too short for seq_len={seq_len}: its {split} split has {len(toks)} "
                    f"{self.level} tokens (of {len(self.tokens)}, val_fraction={self.cfg.val_fraction}) but a "
                    f"window needs seq_len+1={need}; use a longer file, a shorter seq_len or another data.val_fraction"
                )

    def _sequences(self, rng, split, batch_size, seq_len):
        self.check_seq_len(seq_len)
        data = self.splits[split]
        # nanoGPT's get_batch: random window starts, then one vectorised gather from the memmap
        starts = rng.integers(0, len(data) - seq_len, size=batch_size)  # [B]
        windows = data[starts[:, None] + np.arange(seq_len + 1)]  # [B, T+1]
        return windows, np.ones((batch_size, seq_len), np.float32)

    def encode(self, text: str) -> np.ndarray:
        """``text`` -> ids [N] int32; a character outside the vocabulary raises a one-line ValueError."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        if self.level == "byte":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)
        cps = _codepoints(text)
        ids = np.minimum(np.searchsorted(self._codepoints, cps), len(self._codepoints) - 1)
        bad = np.flatnonzero(self._codepoints[ids] != cps)
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"prompt character {text[i]!r} (U+{ord(text[i]):04X}) at position {i} is not in the "
                f"{self.vocab_size}-character vocabulary of {self.source}: remove it from the prompt, "
                f"or train with data.level=byte to accept any text"
            )
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        """ids [N] -> text (byte level: invalid UTF-8 sequences become U+FFFD)."""
        arr = _as_ids(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"decode: ids must be in [0, {self.vocab_size}), got range [{arr.min()}, {arr.max()}]")
        if self.level == "byte":
            return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in arr.tolist())

    def vocab_info(self) -> dict[str, Any]:
        return {
            "task": "text",
            "level": self.level,
            "vocab_size": self.vocab_size,
            "chars": self.chars,
            "specials": {},
            "source": self.source,
            "sha256": self.sha256,
        }


def _codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as uint32 [N] (UTF-32 is one code unit per character)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def resolve_text_path(path: str | None) -> Path:
    """The corpus file: ``path`` if given (must exist), else the first of DEFAULT_TEXT_CANDIDATES."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise ValueError(f"data.path={path!r}: no such file ({p.resolve()}); check the path")
        if not p.is_file():
            raise ValueError(f"data.path={path!r}: {p.resolve()} is not a regular file; point data.path at a text file")
        return p
    for candidate in DEFAULT_TEXT_CANDIDATES:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in DEFAULT_TEXT_CANDIDATES)
    raise ValueError(
        f"no tiny Shakespeare found (looked at {tried}): run `python -m train.data download` "
        f"or set data.path=FILE to train on another text file"
    )


def cache_dir() -> Path:
    """Where encoded corpora are cached: $ATTN_CACHE_DIR, else ~/.cache/attention-lab."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attention-lab"


def _encode_corpus(raw: bytes, level: str, source: str) -> tuple[np.ndarray, list[str] | None]:
    """Raw file bytes -> (token ids [N] in the smallest unsigned dtype, sorted characters or None)."""
    global ENCODE_COUNT
    ENCODE_COUNT += 1
    if level == "byte":
        return np.frombuffer(raw, dtype=np.uint8).copy(), None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{source} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}): "
            f"set data.level=byte to train on its raw bytes"
        ) from None
    cps = _codepoints(text)
    vocab, ids = np.unique(cps, return_inverse=True)  # sorted code points == sorted(set(text))
    dtype = np.uint16 if len(vocab) <= 1 << 16 else np.uint32
    return ids.astype(dtype), [chr(c) for c in vocab.tolist()]


def _load_cached(npy: Path, meta_path: Path, sha: str, level: str):
    """The cached (tokens memmap, chars) if both files exist and agree with each other, else None."""
    try:
        meta = json.loads(meta_path.read_text())
        tokens = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta.get("sha256") != sha or meta.get("level") != level or tokens.ndim != 1:
        return None
    if len(tokens) != meta.get("n_tokens"):
        return None
    return tokens, meta.get("chars")


def _text_dataset(cfg: DataConfig, cache: Path | None) -> TextDataset:
    path = resolve_text_path(cfg.path)
    source = str(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{source} is empty: point data.path at a text file with some content")
    with open(path, "rb") as f:  # hashing streams the file; only a cache miss reads it whole
        sha = hashlib.file_digest(f, "sha256").hexdigest()

    cache = cache_dir() if cache is None else Path(cache)
    stem = f"{sha[:32]}-{cfg.level}"
    npy, meta_path = cache / f"{stem}.npy", cache / f"{stem}.json"
    hit = _load_cached(npy, meta_path, sha, cfg.level)
    if hit is not None:
        tokens, chars = hit
        return TextDataset(cfg, chars=chars, tokens=tokens, source=source, sha256=sha, cache_path=npy)

    # ---- cache miss: encode once, write the array then its metadata (each atomically), memory-map it
    tokens, chars = _encode_corpus(path.read_bytes(), cfg.level, source)
    meta = {"sha256": sha, "level": cfg.level, "n_tokens": len(tokens), "chars": chars, "source": source}
    try:
        _atomic_write(npy, lambda f: np.save(f, tokens))
        _write_json(meta_path, meta)
        tokens = np.load(npy, mmap_mode="r")
    except OSError as e:  # a read-only home, a full disk: train from memory rather than fail
        warnings.warn(f"could not write the token cache {npy} ({e}); keeping the tokens in memory", stacklevel=3)
        npy = None
    return TextDataset(cfg, chars=chars, tokens=tokens, source=source, sha256=sha, cache_path=npy)


# ---------------------------------------------------------------------- synthetic tasks
def induction_sequences(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int):
    """Repeated random tokens (Olsson et al. 2022, "In-context learning and induction heads").

    Sequence [T+1] = BOS, r_0 .. r_{L-1}, r_0 .. r_{L-1} (, r_0 when T is odd) with L = T // 2,
    r uniform over the vocab_size ordinary tokens (with replacement), BOS = vocab_size.
    Loss at input positions t >= L + 1: the input is in the repeat, so its next token is the one that
    followed the input's previous occurrence L positions earlier (the induction position).
    Returns (tokens [B, T+1] int64, loss_mask [B, T]).
    """
    half = seq_len // 2
    r = rng.integers(0, vocab_size, size=(batch_size, half))  # [B, L]
    reps = -(-seq_len // half)  # ceil(T / L)
    body = np.tile(r, (1, reps))[:, :seq_len]  # [B, T]
    seqs = np.concatenate([np.full((batch_size, 1), vocab_size), body], axis=1)  # [B, T+1]
    mask = np.zeros((batch_size, seq_len), np.float32)
    mask[:, half + 1 :] = 1.0
    return seqs, mask


def copy_sequences(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int):
    """Copy a random sequence after a separator.

    Sequence [T+1] = r_0 .. r_{L-1}, SEP, r_0 .. r_{L-1} (, SEP when T is odd) with L = T // 2,
    r uniform over the ordinary tokens, SEP = vocab_size. Loss on the copy: input positions L .. 2L-1
    (from the separator, which predicts r_0, to r_{L-2}, which predicts r_{L-1}).
    Returns (tokens [B, T+1] int64, loss_mask [B, T]).
    """
    half = seq_len // 2
    r = rng.integers(0, vocab_size, size=(batch_size, half))  # [B, L]
    sep = np.full((batch_size, 1), vocab_size)
    parts = [r, sep, r] + ([sep] if seq_len % 2 else [])
    seqs = np.concatenate(parts, axis=1)  # [B, T+1]
    mask = np.zeros((batch_size, seq_len), np.float32)
    mask[:, half : 2 * half] = 1.0
    return seqs, mask


def mqar_sequences(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int, n_pairs: int):
    """Multi-query associative recall (Arora et al. 2023, "Zoology", arXiv:2312.04927, Sec. 3).

    Sequence [T+1] = k_1 v_1 .. k_n v_n, then a query region where each key k_j appears once more,
    followed by its value v_j, at one of the (T+1-2n)//2 two-token slots (slot chosen with Zoology's
    power law, MQAR_POWER_A); the other positions are filler. Keys are distinct draws from the lower
    half of the vocabulary [0, V/2), values distinct draws from the upper half [V/2, V).
    Loss only where the input is a query key and the target its value.

    Two departures from Zoology's generator, both so that inputs and targets are one sequence
    shifted by a token and every occurrence of a key after the pairs is a real query: the value
    follows its query in the input stream (Zoology puts filler there), and filler is uniform over
    the vocabulary minus this sequence's keys (Zoology's filler may repeat a key, unlabelled).
    Returns (tokens [B, T+1] int64, loss_mask [B, T]).
    """
    n, half = n_pairs, vocab_size // 2
    context = 2 * n
    slots = (seq_len + 1 - context) // 2
    # distinct keys / values per row: the first n entries of a random permutation of each half
    keys = np.argsort(rng.random((batch_size, half)), axis=1)[:, :n]  # [B, n] in [0, V/2)
    values = half + np.argsort(rng.random((batch_size, vocab_size - half)), axis=1)[:, :n]  # [B, n] in [V/2, V)
    # query slots without replacement, p ∝ i^(a-1): Gumbel top-k (equal in law to successive sampling)
    logp = (MQAR_POWER_A - 1.0) * np.log(np.arange(1, slots + 1))
    scores = logp + rng.gumbel(size=(batch_size, slots))  # [B, slots]
    slot = np.argsort(-scores, axis=1)[:, :n]  # [B, n]: key j is queried at slot[:, j]

    # filler: uniform over the V - n tokens that are not this row's keys (shift past each sorted key)
    seqs = rng.integers(0, vocab_size - n, size=(batch_size, seq_len + 1))  # [B, T+1]
    for k in np.sort(keys, axis=1).T:  # ascending keys: r -> r-th non-key token
        seqs += seqs >= k[:, None]
    rows = np.arange(batch_size)[:, None]
    seqs[:, 0:context:2] = keys
    seqs[:, 1:context:2] = values
    qpos = context + 2 * slot  # [B, n] positions of the query keys
    seqs[rows, qpos] = keys
    seqs[rows, qpos + 1] = values
    mask = np.zeros((batch_size, seq_len), np.float32)
    mask[rows, qpos] = 1.0
    return seqs, mask


# The synthetic tasks as a table: generator, names of its special tokens (ids vocab_size, vocab_size+1, ...)
# and the shortest seq_len it supports.
TASKS: dict[str, dict[str, Any]] = {
    "induction": {"fn": induction_sequences, "specials": ("bos",), "min_len": lambda cfg: 3},
    "copy": {"fn": copy_sequences, "specials": ("sep",), "min_len": lambda cfg: 2},
    "mqar": {"fn": mqar_sequences, "specials": (), "min_len": lambda cfg: 4 * cfg.n_pairs},
}


class SyntheticDataset(Dataset):
    """A synthetic task from :data:`TASKS`: fresh random sequences for every (seed, split, step)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.task = TASKS[cfg.task]
        self.specials = {name: cfg.vocab_size + i for i, name in enumerate(self.task["specials"])}
        self.vocab_size = cfg.vocab_size + len(self.specials)

    def check_seq_len(self, seq_len: int) -> None:
        need = self.task["min_len"](self.cfg)
        if seq_len < need:
            extra = f" (4 * n_pairs={self.cfg.n_pairs})" if self.cfg.task == "mqar" else ""
            raise ValueError(
                f"seq_len={seq_len} is too short for the {self.cfg.task} task: it needs seq_len >= {need}{extra}"
            )

    def _sequences(self, rng, split, batch_size, seq_len):
        self.check_seq_len(seq_len)
        kw = {"n_pairs": self.cfg.n_pairs} if self.cfg.task == "mqar" else {}
        return self.task["fn"](rng, batch_size, seq_len, self.cfg.vocab_size, **kw)

    def encode(self, text: str) -> np.ndarray:
        """Space-separated ids -> ids [N] int32 (the inverse of decode)."""
        try:
            ids = np.array([int(t) for t in text.split()], dtype=np.int64)
        except ValueError:
            raise ValueError(
                f"a {self.cfg.task} prompt is space-separated integer token ids, got {text[:40]!r}"
            ) from None
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"prompt ids must be in [0, {self.vocab_size}) for the {self.cfg.task} task")
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        return " ".join(str(i) for i in _as_ids(ids).tolist())

    def vocab_info(self) -> dict[str, Any]:
        return {
            "task": self.cfg.task,
            "level": None,
            "vocab_size": self.vocab_size,
            "chars": None,
            "specials": self.specials,
            "source": None,
            "sha256": None,
        }


# ====================================================================== entry points
def build_dataset(cfg: DataConfig, seq_len: int, *, cache: str | os.PathLike | None = None) -> Dataset:
    """The dataset of ``cfg``, checked to yield windows of ``seq_len`` tokens (one-line ValueError if not).

    ``cache`` overrides the token-cache directory (default :func:`cache_dir`).
    """
    if not isinstance(cfg, DataConfig):
        raise ValueError(f"build_dataset expects a DataConfig, got {type(cfg).__name__}")
    seq_len = _check_int("seq_len", seq_len, 1)
    ds = _text_dataset(cfg, None if cache is None else Path(cache)) if cfg.task == "text" else SyntheticDataset(cfg)
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
            return TextDataset(cfg, chars=info["chars"], tokens=None, source=str(info.get("source")), sha256=None)
        ds = SyntheticDataset(cfg)
    else:
        ds = build_dataset(cfg, seq_len, cache=cache)
    if ds.vocab_size != info.get("vocab_size") or getattr(ds, "chars", None) != info.get("chars"):
        raise ValueError(
            f"the {cfg.task} data (data.path={cfg.path!r}) has a vocabulary of {ds.vocab_size} tokens different from "
            f"the {info.get('vocab_size')} saved in {path}: use the data config and file the run was trained on"
        )
    return ds


# ====================================================================== download
class DownloadError(RuntimeError):
    """The corpus could not be fetched (offline, HTTP error); the message is one line."""


def download(
    url: str = TINY_SHAKESPEARE_URL, out: str | os.PathLike = DEFAULT_DOWNLOAD_PATH, timeout: float = 30.0
) -> Path:
    """Fetch ``url`` to ``out`` (atomically: a partial download never leaves a truncated file)."""
    out = Path(out)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"could not download {url} ({reason}): check the network connection, or fetch the file "
            f"by hand and pass data.path=FILE"
        ) from None
    if not body:
        raise DownloadError(f"{url} returned an empty body; try again later or pass data.path=FILE")
    _atomic_write(out, lambda f: f.write(body))
    return out


# ====================================================================== command line
def _bench(args) -> int:
    """Print a table: microseconds per batch for each task (text only when a corpus is found)."""
    configs = [("induction", DataConfig(task="induction")), ("copy", DataConfig(task="copy"))]
    configs.append(("mqar", DataConfig(task="mqar", vocab_size=256, n_pairs=4)))
    try:
        resolve_text_path(args.path)
        configs.insert(0, ("text/char", DataConfig(task="text", path=args.path)))
        configs.insert(1, ("text/byte", DataConfig(task="text", path=args.path, level="byte")))
    except ValueError as e:
        print(f"(no text corpus: {e})")
    b, t = args.batch_size, args.seq_len
    print(f"batch {b} x {t}, {args.repeats} batches each\n")
    print("| task | build (ms) | per batch (us) |\n|---|---:|---:|")
    for name, cfg in configs:
        t0 = time.perf_counter()
        ds = build_dataset(cfg, t)
        build_ms = 1e3 * (time.perf_counter() - t0)
        ds.batch("train", 0, b, t)  # warm the page cache
        t0 = time.perf_counter()
        for step in range(args.repeats):
            ds.batch("train", step, b, t)
        per = 1e6 * (time.perf_counter() - t0) / args.repeats
        print(f"| {name} | {build_ms:.1f} | {per:.0f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="fetch tiny Shakespeare (Karpathy's char-rnn copy)")
    dl.add_argument("--out", default=str(DEFAULT_DOWNLOAD_PATH), help="where to write (default: %(default)s)")
    dl.add_argument("--url", default=TINY_SHAKESPEARE_URL, help="source address (default: %(default)s)")
    dl.add_argument("--timeout", type=float, default=30.0, help="seconds before giving up")
    bench = sub.add_parser("bench", help="time batch construction for every task")
    bench.add_argument("--path", default=None, help="text file (default: tiny Shakespeare)")
    bench.add_argument("--batch-size", type=int, default=64)
    bench.add_argument("--seq-len", type=int, default=256)
    bench.add_argument("--repeats", type=int, default=1000)
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            out = download(args.url, args.out, args.timeout)
            print(f"wrote {out} ({out.stat().st_size:,} bytes)")
            return 0
        return _bench(args)
    except (DownloadError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
