"""GPT-2's tokenizer as a data level (train/data/tokenizers.py) and tokenized corpora (train/data/tokens.py).

The GPT-2 files are read from ../shared/data/gpt2 next to the project (never committed); tests that need
them skip without them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from train.data import DataConfig, build_dataset, load_dataset_for_run
from train.data.tokens import prepare, safe_cut

ROOT = Path(__file__).resolve().parents[1]


def _shared(*parts: str) -> Path | None:
    for base in ROOT.parents:
        if (p := base.joinpath("shared", "data", *parts)).exists():
            return p
    return None


GPT2_DIR = _shared("gpt2")
SHAKESPEARE = _shared("tinyshakespeare.txt")
needs_gpt2 = pytest.mark.skipif(GPT2_DIR is None or SHAKESPEARE is None, reason="../shared/data/gpt2 not found")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_CACHE_DIR", str(tmp_path / "cache"))


def test_bpe_dir_needs_level_gpt2():
    with pytest.raises(ValueError, match="bpe_dir.*is for data.level=gpt2"):
        DataConfig(task="text", level="char", bpe_dir="x")


@pytest.mark.parametrize(
    "text, start, want",
    [(b"ab\ncd", 0, 3), (b"ab\n\ncd", 0, -1), (b"a \ncd", 0, -1), (b"ab\ncd\nef", 4, 6), (b"ab\n", 0, -1)],
)
def test_safe_cut(text, start, want):
    assert safe_cut(text, start) == want


@needs_gpt2
def test_gpt2_level_text_corpus_and_run_vocab(tmp_path):
    from train.data.bpe import load_gpt2_bpe

    cfg = DataConfig(task="text", path=str(SHAKESPEARE), level="gpt2", bpe_dir=str(GPT2_DIR))
    ds = build_dataset(cfg, 64)
    ref = load_gpt2_bpe(GPT2_DIR)
    text = SHAKESPEARE.read_text()
    assert ds.vocab_size == 50257 and len(ds.tokens) == 338025  # nanoGPT's shakespeare/prepare.py count
    np.testing.assert_array_equal(ds.tokens[:5000], ref.encode(text[:20000], allow_special=False)[:5000])
    run = tmp_path / "run"
    ds.save_vocab(run)
    info = json.loads((run / "vocab.json").read_text())
    assert info["level"] == "gpt2" and info["bpe_dir"] == str(GPT2_DIR.resolve()) and len(info["bpe_sha256"]) == 64
    # the run rebuilds the same tokenizer without the corpus; prompts may hold <|endoftext|>
    codec = load_dataset_for_run(run, DataConfig(task="text", level="gpt2"))
    assert codec.encode("Hello world<|endoftext|>").tolist() == [15496, 995, 50256]
    assert codec.decode(codec.encode("café 👋")) == "café 👋"
    # the files moved: a directory passed as bpe_dir is used and checked against the fingerprint
    moved = tmp_path / "moved"
    shutil.copytree(GPT2_DIR, moved)
    info["bpe_dir"] = str(tmp_path / "gone")
    (run / "vocab.json").write_text(json.dumps(info))
    codec = load_dataset_for_run(run, DataConfig(task="text", level="gpt2", bpe_dir=str(moved)))
    assert codec.encode("Hello").tolist() == [15496]
    info["bpe_sha256"] = "0" * 64
    (run / "vocab.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="fingerprint") as e:
        load_dataset_for_run(run, DataConfig(task="text", level="gpt2", bpe_dir=str(moved)))
    assert "\n" not in str(e.value)


@needs_gpt2
def test_prepare_streams_the_same_ids_as_whole_file_encoding(tmp_path):
    from train.data.bpe import load_gpt2_bpe

    out = tmp_path / "shakespeare"
    meta = prepare(SHAKESPEARE, out, bpe_dir=str(GPT2_DIR), chunk_bytes=4096, batch_chunks=3, progress=False)
    ref = load_gpt2_bpe(GPT2_DIR).encode(SHAKESPEARE.read_text(), allow_special=False)
    train = np.memmap(out / "train.bin", dtype=np.uint16, mode="r")
    val = np.memmap(out / "val.bin", dtype=np.uint16, mode="r")
    np.testing.assert_array_equal(np.concatenate([train, val]), ref)  # 4 KB chunks: ~270 cuts, none changes an id
    assert meta["n_tokens"] == {"train": len(train), "val": len(val)} and 0.08 < len(val) / len(ref) < 0.12
    assert meta["max_id"] == max(ref)

    ds = build_dataset(DataConfig(task="text", path=str(out), level="gpt2"), 32)
    assert isinstance(ds.splits["train"], np.memmap) and ds.vocab_size == meta["max_id"] + 1
    b = ds.batch("val", 3, 2, 32)
    assert b["inputs"].shape == (2, 32) and np.all(b["targets"][:, :-1] == b["inputs"][:, 1:])
    with pytest.raises(ValueError, match="data.level=char cannot decode"):
        build_dataset(DataConfig(task="text", path=str(out), level="char"), 32)
    with pytest.raises(ValueError, match="prepared with the 'gpt2' tokenizer"):
        build_dataset(DataConfig(task="text", path=str(out), level="byte"), 32)


def test_npy_token_array_is_memory_mapped(tmp_path):
    ids = (np.arange(5000) * 7 % 200).astype(np.uint16)
    np.save(tmp_path / "ids.npy", ids)
    ds = build_dataset(DataConfig(task="text", path=str(tmp_path / "ids.npy"), level="byte"), 16)
    assert ds.vocab_size == 200 and ds.n_train == 4500 and ds.n_val == 500
    assert isinstance(ds.splits["train"].base, np.memmap) or isinstance(ds.splits["train"], np.memmap)
    assert ds.batch("train", 0, 4, 16)["inputs"].max() < 200
    np.save(tmp_path / "bad.npy", np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="expected a 1-D array"):
        build_dataset(DataConfig(task="text", path=str(tmp_path / "bad.npy"), level="byte"), 2)
    np.save(tmp_path / "big.npy", np.array([1, 2, 300] * 10, np.int32))
    with pytest.raises(ValueError, match="token id 300, beyond data.level=byte's 256"):
        build_dataset(DataConfig(task="text", path=str(tmp_path / "big.npy"), level="byte"), 2)


@needs_gpt2
def test_prepare_benchmark_prints_its_table(capsys, tmp_path):
    from experiments.bench.prepare import main

    argv = ["--bpe-dir", str(GPT2_DIR), "--text", str(SHAKESPEARE), "--mb", "1", "--workdir", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "same ids: True" in out and "| streaming prepare (ours) |" in out and "| nanoGPT: whole file" in out
