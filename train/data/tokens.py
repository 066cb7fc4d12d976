"""Tokenized corpora: token ids already encoded, memory-mapped, never loaded whole; and ``prepare``, which writes them.

``data.path`` may name

    a directory holding nanoGPT's ``train.bin`` and ``val.bin``   uint16 ids (its prepare.py's format); the
                                                                  two files are the splits (val_fraction unused)
    a ``.npy`` file                                               a 1-D integer array; the last val_fraction
                                                                  of it is the validation split

``data.level`` names the tokenizer that decodes them (``gpt2`` or ``byte``; ``char`` needs its corpus).
The vocabulary size is the largest id + 1 (read from ``meta.json`` when :func:`prepare` wrote one, else
found by a chunked scan of the memory map), so a model whose vocabulary is smaller than the tokenizer's
can train on data that uses only its ids.

    python -m train.data prepare input.txt --tokenizer gpt2 --bpe-dir ../shared/data/gpt2 --out data/shakespeare

streams the text in chunks cut where GPT-2's pre-tokenizer cannot join across the cut (a newline with a
printable ASCII character on each side), encodes a few chunks at a time with tiktoken's
``encode_ordinary_batch`` and appends the ids to the ``.bin`` files: memory stays bounded by the chunk
size whatever the file's size. The first ``val_fraction`` of the bytes (moved to such a cut) is train.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from train.data.base import DataConfig
from train.data.text import TextDataset, tokenizer_options
from train.data.tokenizers import TOKENIZERS, Tokenizer

BIN_FILES = ("train.bin", "val.bin")
META_FILE = "meta.json"
SCAN_CHUNK = 1 << 24  # ids per step of the max-id scan
_PRINTABLE = frozenset(range(0x21, 0x7F))  # ASCII without space and controls: never part of a whitespace run


def is_token_path(path: str | None) -> bool:
    """Whether ``data.path`` names token ids (a .npy file or a directory with train.bin + val.bin)."""
    if path is None:
        return False
    p = Path(path).expanduser()
    return p.suffix == ".npy" or p.is_dir()


class TokenDataset(TextDataset):
    """A :class:`TextDataset` whose splits are memory-mapped token arrays read as they are."""

    def __init__(
        self, cfg: DataConfig, *, tokenizer: Tokenizer, splits: dict[str, np.ndarray], vocab_size: int, source
    ):
        super().__init__(cfg, tokenizer=tokenizer, tokens=None, source=source, sha256=None)
        self.splits = splits
        self.tokens = splits["train"]  # for code that reads len(ds.tokens); the splits are what batches use
        self.n_train = len(splits["train"])
        self.vocab_size = vocab_size

    @property
    def n_val(self) -> int:
        return len(self.splits["val"])

    def _need_tokens(self):
        pass


def _max_id(arrays) -> int:
    top = 0
    for a in arrays:
        for i in range(0, len(a), SCAN_CHUNK):
            top = max(top, int(a[i : i + SCAN_CHUNK].max()))
    return top


def token_dataset(cfg: DataConfig) -> TokenDataset:
    """The token corpus at ``cfg.path`` (see the module docstring); one-line ValueError when it cannot be read."""
    p = Path(cfg.path).expanduser()
    if cfg.level == "char":
        raise ValueError(
            f"data.path={cfg.path!r} holds token ids, which data.level=char cannot decode (its vocabulary "
            f"comes from a text file): set data.level=gpt2 (or byte) to the tokenizer that wrote them"
        )
    meta: dict[str, Any] = {}
    if p.is_dir():
        missing = [f for f in BIN_FILES if not (p / f).is_file()]
        if missing:
            raise ValueError(
                f"data.path={cfg.path!r} is a directory without {' and '.join(missing)}: point it at a text file, "
                f"a .npy token array or a directory written by `python -m train.data prepare`"
            )
        splits = {s: np.memmap(p / f"{s}.bin", dtype=np.uint16, mode="r") for s in ("train", "val")}
        if (p / META_FILE).is_file():
            meta = json.loads((p / META_FILE).read_text())
    else:
        if not p.is_file():
            raise ValueError(f"data.path={cfg.path!r}: no such file ({p.resolve()}); check the path")
        try:
            tokens = np.load(p, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise ValueError(f"data.path={cfg.path!r} is not a readable .npy array ({e})") from None
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(
                f"data.path={cfg.path!r} holds a {tokens.dtype} array of shape {tokens.shape}: "
                f"expected a 1-D array of integer token ids"
            )
        n_train = int(len(tokens) * (1.0 - cfg.val_fraction))
        splits = {"train": tokens[:n_train], "val": tokens[n_train:]}
    if meta.get("tokenizer") not in (None, cfg.level):
        raise ValueError(
            f"{p} was prepared with the {meta['tokenizer']!r} tokenizer, not data.level={cfg.level!r}: "
            f"set data.level={meta['tokenizer']}"
        )
    if any(len(s) == 0 for s in splits.values()):
        raise ValueError(f"data.path={cfg.path!r}: a split is empty ({ {k: len(v) for k, v in splits.items()} })")
    tokenizer = TOKENIZERS[cfg.level].from_state(meta, str(p), **tokenizer_options(cfg))
    top = meta["max_id"] if "max_id" in meta else _max_id(splits.values())
    if top >= tokenizer.vocab_size:
        raise ValueError(
            f"data.path={cfg.path!r} has token id {top}, beyond data.level={cfg.level}'s "
            f"{tokenizer.vocab_size} ids: set data.level to the tokenizer that wrote it"
        )
    return TokenDataset(cfg, tokenizer=tokenizer, splits=splits, vocab_size=top + 1, source=str(p))


# ---------------------------------------------------------------------- prepare
def safe_cut(buf: bytes | bytearray, start: int) -> int:
    """The first index ``i >= start`` just after a ``\\n`` whose neighbours are printable ASCII, or -1.

    GPT-2's pre-tokenizer never joins such a newline to its neighbours (it is a token of its own,
    ``\\s``, and at the end of a chunk ``\\s++$`` takes only it), so encoding the two sides apart gives
    the ids of encoding them together.
    """
    i = buf.find(b"\n", max(start, 1))
    while i != -1:
        if i + 1 < len(buf) and buf[i - 1] in _PRINTABLE and buf[i + 1] in _PRINTABLE:
            return i + 1
        i = buf.find(b"\n", i + 1)
    return -1


def _chunks(f, end: int, chunk_bytes: int):
    """Text chunks of about ``chunk_bytes`` from ``f``'s position up to byte ``end``, cut by :func:`safe_cut`."""
    buf = bytearray()
    pos = f.tell()
    while True:
        if pos < end:
            data = f.read(min(chunk_bytes, end - pos))
            pos += len(data)
            buf += data
        if pos >= end:
            if buf:
                yield buf.decode("utf-8")
            return
        cut = safe_cut(buf, chunk_bytes)
        if cut == -1:  # no safe cut past chunk_bytes yet: read on (memory grows only on text without one)
            continue
        yield bytes(buf[:cut]).decode("utf-8")
        del buf[:cut]


