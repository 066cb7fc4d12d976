"""Draw the attention pattern of every head of every layer of a trained run on a prompt.

    python -m experiments.show_attention runs/x --prompt "ROMEO: But soft"           # -> runs/x/attention_prompt.png
    python -m experiments.show_attention runs/x --prompt "3 1 4 1 5" --out pat.png   # synthetic tasks: token ids
    python -m experiments.show_attention runs/x --prompt "..." --step 500             # an older checkpoint
    python -m experiments.show_attention path/to/gpt2 --prompt "..." [--bpe-dir DIR]  # a Hugging Face GPT-2 directory

One forward pass with ``model.transformer.attention_patterns`` gives ``[L, B, H, T, T]``; the figure
has one panel per (layer, head), rows = queries (the token doing the looking), columns = keys,
labelled with the prompt's tokens (GPT-2's BPE pieces for a GPT-2 run or checkpoint) when the prompt is short enough to read (``train.report.plot_attention``,
which draws a run's attention.png too). A character outside
the run's vocabulary, a prompt longer than the model's context, or a directory that is not a run
gives one line ``error: ...`` naming the fix, and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from train.report import excerpt, join_labels, plot_attention


def patterns_for_prompt(run_dir: str | Path, prompt: str, step: int | None = None, *, bpe_dir: str | None = None):
    """(patterns [L, H, T, T] float32, token labels [T], RunConfig) of ``prompt`` under the run's checkpoint.

    Raises ValueError (prompt outside the vocabulary or too long) or FileNotFoundError / RunDirError (no run).
    """
    from train.sample import check_prompt_ids, load_codec, load_params

    cfg, ds = load_codec(run_dir, bpe_dir=bpe_dir)  # JSON only: a bad prompt fails before any array is loaded
    if not prompt:
        raise ValueError("--prompt is empty: give at least one token")
    ids = np.asarray(ds.encode(prompt), np.int32)
    if ids.size == 0:
        raise ValueError("the prompt encodes to no tokens: give at least one character")
    check_prompt_ids(ids, cfg)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.show_attention",
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory written by `python -m train`, or a Hugging Face GPT-2 directory")
    p.add_argument("--bpe-dir", default=None, help="GPT-2 tokenizer files (encoder.json + vocab.bpe) if not found")
    p.add_argument(
        "--prompt", required=True, help="text (character runs) or space-separated token ids (synthetic tasks)"
    )
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: RUN_DIR/attention_prompt.png)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    args = p.parse_args(argv)
    from train.config import SetupError

    try:
        pat, labels, cfg = patterns_for_prompt(args.run_dir, args.prompt, args.step, bpe_dir=args.bpe_dir)
    except (ValueError, FileNotFoundError, SetupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or Path(args.run_dir) / "attention_prompt.png"
    title = f"{cfg.name}: {cfg.model.n_layers} layers x {cfg.model.n_heads} heads on {excerpt(join_labels(labels), 60)}"
    plot_attention(pat, labels, out, title, ticks=True, dpi=120)  # the run's attention plot, with token ticks
    print(f"wrote {out} ({pat.shape[0]} layers x {pat.shape[1]} heads, {pat.shape[2]} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
