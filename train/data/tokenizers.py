"""Tokenizers of text corpora: text <-> token ids, and the state that travels with a run.

A tokenizer is a small object with ``encode(text) -> ids [N] int32``, ``decode(ids) -> text``,
``vocab_size`` and ``state()`` (JSON: what ``vocab.json`` and the token cache carry beyond the
level's name, enough to rebuild it with ``from_state``). ``fit(raw bytes)`` builds one from a
corpus and returns the corpus's ids with it. A new kind subclasses :class:`Tokenizer` and registers
its class in :data:`TOKENIZERS` under the name ``data.level`` selects.

    char   the corpus's distinct characters, sorted by code point (nanoGPT's prepare.py)
    byte   the UTF-8 bytes, 256 ids (any file works)
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np


class Tokenizer(abc.ABC):
    """Text <-> ids. ``source`` names the corpus in error messages."""

    level: ClassVar[str]  # the name in TOKENIZERS, DataConfig.level and vocab.json
    vocab_size: int
    source: str

    @classmethod
    @abc.abstractmethod
    def fit(cls, raw: bytes, source: str) -> tuple[Tokenizer, np.ndarray]:
        """(the tokenizer of a corpus, its ids [N] in the smallest unsigned dtype) from the file's bytes."""

    @classmethod
    @abc.abstractmethod
    def from_state(cls, state: dict[str, Any], source: str) -> Tokenizer:
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
    def fit(cls, raw: bytes, source: str) -> tuple[ByteTokenizer, np.ndarray]:
        return cls(source), np.frombuffer(raw, dtype=np.uint8).copy()

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str) -> ByteTokenizer:
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
    def fit(cls, raw: bytes, source: str) -> tuple[CharTokenizer, np.ndarray]:
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
    def from_state(cls, state: dict[str, Any], source: str) -> CharTokenizer:
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


# The tokenizers by name (DataConfig.level): a new kind adds its class here.
TOKENIZERS: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "byte": ByteTokenizer}


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
