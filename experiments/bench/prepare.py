"""Preparing a GPT-2-tokenized corpus: our streaming ``prepare`` against nanoGPT's whole-file approach.

    python -m experiments.bench.prepare --bpe-dir ../shared/data/gpt2 --mb 200

Builds a text file of about ``--mb`` MB by repeating tiny Shakespeare, then prepares it twice, each in
its own subprocess so that each has its own peak RSS (VmHWM):

    streaming   ``train.data.tokens.prepare``: 1 MB chunks cut at safe newlines, 8 at a time through
                tiktoken's ``encode_ordinary_batch``, appended to train.bin / val.bin
    nanoGPT     data/shakespeare/prepare.py's approach: read the whole file, ``encode_ordinary`` each
                split into a Python list, ``np.array(ids, uint16).tofile``

and prints a table: seconds, MB/s of text, peak RSS, and whether the two wrote the same ids.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MB = 1 << 20

NANOGPT = r"""
import json, sys, time
import numpy as np
from train.data.bpe import load_gpt2_bpe
src, out, bpe_dir, val_at = sys.argv[1], sys.argv[2], sys.argv[3] or None, int(sys.argv[4])
t0 = time.perf_counter()  # both runs time the tokenizer's loading too
enc = load_gpt2_bpe(bpe_dir).encoding
with open(src, "r", encoding="utf-8") as f:
    data = f.read()
raw = data.encode("utf-8")  # split at the same byte as the streaming run, to compare the files
train_data, val_data = raw[:val_at].decode(), raw[val_at:].decode()
del raw
train_ids = enc.encode_ordinary(train_data)
val_ids = enc.encode_ordinary(val_data)
np.array(train_ids, dtype=np.uint16).tofile(out + "/train.bin")
np.array(val_ids, dtype=np.uint16).tofile(out + "/val.bin")
dt = time.perf_counter() - t0
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": dt, "peak_rss": hwm}))
"""

STREAMING = r"""
import json, sys, time
from train.data.tokens import prepare
src, out, bpe_dir = sys.argv[1], sys.argv[2], sys.argv[3] or None
t0 = time.perf_counter()
prepare(src, out, bpe_dir=bpe_dir, progress=False, threads=int(sys.argv[4]))
dt = time.perf_counter() - t0
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": dt, "peak_rss": hwm}))
"""

BASELINE = r"""
import json
import numpy as np
from train.data.bpe import load_gpt2_bpe
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": 0.0, "peak_rss": hwm}))
"""


def _run(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"error: a benchmark subprocess failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from train.data.text import resolve_text_path
    from train.data.tokens import split_offset

    p = argparse.ArgumentParser(prog="python -m experiments.bench.prepare", description=__doc__.split("\n")[0])
    p.add_argument("--bpe-dir", default=None, help="encoder.json + vocab.bpe (default: tiktoken's gpt2, online)")
    p.add_argument("--text", default=None, help="the text to repeat (default: tiny Shakespeare)")
    p.add_argument("--mb", type=float, default=200.0, help="size of the repeated corpus in MB (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="tiktoken threads of the streaming run")
    p.add_argument("--workdir", default=None, help="where to write the corpus and outputs (default: a temp dir)")
    args = p.parse_args(argv)

    base = resolve_text_path(args.text).read_bytes()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        reps = max(1, int(args.mb * MB // len(base)))
        with open(corpus, "wb") as f:
            for _ in range(reps):
                f.write(base)
        size = corpus.stat().st_size
        val_at = split_offset(corpus, 0.1)
        outs = {name: tmp / name for name in ("streaming", "nanogpt")}
        for d in outs.values():
            d.mkdir()
        bpe = args.bpe_dir or ""
        rows = {"python + tiktoken imported (baseline)": _run(BASELINE)}
        rows["streaming prepare (ours)"] = _run(STREAMING, str(corpus), str(outs["streaming"]), bpe, str(args.threads))
        rows["nanoGPT: whole file, encode_ordinary"] = _run(
            NANOGPT, str(corpus), str(outs["nanogpt"]), bpe, str(val_at)
        )
        same = all(
            (outs["streaming"] / f).read_bytes() == (outs["nanogpt"] / f).read_bytes() for f in ("train.bin", "val.bin")
        )
        n_tokens = sum((outs["streaming"] / f).stat().st_size // 2 for f in ("train.bin", "val.bin"))

    print(f"corpus: tiny Shakespeare x {reps} = {size / MB:.1f} MB, {n_tokens:,} GPT-2 tokens; same ids: {same}\n")
    print("| method | seconds | MB/s | peak RSS (MB) |\n|---|---:|---:|---:|")
    for name, r in rows.items():
        speed = f"{size / MB / r['seconds']:.2f}" if r["seconds"] else "-"
        secs = f"{r['seconds']:.1f}" if r["seconds"] else "-"
        print(f"| {name} | {secs} | {speed} | {r['peak_rss'] / MB:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
