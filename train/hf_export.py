"""A run of ours as a Hugging Face GPT-2 directory: ``python -m train.hf_export RUN_DIR OUT_DIR [--step N]``.

Restores the run's checkpoint (train's job, so this lives in train/: model/ never imports train) and
writes ``config.json`` + ``model.safetensors`` with :func:`model.hf.save`, which
``transformers.GPT2LMHeadModel.from_pretrained(OUT_DIR)`` loads. A run whose model GPT-2 cannot express
(rotary positions, no biases, grouped-query attention ...) is refused with one line naming the field:
train such a run with ``model.use_bias=true`` and GPT-2's other settings (see model/hf.py).

    python -m train --config shakespeare-char-cpu model.use_bias=true model.norm_eps=1e-5
    python -m train.hf_export runs/shakespeare-char-cpu out/hf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.hf import HFFormatError, config_to_hf, save


def export(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """Write the run's checkpoint ``step`` (default: newest) to ``out_dir`` as a GPT-2 directory."""
    from train.config import load_run_config
    from train.sample import load_params

    cfg = load_run_config(run_dir)
    config_to_hf(cfg.model)  # refuse before restoring anything
    _, params = load_params(run_dir, cfg, step)
    return save(cfg.model, params, out_dir)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.hf_export", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run directory written by `python -m train`")
    p.add_argument("out_dir", help="the Hugging Face directory to write")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    args = p.parse_args(argv)
    try:
        out = export(args.run_dir, args.out_dir, args.step)
    except (HFFormatError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} (config.json, model.safetensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