def split_offset(path: Path, val_fraction: float) -> int:
    """The byte where val starts: ``(1 - val_fraction)`` of the file, moved to the next safe cut."""
    size = path.stat().st_size
    at = int(size * (1.0 - val_fraction))
    with open(path, "rb") as f:
        while at < size:
            f.seek(max(at - 1, 0))
            window = f.read(1 << 16)
            cut = safe_cut(window, 1)
            if cut != -1:
                return max(at - 1, 0) + cut
            at += len(window) - 2
    return size


def prepare(
    text_file: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tokenizer: str = "gpt2",
    bpe_dir: str | None = None,
    val_fraction: float = 0.1,
    chunk_bytes: int = 1 << 20,
    batch_chunks: int = 8,
    threads: int = 2,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Encode ``text_file`` into ``out/train.bin`` + ``out/val.bin`` (uint16) and ``out/meta.json``, streaming.

    ``batch_chunks`` chunks of ``chunk_bytes`` go to tiktoken's ``encode_ordinary_batch`` at once
    (``threads`` threads). Returns the metadata written.
    """
    from tqdm import tqdm

    if tokenizer != "gpt2":
        raise ValueError(f"--tokenizer {tokenizer!r}: prepare writes GPT-2 ids; char and byte corpora need no prepare")
    src = Path(text_file)
    if not src.is_file():
        raise ValueError(f"{text_file}: no such file")
    tok = TOKENIZERS["gpt2"].load(bpe_dir, str(src))
    enc = tok.bpe.encoding
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = src.stat().st_size
    val_at = split_offset(src, val_fraction)
    counts, top = {}, 0
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=f"prepare {src.name}",
        disable=None if progress is None else not progress,
    )

    def encode_into(w, texts: list[str]) -> int:
        """Encode ``texts`` (tiktoken threads), append their ids to ``w``; returns how many."""
        nonlocal top
        n = 0
        for ids in enc.encode_ordinary_batch(texts, num_threads=threads):
            arr = np.asarray(ids, dtype=np.uint16)
            if arr.size:
                top = max(top, int(arr.max()))
            arr.tofile(w)
            n += arr.size
        bar.update(sum(len(t.encode("utf-8")) for t in texts))
        return n

    with open(src, "rb") as f:
        for split, end in (("train", val_at), ("val", size)):
            tmp = out / f".{split}.bin.tmp"
            n = 0
            with open(tmp, "wb") as w:
                batch: list[str] = []
                for piece in _chunks(f, end, chunk_bytes):
                    batch.append(piece)
                    if len(batch) == batch_chunks:
                        n += encode_into(w, batch)
                        batch = []
                if batch:
                    n += encode_into(w, batch)
            os.replace(tmp, out / f"{split}.bin")
            counts[split] = n
    bar.close()
    meta = {"tokenizer": "gpt2", **tok.state(), "max_id": top, "n_tokens": counts, "source": str(src.resolve())}
    (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return meta
