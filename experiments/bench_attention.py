"""Benchmark attention implementations against T: time and extra memory, forward and fwd+bwd.

    python -m experiments.bench_attention                      # T = 1024 2048 4096, all sections
    python -m experiments.bench_attention --quick              # small T, few repeats (a smoke run)
    python -m experiments.bench_attention --T 1024 2048 4096 --long   # + B=1, H=8, T=32768 chunked fwd+bwd
    python -m experiments.bench_attention --only attention     # one section: attention|remat|compile|train
    python -m experiments.bench_attention --devices 1          # one multithreaded XLA device (jax's default)

Writes ``results.md`` (markdown tables), ``results.json`` and ``attention_time.png`` (log-log time
against T) to ``runs/bench_attention/`` (or ``--out``).

Devices: on a CPU the bench asks XLA for one device per core (``--devices``, default: the cores this
process may use) and shards every JAX input over them: attention inputs on the batch axis (the heads
axis when the batch does not divide), the model sections' token batches on the batch axis. That is how
a JAX program uses several cores (a sharded ``jax.jit``; training does the same with ``mesh.data``):
one XLA:CPU device runs each small op of the kernel's loop on one thread at a time, so a single device
leaves the second core mostly idle (measured: 1.8x slower than torch SDPA on one device, see README).
torch gets as many threads as there are devices. ``--devices 1`` gives jax's default single device.

What is measured:
- time: median of ``--repeats`` calls after one warm-up (compile excluded), wall clock. The
  implementations of one T are timed interleaved (rep 1 of each, rep 2 of each, ...) so that load
  from other processes hits them alike (in a fresh random order each round); ratios are of medians from the same run.
- fwd+bwd: the gradient of ``sum(out)`` with respect to q, k and v (all three returned).
- extra memory, JAX: ``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``, XLA's
  own account of the scratch buffers the compiled program needs beyond its inputs and outputs, per
  device, times the number of devices (the total over the machine).
- extra memory, torch: peak resident set size (VmHWM) of a fresh subprocess minus its
  resident size just before the call, inputs already allocated.
Implementations whose compiled scratch would not fit the memory available are not run (their
memory is still reported). torch (optional extra ``bench``: ``pip install '.[bench]'``) runs with
as many threads as there are devices (the cores) and ``is_causal=True``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from model.attention import attention, select_implementation
from model.config import IMPLEMENTATIONS
from model.host import host_cores, request_host_devices

GiB = 1024**3


# ---------------------------------------------------------------------------- helpers
def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * GiB


def _peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS (Linux clear_refs 5); returns the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


class Devices:
    """The devices the JAX sides run on: a 1-D mesh (``None`` for jax's single default device)."""

    def __init__(self, n: int):
        self.n = n
        self.mesh = None
        if n > 1:
            devices = jax.devices()
            if len(devices) < n:
                raise SystemExit(
                    f"bench_attention: --devices {n} needs {n} devices, jax has {len(devices)} "
                    "(XLA_FLAGS already sets the device count, or jax started before the flag was set): "
                    "pass --devices 1 or unset XLA_FLAGS"
                )
            self.mesh = jax.sharding.Mesh(np.array(devices[:n]), ("cores",))

    def put(self, x, axis: int):
        """x sharded over the devices along ``axis`` (x unchanged on one device)."""
        if self.mesh is None:
            return x
        spec = [None] * x.ndim
        spec[axis] = "cores"
        return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec)))

    def replicate(self, tree):
        if self.mesh is None:
            return tree
        return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))

    def split_axis(self, b: int, h: int) -> int:
        """The attention inputs' axis to shard: batch (0) if it divides, else heads (2)."""
        if b % self.n == 0:
            return 0
        if h % self.n == 0:
            return 2
        raise SystemExit(f"bench_attention: neither B={b} nor H={h} divides over --devices {self.n}; pick another")


