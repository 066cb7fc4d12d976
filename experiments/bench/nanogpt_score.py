"""nanoGPT's own checkpoints and this project's runs, scored on the same validation windows (issue 17, item 6).

nanoGPT is not part of the project: its ``train.py`` runs from a folder of its own, and this scorer
imports that folder's ``model.py`` (the path given on the command line) to load its ``ckpt.pt`` files
with PyTorch (the optional extra ``pip install -e '.[bench]'``). Both sides are scored on the same
``--windows`` random windows of nanoGPT's ``data/<dataset>/val.bin`` (block ``--block``, starts drawn
by ``numpy.random.default_rng(--window-seed)``), after checking that each run of ours was trained and
validated on exactly nanoGPT's token ids (its train split equals train.bin, its val split val.bin).

    python -m experiments.bench.nanogpt_score --nanogpt-dir ~/nanoGPT \\
        --nanogpt-ckpt ~/nanoGPT/out-1337/ckpt.pt ~/nanoGPT/out-1338/ckpt.pt \\
        --runs runs/shk-0 runs/shk-1 [--windows 400 --block 64 --window-seed 0 | --windows-of runs/shk-0]

``--windows-of RUN`` scores both sides on that run's own fixed validation batches instead (the ones its
evaluation and its success criterion read: ``train.eval_batches`` batches of its data seed).

It prints each checkpoint's step and mean validation loss (over all windows x block predicted
tokens), then each side's mean over seeds, its standard error (sample standard deviation / sqrt(n)),
the difference (ours - nanoGPT) and the verdict: the means *differ* when |difference| > 2 sqrt(se1^2 +
se2^2), else they are *consistent*.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


# ---------------------------------------------------------------------------- statistics
def mean_se(values) -> tuple[float, float]:
    """(mean, standard error of the mean) of a sample: the sample standard deviation (n - 1) over sqrt(n)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"a standard error needs at least 2 values; got {x.size}: score more seeds")
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))


@dataclass(frozen=True)
class Comparison:
    mean_a: float
    se_a: float
    mean_b: float
    se_b: float

    @property
    def diff(self) -> float:
        """mean_b - mean_a."""
        return self.mean_b - self.mean_a

    @property
    def se(self) -> float:
        """The standard error of the difference of two independent means."""
        return math.hypot(self.se_a, self.se_b)

    @property
    def differ(self) -> bool:
        return abs(self.diff) > 2.0 * self.se


def compare(a, b) -> Comparison:
    """The two samples' means and standard errors; ``.diff`` is mean(b) - mean(a), ``.differ`` the verdict."""
    return Comparison(*mean_se(a), *mean_se(b))


# ---------------------------------------------------------------------------- the validation windows
def window_starts(n_tokens: int, windows: int, block: int, seed: int) -> np.ndarray:
    """``windows`` random window starts in [0, n_tokens - block), as nanoGPT's get_batch draws them."""
    if n_tokens <= block:
        raise ValueError(
            f"the validation split has {n_tokens} tokens, too few for block {block}: use a smaller --block"
        )
    return np.random.default_rng(seed).integers(0, n_tokens - block, size=windows)


def gather(tokens: np.ndarray, starts: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), both int64 [W, block]: tokens[s : s + block] and tokens[s + 1 : s + 1 + block]."""
    idx = starts[:, None] + np.arange(block + 1)
    w = np.asarray(tokens, dtype=np.int64)[idx]
    return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])  # nanoGPT's loss .view()s them


def read_bins(data_dir: Path) -> dict[str, np.ndarray]:
    """nanoGPT's prepared splits: ``train.bin`` and ``val.bin`` (uint16 token ids, as prepare.py writes them)."""
    out = {}
    for split in ("train", "val"):
        path = data_dir / f"{split}.bin"
        if not path.is_file():
            raise ValueError(f"{path} not found: run nanoGPT's data/<dataset>/prepare.py first, or pass --dataset")
        out[split] = np.fromfile(path, dtype=np.uint16)
    return out


