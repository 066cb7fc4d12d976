"""Number of heads at fixed width (Vaswani et al. 2017, Table 3 rows A) on tiny Shakespeare, characters.

    python -m experiments.heads --workers 2             # h in {1,2,4,8,16,32} x 2 seeds at d_model 128 and 64 (long)
    python -m experiments.heads --widths 128            # one width only
    python -m experiments.heads --steps 2000            # the same steps at every width (nanoGPT's full CPU schedule)
    python -m experiments.heads --positions rotary --out runs/heads-rotary   # rotary positions in every run
    python -m experiments.heads --print-commands        # the 24 `python -m train` commands, for a cluster
    python -m experiments.heads --smoke                 # seconds: tiny models, checks the pipeline only

nanoGPT's CPU baby GPT (``--config shakespeare-char-cpu``: 4 layers, context 64) with h heads of
width d_head = d_model / h, so the attention's parameter count stays the same while each head gets
narrower. Two widths, each its own sweep and its own claims: the preset's d_model 128 (only h = 32
leaves d_head <= 4) and d_model 64 (h = 16 and 32 give d_head 4 and 2). The paper (WMT14 En-De,
d_model 512) found one head 0.9 BLEU worse than the best and too many heads worse again; its dev
perplexity and BLEU are printed beside our validation loss (different task and units: the paper's
PPL is per word piece on translation, ours is per character, so compare the shape of the curves,
not the values).

Claims, per width: every h with d_head <= 4 is worse than both h = 1 and h = 4 by >= 0.05 nats of
validation loss (acceptance); one head worse than the best multi-head setting, as in the paper
(reported, whichever way it falls).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.common import (
    Claim,
    Report,
    add_steps_and_seeds,
    command_line,
    default_out,
    experiment_parser,
    failed_note,
    finish,
    pyplot,
    runs_note,
    save_figure,
    seed_losses,
    shakespeare_overrides,
    val_curve,
)
from experiments.sweep import Sweep, check_sweeps, run_for_experiment, with_set

NAME = "heads"
HEADS = (1, 2, 4, 8, 16, 32)
SEEDS = (0, 1)
WIDTHS = (128, 64)  # the nanoGPT preset's width, and the width at which two settings (h = 16, 32) have d_head <= 4
# Steps per run at each width, chosen so that 6 h x 2 seeds fit about 15 CPU minutes on this 2-core machine
# (d_model 64 steps are cheaper, so that width gets more of them).
STEPS = {128: 1000, 64: 1500}
# --smoke: width 32 with h = 4, 8 (d_head 8, 4; h=4 is the other smokes' model, compiled once) and width 16 with
# h = 8 (d_head 2): three tiny runs that go through every path of the two-width report.
SMOKE_HEADS = {32: (4, 8), 16: (8,)}
# Vaswani et al. 2017, Table 3 rows (A): heads -> (dev perplexity, dev BLEU), newstest2013, base model d_model 512.
PAPER = {1: (5.29, 24.9), 4: (5.00, 25.5), 8: (4.92, 25.8), 16: (4.91, 25.8), 32: (5.01, 25.4)}


def steps_for(width: int, steps: int | None) -> int:
    return steps if steps is not None else STEPS.get(width, max(STEPS.values()))


def make_sweep(
    smoke: bool, out: Path, steps: int, width: int, heads=HEADS, seeds=SEEDS, positions: str | None = None
) -> Sweep:
    """The sweep at one width: its runs live in ``out`` (one directory per width).

    ``positions`` (e.g. 'rotary') replaces the preset's learned positions in every run.
    """
    base = [x for x in shakespeare_overrides(steps, smoke, out) if not x.startswith("model.d_model=")]
    fixed = [*base, f"model.d_model={width}"] + ([f"model.positions={positions}"] if positions else [])
    if smoke:
        heads, seeds = SMOKE_HEADS[width], (0,)
    heads = [h for h in heads if width % h == 0]
    axes = {"model.n_heads": list(heads), "train.seed": list(seeds)}
    return Sweep.make(f"{NAME}-d{width}", "shakespeare-char-cpu", fixed, axes)


def d_model_of(sweep: Sweep) -> int:
    """The width every point of the sweep trains (the preset's unless a fixed override sets it)."""
    from train.config import apply_overrides, get_preset

    return apply_overrides(get_preset(sweep.base), list(sweep.fixed)).model.d_model


def summarise(rows: list[dict[str, Any]], d_model: int) -> dict[int, dict[str, Any]]:
    by = {
        int(h): {"h": int(h), "d_head": d_model // int(h), **e} for h, e in seed_losses(rows, "model.n_heads").items()
    }
    return dict(sorted(by.items()))


def claims(summary: dict[int, dict[str, Any]], label: str = "") -> list[Claim]:
    """The claims at one width; ``label`` (e.g. 'd_model 64: ') starts each claim's name."""
    out = []
    narrow = [e for e in summary.values() if e["d_head"] <= 4]
    refs = [summary[h] for h in (1, 4) if h in summary]
    name = f"{label}heads with d_head <= 4 are worse than h in {{1, 4}} by >= 0.05 nats of val loss"
    if narrow and refs:
        gaps = [(n, r, n["mean"] - r["mean"]) for n in narrow for r in refs if n["h"] != r["h"]]
        out.append(
            Claim(
                name,
                all(g >= 0.05 for _, _, g in gaps),
                "; ".join(f"h={n['h']} (d_head {n['d_head']}) - h={r['h']}: {g:+.3f}" for n, r, g in gaps),
            )
        )
    else:
        out.append(Claim(name, False, "missing runs"))
    if 1 in summary and len(summary) > 1:
        best = min((e for h, e in summary.items() if h > 1), key=lambda e: e["mean"])
        gap = summary[1]["mean"] - best["mean"]
        out.append(
            Claim(
                f"{label}one head is worse than the best multi-head setting (the paper: 24.9 vs 25.8 BLEU)",
                gap > 0,
                f"h=1 {summary[1]['mean']:.3f} vs best h={best['h']} {best['mean']:.3f}: h=1 is {gap:+.3f} nats "
                f"(seed spread +-{max(summary[1]['pm'], best['pm']):.3f})",
                acceptance=False,
            )
        )
    return out


def paper_cells(h: int) -> list[str | None]:
    return [f"{PAPER[h][0]:.2f}", f"{PAPER[h][1]:.1f}"] if h in PAPER else [None, None]


def write_report(
    out: Path,
    results: dict[int, dict[str, Any]],
    command: str,
    smoke: bool,
    positions: str | None = None,
    settings: Sequence[str] = (),
):
    """One report for every width: ``results`` maps d_model -> {"sweep", "rows", "steps"}.

    ``positions`` and ``settings`` are what ``--positions`` and ``--set`` gave every run (named in the report).
    """
    plt = pyplot()
    widths = list(results)
    summaries = {w: summarise(r["rows"], d_model_of(r["sweep"])) for w, r in results.items()}
    rep = Report("Heads at fixed width (Vaswani et al. 2017, Table 3 rows A), tiny Shakespeare", command)
    for w in widths:
        for c in claims(summaries[w], f"d_model {w}: "):
            rep.claim(c)
    notes = {
        None: " (the preset's learned table).",
        "rotary": " (`--positions`; a head of width d_head rotates d_head/2 frequency pairs, so the narrowest "
        "heads have the fewest relative-position frequencies).",
    }
    rep.text(
        f"Positions: **{positions or 'learned'}**"
        + notes.get(positions, " (`--positions`).")
        + (f" Also set for every run: {', '.join(settings)}." if settings else "")
        + " Each width is its own sweep and its claims are evaluated separately: "
        + "; ".join(
            f"**d_model {w}**{' (the nanoGPT preset)' if w == 128 else ''}: {results[w]['steps']} steps per run"
            for w in widths
        )
        + "."
    )

    # side by side: every h with its head width and mean loss at each width, and the paper's numbers
    all_h = sorted({h for s in summaries.values() for h in s})
    headers = ["h"]
    for w in widths:
        headers += [f"d_head (d_model {w})", f"val loss (d_model {w})", "+-"]
    rows = []
    for h in all_h:
        row: list[Any] = [h]
        for w in widths:
            e = summaries[w].get(h)
            row += [w // h, e["mean"] if e else None, e["pm"] if e else None]
        rows.append(row + paper_cells(h))
    rep.heading("Side by side")
    rep.table([*headers, "paper dev PPL", "paper BLEU"], rows)

    for w in widths:
        r, summary = results[w], summaries[w]
        rep.heading(f"d_model {w}{' (the nanoGPT preset)' if w == 128 else ''}")
        rep.text(runs_note(r["sweep"], "model.n_heads=H train.seed=S", smoke, r["steps"], f" (d_head = {w}/H)"))
        seeds = sorted({int(x["train.seed"]) for x in r["rows"]})
        table = [
            [
                h,
                e["d_head"],
                *[e["losses"].get(s) for s in seeds],
                e["mean"],
                e["pm"],
                math.exp(e["mean"]),
                *paper_cells(h),
            ]
            for h, e in summary.items()
        ]
        rep.table(
            [
                "h",
                "d_head",
                *[f"val loss seed {s}" for s in seeds],
                "mean",
                "+-",
                "char PPL",
                "paper dev PPL",
                "paper BLEU",
            ],
            table,
        )
        walls = [x["wall_s"] for x in r["rows"] if x["status"] == "ok" and x.get("wall_s")]
        ms = [x["ms_per_step"] for x in r["rows"] if x["status"] == "ok" and x.get("ms_per_step")]
        if walls and not smoke:
            rep.text(
                f"Budget: {len(walls)} runs, {sum(walls) / 60:.1f} minutes of wall time summed over the runs "
                f"(median step {sorted(ms)[len(ms) // 2]:.0f} ms, from {min(ms):.0f} to {max(ms):.0f} ms). The steps "
                "were chosen for about 15 CPU minutes per width at the pilots' step times; the runs went two at a "
                "time on this shared 2-core machine beside other jobs, so their wall time is longer than that."
            )
        if note := failed_note(r["rows"]):
            rep.text(note)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, w in enumerate(widths):
        summary = summaries[w]
        hs = list(summary)
        seeds = sorted({s for e in summary.values() for s in e["losses"]})
        for s in seeds:
            axes[0].plot(hs, [summary[h]["losses"].get(s) for h in hs], "o", color=f"C{i}", alpha=0.4)
        axes[0].plot(hs, [summary[h]["mean"] for h in hs], "-", color=f"C{i}", label=f"d_model {w} (mean; dots: seeds)")
        for h in hs:
            if summary[h]["d_head"] <= 4:
                axes[0].annotate(f"d_head {summary[h]['d_head']}", (h, summary[h]["mean"]), fontsize=7, color=f"C{i}")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(all_h, [str(h) for h in all_h])
    axes[0].set(xlabel="heads h", ylabel="val loss (nats/char)", title="ours: tiny Shakespeare, characters")
    axes[0].legend(fontsize=7)
    ph = sorted(PAPER)
    axes[1].plot(ph, [PAPER[h][0] for h in ph], "o-", color="C3")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(ph, [str(h) for h in ph])
    axes[1].set(xlabel="heads h", ylabel="dev perplexity", title="paper: WMT14 En-De, d_model 512 (Table 3, rows A)")
    for ax in axes:
        ax.grid(alpha=0.3)
    path = save_figure(fig, out / "heads.png")
    rep.figure(
        path,
        "final validation loss against the number of heads at each width (left), the paper's dev perplexity (right)",
        out,
    )

    fig, axes = plt.subplots(1, len(widths), figsize=(5.5 * len(widths), 4), squeeze=False)
    for ax, w in zip(axes[0], widths, strict=True):
        rows_w = [x for x in results[w]["rows"] if x["status"] == "ok"]
        seed0 = min((int(x["train.seed"]) for x in rows_w), default=0)
        for x in rows_w:
            if int(x["train.seed"]) == seed0:
                ax.plot(*val_curve(x["run_dir"]), marker=".", label=f"h={x['model.n_heads']}")
        ax.set(xlabel="step", ylabel="val loss", title=f"d_model {w}: validation loss (seed {seed0})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    rep.figure(save_figure(fig, out / "curves_heads.png"), "validation loss during training, one panel per width", out)
    rep.data = {
        "widths": {
            str(w): {
                "steps": results[w]["steps"],
                "summary": {str(h): e for h, e in summaries[w].items()},
                "rows": results[w]["rows"],
            }
            for w in widths
        }
    }
    return rep.write(out), rep


def main(argv: list[str] | None = None):
    p = experiment_parser(NAME, __doc__)
    add_steps_and_seeds(p, None, SEEDS)
    p.add_argument("--heads", type=int, nargs="+", default=list(HEADS))
    p.add_argument(
        "--widths", type=int, nargs="+", default=list(WIDTHS), help=f"d_model of each sweep (default {WIDTHS})"
    )
    p.add_argument(
        "--positions",
        choices=["learned", "sinusoidal", "rotary", "none"],
        default=None,
        help="position information of every run (default: the preset's learned table)",
    )
    args = p.parse_args(argv)
    out = default_out(NAME, args)
    widths = list(SMOKE_HEADS) if args.smoke else args.widths
    results: dict[int, dict[str, Any]] = {}
    sweeps = {
        w: with_set(
            make_sweep(args.smoke, out / f"d{w}", steps_for(w, args.steps), w, args.heads, args.seeds, args.positions),
            args,
        )
        for w in widths
    }
    check_sweeps(sweeps.values())  # every width's points, before the first trains
    for w, sweep in sweeps.items():
        rows = run_for_experiment(sweep, out / f"d{w}", args)
        if rows is None:
            continue
        steps = int(next(x for x in sweep.fixed if x.startswith("train.steps=")).split("=")[1])  # smoke: its own
        results[w] = {"sweep": sweep, "rows": rows, "steps": steps}
    if not results:
        return None
    return finish(
        write_report(out, results, command_line(NAME, argv), args.smoke, args.positions, args.set),
        args.smoke,
        rows=[x for r in results.values() for x in r["rows"]],
    )


if __name__ == "__main__":
    main()