def _inputs(b: int, t: int, h: int, d: int, seed: int = 0, devices: Devices | None = None):
    ks = jax.random.split(jax.random.key(seed), 3)
    xs = tuple(jax.random.normal(k, (b, t, h, d), jnp.float32) for k in ks)
    if devices is None:
        return xs
    axis = devices.split_axis(b, h)
    return tuple(devices.put(x, axis) for x in xs)


def jax_fns(impl: str, causal: bool = True):
    """(forward, fwd+bwd) jitted callables of q, k, v for one implementation."""

    def fwd(q, k, v):
        return attention(q, k, v, causal=causal, implementation=impl)

    def loss(q, k, v):
        return jnp.sum(fwd(q, k, v))

    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def temp_bytes(fn, *args, devices: int = 1) -> int:
    """XLA's scratch bytes for the compiled ``fn(*args)`` (beyond inputs and outputs), summed over ``devices``.

    XLA reports the scratch of one device of an SPMD program; every device needs as much.
    """
    return devices * int(fn.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def _block(x):
    return jax.block_until_ready(x)


def time_interleaved(calls: dict, repeats: int) -> dict[str, float]:
    """Median wall seconds per call of each zero-argument callable: one warm-up each, then rounds in random order."""
    for f in calls.values():
        f()
    times = {name: [] for name in calls}
    order = list(calls)
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        # A fresh order each round: what ran just before a call (e.g. a dense path that evicted the
        # caches and freed gigabytes) must not favour or penalise one implementation systematically.
        for name in rng.permutation(order):
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ---------------------------------------------------------------------------- torch
def _torch(threads: int):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def torch_fns(torch, q, k, v):
    """(forward, fwd+bwd) zero-argument callables of torch SDPA on copies of q, k, v as [B, H, T, Dh]."""
    tq, tk, tv = (torch.from_numpy(np.array(x)).transpose(1, 2).contiguous() for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fwd():
        with torch.no_grad():
            return sdpa(tq, tk, tv, is_causal=True)

    def fwd_bwd():
        a, b, c = (x.detach().requires_grad_() for x in (tq, tk, tv))
        sdpa(a, b, c, is_causal=True).sum().backward()
        return a.grad, b.grad, c.grad

    return fwd, fwd_bwd


_TORCH_MEM_SCRIPT = """
import resource, sys, torch
b, t, h, d, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(int(sys.argv[6]))
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()
sdpa = torch.nn.functional.scaled_dot_product_attention
# warm up at a tiny size so that one-time library set-up is not counted as the call's memory
w = torch.randn(1, 1, 16, d, requires_grad=True)
sdpa(w, w, w, is_causal=True).sum().backward()
q, k, v = (torch.randn(b, h, t, d, requires_grad=(mode == 'fwd_bwd')) for _ in range(3))
base = rss()
if mode == 'fwd':
    with torch.no_grad():
        out = sdpa(q, k, v, is_causal=True)
else:
    sdpa(q, k, v, is_causal=True).sum().backward()
# VmHWM (this process's peak RSS); not ru_maxrss, which a child inherits from its parent across exec
with open('/proc/self/status') as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))
print(max(peak - base, 0))
"""


def torch_extra_bytes(b, t, h, d, mode, threads) -> int | None:
    """Peak RSS growth of one torch SDPA call in a fresh subprocess (None if it fails)."""
    try:
        res = subprocess.run(
            [sys.executable, "-c", _TORCH_MEM_SCRIPT, str(b), str(t), str(h), str(d), mode, str(threads)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        return int(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------------- section: attention vs T
def bench_attention(ts, b, h, d, repeats, impls, max_bytes, devices: Devices) -> list[dict]:
    """One row per (T, implementation, mode) with time (s) and extra memory (bytes, all devices)."""
    torch = _torch(devices.n)
    rows = []
    for t in ts:
        q, k, v = _inputs(b, t, h, d, devices=devices)
        auto_is = select_implementation(q.shape, q.dtype, k_len=t, causal=True)
        calls = {"fwd": {}, "fwd_bwd": {}}
        mem = {}
        skipped = {}
        for impl in impls:
            f_fwd, f_bwd = jax_fns(impl)
            for mode, f in (("fwd", f_fwd), ("fwd_bwd", f_bwd)):
                mem[(impl, mode)] = temp_bytes(f, q, k, v, devices=devices.n)
                if mem[(impl, mode)] > max_bytes:
                    skipped[(impl, mode)] = f"needs {mem[(impl, mode)] / GiB:.1f} GiB scratch"
                    continue
                calls[mode][impl] = lambda f=f, a=(q, k, v): _block(f(*a))
        if torch is not None:
            t_fwd, t_bwd = torch_fns(torch, q, k, v)
            calls["fwd"]["torch_sdpa"] = t_fwd
            calls["fwd_bwd"]["torch_sdpa"] = t_bwd
            for mode in ("fwd", "fwd_bwd"):
                mem[("torch_sdpa", mode)] = torch_extra_bytes(b, t, h, d, mode, devices.n)
        for mode in ("fwd", "fwd_bwd"):
            load_before = os.getloadavg()[0]
            times = time_interleaved(calls[mode], repeats)
            load = (load_before, os.getloadavg()[0])  # 1-minute load average before and after the timing
            for impl in list(impls) + (["torch_sdpa"] if torch is not None else []):
                rows.append(
                    dict(
                        T=t,
                        B=b,
                        H=h,
                        Dh=d,
                        impl=impl,
                        resolves_to=auto_is if impl == "auto" else impl,
                        mode=mode,
                        seconds=times.get(impl),
                        extra_bytes=mem.get((impl, mode)),
                        note=skipped.get((impl, mode), ""),
                        load=load,
                        devices=devices.n,
                    )
                )
                print(_row_text(rows[-1]), flush=True)
    return rows


def bench_long(t, b, h, d, devices: Devices) -> dict:
    """One chunked fwd+bwd at a length where the dense paths cannot run; dense memory reported from compile."""
    q, k, v = _inputs(b, t, h, d, devices=devices)
    rss_base = _reset_peak_rss()
    _, f_bwd = jax_fns("chunked")
    _, x_bwd = jax_fns("xla")
    row = dict(T=t, B=b, H=h, Dh=d, impl="chunked", mode="fwd_bwd", devices=devices.n)
    row["extra_bytes"] = temp_bytes(f_bwd, q, k, v, devices=devices.n)
    row["xla_extra_bytes"] = temp_bytes(x_bwd, q, k, v, devices=devices.n)
    t0 = time.perf_counter()
    _block(f_bwd(q, k, v))
    row["first_call_seconds"] = time.perf_counter() - t0  # includes compilation
    t0 = time.perf_counter()
    _block(f_bwd(q, k, v))
    row["seconds"] = time.perf_counter() - t0
    row["peak_rss_bytes"] = _peak_rss()
    row["rss_growth_bytes"] = row["peak_rss_bytes"] - rss_base
    print(
        f"long T={t} B={b} H={h}: chunked fwd+bwd {row['seconds']:.1f} s, scratch {row['extra_bytes'] / GiB:.2f} GiB "
        f"(dense xla would need {row['xla_extra_bytes'] / GiB:.1f} GiB)",
        flush=True,
    )
    return row


# ---------------------------------------------------------------------------- section: model-level
def _model_step(cfg, batch: int, seq: int, devices: Devices | None = None):
    """(jitted value_and_grad of next_token_loss, params, tokens) for a Transformer on ``cfg``.

    With several devices the tokens are split over them on the batch axis and the parameters replicated.
    """
    from model.transformer import Transformer, next_token_loss

    model = Transformer(cfg)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.vocab_size)
    params = jax.jit(model.init)(jax.random.key(0), tokens[:, :seq])["params"]
    if devices is not None:
        tokens, params = devices.put(tokens, 0), devices.replicate(params)

    def loss(p, toks):
        logits = model.apply({"params": p}, toks[:, :-1])
        return next_token_loss(logits, toks[:, 1:])

    return jax.jit(jax.value_and_grad(loss)), params, tokens


def bench_remat(repeats, devices: Devices, batch=8, seq=256) -> list[dict]:
    """Step time and XLA scratch of the shakespeare-char model's fwd+bwd under each remat policy."""
    from model.config import get_preset

    rows, calls = [], {}
    for remat in ("none", "full", "dots"):
        cfg = get_preset("shakespeare-char").replace(remat=remat, dropout=0.0)
        step, params, tokens = _model_step(cfg, batch, seq, devices)
        rows.append(dict(remat=remat, extra_bytes=temp_bytes(step, params, tokens, devices=devices.n)))
        calls[remat] = lambda s=step, p=params, x=tokens: _block(s(p, x))
    times = time_interleaved(calls, repeats)
    for r in rows:
        r["seconds"] = times[r["remat"]]
        print(f"remat={r['remat']}: step {r['seconds'] * 1e3:.0f} ms, scratch {r['extra_bytes'] / 2**20:.0f} MiB")
    return rows


def bench_compile(layers=(2, 48), batch=8, repeats=2) -> list[dict]:
    """Compile time of the scanned shakespeare-char-cpu model's fwd+bwd step at 2 and 48 layers.

    A 1-layer model is compiled first and not reported (the first compile in a process pays one-time
    set-up); each size is then lowered and compiled afresh ``repeats`` times, and the median kept.
    """
    from model.config import get_preset

    base = get_preset("shakespeare-char-cpu")

    def compile_seconds(n):
        step, params, tokens = _model_step(base.replace(n_layers=n, scan_layers=True), batch, base.max_len)
        t0 = time.perf_counter()
        step.lower(params, tokens).compile()
        return time.perf_counter() - t0

    compile_seconds(1)
    rows = []
    for n in layers:
        rows.append(dict(n_layers=n, compile_seconds=statistics.median(compile_seconds(n) for _ in range(repeats))))
        print(f"scanned model, {n} layers: compile {rows[-1]['compile_seconds']:.2f} s", flush=True)
    return rows


def bench_train(repeats, devices: Devices, batch=32) -> list[dict]:
    """Per-step time of the shakespeare-char-cpu model (jitted loss grad) with attention 'auto' vs 'reference'."""
    from model.config import get_preset

    calls, rows = {}, []
    for impl in ("auto", "reference"):
        cfg = get_preset("shakespeare-char-cpu").replace(attention_impl=impl)
        step, params, tokens = _model_step(cfg, batch, cfg.max_len, devices)
        calls[impl] = lambda s=step, p=params, x=tokens: _block(s(p, x))
    times = time_interleaved(calls, repeats)
    q_shape = (batch, cfg.max_len, cfg.n_heads, cfg.head_dim)
    auto_is = select_implementation(q_shape, jnp.float32, k_len=cfg.max_len, causal=True)
    for impl, s in times.items():
        rows.append(dict(impl=impl, resolves_to=auto_is if impl == "auto" else impl, seconds=s))
        print(f"shakespeare-char-cpu step, attention {impl}: {s * 1e3:.1f} ms", flush=True)
    return rows


# ---------------------------------------------------------------------------- report
def _devices_text(n: int) -> str:
    if n <= 1:
        return "JAX on one device (jax's default)"
    return f"JAX on {n} devices (one per core, one thread each; inputs sharded over them), torch with {n} threads"


def _fmt_s(s):
    return "—" if s is None else (f"{s * 1e3:.0f} ms" if s < 10 else f"{s:.1f} s")


def _fmt_b(x):
    if x is None:
        return "—"
    return f"{x / GiB:.2f} GiB" if x >= 0.1 * GiB else f"{x / 2**20:.0f} MiB"


def _row_text(r):
    name = r["impl"] + (f" (->{r['resolves_to']})" if r["impl"] == "auto" else "")
    load = f" load {r['load'][0]:.1f}-{r['load'][1]:.1f}" if r.get("load") else ""
    return (
        f"T={r['T']:>6} {r['mode']:>7} {name:<22} time {_fmt_s(r['seconds']):>9}  extra {_fmt_b(r['extra_bytes']):>9}"
        f"{load} {r['note']}"
    )


def _ratios(rows) -> list[str]:
    out = []
    by = {(r["T"], r["impl"], r["mode"]): r["seconds"] for r in rows}
    for t in sorted({r["T"] for r in rows}):
        for mode in ("fwd", "fwd_bwd"):
            auto, torch_s, xla = by.get((t, "auto", mode)), by.get((t, "torch_sdpa", mode)), by.get((t, "xla", mode))
            parts = [f"T={t} {mode}:"]
            if auto and torch_s:
                parts.append(f"auto/torch = {auto / torch_s:.2f}")
            if auto and xla:
                parts.append(f"xla/auto = {xla / auto:.1f}x")
            ref = by.get((t, "reference", mode))
            if auto and ref:
                parts.append(f"reference/auto = {ref / auto:.1f}x")
            out.append(" ".join(parts))
    return out


def write_report(out: Path, results: dict, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    lines = [
        "# Attention benchmark",
        "",
        f"`python -m experiments.bench_attention {' '.join(sys.argv[1:])}` on {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}, backend {jax.default_backend()}, {_devices_text(args.devices)}; "
        f"times are medians of {args.repeats} "
        "interleaved calls (wall clock); JAX memory is XLA's compiled scratch (temp_size_in_bytes), torch "
        "memory is the peak-RSS growth of a fresh subprocess.",
        "",
    ]
    att = results.get("attention", [])
    if att:
        b, h, d = att[0]["B"], att[0]["H"], att[0]["Dh"]
        lines += [f"## Attention, causal, fp32, B={b}, H={h}, Dh={d}", ""]
        impls = list(dict.fromkeys(r["impl"] for r in att))
        for mode in ("fwd", "fwd_bwd"):
            lines += [
                f"### {'forward' if mode == 'fwd' else 'forward + backward'}",
                "",
                "| T | " + " | ".join(impls) + " |",
                "|---|" + "---|" * len(impls),
            ]
            for t in sorted({r["T"] for r in att}):
                cells = []
                for impl in impls:
                    r = next(x for x in att if x["T"] == t and x["impl"] == impl and x["mode"] == mode)
                    cell = f"{_fmt_s(r['seconds'])} / {_fmt_b(r['extra_bytes'])}"
                    if r["impl"] == "auto":
                        cell += f" (={r['resolves_to']})"
                    if r["note"]:
                        cell += f" ({r['note']})"
                    cells.append(cell)
                lines.append(f"| {t} | " + " | ".join(cells) + " |")
            lines.append("")
        loads = [x for r in att if r.get("load") for x in r["load"]]
        load_note = f" 1-minute load average during the timings: {min(loads):.1f}-{max(loads):.1f}." if loads else ""
        lines += [f"time / extra memory per cell.{load_note}", "", "### Ratios (same run)", ""]
        lines += [f"- {x}" for x in _ratios(att)] + [""]
    if results.get("long"):
        r = results["long"]
        lines += [
            f"## Long context: B={r['B']}, H={r['H']}, T={r['T']}, Dh={r['Dh']}, causal, fwd+bwd",
            "",
            f"chunked: {r['seconds']:.1f} s per step ({r['first_call_seconds']:.1f} s first call with compile), "
            f"scratch {_fmt_b(r['extra_bytes'])}, peak RSS growth during the section {_fmt_b(r.get('rss_growth_bytes'))}"
            f" (inputs included; peak RSS {_fmt_b(r['peak_rss_bytes'])}); "
            f"dense xla would need {_fmt_b(r['xla_extra_bytes'])} of scratch.",
            "",
        ]
    if results.get("remat"):
        lines += [
            "## Remat policies: shakespeare-char (6 layers, D=384), B=8, T=256, fwd+bwd",
            "",
            "| remat | step | XLA scratch |",
            "|---|---|---|",
        ]
        lines += [f"| {r['remat']} | {_fmt_s(r['seconds'])} | {_fmt_b(r['extra_bytes'])} |" for r in results["remat"]]
        lines.append("")
    if results.get("compile"):
        c = results["compile"]
        lines += ["## Compile time of the scanned model (shakespeare-char-cpu, fwd+bwd step)", ""]
        lines += [f"- {r['n_layers']} layers: {r['compile_seconds']:.2f} s" for r in c]
        if len(c) == 2:
            lines.append(f"- ratio {c[1]['compile_seconds'] / c[0]['compile_seconds']:.2f}")
        lines.append("")
    if results.get("train"):
        lines += ["## Training step, shakespeare-char-cpu (B=32, T=64), jitted value_and_grad", ""]
        lines += [f"- attention {r['impl']} (={r['resolves_to']}): {_fmt_s(r['seconds'])}" for r in results["train"]]
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    if att:
        _plot(att, out / "attention_time.png")


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, mode in zip(axes, ("fwd", "fwd_bwd"), strict=True):
        for impl in dict.fromkeys(r["impl"] for r in rows):
            pts = sorted(
                (r["T"], r["seconds"]) for r in rows if r["impl"] == impl and r["mode"] == mode and r["seconds"]
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T (sequence length)")
        ax.set_ylabel("seconds (median)")
        ax.set_title("forward" if mode == "fwd" else "forward + backward")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, nargs="+", default=[1024, 2048, 4096], help="sequence lengths")
    p.add_argument("--B", type=int, default=4)
    p.add_argument("--H", type=int, default=8)
    p.add_argument("--Dh", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    p.add_argument(
        "--impls",
        nargs="+",
        default=["reference", "xla", "chunked", "auto"],
        choices=list(IMPLEMENTATIONS),
        metavar="IMPL",
        help=f"JAX implementations: auto or one of {list(IMPLEMENTATIONS)}; torch SDPA runs whenever torch is installed",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="XLA devices for the JAX sides (default on CPU: one per core; 1: jax's default single device)",
    )
    p.add_argument("--long", action="store_true", help="also B=1, H=8, T=32768 chunked fwd+bwd")
    p.add_argument("--long-T", type=int, default=32768)
    p.add_argument("--quick", action="store_true", help="T=256 512 1024, 2 repeats: a smoke run")
    p.add_argument("--only", choices=["attention", "long", "remat", "compile", "train"], default=None)
    p.add_argument("--max-gib", type=float, default=None, help="skip runs needing more scratch (default: 80%% of free)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_attention"))
    args = p.parse_args(argv)
    if args.devices is None:
        args.devices = host_cores() if os.environ.get("JAX_PLATFORMS", "cpu") in ("", "cpu") else 1
    if args.devices < 1:
        p.error(f"--devices {args.devices}: must be at least 1")
    request_host_devices(args.devices)  # before jax's backend starts (a no-op for 1)
    if jax.default_backend() != "cpu" and args.devices > 1:
        args.devices = 1  # one device per core is a CPU arrangement; accelerators run as they are
    devices = Devices(args.devices)
    if args.quick:
        args.T, args.repeats = [256, 512, 1024], 2
    max_bytes = args.max_gib * GiB if args.max_gib else 0.8 * _available_bytes()
    sections = [args.only] if args.only else ["attention", "remat", "compile", "train"]

    results: dict = {"argv": sys.argv[1:], "backend": jax.default_backend(), "devices": args.devices}
    if "attention" in sections:
        results["attention"] = bench_attention(
            args.T, args.B, args.H, args.Dh, args.repeats, args.impls, max_bytes, devices
        )
        print("\n".join(_ratios(results["attention"])))
    if (args.long and "attention" in sections) or args.only == "long":
        results["long"] = bench_long(args.long_T, 1, args.H, args.Dh, devices)
    if "remat" in sections:
        results["remat"] = bench_remat(max(2, args.repeats // 2), devices)
    if "compile" in sections:
        results["compile"] = bench_compile()
    if "train" in sections:
        results["train"] = bench_train(args.repeats, devices)
    write_report(args.out, results, args)
    print(f"wrote {args.out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
