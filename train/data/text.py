"""Text corpora: a file encoded once by a tokenizer, cached as a memory-mapped token array, split train/val.

The file named by ``DataConfig.path`` (default: tiny Shakespeare, see :func:`resolve_text_path`) is
encoded once to a ``.npy`` token array in a cache directory (``$ATTN_CACHE_DIR`` or
``~/.cache/attention-lab``), keyed by the SHA-256 of the file's bytes and the level, written
atomically (temp file + ``os.replace``) and memory-mapped afterwards. The last ``val_fraction``
of the tokens is the validation split (nanoGPT's 90/10 split of shakespeare_char).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from train.data.base import SPLITS, VOCAB_FILE, DataConfig, Dataset, _atomic_write, _write_json
from train.data.tokenizers import TOKENIZERS, Tokenizer

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the repository (…/main)
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# Where data.path=None looks, in order: the shared copy next to the repository, then the project's
# data/ directory (where `python -m train.data download` writes by default).
DEFAULT_TEXT_CANDIDATES: tuple[Path, ...] = (
    PROJECT_ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    PROJECT_ROOT / "data" / "tinyshakespeare.txt",
)
DEFAULT_DOWNLOAD_PATH = PROJECT_ROOT / "data" / "tinyshakespeare.txt"
CACHE_ENV = "ATTN_CACHE_DIR"

# How many times a text corpus has been encoded (cache misses) in this process; tests read it to
# check that a second build reuses the cache instead of encoding again.
ENCODE_COUNT = 0


class TextDataset(Dataset):
    """A text corpus as a memory-mapped token array [N] split into train [:n_train] and val [n_train:].

    ``tokenizer`` (train/data/tokenizers.py, chosen by ``cfg.level``) encodes prompts and decodes ids.
    ``tokens`` is None for a codec-only dataset loaded from a run's vocab.json (encode/decode only).
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        tokenizer: Tokenizer,
        tokens: np.ndarray | None,
        source: str,
        sha256: str | None,
        cache_path: Path | None = None,
    ):
        self.cfg = cfg
        self.level = cfg.level
        self.tokenizer = tokenizer
        self.specials = {}
        self.vocab_size = tokenizer.vocab_size
        self.tokens = tokens
        self.source = source
        self.sha256 = sha256
        self.cache_path = cache_path
        if tokens is not None:
            n = len(tokens)
            self.n_train = int(n * (1.0 - cfg.val_fraction))  # nanoGPT: data[:int(n*0.9)]
            self.splits = {"train": tokens[: self.n_train], "val": tokens[self.n_train :]}

    @property
    def chars(self) -> list[str] | None:
        """The character vocabulary (level 'char'), else None."""
        return self.tokenizer.state().get("chars")

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
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        """ids [N] -> text (byte level: invalid UTF-8 sequences become U+FFFD)."""
        return self.tokenizer.decode(ids)

    def vocab_info(self) -> dict[str, Any]:
        return {
            "task": "text",
            "level": self.level,
            "vocab_size": self.vocab_size,
            **self.tokenizer.state(),
            "specials": {},
            "source": self.source,
            "sha256": self.sha256,
        }


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


def tokenizer_options(cfg: DataConfig) -> dict[str, Any]:
    """The DataConfig fields a tokenizer kind reads beyond its level (GPT-2: the BPE files' directory)."""
    return {"bpe_dir": cfg.bpe_dir}


def _encode_corpus(raw: bytes, cfg: DataConfig, source: str) -> tuple[Tokenizer, np.ndarray]:
    """Raw file bytes -> (the level's tokenizer fitted to them, token ids [N] in the smallest unsigned dtype)."""
    global ENCODE_COUNT
    ENCODE_COUNT += 1
    return TOKENIZERS[cfg.level].fit(raw, source, **tokenizer_options(cfg))


def _load_cached(npy: Path, meta_path: Path, sha: str, cfg: DataConfig, source: str):
    """The cached (tokenizer, tokens memmap) if both files exist and agree with each other, else None."""
    try:
        meta = json.loads(meta_path.read_text())
        tokens = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta.get("sha256") != sha or meta.get("level") != cfg.level or tokens.ndim != 1:
        return None
    if len(tokens) != meta.get("n_tokens"):
        return None
    return TOKENIZERS[cfg.level].from_state(meta, source, **tokenizer_options(cfg)), tokens


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
    hit = _load_cached(npy, meta_path, sha, cfg, source)
    if hit is not None:
        tokenizer, tokens = hit
        return TextDataset(cfg, tokenizer=tokenizer, tokens=tokens, source=source, sha256=sha, cache_path=npy)

    # ---- cache miss: encode once, write the array then its metadata (each atomically), memory-map it
    tokenizer, tokens = _encode_corpus(path.read_bytes(), cfg, source)
    meta = {"sha256": sha, "level": cfg.level, "n_tokens": len(tokens), **tokenizer.state(), "source": source}
    try:
        _atomic_write(npy, lambda f: np.save(f, tokens))
        _write_json(meta_path, meta)
        tokens = np.load(npy, mmap_mode="r")
    except OSError as e:  # a read-only home, a full disk: train from memory rather than fail
        warnings.warn(f"could not write the token cache {npy} ({e}); keeping the tokens in memory", stacklevel=3)
        npy = None
    return TextDataset(cfg, tokenizer=tokenizer, tokens=tokens, source=source, sha256=sha, cache_path=npy)


# ---------------------------------------------------------------------- download
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
