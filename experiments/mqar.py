"""Multi-query associative recall (Zoology, Arora et al. 2023): attention with 1 and 2 layers.

    python -m experiments.mqar                  # ~8 minutes here: 2 depths x 1 seed, 1000 steps of batch 256
    python -m experiments.mqar --seeds 0 1 2    # more seeds
    python -m experiments.mqar --smoke          # seconds: tiny, checks the pipeline only

Task (``data.task=mqar``, train/data.py): 4 key-value pairs, then each key queried once among filler
tokens; the loss counts only the value after a query key. Vocabulary 256 (keys from the lower
half, values from the upper), length 64, d_model 64, 4 heads. Answering a query needs the value
that *followed* the matching key: one attention layer can find the key's earlier occurrence, but
its value sits one position later, so (as for induction heads) two layers are needed: a
previous-token head tags each value with its key, then the query looks the tag up.

Configuration, from pilots on this machine (2000 steps each, batch 64, lr 3e-3): learned positions
with MLPs, rotary with MLPs, one head, attention-only, and lr 1e-2 all stayed at accuracy ~0.25
(the model learns that the answer is one of the 4 values, not which: only 4 of 64 positions carry
a loss, 256 labels per batch). Zoology's batch size, 256, gives 4x the labels per step, and the
2-layer model then passes 0.98 by step 300. So: batch 256 (Zoology's), attention-only blocks
(``model.mlp=false``: the recall is attention's job) with rotary positions (the previous-token head
is one relative offset), 1000 steps.

Claims (acceptance): 2 layers reach val accuracy >= 0.95 within 2000 steps; 1 layer stays <= 0.4.
Every point is a `python -m train --config mqar ...` run of a sweep (experiments/sweep/).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from experiments.common import (
    Claim,
    Report,
    command_line,
    default_out,
    eval_records,
    experiment_parser,
    finish,
    pyplot,
    save_figure,
)
from experiments.sweep import Sweep, run_for_experiment, with_set

NAME = "mqar"
STEPS = 1000  # the claim allows 2000; the 2-layer pilot passed 0.95 by step 300
LIMIT = 2000  # "within 2000 steps"


def make_sweep(smoke: bool, seeds=(0,)) -> Sweep:
    if smoke:
        fixed = [
            "data.vocab_size=16",
            "data.n_pairs=2",
            "model.vocab_size=16",
            "model.max_len=16",
            "model.d_model=16",
            "model.n_heads=2",
            "train.batch_size=8",
            "train.steps=4",
            "train.warmup_steps=1",
            "train.eval_every=4",
            "train.eval_batches=1",
            "train.checkpoint_every=4",
        ]
    else:
        fixed = [
            "data.vocab_size=256",
            "data.n_pairs=4",
            "model.vocab_size=256",
            "model.max_len=64",
            "model.d_model=64",
            "model.n_heads=4",
            "model.mlp=false",
            "model.positions=rotary",
            "train.batch_size=256",
            f"train.steps={STEPS}",
            "train.eval_every=100",
            "train.eval_batches=4",
            f"train.checkpoint_every={STEPS}",
        ]
    return Sweep.make(NAME, "mqar", fixed, {"model.n_layers": [1, 2], "train.seed": list(seeds)})


def first_step_reaching(records: list[dict[str, Any]], threshold: float) -> int | None:
    for r in records:
        if r["val_accuracy"] >= threshold:
            return r["step"]
    return None


def claims(rows: list[dict[str, Any]], steps: int) -> list[Claim]:
    two = [r for r in rows if r["model.n_layers"] == "2"]
    one = [r for r in rows if r["model.n_layers"] == "1"]
    reach = [first_step_reaching(eval_records(r["run_dir"]), 0.95) for r in two]
    return [
        Claim(
            f"2-layer attention reaches MQAR accuracy >= 0.95 within {steps} steps (every seed)",
            bool(two) and all(s is not None and s <= steps for s in reach),
            ", ".join(
                f"seed {r['train.seed']}: first >= 0.95 at step {s if s is not None else 'never'} (final {r['val_accuracy']:.3f})"
                for r, s in zip(two, reach, strict=True)
            ),
        ),
        Claim(
            "1-layer attention stays <= 0.4 (every seed)",
            bool(one) and all(r["val_accuracy"] <= 0.4 for r in one),
            ", ".join(f"seed {r['train.seed']}: {r['val_accuracy']:.3f}" for r in one),
        ),
    ]


def write_report(out: Path, sweep: Sweep, rows: list[dict[str, Any]], command: str, smoke: bool):
    plt = pyplot()
    failed = [r for r in rows if r["status"] != "ok"]
    ok = [r for r in rows if r["status"] == "ok"]
    rep = Report("Multi-query associative recall (Zoology): 1 vs 2 attention layers", command)
    for c in claims(ok, LIMIT):
        rep.claim(c)
    rep.text(
        "Each run: `python -m train --config mqar "
        + " ".join(sweep.fixed)
        + " model.n_layers=L train.seed=S`."
        + (" **Smoke run: tiny model, a few steps; the numbers mean nothing.**" if smoke else "")
    )
    rep.text(
        "Why batch 256, attention-only blocks and rotary positions: pilots with the preset's batch of 64 (learned "
        "or rotary positions, with or without MLPs, 1 or 4 heads, lr 3e-3 or 1e-2) all stayed near accuracy 0.25 "
        "for 2000 steps: the model learns that the answer is one of the 4 values but not which, with only 4 of 64 "
        "positions carrying a loss. Zoology's batch of 256 gives 4x the labels per step (see the module docstring)."
    )
    table = []
    for r in ok:
        recs = eval_records(r["run_dir"])
        table.append(
            [
                int(r["model.n_layers"]),
                int(r["train.seed"]),
                r["val_accuracy"],
                r["val_loss"],
                first_step_reaching(recs, 0.95),
                r["wall_s"],
            ]
        )
    rep.table(["layers", "seed", "val accuracy", "val loss", "first step >= 0.95", "wall s"], table)
    if failed:
        rep.text("Failed points: " + "; ".join(f"{r['id']}: {r.get('error')}" for r in failed))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in ok:
        recs = eval_records(r["run_dir"])
        ax.plot(
            [x["step"] for x in recs],
            [x["val_accuracy"] for x in recs],
            marker=".",
            label=f"{r['model.n_layers']} layer(s), seed {r['train.seed']}",
        )
    ax.axhline(0.95, color="gray", ls="--", lw=0.8)
    ax.set(
        xlabel="step", ylabel="val accuracy (query positions)", ylim=(0, 1.02), title="MQAR: accuracy during training"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    rep.figure(
        save_figure(fig, out / "accuracy.png"),
        "validation accuracy on the query positions against step (dashed: 0.95)",
        out,
    )
    for r in ok:
        src = Path(r["run_dir"]) / "attention.png"
        if r["model.n_layers"] == "2" and src.is_file():
            # copied beside the report: run directories stay out of the repository, the report's images go in
            dest = out / "attention.png"
            if src.resolve() != dest.resolve():
                shutil.copyfile(src, dest)
            rep.figure(dest, f"attention patterns of the 2-layer model (seed {r['train.seed']})", out)
            break
    rep.data = {"rows": rows}
    return rep.write(out), rep


def main(argv: list[str] | None = None):
    p = experiment_parser(NAME, __doc__)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    out = default_out(NAME, args)
    sweep = with_set(make_sweep(args.smoke, args.seeds), args)
    rows = run_for_experiment(sweep, out, args)
    if rows is None:
        return None
    return finish(write_report(out, sweep, rows, command_line(NAME, argv), args.smoke), args.smoke, rows=rows)


if __name__ == "__main__":
    main()
