"""``python -m train.data download`` fetches tiny Shakespeare; ``python -m train.data bench`` prints
how long a batch takes; ``python -m train.data prepare TEXT_FILE --tokenizer gpt2 --out DIR`` writes
nanoGPT's train.bin / val.bin (GPT-2 ids, uint16), streaming (train/data/tokens.py).
"""

from __future__ import annotations

import argparse
import sys
import time

from train.data.base import DataConfig
from train.data.build import build_dataset
from train.data.text import DEFAULT_DOWNLOAD_PATH, TINY_SHAKESPEARE_URL, DownloadError, download, resolve_text_path

DESCRIPTION = "Training data: text corpora (character or byte level, memory-mapped) and synthetic recall tasks."


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
    parser = argparse.ArgumentParser(prog="python -m train.data", description=DESCRIPTION)
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
    prep = sub.add_parser("prepare", help="encode a text file into train.bin / val.bin (GPT-2 ids), streaming")
    prep.add_argument("text_file")
    prep.add_argument("--tokenizer", default="gpt2", choices=["gpt2"])
    prep.add_argument("--out", required=True, help="directory for train.bin, val.bin, meta.json")
    prep.add_argument("--bpe-dir", default=None, help="encoder.json + vocab.bpe (default: tiktoken's gpt2, online)")
    prep.add_argument("--val-fraction", type=float, default=0.1)
    prep.add_argument("--chunk-mb", type=float, default=1.0, help="text per encoded chunk (MB)")
    prep.add_argument("--threads", type=int, default=2, help="tiktoken threads")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            from train.data.tokens import prepare

            meta = prepare(
                args.text_file,
                args.out,
                tokenizer=args.tokenizer,
                bpe_dir=args.bpe_dir,
                val_fraction=args.val_fraction,
                chunk_bytes=int(args.chunk_mb * (1 << 20)),
                threads=args.threads,
            )
            n = meta["n_tokens"]
            print(f"wrote {args.out}: train.bin {n['train']:,} tokens, val.bin {n['val']:,} tokens")
            return 0
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
