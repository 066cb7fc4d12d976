"""train.data: batches as pure functions of (seed, split, step), text corpora, caches, synthetic tasks, errors.

Every structural check re-derives the expected answer independently (Python strings, dicts, sets)
rather than calling the code under test a second way.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import train.data as data
import train.data.text as data_text
from train.data import DataConfig, build_dataset, load_dataset_for_run
from train.data.__main__ import main as data_main

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare.txt")
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 8


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test encodes into its own cache directory (never the user's ~/.cache)."""
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


def _write(tmp_path, content, name="corpus.txt") -> str:
    p = tmp_path / name
    if isinstance(content, str):
        p.write_text(content, encoding="utf-8")
    else:
        p.write_bytes(content)
    return str(p)


def _rows(b) -> np.ndarray:
    """The [B, T+1] token windows a batch was cut from: first input, then every target."""
    return np.concatenate([b["inputs"][:, :1], b["targets"]], axis=1)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, f"error message spans lines: {msg!r}"
    return msg


def _all_datasets(tmp_path):
    text = _write(tmp_path, TEXT)
    return {
        "text-char": DataConfig(task="text", path=text),
        "text-byte": DataConfig(task="text", path=text, level="byte"),
        "induction": DataConfig(task="induction"),
        "mqar": DataConfig(task="mqar", vocab_size=64, n_pairs=4),
        "copy": DataConfig(task="copy"),
    }


# ---------------------------------------------------------------------- batches
@pytest.mark.parametrize("name", ["text-char", "text-byte", "induction", "mqar", "copy"])
def test_batches_are_a_pure_function_of_seed_split_step(tmp_path, name):
    cfg = _all_datasets(tmp_path)[name]
    t, bsz = 32, 8
    ds = build_dataset(cfg, t)
    b = ds.batch("train", 5, bsz, t)
    assert b["inputs"].shape == b["targets"].shape == b["loss_mask"].shape == (bsz, t)
    assert b["inputs"].dtype == b["targets"].dtype == np.int32 and b["loss_mask"].dtype == np.float32
    assert 0 <= b["inputs"].min() and max(b["inputs"].max(), b["targets"].max()) < ds.vocab_size
    # the same (seed, split, step) from a fresh dataset object (as after a restart) -> the same batch
    again = build_dataset(cfg, t).batch("train", np.int64(5), bsz, t)
    for k in b:
        np.testing.assert_array_equal(b[k], again[k])
    # another step, split or seed -> another batch
    others = [
        ds.batch("train", 6, bsz, t),
        ds.batch("val", 5, bsz, t),
        build_dataset(cfg.replace(seed=1), t).batch("train", 5, bsz, t),
    ]
    for other in others:
        assert not np.array_equal(b["inputs"], other["inputs"])
    # inputs and targets are one sequence shifted by a token
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])


def test_text_windows_are_slices_of_their_split(tmp_path):
    ds = build_dataset(DataConfig(task="text", path=_write(tmp_path, TEXT), val_fraction=0.25), 16)
    n_train = int(len(TEXT) * 0.75)
    train_text, val_text = TEXT[:n_train], TEXT[n_train:]
    assert (ds.n_train, ds.n_val) == (len(train_text), len(val_text))
    for split, text in [("train", train_text), ("val", val_text)]:
        b = ds.batch(split, 3, 32, 16)
        np.testing.assert_array_equal(b["loss_mask"], 1.0)
        for row in _rows(b):
            assert ds.decode(row) in text  # a contiguous window of seq_len+1 characters of this split


# ---------------------------------------------------------------------- vocabularies
def test_char_vocab_round_trip_with_unicode(tmp_path):
    text = "héllo wörld ∑ 😀\ttabs\nand ünïcödé: ∑∑ 😀!\n" * 4
    ds = build_dataset(DataConfig(task="text", path=_write(tmp_path, text), val_fraction=0.5), 8)
    chars = sorted(set(text))
    assert ds.vocab_size == len(chars) and ds.chars == chars
    ids = ds.encode(text)
    np.testing.assert_array_equal(ids, [chars.index(c) for c in text])
    assert ds.decode(ids) == text
    # the stored token array is the same encoding
    np.testing.assert_array_equal(np.asarray(ds.tokens), ids)


def test_byte_level_reads_any_bytes(tmp_path):
    raw = bytes(range(256)) * 4 + b"\xff\xfe\x80 not utf-8 \xc3"
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    ds = build_dataset(DataConfig(task="text", path=_write(tmp_path, raw), level="byte"), 32)
    assert ds.vocab_size == 256
    np.testing.assert_array_equal(np.asarray(ds.tokens), np.frombuffer(raw, np.uint8))
    n_train = int(len(raw) * 0.9)
    for row in _rows(ds.batch("train", 0, 16, 32)):
        assert bytes(row.astype(np.uint8)) in raw[:n_train]
    text = "any text, even ∑"
    assert ds.decode(ds.encode(text)) == text
    np.testing.assert_array_equal(ds.encode(text), list(text.encode("utf-8")))


