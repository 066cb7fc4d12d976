"""train/data/bpe.py: GPT-2's BPE equals tiktoken's ``gpt2`` encoding, built independently.

The reference is the encoding ``tiktoken.get_encoding("gpt2")`` builds, made here from the same two
files by tiktoken's own loader (``data_gym_to_mergeable_bpe_ranks``, GPT-2's pattern from tiktoken_ext)
instead of our conversion; both are also checked against ids known from GPT-2 itself. The files are
read from ../shared/data/gpt2 next to the project (never committed); the tests skip without them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from train.data.bpe import GPT2_PATTERN, TokenizerError, load_gpt2_bpe, mergeable_ranks

ROOT = Path(__file__).resolve().parents[1]


def _shared(*parts: str) -> Path | None:
    """``shared/data/...`` in the nearest ancestor of the project that has it (a worktree sits deeper)."""
    for base in ROOT.parents:
        if (p := base.joinpath("shared", "data", *parts)).exists():
            return p
    return None


GPT2_DIR = _shared("gpt2")
SHAKESPEARE = _shared("tinyshakespeare.txt")
pytestmark = pytest.mark.skipif(GPT2_DIR is None, reason="../shared/data/gpt2 (encoder.json, vocab.bpe) not found")

STRINGS = [
    "Hello world",
    "héllo wörld, naïve café",
    "emoji: 👋🏽 🧑‍🚀 🇫🇷 and ✨sparkles✨",
    "中文分词测试，日本語のテキスト、한국어 문장",
    "tabs\t\tand   runs     of spaces   \n\n\n  trailing   ",
    "   ",
    "\n",
    "first doc<|endoftext|>second doc <|endoftext|> third",
    "I'm sure they've said you'll go, we'd LL've",
    "numbers 1234567890 3.14159 -42 1e-5",
    "code: def f(x):\n    return x ** 2  # comment\r\n",
    "",
]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """tiktoken's gpt2 Encoding, built by tiktoken's loader from the local files (its cache disabled)."""
    import os

    import tiktoken
    import tiktoken.load
    from tiktoken_ext.openai_public import r50k_pat_str

    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # '' disables tiktoken's copy of the files in /tmp
    try:
        ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(GPT2_DIR / "vocab.bpe"), encoder_json_file=str(GPT2_DIR / "encoder.json")
        )
    finally:
        os.environ.pop("TIKTOKEN_CACHE_DIR") if old is None else os.environ.__setitem__("TIKTOKEN_CACHE_DIR", old)
    assert r50k_pat_str == GPT2_PATTERN
    return tiktoken.Encoding(
        "gpt2-reference",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_bpe(GPT2_DIR)


@pytest.fixture(scope="module")
def tok_hf_names(tmp_path_factory):
    """The same data under a Hugging Face checkpoint's names, in a directory of its own."""
    d = tmp_path_factory.mktemp("hf-names")
    shutil.copy(GPT2_DIR / "encoder.json", d / "vocab.json")
    shutil.copy(GPT2_DIR / "vocab.bpe", d / "merges.txt")
    return load_gpt2_bpe(d)


def test_known_ids(tok, tok_hf_names):
    known = {
        "Hello world": [15496, 995],
        "<|endoftext|>": [50256],
        "!": [0],
        " the": [262],
        "\n": [198],
        "\n\n": [628],
    }
    for t in (tok, tok_hf_names):
        assert {s: t.encode(s) for s in known} == known
        assert (t.vocab_size, t.eot_id) == (50257, 50256)


@pytest.mark.parametrize("text", STRINGS, ids=range(len(STRINGS)))
def test_strings_equal_tiktoken_and_round_trip(tok, tok_hf_names, reference, text):
    want = reference.encode(text, allowed_special="all")
    assert tok.encode(text) == want
    assert tok_hf_names.encode(text) == want
    assert tok.decode(want) == text
    assert tok.encode(text, allow_special=False) == reference.encode_ordinary(text)
    assert tok.decode(tok.encode(text, allow_special=False)) == text


def test_special_token_only_when_allowed(tok):
    assert 50256 in tok.encode("a<|endoftext|>b")
    assert 50256 not in tok.encode("a<|endoftext|>b", allow_special=False)


@pytest.mark.skipif(SHAKESPEARE is None, reason="../shared/data/tinyshakespeare.txt not found")
def test_all_of_tiny_shakespeare(tok, tok_hf_names, reference):
    text = SHAKESPEARE.read_text(encoding="utf-8")
    want = reference.encode(text, allowed_special="all")
    assert len(want) == 338_025  # nanoGPT's shakespeare/prepare.py: 301,966 train + 36,059 val tokens
    got = tok.encode(text)
    assert got == want
    assert tok_hf_names.encode(text) == want
    assert tok.decode(got) == text
    docs = text.split("\n\n")
    assert tok.encode_batch(docs) == reference.encode_ordinary_batch(docs)


def test_missing_files_and_bad_merges_are_one_line(tmp_path):
    with pytest.raises(TokenizerError, match="encoder.json \\+ vocab.bpe or vocab.json \\+ merges.txt"):
        load_gpt2_bpe(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1, "ab": 3, "abb": 2}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nab b\n")
    with pytest.raises(TokenizerError, match="merges.txt line 3: 'abb' has id 2 out of merge order") as e:
        mergeable_ranks(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert "\n" not in str(e.value)
