"""Tokenizers of text corpora: text <-> token ids, and the state that travels with a run.

A tokenizer is a small object with ``encode(text) -> ids [N] int32``, ``decode(ids) -> text``,
``vocab_size`` and ``state()`` (JSON: what ``vocab.json`` and the token cache carry beyond the
level's name, enough to rebuild it with ``from_state``). ``fit(raw bytes)`` builds one from a
corpus and returns the corpus's ids with it. A new kind subclasses :class:`Tokenizer` and registers
its class in :data:`TOKENIZERS` under the name ``data.level`` selects.

    char   the corpus's distinct characters, sorted by code point (nanoGPT's prepare.py)
    byte   the UTF-8 bytes, 256 ids (any file works)
    gpt2   GPT-2's byte-pair encoding, 50257 ids (tiktoken; train/data/bpe.py), files from data.bpe_dir

``fit`` and ``from_state`` take keyword options from the DataConfig (``bpe_dir``); char and byte ignore them.
"""

from __future__ import annotations

import abc
import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class Tokenizer(abc.ABC):
    """Text <-> ids. ``source`` names the corpus in error messages."""

    level: ClassVar[str]  # the name in TOKENIZERS, DataConfig.level and vocab.json
    vocab_size: int
    source: str

    @classmethod
    @abc.abstractmethod
    def fit(cls, raw: bytes, source: str, **options: Any) -> tuple[Tokenizer, np.ndarray]:
        """(the tokenizer of a corpus, its ids [N] in the smallest unsigned dtype) from the file's bytes."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: dict[str, Any], source: str, **options: Any) -> Tokenizer:
        """The tokenizer whose :meth:`state` is ``state``."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-able fields that rebuild this tokenizer (written into vocab.json and the cache's metadata)."""

    @abc.abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """``text`` -> ids [N] int32; text the vocabulary cannot express raises a one-line ValueError."""

    @abc.abstractmethod
    def decode(self, ids) -> str:
        """ids [N] -> text."""

    def _check_ids(self, ids) -> np.ndarray:
        arr = as_ids(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            raise ValueError(f"decode: ids must be in [0, {self.vocab_size}), got range [{arr.min()}, {arr.max()}]")
        return arr


class ByteTokenizer(Tokenizer):
    """ids are the UTF-8 bytes of the text (256 ids); decoding replaces invalid sequences with U+FFFD."""

    level = "byte"

    def __init__(self, source: str = "bytes"):
        self.vocab_size = 256
        self.source = source

    @classmethod
    def fit(cls, raw: bytes, source: str, **options: Any) -> tuple[ByteTokenizer, np.ndarray]:
        return cls(source), np.frombuffer(raw, dtype=np.uint8).copy()

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str, **options: Any) -> ByteTokenizer:
        return cls(source)

    def state(self) -> dict[str, Any]:
        return {"chars": None}

    def encode(self, text: str) -> np.ndarray:
        _check_str(text)
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return self._check_ids(ids).astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """ids index ``chars``, the corpus's distinct characters sorted by code point (as in nanoGPT's prepare.py)."""

    level = "char"

    def __init__(self, chars: list[str], source: str):
        self.chars = chars
        self.vocab_size = len(chars)
        self.source = source
        # code points sorted ascending: encoding is a binary search (np.searchsorted)
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def fit(cls, raw: bytes, source: str, **options: Any) -> tuple[CharTokenizer, np.ndarray]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{source} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}): "
                f"set data.level=byte to train on its raw bytes"
            ) from None
        vocab, ids = np.unique(codepoints(text), return_inverse=True)  # sorted code points == sorted(set(text))
        dtype = np.uint16 if len(vocab) <= 1 << 16 else np.uint32
        return cls([chr(c) for c in vocab.tolist()], source), ids.astype(dtype)

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str, **options: Any) -> CharTokenizer:
        return cls(state["chars"], source)

    def state(self) -> dict[str, Any]:
        return {"chars": self.chars}

    def encode(self, text: str) -> np.ndarray:
        _check_str(text)
        cps = codepoints(text)
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
        return "".join(self.chars[i] for i in self._check_ids(ids).tolist())