def test_vocab_travels_with_the_run(tmp_path):
    cfg = DataConfig(task="text", path=_write(tmp_path, TEXT))
    ds = build_dataset(cfg, 16)
    run = tmp_path / "run"
    ds.save_vocab(run)
    saved = json.loads((run / data.VOCAB_FILE).read_text())
    assert saved["chars"] == sorted(set(TEXT)) and saved["vocab_size"] == len(set(TEXT))
    os.remove(cfg.path)  # sampling needs only the run directory
    codec = load_dataset_for_run(run, cfg)
    prompt = "hear me speak"
    np.testing.assert_array_equal(codec.encode(prompt), ds.encode(prompt))
    assert codec.decode(ds.encode(prompt)) == prompt
    with pytest.raises(ValueError, match="draw batches") as e:
        codec.batch("train", 0, 2, 8)
    _one_line(e)
    # resuming on a corpus with another alphabet is refused
    _write(tmp_path, TEXT + "XYZ")
    with pytest.raises(ValueError, match="vocabulary") as e:
        load_dataset_for_run(run, cfg, seq_len=16)
    _one_line(e)
    # synthetic tasks: decode is space-separated ids, encode its inverse
    syn = build_dataset(DataConfig(task="copy", vocab_size=10), 8)
    syn.save_vocab(tmp_path / "run2")
    syn2 = load_dataset_for_run(tmp_path / "run2", DataConfig(task="copy", vocab_size=10))
    assert syn2.vocab_size == 11 and syn2.decode([3, 10, 0]) == "3 10 0"
    np.testing.assert_array_equal(syn2.encode("3 10 0"), [3, 10, 0])


# ---------------------------------------------------------------------- the token cache
def test_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch):
    cache = tmp_path / "elsewhere"
    monkeypatch.setenv(data.CACHE_ENV, str(cache))
    cfg = DataConfig(task="text", path=_write(tmp_path, TEXT))
    count = data_text.ENCODE_COUNT
    ds = build_dataset(cfg, 16)
    assert data_text.ENCODE_COUNT == count + 1
    assert ds.cache_path.parent == cache and isinstance(ds.tokens, np.memmap)
    mtime = ds.cache_path.stat().st_mtime_ns
    ds2 = build_dataset(cfg, 16)
    assert data_text.ENCODE_COUNT == count + 1, "the second build encoded again instead of using the cache"
    assert ds2.cache_path == ds.cache_path and ds2.cache_path.stat().st_mtime_ns == mtime
    assert isinstance(ds2.tokens, np.memmap) and ds2.chars == ds.chars
    np.testing.assert_array_equal(np.asarray(ds2.tokens), np.asarray(ds.tokens))
    # the byte level and changed content get their own cache entries
    build_dataset(cfg.replace(level="byte"), 16)
    _write(tmp_path, TEXT + "more")
    ds3 = build_dataset(cfg, 16)
    assert data_text.ENCODE_COUNT == count + 3 and ds3.cache_path != ds.cache_path
    assert ds3.decode(np.asarray(ds3.tokens)) == TEXT + "more"


_HARD_CRASH = """
import os, sys
import numpy as np
import train.data as data
real_save = np.save
def die_midway(f, arr):
    real_save(f, arr[: len(arr) // 2])
    f.flush()
    os._exit(3)
np.save = die_midway
data.build_dataset(data.DataConfig(task="text", path=sys.argv[1]), 16)
"""


