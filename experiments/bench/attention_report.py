"""The attention benchmark's report: results.md (tables, ratios), results.json and attention_time.png."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax

from experiments.bench.measure import GiB


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


def row_text(r):
    name = r["impl"] + (f" (->{r['resolves_to']})" if r["impl"] == "auto" else "")
    load = f" load {r['load'][0]:.1f}-{r['load'][1]:.1f}" if r.get("load") else ""
    return (
        f"T={r['T']:>6} {r['mode']:>7} {name:<22} time {_fmt_s(r['seconds']):>9}  extra {_fmt_b(r['extra_bytes']):>9}"
        f"{load} {r['note']}"
    )


def ratios(rows) -> list[str]:
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
        f"`python -m experiments.bench.attention {' '.join(sys.argv[1:])}` on {os.cpu_count()} CPU cores, "
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
        lines += [f"- {x}" for x in ratios(att)] + [""]
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
