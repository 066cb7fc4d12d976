"""One command that checks a GPU or TPU (issue 19): devices, attention correctness and speed, train and
sampling speed with MFU, and the shakespeare-char run against nanoGPT, as a report in one directory.

    python -m experiments.bench.accelerator                          # whatever backend jax finds, 600 s
    python -m experiments.bench.accelerator --budget-s 1200 --out runs/a100
    python -m experiments.bench.accelerator --smoke                  # tiny sizes: what the tests run on a CPU

Sections, in order, each written to ``OUT/report.md`` and ``OUT/report.json`` as soon as it finishes
(a run cut short keeps the sections it finished):

1. device: jax/jaxlib versions, backend, platform version, every device and its attributes.
2. correctness: 'xla', 'cudnn', 'pallas', 'chunked', 'auto' against 'reference', values and gradients,
   causal / padded / sliding-window / GQA, float32 and bfloat16 (experiments/bench/accelerator_attention.py).
3. attention speed: fwd and fwd+bwd at T = 1k .. 32k per implementation, XLA scratch, 'auto' marked.
4. matmul peak, then train step speed (shakespeare-char; GPT-2 small shape in bfloat16) with MFU.
5. sampling tokens/s at batch 1 and 8.
6. the real run: shakespeare-char trained until done or the budget ends; val loss against nanoGPT's 1.4697.

Budget: every section gets a share of what is left of ``--budget-s`` (the real run gets the rest); a case
that finds its share used up is a row "skipped: budget". Nothing is downloaded: without tiny Shakespeare on
disk the text sections train on a stand-in corpus (the README, repeated) and say so.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

SECTIONS = ("device", "correctness", "attention_speed", "train_step", "sampling", "real_run")
# a section's share of the budget left when it starts is its weight over the weights of the sections still
# to run (the last one, usually the real run, takes all that remains, minus a reserve)
WEIGHTS = {
    "device": 0.0,
    "correctness": 1.0,
    "attention_speed": 2.0,
    "train_step": 2.0,
    "sampling": 1.0,
    "real_run": 3.0,
}
RESERVE_S = 5.0  # kept back at the end: writing the report, leaving the process


class Report:
    """report.md and report.json in ``out``, rewritten whole after every section."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.meta = meta
        self.sections: list[tuple[str, str, object, float]] = []

    def add(self, name: str, markdown: str, data, seconds: float) -> None:
        self.sections.append((name, markdown, data, seconds))
        md = [f"# Accelerator check ({self.meta['started']})\n", f"`{self.meta['command']}`\n"]
        for n, text, _, s in self.sections:
            md.append(f"## {n} ({s:.1f} s)\n\n{text}")
        (self.out / "report.md").write_text("\n".join(md))
        payload = dict(self.meta, sections={n: dict(data=d, seconds=s) for n, _, d, s in self.sections})
        (self.out / "report.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
        print(f"\n## {name} ({seconds:.1f} s)\n\n{markdown}", flush=True)


def device_info() -> dict:
    import jax

    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):
        jaxlib_version = None
    client = getattr(jax.devices()[0], "client", None)
    info = dict(
        python=sys.version.split()[0],
        host=platform.platform(),
        jax=jax.__version__,
        jaxlib=jaxlib_version,
        backend=jax.default_backend(),
        platform_version=getattr(client, "platform_version", None),
        process_count=jax.process_count(),
        devices=[],
    )
    for d in jax.devices():
        dev = dict(id=d.id, kind=d.device_kind, platform=d.platform, repr=repr(d))
        for attr in ("compute_capability", "core_count", "coords", "core_on_chip", "num_cores"):
            if getattr(d, attr, None) is not None:
                dev[attr] = getattr(d, attr)
        try:
            stats = d.memory_stats() or {}
            dev["memory_limit_bytes"] = stats.get("bytes_limit")
        except Exception:  # noqa: BLE001 - CPU and some plugins report nothing
            pass
        info["devices"].append(dev)
    try:  # the GPU driver, where nvidia-smi exists; nothing is installed for it
        r = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if r.returncode == 0:
            info["nvidia_smi"] = r.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def device_text(info: dict) -> str:
    lines = [
        f"- {k}: {info[k]}" for k in ("backend", "platform_version", "jax", "jaxlib", "python", "host") if info.get(k)
    ]
    if info.get("nvidia_smi"):
        lines.append(f"- nvidia-smi: {info['nvidia_smi']}")
    lines.append(f"- {len(info['devices'])} device(s), {info['process_count']} process(es):")
    for d in info["devices"]:
        extra = ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("id", "repr", "platform") and v is not None)
        lines.append(f"  - {d['id']}: {extra}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.bench.accelerator", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="report directory (default: runs/accelerator-<time>)")
    p.add_argument("--budget-s", type=float, default=600.0, help="exit within about this many seconds (default 600)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and a few steps (CPU tests)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument(
        "--impls",
        default="xla,cudnn,pallas,chunked,auto",
        help="attention implementations to check against 'reference' (default: %(default)s)",
    )
    p.add_argument("--lengths", default=None, help="attention speed lengths, e.g. 1024,4096 (default 1k..32k)")
    p.add_argument(
        "--run-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dotted override for the real run (repeatable), e.g. data.path=tiny.txt or train.steps=2000",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad or args.budget_s <= 0:
        print(f"error: unknown section {bad[0]!r}; choose among {SECTIONS}" if bad else "error: --budget-s must be > 0")
        return 2
    start = time.monotonic()
    end = start + args.budget_s - RESERVE_S
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/accelerator-{stamp}")
    from train.cli import tune_host

    tune_host()
    import jax

    from experiments.bench import accelerator_attention as att
    from experiments.bench import accelerator_runs as runs

    cmd = "python -m experiments.bench.accelerator " + " ".join(argv if argv is not None else sys.argv[1:])
    report = Report(out, dict(started=stamp, command=cmd.strip(), budget_s=args.budget_s, smoke=args.smoke))
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    backend = jax.default_backend()
    print(f"accelerator check on backend {backend}; report in {out}", flush=True)

    def deadline(name: str) -> float:
        now = time.monotonic()
        later = sum(WEIGHTS[s] for s in SECTIONS[SECTIONS.index(name) :] if s in sections)
        return now + max(0.0, end - now) * (WEIGHTS[name] / later if later else 1.0)

    def run(name: str, fn) -> None:
        if name not in sections:
            return
        t0 = time.monotonic()
        try:
            text, data = fn(deadline(name))
        except Exception as e:  # noqa: BLE001 - one broken section leaves the others
            text, data = f"ERROR: {att.short(e, 400)}\n", dict(error=att.short(e, 400))
        report.add(name, text, data, time.monotonic() - t0)

    def device(_):
        info = device_info()
        return device_text(info), info

    def correctness(dl):
        shape = dict(b=2, t=32, h=4, dh=16) if args.smoke else dict(b=2, t=256, h=8, dh=64)
        rows = att.correctness(impls, backend, dl, **shape)
        bad = [r for r in rows if r["status"] in ("FAIL", "ERROR")]
        head = (
            f"**{len(bad)} FAIL/ERROR** of {len(rows)} rows.\n\n" if bad else f"All {len(rows)} rows PASS or n/a.\n\n"
        )
        return head + att.correctness_table(rows), rows

    def attention_speed(dl):
        lengths = [1024 * 2**i for i in range(6)] if not args.smoke else [64]
        if args.lengths:
            lengths = [int(x) for x in args.lengths.split(",")]
        dtype = "float32" if backend == "cpu" else "bfloat16"
        shape = dict(b=1, h=4, dh=16) if args.smoke else dict(b=1, h=12, dh=64)
        rows = att.speed(impls, backend, lengths, dl, dtype=dtype, repeats=2 if args.smoke else 5, **shape)
        note = "Causal self-attention; 'auto (-> x)' is what 'auto' resolved to. Scratch: XLA's temp bytes.\n\n"
        return note + att.speed_table(rows), rows

    corpus = None
    if any(s in sections for s in ("train_step", "real_run")):
        corpus = runs.fallback_corpus(out)
        if corpus is not None:
            print(f"tiny Shakespeare not on disk: the text sections use the stand-in {corpus}", flush=True)

    def train_step(dl):
        n = 256 if args.smoke else (2048 if backend == "cpu" else 8192)
        peaks = {}
        for dtype in ("float32", "bfloat16"):
            try:
                peaks[dtype] = runs.matmul_peak(dtype, n)
            except Exception as e:  # noqa: BLE001
                print(f"matmul peak {dtype}: {att.short(e)}")
        rows = runs.train_steps(args.smoke, corpus, peaks, dl)
        head = f"Measured matmul peak (best jitted {n} x {n} @ {n} x {n}): "
        head += ", ".join(f"{k} {v:.3f} TFLOP/s" for k, v in peaks.items()) + ". "
        head += "MFU = model FLOPs/s (nanoGPT's 6N + 12 L T H Dh per token) / the peak of the model's dtype.\n\n"
        return head + runs.train_table(rows), dict(peaks_tflops=peaks, rows=rows)

    def sampling(dl):
        rows = runs.sampling(args.smoke, dl)
        return "shakespeare-char model, random weights, temperature 1.\n\n" + runs.sampling_table(rows), rows

    def real_run(dl):
        with open(out / "real_run.log", "a") as f:

            def log(msg: str) -> None:
                print(msg, flush=True)
                f.write(msg + "\n")

            r = runs.real_run(out, args.smoke, corpus, dl, log, args.run_override)
        return runs.real_run_text(r), r

    for name, fn in [
        ("device", device),
        ("correctness", correctness),
        ("attention_speed", attention_speed),
        ("train_step", train_step),
        ("sampling", sampling),
        ("real_run", real_run),
    ]:
        run(name, fn)
    print(f"\nreport: {out / 'report.md'} ({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
