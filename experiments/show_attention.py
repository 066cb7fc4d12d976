"""Draw the attention pattern of every head of every layer of a trained run on a prompt.

    python -m experiments.show_attention runs/x --prompt "ROMEO: But soft"           # -> runs/x/attention_prompt.png
    python -m experiments.show_attention runs/x --prompt "3 1 4 1 5" --out pat.png   # synthetic tasks: token ids
    python -m experiments.show_attention runs/x --prompt "..." --step 500             # an older checkpoint

One forward pass with ``model.transformer.attention_patterns`` gives ``[L, B, H, T, T]``; the figure
has one panel per (layer, head), rows = queries (the token doing the looking), columns = keys,
labelled with the prompt's tokens when the prompt is short enough to read. A character outside
the run's vocabulary, a prompt longer than the model's context, or a directory that is not a run
gives one line ``error: ...`` naming the fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from experiments.common import pyplot

LABEL_LIMIT = 48  # tick labels on each panel up to this many tokens


def patterns_for_prompt(run_dir: str | Path, prompt: str, step: int | None = None):
    """(patterns [L, H, T, T] float32, token labels [T], RunConfig) of ``prompt`` under the run's checkpoint.

    Raises ValueError (prompt outside the vocabulary or too long) or FileNotFoundError / RunDirError (no run).
    """
    from train.sample import load_codec, load_params

    cfg, ds = load_codec(run_dir)  # JSON only: a bad prompt fails before any array is loaded
    if not prompt:
        raise ValueError("--prompt is empty: give at least one token")
    ids = np.asarray(ds.encode(prompt), np.int32)
    if ids.size == 0:
        raise ValueError("the prompt encodes to no tokens: give at least one character")
    if ids.size > cfg.model.max_len:
        raise ValueError(
            f"the prompt has {ids.size} tokens but the model's context is max_len={cfg.model.max_len}: shorten the prompt"
        )
    import jax

    from model.transformer import attention_patterns

    model, params = load_params(run_dir, cfg, step)
    pat = jax.jit(lambda p, x: attention_patterns(model, p, x))(params, ids[None, :])  # [L, 1, H, T, T]
    labels = [ds.decode([int(i)]) for i in ids]
    return np.asarray(pat)[:, 0], labels, cfg


def _show(label: str) -> str:
    return {"\n": "\\n", " ": "␣", "\t": "\\t"}.get(label, label)


def draw(patterns: np.ndarray, labels: list[str], path: Path, title: str) -> Path:
    """One panel per (layer, head) of ``patterns`` [L, H, T, T] (rows: queries, columns: keys) into ``path``."""
    plt = pyplot()
    n_layers, n_heads, t, _ = patterns.shape
    size = 2.2 + 0.06 * min(t, LABEL_LIMIT)
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(size * n_heads, size * n_layers), squeeze=False)
    ticks = [_show(s) for s in labels]
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            ax.imshow(patterns[layer, head], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            if t <= LABEL_LIMIT:
                ax.set_xticks(range(t), ticks, fontsize=5, rotation=90)
                ax.set_yticks(range(t), ticks, fontsize=5)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    axes[-1, 0].set_xlabel("key (attended to)")
    axes[-1, 0].set_ylabel("query (attending)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.show_attention",
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory written by `python -m train`")
    p.add_argument(
        "--prompt", required=True, help="text (character runs) or space-separated token ids (synthetic tasks)"
    )
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN_DIR/attention_prompt.png)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    args = p.parse_args(argv)
    from train.config import SetupError

    try:
        pat, labels, cfg = patterns_for_prompt(args.run_dir, args.prompt, args.step)
    except (ValueError, FileNotFoundError, SetupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or Path(args.run_dir) / "attention_prompt.png"
    text = "".join(labels) if all(len(s) == 1 for s in labels) else " ".join(labels)
    title = f"{cfg.name}: {cfg.model.n_layers} layers x {cfg.model.n_heads} heads on {text[:60]!r}"
    draw(pat, labels, out, title)
    print(f"wrote {out} ({pat.shape[0]} layers x {pat.shape[1]} heads, {pat.shape[2]} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
