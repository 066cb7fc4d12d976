"""The value map: factored into value-down and value-up (the lecture) against a full-rank D x D map per head.

    python -m experiments.value_map              # ~9 minutes here: 2 maps x 2 seeds on tiny Shakespeare, --steps each
    python -m experiments.value_map --smoke      # seconds: tiny model, checks the pipeline only

The lecture first explains each head's value map as a D x D matrix (read the residual stream,
write a change to it), then factors it: value-down D -> Dh, then value-up Dh -> D (value_up is the
usual output projection W_O, shared in form by all heads). The factored map has rank <= Dh and
2 D Dh parameters per head instead of D^2. ``model.value_map=full`` keeps one full D x D map per
head (the residual-stream output of each head is then summed as before).

Reported: parameters per component (``model.params.analytic_counts``, checked against the shapes
``jax.eval_shape`` traces) and validation loss. Claims: the analytic counts match the traced ones
for both maps; the factored model's loss is within 0.05 nats of the full one's while using fewer
parameters (reported, whichever way it falls: not an acceptance criterion of the issue).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.common import (
    Claim,
    Report,
    failed_note,
    pyplot,
    runs_note,
    save_figure,
    seed_losses,
    shakespeare_overrides,
    val_curve,
)
from experiments.sweep import Sweep, sweep_experiment_main

NAME = "value_map"
STEPS = 500  # nanoGPT's CPU run uses 2000; a quarter keeps 4 runs well within the budget of this shared machine
SEEDS = (0, 1)
MAPS = ("factored", "full")


def make_sweep(smoke: bool, out: Path, steps: int = STEPS, seeds=SEEDS) -> Sweep:
    if smoke:
        seeds = (0,)
    fixed = shakespeare_overrides(steps, smoke, out)
    return Sweep.make(NAME, "shakespeare-char-cpu", fixed, {"model.value_map": list(MAPS), "train.seed": list(seeds)})


def param_table(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """Per value map: the analytic and traced counts (whole model) of the config every run of it trains."""
    from model.params import analytic_counts, traced_counts
    from train.config import apply_overrides, get_preset

    out = {}
    for m in MAPS:
        cfg = apply_overrides(get_preset(sweep.base), [*sweep.fixed, f"model.value_map={m}"]).model
        a, t = analytic_counts(cfg), traced_counts(cfg)
        value = sum(v for k, v in a.items() if k.startswith("value"))
        out[m] = {"analytic": a, "traced": t, "value": value, "total": sum(a.values()), "config": cfg}
    return out


def claims(params: dict[str, dict[str, Any]], losses: dict[str, dict[str, Any]]) -> list[Claim]:
    out = [
        Claim(
            "the analytic parameter counts equal the traced ones (jax.eval_shape) for both maps",
            all(p["analytic"] == p["traced"] for p in params.values()),
            ", ".join(
                f"{m}: {p['total']:,} analytic vs {sum(p['traced'].values()):,} traced" for m, p in params.items()
            ),
        )
    ]
    if all(m in losses for m in MAPS):
        d = losses["factored"]["mean"] - losses["full"]["mean"]
        out.append(
            Claim(
                "the factored value map loses <= 0.05 nats against the full-rank one, with fewer parameters",
                d <= 0.05 and params["factored"]["value"] < params["full"]["value"],
                f"val loss factored {losses['factored']['mean']:.3f} vs full {losses['full']['mean']:.3f} ({d:+.3f}); "
                f"value parameters {params['factored']['value']:,} vs {params['full']['value']:,}",
                acceptance=False,
            )
        )
    return out


def write_report(out: Path, sweep: Sweep, rows, command: str, smoke: bool, steps: int):
    plt = pyplot()
    params = param_table(sweep)
    losses = seed_losses(rows, "model.value_map")
    rep = Report("The value map: factored (value-down, value-up) vs full-rank D x D per head", command)
    for c in claims(params, losses):
        rep.claim(c)
    cfg = params["factored"]["config"]
    rep.text(
        runs_note(
            sweep,
            "model.value_map=M train.seed=S",
            smoke,
            steps,
            f" (D = {cfg.d_model}, H = {cfg.n_heads}, Dh = {cfg.head_dim}, L = {cfg.n_layers})",
        )
    )
    rep.heading("Parameters (model.params.analytic_counts)")
    comps = sorted({k for p in params.values() for k in p["analytic"]})
    rep.table(
        ["component", *MAPS],
        [[k, *[params[m]["analytic"].get(k) for m in MAPS]] for k in comps]
        + [["total", *[params[m]["total"] for m in MAPS]]],
    )
    d, h, dh, layers = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.n_layers
    rep.text(
        f"Per layer: factored value-down D x H x Dh + value-up H x Dh x D = 2 x {d} x {h} x {dh} = {2 * d * h * dh:,}; "
        f"full H x D x D = {h} x {d} x {d} = {h * d * d:,} ({h * d * d / (2 * d * h * dh):.1f}x), times L = {layers}."
    )
    rep.heading("Validation loss")
    seeds = sorted({int(r["train.seed"]) for r in rows})
    rep.table(
        ["value map", *[f"val loss seed {s}" for s in seeds], "mean", "+-", "value params", "total params"],
        [
            [
                m,
                *[losses[m]["losses"].get(s) for s in seeds],
                losses[m]["mean"],
                losses[m]["pm"],
                params[m]["value"],
                params[m]["total"],
            ]
            for m in MAPS
            if m in losses
        ],
    )
    if note := failed_note(rows):
        rep.text(note)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, m in enumerate(MAPS):
        for r in rows:
            if r["status"] == "ok" and r["model.value_map"] == m:
                ax.plot(
                    *val_curve(r["run_dir"]),
                    color=f"C{i}",
                    marker=".",
                    label=f"{m} (seed {r['train.seed']})",
                )
    ax.set(xlabel="step", ylabel="val loss (nats/char)", title="validation loss: factored vs full value map")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    rep.figure(save_figure(fig, out / "value_map.png"), "validation loss during training", out)
    rep.data = {
        "params": {m: {k: v for k, v in p.items() if k != "config"} for m, p in params.items()},
        "losses": losses,
        "rows": rows,
    }
    return rep.write(out), rep


def main(argv: list[str] | None = None):
    return sweep_experiment_main(NAME, __doc__, argv, STEPS, SEEDS, make_sweep, write_report)


if __name__ == "__main__":
    main()
