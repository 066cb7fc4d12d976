"""Look inside a run or a GPT-2 checkpoint: per-head detector scores, logit attribution, ablations.

    python -m experiments.inspect runs/x --prompt "ROMEO: But soft"              # a run of ours
    python -m experiments.inspect path/to/gpt2-dir --prompt "12 7 99 12 7"       # HF GPT-2 (ids, or text
                                                                                  #  when the dir has a BPE)
    python -m experiments.inspect runs/x --prompt "..." --ablate 1.2 --out report/

Prints one row per head: previous-token, duplicate-token and induction scores (TransformerLens's
head detector) and Olsson et al.'s prefix-matching score, all on repeated random tokens, and the
head's mean direct logit attribution to the next token of the prompt. Writes into ``--out``
(default ``RUN/inspect``, or ``runs/inspect-NAME`` for a checkpoint): ``patterns.png`` (the prompt's
pattern grid), ``heads.png`` (a layer x head heatmap per score), ``report.md``; with ``--ablate L.H``
(repeatable) the change in loss per position when those heads are zero-ablated, in ``ablation.png``
and the report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from experiments.common import markdown_table, pyplot, save_figure

COLUMNS = ("previous_token", "duplicate_token", "induction", "prefix_matching", "logit_attribution")


def load(source: str):
    """(Transformer, params, encode, decode, default out dir) of a run directory or a HF GPT-2 directory."""
    from model.transformer import Transformer

    path = Path(source)
    if any((path / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        from model import hf

        cfg, params = hf.load(path)
        try:
            from train.tokenizers_bpe import load_gpt2_bpe

            bpe = load_gpt2_bpe(path)
            encode, decode = bpe.encode, lambda ids: bpe.decode(ids)
        except Exception:  # no BPE files beside the checkpoint: the prompt is token ids
            encode, decode = _ids, lambda ids: " ".join(str(int(i)) for i in ids)
        return Transformer(cfg), params, encode, decode, Path("runs") / f"inspect-{path.resolve().name}"
    from train.sample import load_codec, load_params

    cfg, ds = load_codec(path)
    model, params = load_params(path, cfg)
    return model, params, ds.encode, ds.decode, path / "inspect"


def _ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split()]
    except ValueError:
        raise ValueError(
            "this checkpoint has no tokenizer files: give the prompt as token ids, e.g. '12 7 99'"
        ) from None


def parse_heads(specs: list[str], n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    heads = []
    for spec in specs:
        try:
            layer, head = (int(x) for x in spec.split("."))
        except ValueError:
            raise ValueError(f"--ablate {spec!r}: write LAYER.HEAD, e.g. 1.2") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"--ablate {spec}: the model has layers 0..{n_layers - 1} and heads 0..{n_heads - 1}")
        heads.append((layer, head))
    return heads


def losses_per_position(logits, tokens) -> np.ndarray:
    """The first sequence's next-token loss at each position ``[T - 1]`` (model.transformer.token_losses)."""
    from model.transformer import token_losses

    return np.asarray(token_losses(logits[:, :-1], np.asarray(tokens)[:, 1:]))[0]


def inspect(model, params, ids: np.ndarray, *, ablate=(), seed: int = 0, batch: int = 8) -> dict:
    """Scores ``[L, H]`` per column of :data:`COLUMNS`, the prompt's patterns, and the ablation's loss change."""
    import jax

    from model import detectors, hooks

    cfg = model.config
    table = detectors.detector_table(model, params, jax.random.key(seed), batch=batch)
    tokens = ids[None, :]
    if len(ids) >= 2:
        table["logit_attribution"] = detectors.logit_attribution(model, params, tokens)["heads"].mean((1, 2))
    else:
        table["logit_attribution"] = np.full((cfg.n_layers, cfg.n_heads), np.nan)
    names = [f"blocks.{i}.attn.hook_pattern" for i in range(cfg.n_layers)]
    logits, cache = hooks.run_with_cache(model, params, tokens, names)
    out = {"scores": {k: np.asarray(v) for k, v in table.items()}}
    out["patterns"] = np.asarray(detectors.stacked_patterns(cache, cfg.n_layers))[:, 0]
    if ablate and len(ids) >= 2:
        ablated = hooks.run_with_hooks(model, params, tokens, hooks.ablate_heads(ablate))
        out["loss"] = losses_per_position(logits, tokens)
        out["loss_ablated"] = losses_per_position(ablated, tokens)
    return out


