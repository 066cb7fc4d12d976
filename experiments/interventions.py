"""Interventions on a trained induction model: ablate the induction head, patch it into a corrupted run.

    python -m experiments.interventions             # ~1-2 minutes here: trains experiment c's 2-layer model, then measures
    python -m experiments.interventions --smoke     # seconds: a tiny model, a few steps (checks the pipeline only)

The model is experiment c's 2-layer attention-only transformer on shifted repeats
(experiments/induction.py: d_model 64, 4 heads, rotary positions, 1000 steps, seed 0), the same
model and task as the main job `python -m train`. The head detectors (model/detectors.py) name the
induction head: the layer-1 head with the highest prefix-matching score; the *control* is the
layer-1 head with the lowest. Everything below uses model.hooks (run_with_hooks, ablate_heads,
mean_z, patch, patching_sweep) on one batch of 64 held-out sequences:

  * the loss on the repeated half (the positions the loss mask marks: inputs of the second copy
    whose targets are in it) with no ablation, the named head zero-ablated and mean-ablated (its
    ``hook_z`` replaced by its mean over another batch), and the control head ablated likewise;
  * activation patching: a *corrupted* input has the repeat's first occurrence replaced by other
    random tokens (each token differs from the clean one), so the second copy is unpredictable. The
    clean run's ``blocks.1.attn.hook_z`` of the named head is patched into the corrupted run; the
    fraction of the loss gap it restores is (corrupted - patched) / (corrupted - clean);
  * the same fraction for every (layer, head), from one compiled patching_sweep.

Claims (issue 14's "Interventions work"): zero-ablating the named head raises the loss on the repeated
half by >= 1 nat; ablating the control head raises it by at most a quarter of that; patching the
named head's hook_z restores at least half of the clean-vs-corrupted gap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import induction
from experiments.common import Claim, Report, command_line, default_out, experiment_parser, finish, pyplot, save_figure
from model import hooks
from model.detectors import detector_table

NAME = "interventions"
SEED = 0
EVAL_BATCH = 64


def corrupt(inputs: np.ndarray, period: np.ndarray, vocab: int, seed: int = 1) -> np.ndarray:
    """``inputs`` [B, T] with each row's first copy of the repeat (the ``period`` tokens before the second copy)
    replaced by other random tokens: every replaced token differs from the clean one, BOS and noise stay."""
    rng = np.random.default_rng(seed)
    out = inputs.copy()
    t = inputs.shape[1]
    for row, p in enumerate(period):
        start2 = t - p + 1  # the second copy's first input position (train/data/synthetic.py)
        first = np.arange(start2 - p, start2)
        out[row, first] = (inputs[row, first] + rng.integers(1, vocab, size=p)) % vocab
    return out


def repeat_loss(targets: jax.Array, mask: jax.Array):
    """A metric: logits [B, T, V] -> mean next-token loss over the masked (repeated-half) positions."""

    def metric(logits):
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        loss = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return jnp.sum(loss * mask) / jnp.sum(mask)

    return metric


def measure(model, params, batch: dict[str, np.ndarray], means_batch: dict[str, np.ndarray], vocab: int) -> dict:
    """Every number of the report, from the trained ``model``/``params`` and two held-out batches."""
    cfg = model.config
    table = {k: np.asarray(v) for k, v in detector_table(model, params, jax.random.key(0)).items()}
    last = cfg.n_layers - 1
    pm = table["prefix_matching"][last]
    named, control = (last, int(np.argmax(pm))), (last, int(np.argmin(pm)))

    clean = jnp.asarray(batch["inputs"])
    corrupted = jnp.asarray(corrupt(batch["inputs"], batch["period"], vocab))
    metric = repeat_loss(jnp.asarray(batch["targets"]), jnp.asarray(batch["loss_mask"]))
    z_names = [f"blocks.{i}.attn.hook_z" for i in range(cfg.n_layers)]
    _, mean_cache = hooks.run_with_cache(model, params, jnp.asarray(means_batch["inputs"]), z_names)
    means = hooks.mean_z(mean_cache)
    _, clean_cache = hooks.run_with_cache(model, params, clean, z_names)

    def loss(tokens, hook_dict=None):
        logits = (
            hooks.run_with_hooks(model, params, tokens, hook_dict)
            if hook_dict
            else model.apply({"params": params}, tokens)
        )
        return float(metric(logits))

    out: dict[str, Any] = {"named": named, "control": control, "detectors": table}
    out["clean"] = loss(clean)
    for label, head in (("named", named), ("control", control)):
        out[f"{label}_zero"] = loss(clean, hooks.ablate_heads([head]))
        out[f"{label}_mean"] = loss(clean, hooks.ablate_heads([head], means))
    order = [(last, int(h)) for h in np.argsort(-pm)]  # layer-1 heads, highest prefix matching first
    out["top_k_zero"] = [loss(clean, hooks.ablate_heads(order[:k])) for k in range(1, len(order) + 1)]
    out["all_but_named_zero"] = loss(clean, hooks.ablate_heads(order[1:]))
    out["order"] = order
    out["corrupted"] = loss(corrupted)
    name = z_names[named[0]]
    out["patched"] = loss(corrupted, {name: hooks.patch(clean_cache[name], heads=[named[1]])})
    out["patched_layer"] = loss(corrupted, {name: hooks.patch(clean_cache[name])})  # every head of that layer
    gap = out["corrupted"] - out["clean"]
    out["restored"] = (out["corrupted"] - out["patched"]) / gap
    out["restored_layer"] = (out["corrupted"] - out["patched_layer"]) / gap
    sweep = np.asarray(hooks.patching_sweep(model, params, clean, corrupted, metric))  # [L, H] patched losses
    out["sweep_restored"] = (out["corrupted"] - sweep) / gap
    return out


def run(out: Path, smoke: bool, log=print) -> dict[str, Any]:
    s = induction.setup(smoke)
    cfg = induction.run_config(s, 2, SEED, "shifted")
    ds = induction.ShiftedInduction(s.vocab, s.seq_len, seed=SEED)
    log(f"{cfg.name}: training {s.steps} steps (experiment c's 2-layer model)")
    model, params, seconds = induction.fit(cfg, ds, out / "runs" / cfg.name, log)
    held_out = induction.ShiftedInduction(s.vocab, s.seq_len, seed=12345)
    batch = held_out.batch_with_period("val", 0, EVAL_BATCH, s.seq_len)
    means_batch = held_out.batch_with_period("val", 1, EVAL_BATCH, s.seq_len)
    r = measure(model, params, batch, means_batch, s.vocab)
    r["train_seconds"] = seconds
    return r


def claims(r: dict[str, Any]) -> list[Claim]:
    (nl, nh), (cl, ch) = r["named"], r["control"]
    rise, control_rise = r["named_zero"] - r["clean"], r["control_zero"] - r["clean"]
    return [
        Claim(
            f"zero-ablating the named induction head L{nl}H{nh} raises the loss on the repeated half by >= 1 nat",
            rise >= 1.0,
            f"{r['clean']:.3f} -> {r['named_zero']:.3f} nats (+{rise:.3f}; mean-ablated {r['named_mean']:.3f})",
        ),
        Claim(
            f"zero-ablating the low-score layer-1 head L{cl}H{ch} raises it by at most a quarter of that",
            control_rise <= 0.25 * rise,
            f"+{control_rise:.3f} nats against +{rise:.3f} (ratio {control_rise / rise if rise else float('nan'):.3f}; "
            f"mean-ablated {r['control_mean']:.3f})",
        ),
        Claim(
            f"patching the clean run's blocks.{nl}.attn.hook_z of L{nl}H{nh} into the corrupted run restores >= 0.5 "
            "of the clean-vs-corrupted loss gap",
            r["restored"] >= 0.5,
            f"corrupted {r['corrupted']:.3f}, patched {r['patched']:.3f}, clean {r['clean']:.3f}: "
            f"{r['restored']:.3f} of the gap restored",
        ),
        Claim(
            f"zero-ablating all {len(r['order'])} layer-{nl} heads raises the loss on the repeated half by >= 1 nat",
            r["top_k_zero"][-1] - r["clean"] >= 1.0,
            f"{r['clean']:.3f} -> {r['top_k_zero'][-1]:.3f} nats; every layer-{nl} head but L{nl}H{nh} ablated: "
            f"{r['all_but_named_zero']:.3f}",
            acceptance=False,
        ),
    ]


def write_report(out: Path, r: dict[str, Any], command: str, smoke: bool):
    s = induction.setup(smoke)
    rep = Report("Interventions on the 2-layer induction model: ablation and activation patching", command)
    for c in claims(r):
        rep.claim(c)
    (nl, nh), (cl, ch) = r["named"], r["control"]
    pm = r["detectors"]["prefix_matching"]
    rep.text(
        f"Experiment c's 2-layer attention-only model (d_model {s.d_model}, {s.n_heads} heads, rotary, {s.steps} steps "
        f"of batch {s.batch_size}, seed {SEED}; trained in {r['train_seconds']:.0f} s). Loss: mean next-token loss on "
        f"the repeated half of {EVAL_BATCH} held-out shifted-repeat sequences (T = {s.seq_len}, vocabulary {s.vocab}; "
        f"chance is log {s.vocab} = {np.log(s.vocab):.2f} nats). The named head is the layer-{nl} head with the highest "
        f"prefix-matching score (L{nl}H{nh}, {pm[nl, nh]:.3f}), the control the lowest (L{cl}H{ch}, {pm[cl, ch]:.3f})."
        + (" **Smoke run: tiny model, a few steps; the numbers mean nothing.**" if smoke else "")
    )
    strong = [h for h in range(pm.shape[1]) if pm[nl, h] >= 0.5]
    if len(strong) > 1:
        rep.text(
            f"{len(strong)} of the {pm.shape[1]} layer-{nl} heads are induction heads (prefix matching "
            f"{min(pm[nl, h] for h in strong):.3f}-{max(pm[nl, h] for h in strong):.3f}), so they back each other "
            f"up: ablating one leaves the others to do its work (the top-k rows below), and the lowest-scoring "
            f"layer-{nl} head is an induction head too, not a head that does something else."
        )
    rep.heading("Ablation")
    rows = [["none (clean run)", r["clean"], 0.0]]
    for label, (layer, head) in (("named", r["named"]), ("control", r["control"])):
        for kind in ("zero", "mean"):
            v = r[f"{label}_{kind}"]
            rows.append([f"L{layer}H{head} {kind}-ablated ({label})", v, v - r["clean"]])
    for k, v in enumerate(r["top_k_zero"], 1):
        heads = ", ".join(f"L{a}H{b}" for a, b in r["order"][:k])
        rows.append([f"top {k} layer-{nl} heads by prefix matching zero-ablated ({heads})", v, v - r["clean"]])
    v = r["all_but_named_zero"]
    rows.append([f"every layer-{nl} head but L{nl}H{nh} zero-ablated", v, v - r["clean"]])
    rep.table(["intervention", "loss on the repeated half", "minus clean"], rows)
    rep.heading("Activation patching")
    rep.text(
        "Corrupted input: the repeat's first occurrence replaced by other random tokens. Fraction restored = "
        "(corrupted - patched) / (corrupted - clean)."
    )
    rep.table(
        ["run", "loss on the repeated half", "fraction of the gap restored"],
        [
            ["clean", r["clean"], 1.0],
            ["corrupted", r["corrupted"], 0.0],
            [f"corrupted + clean hook_z of L{nl}H{nh}", r["patched"], r["restored"]],
            [f"corrupted + clean hook_z of every layer-{nl} head", r["patched_layer"], r["restored_layer"]],
        ],
    )
    sw = r["sweep_restored"]
    rep.text("Every (layer, head) from one compiled `model.hooks.patching_sweep` (fraction of the gap restored):")
    rep.table(["layer", *[f"H{h}" for h in range(sw.shape[1])]], [[i, *map(float, sw[i])] for i in range(sw.shape[0])])
    rep.text("Detector scores of every head (model/detectors.py, repeated random tokens):")
    det = r["detectors"]
    rep.table(
        ["head", "previous token", "duplicate token", "induction", "prefix matching"],
        [
            [f"L{i}H{j}", *(float(det[k][i, j]) for k in ("previous_token", "duplicate_token", "induction"))]
            + [float(pm[i, j])]
            for i in range(pm.shape[0])
            for j in range(pm.shape[1])
        ],
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * sw.shape[1] + 2, 1.0 * sw.shape[0] + 1.5))
    im = ax.imshow(sw, cmap="RdBu", vmin=-1, vmax=1)
    for i in range(sw.shape[0]):
        for j in range(sw.shape[1]):
            ax.text(j, i, f"{sw[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax.set(xlabel="head", ylabel="layer", title="fraction of the loss gap restored by patching hook_z")
    ax.set_xticks(range(sw.shape[1]))
    ax.set_yticks(range(sw.shape[0]))
    fig.colorbar(im, ax=ax)
    rep.figure(save_figure(fig, out / "patching.png"), "activation patching of every head's hook_z", out)
    rep.data = {k: v for k, v in r.items() if k != "detectors"} | {"detectors": det}
    return rep.write(out), rep


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = experiment_parser(NAME, __doc__, sweep=False)
    args = p.parse_args(argv)
    out = default_out(NAME, args)
    r = run(out, args.smoke)
    return finish(write_report(out, r, command_line(NAME, argv), args.smoke), args.smoke, results=r)


if __name__ == "__main__":
    main()