class GPT2Tokenizer(Tokenizer):
    """GPT-2's byte-pair encoding (tiktoken), read from ``bpe_dir`` (encoder.json + vocab.bpe, or a Hugging
    Face checkpoint's vocab.json + merges.txt) or, with ``bpe_dir=None``, tiktoken's ``gpt2`` (downloaded once).

    What travels with a run (``state``) is the directory's absolute path and a SHA-256 fingerprint of the
    merge table, not the 1.5 MB of files: GPT-2's table is public and fixed, so when the directory is gone
    :meth:`from_state` rebuilds it from tiktoken's copy (or a directory passed as ``bpe_dir``) and the
    fingerprint proves it is the same table; a different table is refused in one line.
    Corpora are encoded with ``encode_ordinary`` (``<|endoftext|>`` in a file is text, as in nanoGPT's
    prepare.py); prompts with the special token allowed (``<|endoftext|>`` is id 50256).
    """

    level = "gpt2"

    def __init__(self, bpe, directory: str | None, source: str):
        self.bpe = bpe  # train.data.bpe.BPETokenizer
        self.directory = directory
        self.vocab_size = bpe.vocab_size
        self.source = source
        self.fingerprint = bpe_fingerprint(bpe)

    @classmethod
    def load(cls, bpe_dir: str | None, source: str = "gpt2") -> GPT2Tokenizer:
        from train.data.bpe import load_gpt2_bpe

        directory = None if bpe_dir is None else str(Path(bpe_dir).expanduser().resolve())
        return cls(load_gpt2_bpe(directory), directory, source)

    @classmethod
    def fit(
        cls, raw: bytes, source: str, *, bpe_dir: str | None = None, **options: Any
    ) -> tuple[GPT2Tokenizer, np.ndarray]:
        tok = cls.load(bpe_dir, source)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{source} is not valid UTF-8 (offset {e.start}): GPT-2's tokenizer reads text") from None
        return tok, np.asarray(tok.bpe.encode(text, allow_special=False), dtype=np.uint16)

    @classmethod
    def from_state(
        cls, state: dict[str, Any], source: str, *, bpe_dir: str | None = None, **options: Any
    ) -> GPT2Tokenizer:
        from train.data.bpe import TokenizerError

        saved = state.get("bpe_dir")
        candidates = [d for d in (bpe_dir, saved) if d is not None and Path(d).is_dir()]
        try:
            tok = cls.load(candidates[0] if candidates else None, source)
        except TokenizerError as e:
            raise ValueError(
                f"GPT-2 tokenizer: {saved} is gone and tiktoken's copy is unavailable ({e}); pass the directory "
                f"holding encoder.json + vocab.bpe (or vocab.json + merges.txt) with data.bpe_dir / --bpe-dir"
            ) from None
        want = state.get("bpe_sha256")
        if want is not None and want != tok.fingerprint:
            raise ValueError(
                f"the GPT-2 tokenizer read from {tok.directory or 'tiktoken'} has merge-table fingerprint "
                f"{tok.fingerprint[:12]}, not the run's {want[:12]}: pass the tokenizer files the run was trained with"
            )
        return tok

    def state(self) -> dict[str, Any]:
        return {"chars": None, "bpe_dir": self.directory, "bpe_sha256": self.fingerprint}

    def encode(self, text: str) -> np.ndarray:
        _check_str(text)
        return np.asarray(self.bpe.encode(text, allow_special=True), dtype=np.int32)

    def decode(self, ids) -> str:
        return self.bpe.decode(self._check_ids(ids).tolist())

    def token_labels(self, ids) -> list[str]:
        """One label per id (a token cut inside a UTF-8 character shows U+FFFD), for plot axes."""
        return [self.bpe.decode([int(i)]) for i in ids]


def bpe_fingerprint(bpe) -> str:
    """SHA-256 of a BPE's merge table (token bytes and ranks, in rank order) and special tokens."""
    enc = bpe.encoding
    h = hashlib.sha256()
    for token, rank in sorted(enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
        h.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
    for name, i in sorted(enc._special_tokens.items()):
        h.update(name.encode() + i.to_bytes(4, "little"))
    return h.hexdigest()


# The tokenizers by name (DataConfig.level): a new kind adds its class here.
TOKENIZERS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "byte": ByteTokenizer, "gpt2": GPT2Tokenizer}


def codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text`` as uint32 [N] (UTF-32 is one code unit per character)."""
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def as_ids(ids) -> np.ndarray:
    """``ids`` as a 1-D int64 array (an empty sequence of any shape is accepted); one-line ValueError otherwise."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0:
            return np.zeros((0,), np.int64)
        raise ValueError(f"decode expects a 1-D sequence of integer ids, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64)


def _check_str(text) -> None:
    if not isinstance(text, str):
        raise ValueError(f"encode expects a str, got {type(text).__name__}")
