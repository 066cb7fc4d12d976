"""The context bottleneck: time and memory of attention against the context length T, per implementation.

    python -m experiments.context                      # ~2 minutes: T = 256 .. 4096, reference / xla / chunked, fwd and fwd+bwd
    python -m experiments.context --T 512 1024 2048 4096 8192 --impls xla chunked
    python -m experiments.context --smoke              # seconds: tiny T, one repeat

The lecture: every query is scored against every key, so the attention pattern is T x T per head;
time grows as T^2 and, if the pattern is materialised, so does memory. 'reference' and 'xla'
materialise it; 'chunked' (model/kernels/chunked.py: online softmax over key blocks, Rabe & Staats
2021 / FlashAttention's recurrence) keeps O(T) memory while time stays O(T^2).

Time: median of --repeats calls after a warm-up, implementations interleaved
(experiments/bench/measure.py's ``time_interleaved``). Memory: XLA's scratch bytes for the
compiled call beyond inputs and outputs (``compile().memory_analysis().temp_size_in_bytes``,
``temp_bytes`` there): deterministic, so its slopes are exact properties of the
programs. Slopes: least squares on log-log axes (``np.polyfit``) over the --fit-from largest T.

Claims (reported; the issue sets no threshold): the materialising reference attention's memory
grows ~T^2 (slope >= 1.8) and the chunked one's ~T (slope <= 1.2), forward and backward.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax

from experiments.bench.measure import GiB, inputs, jax_fns, temp_bytes, time_interleaved
from experiments.common import (
    Claim,
    Report,
    command_line,
    default_out,
    experiment_parser,
    finish,
    loglog_slope,
    pyplot,
    save_figure,
)

NAME = "context"


def measure(ts, impls, b: int, h: int, dh: int, repeats: int, max_bytes: float, log=print) -> list[dict[str, Any]]:
    """One row per (T, implementation, mode): seconds (None if skipped) and XLA scratch bytes."""
    from model.attention import select_implementation

    rows = []
    for t in ts:
        q, k, v = inputs(b, t, h, dh)  # [B, T, H, Dh]
        auto = select_implementation(q.shape, q.dtype, k_len=t, causal=True)
        for mode_i, mode in enumerate(("fwd", "fwd_bwd")):
            calls, mem = {}, {}
            for impl in impls:
                f = jax_fns(impl)[mode_i]
                mem[impl] = temp_bytes(f, q, k, v)
                if mem[impl] <= max_bytes:
                    calls[impl] = lambda f=f, q=q, k=k, v=v: jax.block_until_ready(f(q, k, v))
            times = time_interleaved(calls, repeats)
            for impl in impls:
                row = dict(T=t, impl=impl, mode=mode, seconds=times.get(impl), bytes=mem[impl], auto=auto)
                rows.append(row)
                secs = "skipped (memory)" if row["seconds"] is None else f"{row['seconds'] * 1e3:9.2f} ms"
                log(f"T={t:6d} {mode:7s} {impl:10s} {secs}  scratch {mem[impl] / 2**20:9.1f} MiB")
    return rows


def slopes(rows, impls, fit_from: int) -> dict[tuple[str, str], dict[str, float]]:
    """(impl, mode) -> {'time': k, 'memory': k}, exponents of T fitted on the ``fit_from`` largest T."""
    ts = sorted({r["T"] for r in rows})[-fit_from:]
    out = {}
    for impl in impls:
        for mode in ("fwd", "fwd_bwd"):
            sel = [r for r in rows if r["impl"] == impl and r["mode"] == mode and r["T"] in ts]
            out[(impl, mode)] = {
                "time": loglog_slope(
                    [r["T"] for r in sel if r["seconds"]], [r["seconds"] for r in sel if r["seconds"]]
                ),
                "memory": loglog_slope([r["T"] for r in sel], [r["bytes"] for r in sel]),
            }
    return out


def claims(sl) -> list[Claim]:
    out = []
    for impl, cond, text in (
        ("reference", lambda k: k >= 1.8, "~T^2 (slope >= 1.8)"),
        ("chunked", lambda k: k <= 1.2, "~T (slope <= 1.2)"),
    ):
        ks = {m: sl[(impl, m)]["memory"] for m in ("fwd", "fwd_bwd") if (impl, m) in sl}
        if ks:
            out.append(
                Claim(
                    f"{impl} attention's scratch memory grows {text}, forward and forward+backward",
                    all(not math.isnan(k) and cond(k) for k in ks.values()),
                    ", ".join(f"{m} slope {k:.2f}" for m, k in ks.items()),
                    acceptance=False,
                )
            )
    return out


def write_report(out: Path, rows, sl, args, command: str) -> tuple[Path, Report]:
    plt = pyplot()
    rep = Report("Context length: attention time and memory against T", command)
    for c in claims(sl):
        rep.claim(c)
    rep.text(
        f"Causal self-attention alone, B = {args.B}, H = {args.H}, Dh = {args.Dh}, float32, {jax.default_backend()} "
        f"({jax.device_count()} device(s) visible; one used). 'auto' resolves to "
        + ", ".join(
            sorted(
                {f"{r['auto']} (T={r['T']})" for r in rows if r["mode"] == "fwd"},
                key=lambda s: int(s.split("T=")[1][:-1]),
            )
        )
        + "."
        + (" **Smoke run: tiny T; slopes are dominated by overheads.**" if args.smoke else "")
    )
    ts = sorted({r["T"] for r in rows})
    for mode in ("fwd", "fwd_bwd"):
        rep.heading("forward" if mode == "fwd" else "forward + backward")
        table = []
        for t in ts:
            cells = [t]
            for impl in args.impls:
                r = next(x for x in rows if x["T"] == t and x["impl"] == impl and x["mode"] == mode)
                cells += [None if r["seconds"] is None else r["seconds"] * 1e3, r["bytes"] / 2**20]
            table.append(cells)
        table.append(
            ["slope", *[x for impl in args.impls for x in (sl[(impl, mode)]["time"], sl[(impl, mode)]["memory"])]]
        )
        rep.table(["T", *[f"{impl} {u}" for impl in args.impls for u in ("ms", "scratch MiB")]], table, digits=2)
    fit_ts = sorted({r["T"] for r in rows})[-args.fit_from :]
    rep.text(f"Slopes: exponent k of c T^k fitted with np.polyfit on log-log axes over T in {fit_ts}.")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for j, mode in enumerate(("fwd", "fwd_bwd")):
        for i, (key, unit, scale) in enumerate((("seconds", "ms", 1e3), ("bytes", "scratch MiB", 1 / 2**20))):
            ax = axes[i, j]
            for c, impl in enumerate(args.impls):
                pts = [(r["T"], r[key] * scale) for r in rows if r["impl"] == impl and r["mode"] == mode and r[key]]
                if not pts:
                    continue
                k = sl[(impl, mode)]["time" if key == "seconds" else "memory"]
                ax.plot(*zip(*pts, strict=True), "o-", color=f"C{c}", label=f"{impl} (slope {k:.2f})")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set(
                xlabel="T (context length)",
                ylabel=unit,
                title=f"{'forward' if mode == 'fwd' else 'forward + backward'}: {unit}",
            )
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    rep.figure(
        save_figure(fig, out / "context.png"),
        "time (top) and XLA scratch memory (bottom) against T, log-log, with fitted slopes",
        out,
    )
    rep.data = {"rows": rows, "slopes": {f"{i}/{m}": v for (i, m), v in sl.items()}}
    return rep.write(out), rep


def main(argv: list[str] | None = None):
    p = experiment_parser(NAME, __doc__, sweep=False)
    p.add_argument("--T", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--impls", nargs="+", default=["reference", "xla", "chunked"])
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--Dh", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fit-from", type=int, default=3, help="fit slopes on this many of the largest T (default 3)")
    p.add_argument("--max-gib", type=float, default=4.0, help="skip timing a call whose scratch exceeds this")
    args = p.parse_args(argv)
    if args.smoke:
        args.T, args.repeats, args.B, args.H, args.Dh = [64, 128, 256], 1, 1, 2, 16
    out = default_out(NAME, args)
    out.mkdir(parents=True, exist_ok=True)
    rows = measure(args.T, args.impls, args.B, args.H, args.Dh, args.repeats, args.max_gib * GiB)
    sl = slopes(rows, args.impls, args.fit_from)
    return finish(write_report(out, rows, sl, args, command_line(NAME, argv)), args.smoke, rows=rows, slopes=sl)


if __name__ == "__main__":
    main()