# ---------------------------------------------------------------------------- the two sides
def run_data(run_dir, bins: dict[str, np.ndarray]):
    """(RunConfig, dataset) of a run of ours, checked to hold nanoGPT's token ids (train and val splits)."""
    from train.config import load_run_config
    from train.data import load_dataset_for_run

    cfg = load_run_config(run_dir)
    if cfg.data.task != "text":
        raise ValueError(f"{run_dir} is a {cfg.data.task!r} run: only text runs can be scored on nanoGPT's val.bin")
    ds = load_dataset_for_run(run_dir, cfg.data, cfg.seq_len)
    for split, theirs in bins.items():
        ours = np.asarray(ds.split_tokens(split))
        if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
            raise ValueError(
                f"{run_dir}: its {split} split ({len(ours)} tokens) is not nanoGPT's {split}.bin ({len(theirs)}): "
                f"train both on the same text (data.path= the input.txt nanoGPT's prepare.py read)"
            )
    return cfg, ds


def eval_windows(run_dir, bins: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) int64 [eval_batches * batch_size, seq_len]: the validation batches ``run_dir``'s own
    evaluation reads (train/loop.py's evaluate), so its final val_loss is their mean loss."""
    from train.loop import EVAL_OFFSET

    cfg, ds = run_data(run_dir, bins)
    tc = cfg.train
    batches = [ds.batch("val", EVAL_OFFSET + i, tc.batch_size, cfg.seq_len) for i in range(tc.eval_batches)]
    if any(not b["loss_mask"].all() for b in batches):
        raise ValueError(f"{run_dir}: its validation batches mask some positions; only text runs can be compared")
    x, y = (np.concatenate([b[k] for b in batches]).astype(np.int64) for k in ("inputs", "targets"))
    return x, y


def score_run(run_dir, bins: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, batch: int = 50):
    """(step, mean validation loss) of a run of ours: its newest checkpoint on the windows (x, y) [W, block].

    Raises ValueError if the run's data are not nanoGPT's token ids (train and val splits compared)."""
    import jax
    import jax.numpy as jnp

    from train.checkpoint import Checkpointer
    from train.loop import CHECKPOINT_DIR
    from train.sample import load_params

    cfg, _ = run_data(run_dir, bins)
    block = x.shape[1]
    if block > cfg.model.max_len:
        raise ValueError(f"{run_dir}: --block {block} exceeds the model's max_len {cfg.model.max_len}")
    model, params = load_params(run_dir, cfg)
    with Checkpointer(Path(run_dir) / CHECKPOINT_DIR, async_save=False) as ckpt:
        step = ckpt.latest_step()

    @jax.jit
    def loss_sum(params, x, y):
        logp = jax.nn.log_softmax(model.apply({"params": params}, x).astype(jnp.float32), axis=-1)
        return -jnp.take_along_axis(logp, y[..., None], axis=-1).sum()

    total = sum(
        float(loss_sum(params, jnp.asarray(x[i : i + batch], jnp.int32), jnp.asarray(y[i : i + batch], jnp.int32)))
        for i in range(0, len(x), batch)
    )
    return step, total / y.size


def nanogpt_model(nanogpt_dir: Path):
    """nanoGPT's ``model.py`` from ``nanogpt_dir``, imported as module ``nanogpt_model`` (ours is ``model``)."""
    import importlib.util

    if (mod := sys.modules.get("nanogpt_model")) is not None:
        return mod
    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(nanogpt_dir) / "model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nanogpt_model"] = mod  # its dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def score_nanogpt(ckpt_path, nanogpt_dir: Path, x: np.ndarray, y: np.ndarray, batch: int = 50):
    """(iter_num, mean validation loss) of one nanoGPT ``ckpt.pt`` on the windows (x, y), with nanoGPT's model.py."""
    import torch

    nanogpt = nanogpt_model(nanogpt_dir)

    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        args = ckpt["model_args"]
    except (OSError, RuntimeError, KeyError, TypeError) as e:
        raise ValueError(f"{ckpt_path} is not a nanoGPT ckpt.pt ({type(e).__name__}: {str(e)[:80]})") from None
    block = x.shape[1]
    if block > args["block_size"]:
        raise ValueError(f"{ckpt_path}: --block {block} exceeds the checkpoint's block_size {args['block_size']}")
    model = nanogpt.GPT(nanogpt.GPTConfig(**args))
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    model.train(False)  # inference mode (dropout off), as nanoGPT's eval
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb, yb = torch.from_numpy(x[i : i + batch]), torch.from_numpy(y[i : i + batch])
            _, loss = model(xb, yb)  # mean cross-entropy over the batch's tokens
            total += float(loss) * yb.numel()
    return int(ckpt["iter_num"]), total / y.size


