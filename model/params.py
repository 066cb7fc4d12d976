"""Parameter accounting: an analytic count per component, and a count read off ``jax.eval_shape``.

    python -m model.params --preset gpt3-175b          # the lecture's GPT-3 figures, then the whole model
    python -m model.params --preset shakespeare-char-cpu model.n_kv_heads=1
    python -m model.params --checkpoint path/to/gpt2                # a Hugging Face GPT-2 directory, or a run directory

The analytic count is written from the architecture (what the lecture derives by hand); the other
traces ``model.init`` abstractly (nothing is allocated, so GPT-3's 175B parameters cost no memory)
and adds up the shapes Flax would create. The command fails if the two disagree.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from model.config import ModelConfig, get_preset
from model.config_base import field_types, parse_value


# ---------------------------------------------------------------------------- analytic
def analytic_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters per component of the whole model, from the architecture alone.

    Keys are component names ('embed', 'pos_embed', 'query', 'key', 'value_down', 'value_up', 'value',
    '*_bias', 'fc_in', 'fc_out', 'norm', 'unembed'); values are totals over all layers.
    """
    d, h, g, dh, f, L = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.n_layers
    c: Counter[str] = Counter()
    c["embed"] = cfg.padded_vocab_size * d  # the table as stored; vocab_padding() counts the padded rows
    if cfg.positions == "learned":
        c["pos_embed"] = cfg.max_len * d
    # attention, per layer
    c["query"] = L * d * h * dh
    c["key"] = L * d * g * dh
    if cfg.value_map == "factored":
        c["value_down"] = L * d * g * dh
        c["value_up"] = L * h * dh * d
    else:
        c["value"] = L * g * d * d
    if cfg.use_bias:
        c["query_bias"] = L * h * dh
        c["key_bias"] = L * g * dh
        if cfg.value_map == "factored":
            c["value_down_bias"] = L * g * dh
        else:
            c["value_bias"] = L * g * d
        c["value_up_bias"] = L * d
    # MLP
    if cfg.mlp:
        c["fc_in"] = L * d * f
        c["fc_out"] = L * f * d
        if cfg.use_bias:
            c["fc_in_bias"] = L * f
            c["fc_out_bias"] = L * d
    # norms: one before attention, one before the MLP, one at the end; LayerNorm has a bias when use_bias
    per_norm = d * (2 if (cfg.norm == "layernorm" and cfg.use_bias) else 1)
    c["norm"] = per_norm * (L * (2 if cfg.mlp else 1) + 1)
    if not cfg.tie_embeddings:
        c["unembed"] = d * cfg.padded_vocab_size
    return dict(c)


def vocab_padding(cfg: ModelConfig) -> int:
    """Parameters in the padded rows of the vocabulary tables (never used: their logits are sliced off)."""
    tables = 1 if cfg.tie_embeddings else 2
    return tables * (cfg.padded_vocab_size - cfg.vocab_size) * cfg.d_model


# ---------------------------------------------------------------------------- traced
def param_shapes(cfg: ModelConfig):
    """The parameter tree as ShapeDtypeStructs, from ``jax.eval_shape`` of ``model.init`` (no allocation)."""
    from model.transformer import Transformer

    tokens = jax.ShapeDtypeStruct((1, min(cfg.max_len, 8)), jnp.int32)
    return jax.eval_shape(lambda t: Transformer(cfg).init(jax.random.key(0), t), tokens)["params"]


def traced_counts(cfg: ModelConfig) -> dict[str, int]:
    """Parameters per component, summed over the shapes that Flax creates; same keys as analytic_counts."""
    c: Counter[str] = Counter()
    for path, leaf in jax.tree_util.tree_flatten_with_path(param_shapes(cfg))[0]:
        names = [p.key for p in path]
        name = names[-1]
        if any(n.startswith("norm") for n in names):
            name = "norm"
        elif name == "embedding":
            name = "embed"
        c[name] += math.prod(leaf.shape)
    return dict(c)


# ---------------------------------------------------------------------------- the lecture's table
@dataclass(frozen=True)
class Row:
    what: str
    shape: str
    count: int


def lecture_rows(cfg: ModelConfig) -> list[Row]:
    """The attention weights as the lecture counts them (weights only, no biases)."""
    d, h, g, dh, L = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim, cfg.n_layers
    qk = d * dh
    rows = [
        Row("query map Wq, one head", f"{d} x {dh}", qk),
        Row("key map Wk, one head", f"{d} x {dh}", qk),
        Row("value-down map, one head", f"{d} x {dh}", qk),
        Row("value-up map (W_O rows), one head", f"{dh} x {d}", qk),
        Row("one head: query + key + value down + value up", "4 maps", 4 * qk),
    ]
    block = h * qk * 2 + g * qk * 2  # query and value-up per query head; key and value-down per kv head
    rows += [
        Row(f"one block's attention ({h} heads" + (f", {g} key/value heads)" if g != h else ")"), "", block),
        Row(f"all {L} layers' attention", "", L * block),
        Row("alternative: full-rank value map, one head", f"{d} x {d}", d * d),
        Row("alternative: one head with a full-rank value map", "Wq + Wk + D x D", 2 * qk + d * d),
        Row("alternative: one block with full-rank value maps", "", h * qk + g * qk + g * d * d),
        Row(f"alternative: all {L} layers, full-rank value maps", "", L * (h * qk + g * qk + g * d * d)),
    ]
    return rows