def head_rows(scores: dict) -> list[list]:
    n_layers, n_heads = scores["induction"].shape
    return [
        [f"{layer}.{head}", *(float(scores[c][layer, head]) for c in COLUMNS)]
        for layer in range(n_layers)
        for head in range(n_heads)
    ]


def draw_heatmaps(scores: dict, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(3.2 * len(COLUMNS), 3.0), squeeze=False)
    for ax, name in zip(axes[0], COLUMNS, strict=True):
        s = scores[name]
        if name == "logit_attribution":  # signed: a diverging map centred on 0
            m = float(np.nanmax(np.abs(s))) or 1.0
            im = ax.imshow(s, cmap="RdBu", vmin=-m, vmax=m, interpolation="nearest")
        else:  # detector scores lie in [0, 1]: one scale, so weak heads look weak
            im = ax.imshow(s, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(s.shape[1]))
        ax.set_yticks(range(s.shape[0]))
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)


def draw_ablation(out: dict, labels: list[str], heads, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(labels)), 3))
    ax.bar(range(len(out["loss"])), out["loss_ablated"] - out["loss"])
    ax.set_xlabel("position (predicting the next token)")
    ax.set_ylabel("loss change (nats)")
    ax.set_title("zero-ablating " + ", ".join(f"{a}.{b}" for a, b in heads))
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.inspect", description=__doc__.splitlines()[0])
    p.add_argument("source", help="a run directory of ours or a Hugging Face GPT-2 directory")
    p.add_argument("--prompt", required=True, help="text (run, or checkpoint with BPE files) or token ids")
    p.add_argument("--ablate", action="append", default=[], metavar="L.H", help="zero-ablate this head (repeatable)")
    p.add_argument("--out", default=None, help="report directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the repeated random tokens the detectors use")
    args = p.parse_args(argv)
    try:
        model, params, encode, decode, default_out = load(args.source)
        cfg = model.config
        ids = np.asarray(encode(args.prompt), np.int32)
        if ids.size == 0 or ids.size > cfg.max_len:
            raise ValueError(f"the prompt has {ids.size} tokens; give 1..{cfg.max_len} (the model's max_len)")
        heads = parse_heads(args.ablate, cfg.n_layers, cfg.n_heads)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    res = inspect(model, params, ids, ablate=heads, seed=args.seed)
    rows = head_rows(res["scores"])
    table = markdown_table(["head", *COLUMNS], rows)
    print(table)
    best = max(rows, key=lambda r: r[4])
    print(f"induction head (best prefix matching): {best[0]} with score {best[4]:.3f}")
    from train.report import excerpt, plot_attention

    labels = [decode([int(i)]) for i in ids]
    title = f"{args.source}: {excerpt(args.prompt, 40)}"
    plot_attention(res["patterns"], labels, out_dir / "patterns.png", title, ticks=True, dpi=120)  # the run's plot
    draw_heatmaps(res["scores"], out_dir / "heads.png")
    lines = [f"# inspect {args.source}", "", f"prompt: `{args.prompt}` ({ids.size} tokens)", "", table, ""]
    lines += [
        f"Best prefix-matching head: {best[0]} ({best[4]:.3f}).",
        "",
        "![heads](heads.png)",
        "![patterns](patterns.png)",
    ]
    if "loss" in res:
        delta = res["loss_ablated"] - res["loss"]
        draw_ablation(res, labels, heads, out_dir / "ablation.png")
        print(f"ablating {args.ablate}: mean loss {res['loss'].mean():.4f} -> {res['loss_ablated'].mean():.4f}")
        lines += ["", f"## Ablating {', '.join(args.ablate)}", ""]
        lines += [f"Mean loss {res['loss'].mean():.4f} -> {res['loss_ablated'].mean():.4f} nats.", ""]
        pos_rows = [[i, labels[i + 1], res["loss"][i], res["loss_ablated"][i], delta[i]] for i in range(len(delta))]
        lines += [markdown_table(["position", "next token", "loss", "ablated", "change"], pos_rows), ""]
        lines += ["![ablation](ablation.png)"]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out_dir}/report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