def test_cache_survives_a_crash_while_writing(tmp_path, monkeypatch):
    cfg = DataConfig(task="text", path=_write(tmp_path, TEXT))
    cache = Path(os.environ[data.CACHE_ENV])
    real_save = np.save

    def crash_midway(f, arr):  # half of the array reaches the disk, then the process "dies"
        real_save(f, arr[: len(arr) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(cfg, 16)
    assert not list(cache.glob("*.npy")) and not list(cache.glob("*.tmp")) and not list(cache.glob(".*.tmp"))
    monkeypatch.setattr(np, "save", real_save)

    # a hard crash (no Python clean-up runs) in another process: at most a stray temp file remains
    proc = subprocess.run([sys.executable, "-c", _HARD_CRASH, cfg.path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert not list(cache.glob("*.npy")), "a partial cache file was published under its final name"
    assert list(cache.glob("*.tmp")) or list(cache.glob(".*.tmp")), "the crash should have left a partial temp file"
    ds = build_dataset(cfg, 16)
    assert ds.decode(np.asarray(ds.tokens)) == TEXT

    # a cache file truncated by something else (not our atomic writer) is detected and rebuilt
    ds.cache_path.write_bytes(ds.cache_path.read_bytes()[:100])
    count = data_text.ENCODE_COUNT
    ds2 = build_dataset(cfg, 16)
    assert data_text.ENCODE_COUNT == count + 1 and ds2.decode(np.asarray(ds2.tokens)) == TEXT


# ---------------------------------------------------------------------- errors
def test_text_errors_are_one_line_and_name_the_fix(tmp_path, monkeypatch):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="no such file") as e:
        build_dataset(DataConfig(task="text", path=missing), 8)
    assert "nope.txt" in _one_line(e)

    empty = _write(tmp_path, b"", "empty.txt")
    with pytest.raises(ValueError, match="is empty") as e:
        build_dataset(DataConfig(task="text", path=empty), 8)
    assert "empty.txt" in _one_line(e)

    short = _write(tmp_path, "x" * 100, "short.txt")  # train 90 tokens, val 10
    build_dataset(DataConfig(task="text", path=short), 9)  # val has exactly seq_len+1
    with pytest.raises(ValueError, match="val split has 10") as e:
        build_dataset(DataConfig(task="text", path=short), 10)
    assert "short.txt" in _one_line(e) and "seq_len" in str(e.value)
    with pytest.raises(ValueError, match="train split has 50"):
        build_dataset(DataConfig(task="text", path=short, val_fraction=0.5), 50)
    ds = build_dataset(DataConfig(task="text", path=short), 4)
    with pytest.raises(ValueError, match="too short"):
        ds.batch("val", 0, 2, 64)

    latin1 = _write(tmp_path, "café crème ".encode("latin-1") * 5, "latin1.txt")
    with pytest.raises(ValueError, match="not valid UTF-8") as e:
        build_dataset(DataConfig(task="text", path=latin1), 2)
    assert "latin1.txt" in _one_line(e) and "data.level=byte" in str(e.value)
    assert build_dataset(DataConfig(task="text", path=latin1, level="byte"), 2).vocab_size == 256

    ds = build_dataset(DataConfig(task="text", path=_write(tmp_path, TEXT)), 8)
    with pytest.raises(ValueError, match="'Z'") as e:
        ds.encode("hear Zeus")
    assert "position 5" in _one_line(e) and "data.level=byte" in str(e.value)

    # no data.path and no tiny Shakespeare anywhere: name both fixes
    monkeypatch.setattr(data_text, "DEFAULT_TEXT_CANDIDATES", (tmp_path / "a.txt", tmp_path / "b.txt"))
    with pytest.raises(ValueError) as e:
        build_dataset(DataConfig(task="text"), 8)
    assert "python -m train.data download" in _one_line(e) and "data.path=FILE" in str(e.value)
    # ... and the second candidate (the project's data/) is used when it is the one present
    _write(tmp_path, TEXT, "b.txt")
    assert build_dataset(DataConfig(task="text"), 8).source == str(tmp_path / "b.txt")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "sorting"}, "unknown task"),
        ({"level": "word"}, "unknown level"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"vocab_size": 1}, "vocab_size"),
        ({"vocab_size": "16"}, "expected int"),
        ({"n_pairs": 0}, "n_pairs"),
        ({"n_pairs": True}, "got a bool|got bool"),
        ({"seed": -1}, "seed"),
        ({"task": "mqar", "vocab_size": 6, "n_pairs": 4}, "vocab_size >= 8"),
    ],
)
def test_bad_config_fields(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        DataConfig(**kwargs)
    _one_line(e)


def test_bad_batch_arguments():
    ds = build_dataset(DataConfig(task="mqar", vocab_size=64, n_pairs=4), 16)
    for call, match in [
        (lambda: ds.batch("test", 0, 2, 16), "unknown split"),
        (lambda: ds.batch("train", -1, 2, 16), "step=-1"),
        (lambda: ds.batch("train", 1.5, 2, 16), "expected an integer"),
        (lambda: ds.batch("train", 0, 0, 16), "batch_size=0"),
        (lambda: ds.batch("train", 0, 2, 15), "needs seq_len >= 16"),
        (lambda: build_dataset(DataConfig(task="induction"), 2), "needs seq_len >= 3"),
        (lambda: DataConfig().replace(lenght=3), "no field 'lenght'"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            call()
        _one_line(e)


# ---------------------------------------------------------------------- synthetic tasks
@pytest.mark.parametrize("t", [32, 33])
def test_induction_structure(t):
    v = 16
    ds = build_dataset(DataConfig(task="induction", vocab_size=v), t)
    assert ds.vocab_size == v + 1 and ds.specials == {"bos": v}
    b = ds.batch("train", 0, 64, t)
    seq, mask = _rows(b), b["loss_mask"]
    half = t // 2
    for row, m in zip(seq, mask, strict=True):
        first = list(row[1 : 1 + half])
        assert row[0] == v and all(0 <= x < v for x in first)
        assert list(row[1 + half : 1 + 2 * half]) == first  # the second half repeats the first
        # induction positions: the input already occurred `half` tokens earlier, so the target is
        # whatever followed that occurrence
        expected = [1.0 if (i > half) else 0.0 for i in range(t)]
        assert list(m) == expected
        for i in np.flatnonzero(m):
            assert row[i] == row[i - half] and row[i + 1] == row[i + 1 - half]


@pytest.mark.parametrize("t", [32, 33])
def test_copy_structure(t):
    v = 16
    ds = build_dataset(DataConfig(task="copy", vocab_size=v), t)
    assert ds.vocab_size == v + 1 and ds.specials == {"sep": v}
    b = ds.batch("train", 0, 64, t)
    half = t // 2
    for row, m, tgt in zip(_rows(b), b["loss_mask"], b["targets"], strict=True):
        original = list(row[:half])
        sep_at = list(row).index(v)
        assert sep_at == half and all(0 <= x < v for x in original)
        assert list(row[half + 1 : 2 * half + 1]) == original
        assert list(tgt[m == 1]) == original  # the loss is on the copy, and only there
        assert np.flatnonzero(m).tolist() == list(range(half, 2 * half))


def test_mqar_structure():
    v, n, t = 256, 4, 64  # the standard setting of the recall experiment
    ds = build_dataset(DataConfig(task="mqar", vocab_size=v, n_pairs=n), t)
    assert ds.vocab_size == v and ds.specials == {}
    b = ds.batch("train", 0, 256, t)
    query_offsets = []
    for inp, tgt, m in zip(b["inputs"], b["targets"], b["loss_mask"], strict=True):
        row = list(inp) + [tgt[-1]]
        keys, values = row[0 : 2 * n : 2], row[1 : 2 * n : 2]
        assert len(set(keys)) == n and all(0 <= k < v // 2 for k in keys)
        assert len(set(values)) == n and all(v // 2 <= x < v for x in values)
        pair = dict(zip(keys, values, strict=True))
        # re-derive the queries: later occurrences of a key; each key is asked exactly once
        queries = [i for i in range(2 * n, t) if row[i] in pair]
        assert sorted(row[i] for i in queries) == sorted(keys)
        assert np.flatnonzero(m).tolist() == queries  # loss exactly at the answers
        for i in queries:
            assert tgt[i] == pair[row[i]]  # the answer is the value paired with the key earlier
        query_offsets += [i - 2 * n for i in queries]
    # Zoology's power law puts queries early: their mean offset is below the uniform mean
    slots = (t + 1 - 2 * n) // 2
    assert np.mean(query_offsets) < 0.8 * (slots - 1)


# ---------------------------------------------------------------------- the real corpus
@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="tiny Shakespeare not present")
def test_tiny_shakespeare_matches_nanogpt():
    ds = build_dataset(DataConfig(task="text", path=str(SHAKESPEARE)), 256)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert SHAKESPEARE.stat().st_size == 1_115_394
    assert ds.vocab_size == len(set(text)) == 65
    assert (ds.n_train, ds.n_val) == (int(len(text) * 0.9), len(text) - int(len(text) * 0.9))
    assert (ds.n_train, ds.n_val) == (1_003_854, 111_540)
    assert ds.decode(ds.split_tokens("val")[:200]) == text[1_003_854:1_004_054]


# ---------------------------------------------------------------------- download
def _closed_port() -> int:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_offline_error_is_one_line(tmp_path, capsys):
    url = f"http://127.0.0.1:{_closed_port()}/input.txt"
    out = tmp_path / "ts.txt"
    with pytest.raises(data.DownloadError, match="could not download") as e:
        data.download(url, out, timeout=5)
    assert "data.path=FILE" in _one_line(e) and not out.exists()
    assert data_main(["download", "--url", url, "--out", str(out), "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download") and err.count("\n") == 1
    # the real command: non-zero exit, one line, no traceback
    proc = subprocess.run(
        [sys.executable, "-m", "train.data", "download", "--url", url, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=data.PROJECT_ROOT,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "could not download" in proc.stderr


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


def test_download_from_a_local_server(tmp_path):
    served = tmp_path / "srv"
    served.mkdir()
    (served / "input.txt").write_text(TEXT)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        out = data.download(f"http://127.0.0.1:{server.server_port}/input.txt", tmp_path / "d" / "ts.txt")
    finally:
        server.shutdown()
        server.server_close()
    assert out.read_text() == TEXT and [p.name for p in out.parent.iterdir()] == ["ts.txt"]
