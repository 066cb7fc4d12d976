"""Masking: train with and without the causal mask, and watch the unmasked model cheat, then fail at generation.

    python -m experiments.masking               # ~10-15 minutes here: tiny Shakespeare, 2 runs of --steps steps
    python -m experiments.masking --smoke       # seconds: a tiny model on a few lines of text

The lecture: the causal mask keeps later tokens from speaking to earlier ones. Without it
(``model.causal=false``) the token to be predicted at position t sits in the input at position
t + 1, and attention can simply look it up: the training loss collapses, although nothing about
Shakespeare was learned. At generation time there is no future to look at (each new token is
predicted from the tokens so far, through the KV cache of train/sample.py), and the unmasked
model falls apart.

Measured for both models, on the same validation windows:
- training-view loss: a full forward pass over the window (what training optimises; the unmasked
  model sees the future);
- generation-view loss: the same windows fed token by token through the KV cache (decode=True), so
  every prediction sees only the past, as in generation;
- samples from train/sample.py's ``make_generate`` and their loss under the masked model (how
  plausible the masked model finds each model's text).

Claims: the unmasked training loss is less than half the masked one; the unmasked model's
generation-view loss is worse than the masked model's by >= 0.5 nats; the masked model finds the
unmasked model's samples less likely than its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
    shakespeare_overrides,
)
from experiments.sweep import Sweep, run_for_experiment, with_set

NAME = "masking"
STEPS = 1000


def make_sweep(smoke: bool, out: Path, steps: int = STEPS) -> Sweep:
    return Sweep.make(
        NAME, "shakespeare-char-cpu", shakespeare_overrides(steps, smoke, out), {"model.causal": [True, False]}
    )


def token_losses(model, params, tokens: jax.Array, *, decode: bool) -> jax.Array:
    """Next-token losses ``[B, T-1]`` of ``tokens`` [B, T]: one full forward pass, or token by token via the KV cache.

    ``decode=True`` feeds one token at a time (``decode=True`` with a cache from init_cache), so each
    prediction sees only the tokens before it, whatever the model's mask: the view of generation.
    Jittable (wrap in a closure: ``decode`` is static).
    """
    from model.transformer import init_cache
    from model.transformer import token_losses as cross_entropies

    if decode:

        def body(cache, tok):  # tok [B]: feed one token, get the logits for the next
            logits, variables = model.apply(
                {"params": params, "cache": cache}, tok[:, None], decode=True, mutable=["cache"]
            )
            return variables["cache"], logits[:, -1]

        _, logits = jax.lax.scan(body, init_cache(model, tokens.shape[0]), tokens[:, :-1].T)  # [T-1, B, V]
        logits = jnp.swapaxes(logits, 0, 1)  # [B, T-1, V]
    else:
        logits = model.apply({"params": params}, tokens[:, :-1])
    return cross_entropies(logits, tokens[:, 1:])


def evaluate_run(run_dir: Path, n_windows: int, prompt_len: int, long_len: int = 0) -> dict[str, Any]:
    """Training-view and generation-view losses on ``n_windows`` validation windows, and samples of a run.

    ``n_windows`` samples continue the first ``prompt_len`` tokens of the windows to the full context
    (``sequences`` [N, T], for judging); ``long_len`` > 0 adds one longer sample for the report.
    """
    from train.data import load_dataset_for_run
    from train.loop import EVAL_OFFSET
    from train.sample import SamplingConfig, load_run, make_generate

    cfg, model, params, _ = load_run(run_dir)
    t = cfg.model.max_len
    ds = load_dataset_for_run(run_dir, cfg.data, cfg.seq_len)
    batch = ds.batch("val", EVAL_OFFSET, n_windows, t)
    tokens = jnp.asarray(np.concatenate([batch["inputs"][:, :1], batch["targets"]], axis=1))[:, :t]  # [N, T]
    full = jax.jit(lambda p, x: token_losses(model, p, x, decode=False))
    train_view = full(params, tokens)
    gen_view = jax.jit(lambda p, x: token_losses(model, p, x, decode=True))(params, tokens)
    prompts = tokens[:, :prompt_len]  # [N, P]
    sc = SamplingConfig(temperature=1.0)
    new = make_generate(model, prompt_len, t - prompt_len, sc, vocab_limit=ds.vocab_size)(
        params, prompts, jax.random.key(0)
    )
    out = {
        "causal": cfg.model.causal,
        "train_view_loss": float(jnp.mean(train_view)),
        "generation_view_loss": float(jnp.mean(gen_view)),
        "train_view_by_position": np.asarray(jnp.mean(train_view, axis=0)),
        "generation_view_by_position": np.asarray(jnp.mean(gen_view, axis=0)),
        "samples": [ds.decode(np.asarray(prompts[i])) + "|" + ds.decode(np.asarray(new[i])) for i in range(3)],
        "sequences": np.concatenate([np.asarray(prompts), np.asarray(new)], axis=1),  # [N, T]
        "full_pass": lambda x: full(params, x),  # this model's full-pass losses [N, T-1] of token windows [N, T]
    }
    if long_len:
        longer = make_generate(model, prompt_len, long_len, sc, vocab_limit=ds.vocab_size)
        out["long_sample"] = (
            ds.decode(np.asarray(prompts[0]))
            + "|"
            + ds.decode(np.asarray(longer(params, prompts[:1], jax.random.key(1))[0]))
        )
    else:
        out["long_sample"] = out["samples"][0]
    return out


def claims(res: dict[str, dict[str, Any]]) -> list[Claim]:
    m, u = res["masked"], res["unmasked"]
    return [
        Claim(
            "without the mask the training loss collapses: unmasked final train loss < half the masked one",
            u["train_loss"] < 0.5 * m["train_loss"],
            f"unmasked {u['train_loss']:.3f} vs masked {m['train_loss']:.3f} nats",
        ),
        Claim(
            "the unmasked model fails when it cannot see the future: generation-view loss >= masked + 0.5 nats",
            u["generation_view_loss"] >= m["generation_view_loss"] + 0.5,
            f"token-by-token val loss: unmasked {u['generation_view_loss']:.3f} vs masked {m['generation_view_loss']:.3f} nats",
        ),
        Claim(
            "the masked model finds the unmasked model's samples less likely than its own",
            u["judged_loss"] > m["judged_loss"],
            f"loss of generated text under the masked model: unmasked samples {u['judged_loss']:.3f}, "
            f"masked samples {m['judged_loss']:.3f} nats/char",
        ),
    ]


def run(out: Path, sweep: Sweep, rows: list[dict[str, Any]], smoke: bool) -> dict[str, dict[str, Any]]:
    by = {("masked" if r["model.causal"] == "true" else "unmasked"): r for r in rows}
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        raise RuntimeError(f"training failed: {bad[0]['id']}: {bad[0].get('error')} (see {out / 'logs'})")
    prompt_len = 4 if smoke else 16
    res = {}
    for k, r in by.items():
        e = evaluate_run(Path(r["run_dir"]), 8 if smoke else 64, prompt_len, long_len=0 if smoke else 300)
        res[k] = dict(e, train_loss=r["train_loss"], val_loss=r["val_loss"], run_dir=r["run_dir"])
    judge = res["masked"]["full_pass"]  # the masked model scores every model's samples (same shapes: one compile)
    for k in res:
        res[k]["judged_loss"] = float(np.mean(np.asarray(judge(jnp.asarray(res[k]["sequences"])))[:, prompt_len - 1 :]))
    return res


def write_report(out: Path, sweep: Sweep, rows, res, command: str, smoke: bool):
    plt = pyplot()
    rep = Report("Masking: training with and without the causal mask", command)
    for c in claims(res):
        rep.claim(c)
    rep.text(
        "Two runs of `python -m train --config shakespeare-char-cpu "
        + " ".join(sweep.fixed)
        + " model.causal=true|false` "
        "(nanoGPT's CPU baby GPT: 4 layers, 4 heads, d_model 128, context 64)."
        + (" **Smoke run: tiny model, a few steps; the numbers mean nothing.**" if smoke else "")
    )
    table = []
    for k in ("masked", "unmasked"):
        r = res[k]
        table.append(
            [k, r["train_loss"], r["val_loss"], r["train_view_loss"], r["generation_view_loss"], r["judged_loss"]]
        )
    rep.table(
        [
            "model",
            "final train loss",
            "final val loss (training view)",
            "val loss, full pass",
            "val loss, token by token (generation view)",
            "its samples' loss under the masked model",
        ],
        table,
    )
    rep.text(
        "The 'full pass' column recomputes the training-view validation loss on the windows used for the "
        "token-by-token column, so the two are comparable; for the masked model they agree (the KV cache "
        "computes the same function), for the unmasked one the gap is what seeing the future was worth."
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, style in (("masked", "-"), ("unmasked", "--")):
        recs = eval_records(res[k]["run_dir"])
        axes[0].plot([x["step"] for x in recs], [x["train_loss"] for x in recs], style, marker=".", label=f"{k}: train")
        axes[0].plot(
            [x["step"] for x in recs], [x["val_loss"] for x in recs], style, marker="s", ms=3, label=f"{k}: val"
        )
        xs = np.arange(1, len(res[k]["train_view_by_position"]) + 1)
        axes[1].plot(xs, res[k]["train_view_by_position"], style, label=f"{k}: full pass")
        axes[1].plot(xs, res[k]["generation_view_by_position"], style, label=f"{k}: token by token")
    axes[0].set(xlabel="step", ylabel="loss (nats/char)", title="training curves (training view)")
    axes[1].set(xlabel="position in the window", ylabel="val loss (nats/char)", title="validation loss by position")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    rep.figure(
        save_figure(fig, out / "masking.png"),
        "left: loss during training; right: validation loss by position, full pass vs token by token",
        out,
    )
    rep.heading("Samples (prompt | generated, temperature 1)")
    for k in ("masked", "unmasked"):
        rep.text(f"**{k}**, {len(res[k]['long_sample'])} characters:")
        rep.code(res[k]["long_sample"])
    rep.data = {k: {kk: vv for kk, vv in v.items() if kk not in ("sequences", "full_pass")} for k, v in res.items()}
    return rep.write(out), rep


def main(argv: list[str] | None = None):
    p = experiment_parser(NAME, __doc__)
    p.add_argument("--steps", type=int, default=STEPS, help=f"training steps per run (default {STEPS})")
    args = p.parse_args(argv)
    out = default_out(NAME, args)
    sweep = with_set(make_sweep(args.smoke, out, args.steps), args)
    rows = run_for_experiment(sweep, out, args)
    if rows is None:
        return None
    res = run(out, sweep, rows, args.smoke)
    return finish(write_report(out, sweep, rows, res, command_line(NAME, argv), args.smoke), args.smoke, results=res)


if __name__ == "__main__":
    main()
