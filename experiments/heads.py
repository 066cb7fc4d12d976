"""Number of heads at fixed width (Vaswani et al. 2017, Table 3 rows A) on tiny Shakespeare, characters.

    python -m experiments.heads                         # h in {1,2,4,8,16,32} x 2 seeds, --steps each (long)
    python -m experiments.heads --steps 2000            # nanoGPT's full CPU schedule (four times as long)
    python -m experiments.heads --workers 2             # two runs at once
    python -m experiments.heads --print-commands        # the 12 `python -m train` commands, for a cluster
    python -m experiments.heads --smoke                 # seconds: tiny model, checks the pipeline only

nanoGPT's CPU baby GPT (``--config shakespeare-char-cpu``: 4 layers, d_model 128, context 64) with
h heads of width d_head = 128 / h, so the attention's parameter count stays the same while each
head gets narrower: h = 32 leaves 4 dimensions per head for its query-key dot product. The paper
(WMT14 En-De, d_model 512) found one head 0.9 BLEU worse than the best and too many heads worse
again; its dev perplexity and BLEU are printed beside our validation loss (different task and
units: the paper's PPL is per word piece on translation, ours is per character, so compare the
shape of the curves, not the values).

Claims: every h with d_head <= 4 is worse than both h = 1 and h = 4 by >= 0.05 nats of validation
loss (acceptance); one head worse than the best multi-head setting, as in the paper (reported,
whichever way it falls).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from experiments.common import (
    Claim,
    Report,
    command_line,
    default_out,
    eval_records,
    experiment_parser,
    mean,
    print_summary,
    pyplot,
    shakespeare_overrides,
    spread,
)
from experiments.sweep import Sweep, run_for_experiment

NAME = "heads"
STEPS = 500  # nanoGPT's CPU run uses 2000; a quarter keeps 12 runs near the budget of this shared 2-core machine
HEADS = (1, 2, 4, 8, 16, 32)
SEEDS = (0, 1)
# Vaswani et al. 2017, Table 3 rows (A): heads -> (dev perplexity, dev BLEU), newstest2013, base model d_model 512.
PAPER = {1: (5.29, 24.9), 4: (5.00, 25.5), 8: (4.92, 25.8), 16: (4.91, 25.8), 32: (5.01, 25.4)}


def make_sweep(smoke: bool, out: Path, steps: int = STEPS, heads=HEADS, seeds=SEEDS) -> Sweep:
    fixed = shakespeare_overrides(steps, smoke, out)
    if smoke:  # width 32: heads 4 and 8 give d_head 8 and 4 (h=4 is the other smoke runs' config: compiled once)
        heads, seeds = (4, 8), (0,)
    return Sweep.make(NAME, "shakespeare-char-cpu", fixed, {"model.n_heads": list(heads), "train.seed": list(seeds)})


def d_model_of(sweep: Sweep) -> int:
    """The width every point of the sweep trains (the preset's unless a fixed override sets it)."""
    from train.config import apply_overrides, get_preset

    return apply_overrides(get_preset(sweep.base), list(sweep.fixed)).model.d_model


def summarise(rows: list[dict[str, Any]], d_model: int) -> dict[int, dict[str, Any]]:
    by: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        h = int(r["model.n_heads"])
        e = by.setdefault(h, {"h": h, "d_head": d_model // h, "losses": {}})
        e["losses"][int(r["train.seed"])] = r["val_loss"]
    for e in by.values():
        e["mean"], e["pm"] = mean(e["losses"].values()), spread(e["losses"].values())
    return dict(sorted(by.items()))


def claims(summary: dict[int, dict[str, Any]]) -> list[Claim]:
    out = []
    narrow = [e for e in summary.values() if e["d_head"] <= 4]
    refs = [summary[h] for h in (1, 4) if h in summary]
    if narrow and refs:
        gaps = [(n, r, n["mean"] - r["mean"]) for n in narrow for r in refs]
        out.append(
            Claim(
                "heads with d_head <= 4 are worse than h in {1, 4} by >= 0.05 nats of val loss",
                all(g >= 0.05 for _, _, g in gaps),
                "; ".join(f"h={n['h']} (d_head {n['d_head']}) - h={r['h']}: {g:+.3f}" for n, r, g in gaps),
            )
        )
    else:
        out.append(Claim("heads with d_head <= 4 are worse than h in {1, 4} by >= 0.05 nats", False, "missing runs"))
    if 1 in summary and len(summary) > 1:
        best = min((e for h, e in summary.items() if h > 1), key=lambda e: e["mean"])
        gap = summary[1]["mean"] - best["mean"]
        out.append(
            Claim(
                "one head is worse than the best multi-head setting (the paper: 24.9 vs 25.8 BLEU)",
                gap > 0,
                f"h=1 {summary[1]['mean']:.3f} vs best h={best['h']} {best['mean']:.3f}: h=1 is {gap:+.3f} nats "
                f"(seed spread +-{max(summary[1]['pm'], best['pm']):.3f})",
                acceptance=False,
            )
        )
    return out


def write_report(out: Path, sweep: Sweep, rows, command: str, smoke: bool, steps: int):
    plt = pyplot()
    d_model = d_model_of(sweep)
    summary = summarise(rows, d_model)
    rep = Report("Heads at fixed width (Vaswani et al. 2017, Table 3 rows A), tiny Shakespeare", command)
    for c in claims(summary):
        rep.claim(c)
    rep.text(
        f"Runs: `python -m train --config shakespeare-char-cpu {' '.join(sweep.fixed)} model.n_heads=H train.seed=S` "
        f"(d_model {d_model}, so d_head = {d_model}/H). "
        + (
            "**Smoke run: tiny model, a few steps; the numbers mean nothing.**"
            if smoke
            else f"{steps} steps per run (nanoGPT's CPU run: 2000), cosine schedule compressed to them. Seeds set "
            "the initialisation (train.seed); every run sees the same batches (data.seed 0), so +- is the spread "
            "over initialisations only."
        )
    )
    seeds = sorted({int(r["train.seed"]) for r in rows})
    table = []
    for h, e in summary.items():
        paper = [f"{PAPER[h][0]:.2f}", f"{PAPER[h][1]:.1f}"] if h in PAPER else [None, None]
        table.append(
            [h, e["d_head"], *[e["losses"].get(s) for s in seeds], e["mean"], e["pm"], math.exp(e["mean"]), *paper]
        )
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
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        rep.text("Failed points: " + "; ".join(f"{r['id']}: {r.get('error')}" for r in failed))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    hs = list(summary)
    for s in seeds:
        axes[0].plot(hs, [summary[h]["losses"].get(s) for h in hs], "o", alpha=0.5, label=f"seed {s}")
    axes[0].plot(hs, [summary[h]["mean"] for h in hs], "k-", label="mean")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(hs, [f"{h}\n(d_head {summary[h]['d_head']})" for h in hs], fontsize=7)
    axes[0].set(xlabel="heads h", ylabel="val loss (nats/char)", title="ours: tiny Shakespeare, characters")
    ph = sorted(PAPER)
    axes[1].plot(ph, [PAPER[h][0] for h in ph], "o-", color="C3")
    axes[1].set_xscale("log", base=2)
    axes[1].set_xticks(ph, [str(h) for h in ph])
    axes[1].set(xlabel="heads h", ylabel="dev perplexity", title="paper: WMT14 En-De (Table 3, rows A)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "heads.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    rep.figure(
        path, "final validation loss against the number of heads (left), the paper's dev perplexity (right)", out
    )

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in rows:
        if r["status"] == "ok" and r["train.seed"] == str(seeds[0]):
            recs = eval_records(r["run_dir"])
            ax.plot(
                [x["step"] for x in recs], [x["val_loss"] for x in recs], marker=".", label=f"h={r['model.n_heads']}"
            )
    ax.set(xlabel="step", ylabel="val loss", title=f"validation loss during training (seed {seeds[0]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves_heads.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    rep.figure(path, "validation loss during training", out)
    rep.data = {"summary": {str(h): e for h, e in summary.items()}, "rows": rows}
    return rep.write(out), rep


def main(argv: list[str] | None = None):
    p = experiment_parser(NAME, __doc__)
    p.add_argument("--steps", type=int, default=STEPS, help=f"training steps per run (default {STEPS})")
    p.add_argument("--heads", type=int, nargs="+", default=list(HEADS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = p.parse_args(argv)
    out = default_out(NAME, args)
    sweep = make_sweep(args.smoke, out, args.steps, args.heads, args.seeds)
    rows = run_for_experiment(sweep, out, args)
    if rows is None:
        return None
    path, rep = write_report(out, sweep, rows, command_line(NAME, argv), args.smoke, args.steps)
    print_summary(rep, path)
    return {"report": path, "claims": rep.claims, "rows": rows}


if __name__ == "__main__":
    main()
