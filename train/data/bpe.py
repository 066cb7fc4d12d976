"""GPT-2's byte-pair encoding through ``tiktoken``, loaded offline from a directory or by tiktoken when online.

    tok = load_gpt2_bpe("/path/to/gpt2")     # encoder.json + vocab.bpe (OpenAI's names)
                                             # or vocab.json + merges.txt (a Hugging Face checkpoint's)
    tok = load_gpt2_bpe(None)                # tiktoken.get_encoding("gpt2"): downloads once when online
    ids = tok.encode("Hello world")          # [15496, 995]; '<|endoftext|>' in the text is token 50256
    tok.decode(ids) == "Hello world"

Both file pairs hold the same data: a token -> id table whose strings spell bytes with GPT-2's
printable byte alphabet (``bytes_to_unicode`` in openai/gpt-2's encoder.py), and the merges in
priority order. tiktoken ranks a merged token by its id, which is only the BPE of the files when
the ids follow the merge order; :func:`mergeable_ranks` converts the table and checks exactly that,
so a vocabulary that tiktoken would encode differently is refused with one line rather than
tokenized wrongly. (tiktoken's own ``data_gym_to_mergeable_bpe_ranks`` does the same conversion but
caches local files in a temporary directory keyed by their path, so an edited file could be read
stale; tests/test_tokenizers_bpe.py uses it as the independent reference.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# GPT-2's pre-tokenizer (tiktoken's r50k pattern; openai/gpt-2's encoder.py, with possessive quantifiers)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
FILE_PAIRS = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))  # OpenAI's names, Hugging Face's


class TokenizerError(ValueError):
    """Tokenizer files missing or not a byte-level BPE tiktoken can encode; the message is one line."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes are themselves, the rest 256+n."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def find_files(directory: str | Path) -> tuple[Path, Path]:
    """(token table, merges) in ``directory`` under either naming; one-line error if neither pair is there."""
    d = Path(directory)
    for table, merges in FILE_PAIRS:
        if (d / table).is_file() and (d / merges).is_file():
            return d / table, d / merges
    names = " or ".join(f"{a} + {b}" for a, b in FILE_PAIRS)
    raise TokenizerError(f"{d}: no GPT-2 tokenizer files (expected {names})")


def mergeable_ranks(table_file: Path, merges_file: Path) -> tuple[dict[bytes, int], dict[str, int]]:
    """(tiktoken's mergeable ranks, special tokens) from a token table and its merges."""
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    table: dict[str, int] = json.loads(Path(table_file).read_text(encoding="utf-8"))
    ranks: dict[bytes, int] = {}
    special: dict[str, int] = {}
    for token, i in table.items():
        if token.startswith("<|") and token.endswith("|>"):
            special[token] = i
            continue
        try:
            ranks[bytes(decoder[c] for c in token)] = i
        except KeyError:
            raise TokenizerError(
                f"{table_file.name}: token {token!r} is not byte-level BPE (GPT-2's alphabet)"
            ) from None
    last = -1
    for n, line in enumerate(Path(merges_file).read_text(encoding="utf-8").splitlines()):
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split()
        merged = "".join(parts)
        if len(parts) != 2 or merged not in table:
            raise TokenizerError(
                f"{merges_file.name} line {n + 1}: {line!r} does not make a token of {table_file.name}"
            )
        if table[merged] <= last:
            raise TokenizerError(
                f"{merges_file.name} line {n + 1}: {merged!r} has id {table[merged]} out of merge order; "
                f"tiktoken needs ids that follow the merges"
            )
        last = table[merged]
    return ranks, special


@dataclass(frozen=True)
class BPETokenizer:
    """A tiktoken Encoding with the lab's tokenizer interface: encode/decode/vocab_size."""

    encoding: object  # tiktoken.Encoding
    source: str  # the directory it was read from, or 'tiktoken:gpt2'

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self.encoding.eot_token

    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token ids of ``text``; ``<|endoftext|>`` is the special token unless ``allow_special=False``
        (then it is encoded as ordinary text, as nanoGPT's prepare.py does with encode_ordinary)."""
        if allow_special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str], *, num_threads: int = 8) -> list[list[int]]:
        """Ordinary-text encoding of many documents at once (tiktoken's threads)."""
        return self.encoding.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids) -> str:
        """Text of ``ids``; a sequence cut inside a UTF-8 character decodes it as U+FFFD."""
        return self.encoding.decode([int(i) for i in ids], errors="replace")


def load_gpt2_bpe(directory: str | Path | None = None) -> BPETokenizer:
    """GPT-2's BPE from ``directory`` (either file pair), or tiktoken's download of ``gpt2`` when None."""
    import tiktoken

    if directory is None:
        try:
            return BPETokenizer(tiktoken.get_encoding("gpt2"), "tiktoken:gpt2")
        except Exception as e:  # offline: tiktoken fails inside requests
            raise TokenizerError(
                f"cannot download tiktoken's gpt2 files ({type(e).__name__}); offline? pass a directory "
                f"holding encoder.json + vocab.bpe (or vocab.json + merges.txt)"
            ) from None
    table, merges = find_files(directory)
    ranks, special = mergeable_ranks(table, merges)
    enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special)
    return BPETokenizer(enc, str(Path(directory).resolve()))