_GROUPS = [
    ("token embedding", ["embed"]),
    ("position embedding", ["pos_embed"]),
    ("attention weights", ["query", "key", "value_down", "value_up", "value"]),
    ("attention biases", ["query_bias", "key_bias", "value_down_bias", "value_bias", "value_up_bias"]),
    ("MLP weights", ["fc_in", "fc_out"]),
    ("MLP biases", ["fc_in_bias", "fc_out_bias"]),
    ("norms", ["norm"]),
    ("unembedding", ["unembed"]),
]


def format_report(cfg: ModelConfig, name: str = "") -> tuple[str, bool]:
    """The printed report and whether the analytic and traced counts agree component by component."""
    analytic, traced = analytic_counts(cfg), traced_counts(cfg)
    agree = analytic == traced
    lines = [f"# Parameters of {name or 'the model'}"]
    lines.append(
        f"d_model {cfg.d_model}, {cfg.n_heads} heads of {cfg.head_dim} ({cfg.kv_heads} key/value heads), "
        f"{cfg.n_layers} layers, d_mlp {cfg.mlp_dim if cfg.mlp else '-'}, "
        f"vocab {cfg.vocab_size} (tables padded to {cfg.padded_vocab_size}), "
        f"context {cfg.max_len}, value map {cfg.value_map}, biases {'yes' if cfg.use_bias else 'no'}"
    )
    lines += ["", "## Attention weights, as the lecture counts them (no biases)", ""]
    lines += ["| what | shape | parameters |", "|---|---|---:|"]
    lines += [f"| {r.what} | {r.shape} | {r.count:,} |" for r in lecture_rows(cfg)]
    lines += ["", "## The whole model", ""]
    lines += ["| component | analytic | eval_shape |", "|---|---:|---:|"]
    for label, keys in _GROUPS:
        a = sum(analytic.get(k, 0) for k in keys)
        t = sum(traced.get(k, 0) for k in keys)
        if a or t:
            flag = "" if a == t else "  MISMATCH"
            lines.append(f"| {label} | {a:,} | {t:,}{flag} |")
    ta, tt = sum(analytic.values()), sum(traced.values())
    lines.append(f"| **total** | **{ta:,}** | **{tt:,}** |")
    pad = vocab_padding(cfg)
    lines.append(f"| of which vocabulary padding (never used) | {pad:,} | {pad:,} |")
    lines.append(f"| **total without the padding** | **{ta - pad:,}** | **{tt - pad:,}** |")
    lines.append("")
    lines.append(
        "analytic == eval_shape for every component"
        if agree
        else "MISMATCH between analytic and eval_shape counts: "
        + ", ".join(
            f"{k}: {analytic.get(k, 0)} vs {traced.get(k, 0)}"
            for k in sorted(set(analytic) | set(traced))
            if analytic.get(k, 0) != traced.get(k, 0)
        )
    )
    return "\n".join(lines), agree


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.params", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt3-175b", help="a model preset (default: gpt3-175b)")
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="PATH",
        help="count this checkpoint's model: a Hugging Face GPT-2 directory (its tensors are counted too) or a run",
    )
    p.add_argument("overrides", nargs="*", help="field=value overrides of the model config, e.g. n_kv_heads=8")
    args = p.parse_args(argv)
    stored = None
    try:
        if args.checkpoint is not None:
            cfg, stored = checkpoint_config(args.checkpoint)
            args.preset = args.checkpoint
        else:
            cfg = get_preset(args.preset)
        changes = {}
        types_of = field_types(ModelConfig)
        for item in args.overrides:
            key, sep, value = item.partition("=")
            name = key.strip().removeprefix("model.")
            if not sep:
                raise ValueError(f"override {item!r} is not key=value")
            if name not in types_of:
                raise ValueError(
                    f"unknown key {key!r}: ModelConfig has no field {name!r}; known: {', '.join(types_of)}"
                )
            changes[name] = parse_value(value, types_of[name], key)
        cfg = cfg.replace(**changes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text, agree = format_report(cfg, args.preset)
    print(text)
    if stored is not None and not args.overrides:
        traced = sum(traced_counts(cfg).values())
        print(f"tensors in the checkpoint's files: {stored:,} ({'agrees' if stored == traced else 'DIFFERS'})")
        agree = agree and stored == traced
    return 0 if agree else 1


def checkpoint_config(path: str) -> tuple[ModelConfig, int | None]:
    """(the ModelConfig of a checkpoint directory, the parameters its files hold or None for a run of ours).

    A Hugging Face GPT-2 directory is read by model/hf.py (its tensors loaded and counted: attention-mask
    buffers are not parameters, a tied lm_head is the embedding); a run directory's config.json has a
    ``model`` section (read here as JSON: model/ does not import train/).
    """
    import json
    from pathlib import Path

    from model import hf

    p = Path(path)
    config = p / "config.json"
    if not config.is_file():
        raise ValueError(f"{path}: no config.json; pass a Hugging Face GPT-2 directory or a run directory")
    d = json.loads(config.read_text())
    if "model" in d and "train" in d:
        return ModelConfig.from_dict(d["model"]), None
    cfg, params = hf.load(p)
    return cfg, sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))


if __name__ == "__main__":
    sys.exit(main())
