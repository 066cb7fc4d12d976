"""Benchmark attention implementations against T: time and extra memory, forward and fwd+bwd.

    python -m experiments.bench.attention                      # T = 1024 2048 4096, all sections
    python -m experiments.bench.attention --quick              # small T, few repeats (a smoke run)
    python -m experiments.bench.attention --T 1024 2048 4096 --long   # + B=1, H=8, T=32768 chunked fwd+bwd
    python -m experiments.bench.attention --only attention     # one section: attention|remat|compile|train
    python -m experiments.bench.attention --devices 1          # one multithreaded XLA device (jax's default)

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
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments.bench.attention_report import ratios, row_text, write_report
from experiments.bench.measure import (
    Devices,
    GiB,
    available_bytes,
    block,
    import_torch,
    inputs,
    jax_fns,
    peak_rss,
    reset_peak_rss,
    temp_bytes,
    time_interleaved,
    torch_extra_bytes,
    torch_fns,
)
from model.attention import select_implementation
from model.config import IMPLEMENTATIONS
from model.host import host_cores, request_host_devices


# ---------------------------------------------------------------------------- section: attention vs T
def section_attention(ts, b, h, d, repeats, impls, max_bytes, devices: Devices) -> list[dict]:
    """One row per (T, implementation, mode) with time (s) and extra memory (bytes, all devices)."""
    torch = import_torch(devices.n)
    rows = []
    for t in ts:
        q, k, v = inputs(b, t, h, d, devices=devices)
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
                calls[mode][impl] = lambda f=f, a=(q, k, v): block(f(*a))
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
                print(row_text(rows[-1]), flush=True)
    return rows


def section_long(t, b, h, d, devices: Devices) -> dict:
    """One chunked fwd+bwd at a length where the dense paths cannot run; dense memory reported from compile."""
    q, k, v = inputs(b, t, h, d, devices=devices)
    rss_base = reset_peak_rss()
    _, f_bwd = jax_fns("chunked")
    _, x_bwd = jax_fns("xla")
    row = dict(T=t, B=b, H=h, Dh=d, impl="chunked", mode="fwd_bwd", devices=devices.n)
    row["extra_bytes"] = temp_bytes(f_bwd, q, k, v, devices=devices.n)
    row["xla_extra_bytes"] = temp_bytes(x_bwd, q, k, v, devices=devices.n)
    t0 = time.perf_counter()
    block(f_bwd(q, k, v))
    row["first_call_seconds"] = time.perf_counter() - t0  # includes compilation
    t0 = time.perf_counter()
    block(f_bwd(q, k, v))
    row["seconds"] = time.perf_counter() - t0
    row["peak_rss_bytes"] = peak_rss()
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


def section_remat(repeats, devices: Devices, batch=8, seq=256) -> list[dict]:
    """Step time and XLA scratch of the shakespeare-char model's fwd+bwd under each remat policy."""
    from model.config import get_preset

    rows, calls = [], {}
    for remat in ("none", "full", "dots"):
        cfg = get_preset("shakespeare-char").replace(remat=remat, dropout=0.0)
        step, params, tokens = _model_step(cfg, batch, seq, devices)
        rows.append(dict(remat=remat, extra_bytes=temp_bytes(step, params, tokens, devices=devices.n)))
        calls[remat] = lambda s=step, p=params, x=tokens: block(s(p, x))
    times = time_interleaved(calls, repeats)
    for r in rows:
        r["seconds"] = times[r["remat"]]
        print(f"remat={r['remat']}: step {r['seconds'] * 1e3:.0f} ms, scratch {r['extra_bytes'] / 2**20:.0f} MiB")
    return rows


def section_compile(layers=(2, 48), batch=8, repeats=2) -> list[dict]:
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


def section_train(repeats, devices: Devices, batch=32) -> list[dict]:
    """Per-step time of the shakespeare-char-cpu model (jitted loss grad) with attention 'auto' vs 'reference'."""
    from model.config import get_preset

    calls, rows = {}, []
    for impl in ("auto", "reference"):
        cfg = get_preset("shakespeare-char-cpu").replace(attention_impl=impl)
        step, params, tokens = _model_step(cfg, batch, cfg.max_len, devices)
        calls[impl] = lambda s=step, p=params, x=tokens: block(s(p, x))
    times = time_interleaved(calls, repeats)
    q_shape = (batch, cfg.max_len, cfg.n_heads, cfg.head_dim)
    auto_is = select_implementation(q_shape, jnp.float32, k_len=cfg.max_len, causal=True)
    for impl, s in times.items():
        rows.append(dict(impl=impl, resolves_to=auto_is if impl == "auto" else impl, seconds=s))
        print(f"shakespeare-char-cpu step, attention {impl}: {s * 1e3:.1f} ms", flush=True)
    return rows


# ---------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m experiments.bench.attention", description=__doc__.split("\n")[0])
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
    max_bytes = args.max_gib * GiB if args.max_gib else 0.8 * available_bytes()
    sections = [args.only] if args.only else ["attention", "remat", "compile", "train"]

    results: dict = {"argv": sys.argv[1:], "backend": jax.default_backend(), "devices": args.devices}
    if "attention" in sections:
        results["attention"] = section_attention(
            args.T, args.B, args.H, args.Dh, args.repeats, args.impls, max_bytes, devices
        )
        print("\n".join(ratios(results["attention"])))
    if (args.long and "attention" in sections) or args.only == "long":
        results["long"] = section_long(args.long_T, 1, args.H, args.Dh, devices)
    if "remat" in sections:
        results["remat"] = section_remat(max(2, args.repeats // 2), devices)
    if "compile" in sections:
        results["compile"] = section_compile()
    if "train" in sections:
        results["train"] = section_train(args.repeats, devices)
    write_report(args.out, results, args)
    print(f"wrote {args.out / 'results.md'}")
    return results


if __name__ == "__main__":
    main()