# ---------------------------------------------------------------------------- command line
def report(nano: list[tuple[str, int, float]], ours: list[tuple[str, int, float]], windows: str) -> str:
    """The markdown table of every scored checkpoint, each side's mean and SE, the difference and the verdict."""
    lines = [f"| side | checkpoint | step | val loss ({windows}) |", "|---|---|---:|---:|"]
    lines += [f"| nanoGPT | {name} | {step} | {loss:.4f} |" for name, step, loss in nano]
    lines += [f"| this project | {name} | {step} | {loss:.4f} |" for name, step, loss in ours]
    c = compare([r[2] for r in nano], [r[2] for r in ours])
    lines += [
        "",
        "| side | n | mean | standard error |",
        "|---|---:|---:|---:|",
        f"| nanoGPT | {len(nano)} | {c.mean_a:.4f} | {c.se_a:.4f} |",
        f"| this project | {len(ours)} | {c.mean_b:.4f} | {c.se_b:.4f} |",
        "",
        f"difference (this project - nanoGPT): {c.diff:+.4f} +- {c.se:.4f} (standard error); verdict: "
        + (
            f"the means DIFFER (|difference| > 2 x {c.se:.4f})"
            if c.differ
            else f"consistent (|difference| <= 2 x {c.se:.4f})"
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.bench.nanogpt_score --nanogpt-dir DIR --nanogpt-ckpt CKPT... --runs RUN...``"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m experiments.bench.nanogpt_score", description=__doc__.split("\n")[0])
    p.add_argument("--nanogpt-dir", required=True, type=Path, help="a checkout of karpathy/nanoGPT (its model.py)")
    p.add_argument("--dataset", default="shakespeare_char", help="nanoGPT's data/<dataset> (default: %(default)s)")
    p.add_argument("--nanogpt-ckpt", nargs="+", required=True, type=Path, help="nanoGPT ckpt.pt files")
    p.add_argument("--runs", nargs="+", required=True, type=Path, help="run directories of ours")
    p.add_argument("--windows", type=int, default=400, help="validation windows (default: %(default)s)")
    p.add_argument("--block", type=int, default=64, help="window length (default: %(default)s)")
    p.add_argument("--window-seed", type=int, default=0, help="seed of the window starts (default: %(default)s)")
    p.add_argument("--windows-of", type=Path, metavar="RUN", help="score on RUN's own validation batches instead")
    args = p.parse_args(argv)
    try:
        if not (args.nanogpt_dir / "model.py").is_file():
            raise ValueError(f"{args.nanogpt_dir / 'model.py'} not found: --nanogpt-dir must be a nanoGPT checkout")
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ValueError("nanoGPT's checkpoints need torch: pip install -e '.[bench]'") from None
        for path in [*args.nanogpt_ckpt, *args.runs, *([args.windows_of] if args.windows_of else [])]:
            if not path.exists():
                raise ValueError(f"{path} not found")
        if args.windows < 1 or args.block < 1:
            raise ValueError(f"--windows {args.windows} and --block {args.block} must be positive")
        if len(args.nanogpt_ckpt) < 2 or len(args.runs) < 2:
            raise ValueError("a standard error needs at least 2 checkpoints per side: pass more seeds")
        bins = read_bins(args.nanogpt_dir / "data" / args.dataset)
        if args.windows_of is not None:
            x, y = eval_windows(args.windows_of, bins)
            what = f"{args.windows_of}'s {len(x)} validation windows x {x.shape[1]}"
        else:
            x, y = gather(
                bins["val"], window_starts(len(bins["val"]), args.windows, args.block, args.window_seed), args.block
            )
            what = f"{args.windows} windows x {args.block}, window seed {args.window_seed}"
        nano = [(str(c), *score_nanogpt(c, args.nanogpt_dir, x, y)) for c in args.nanogpt_ckpt]
        ours = [(str(r), *score_run(r, bins, x, y)) for r in args.runs]
    except (ValueError, FileNotFoundError) as e:  # SetupError is a ValueError; a run without checkpoints
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(nano, ours, what))
    return 0


if __name__ == "__main__":
    sys.exit(main())
