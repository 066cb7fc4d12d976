"""The command line of ``python -m train``: parse, build the config, train, say what happened.

    python -m train                                    # the main job: the 'induction' preset
    python -m train --config shakespeare-char-cpu      # any preset (--list shows them)
    python -m train --config shakespeare-char-cpu model.n_layers=2 train.lr=3e-4 data.path=foo.txt run_dir=runs/x
    python -m train --resume runs/x                    # continue a run from its newest checkpoint
    python -m train --resume runs/x train.steps=4000   # ... and train it for longer
    python -m train --config shakespeare-char-cpu mesh.data=2   # the batch split over 2 CPU devices (cores)
    python -m train --config finetune-shakespeare --init-from path/to/gpt2   # fine-tune a checkpoint (train/init_from.py)
    python -m train --config my-run.toml train.lr=1e-3    # a JSON or TOML config file (train/config_file.py)
    python -m train --config runs/x/config.json run_dir=runs/y   # run runs/x again from its saved config
    python -m train --config shakespeare-char-cpu model.n_layers=2 --dump-config   # print the config, run nothing

Overrides are ``SECTION.FIELD=VALUE`` (SECTION: model, data, train, mesh) or a top-level ``run_dir=``,
``name=``, ``goal=``, ``sharding=``; values are parsed by the field's type (see train/config.py). A bad key,
value, data file or run directory prints one line ``error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from model.host import configure_xla, tune_host
from train.config import (
    DEFAULT_PRESET,
    PRESETS,
    ConfigError,
    RunDirError,
    SetupError,
    apply_overrides,
    get_preset,
    load_run_config,
    parse_goal,
)
from train.config_file import is_config_file, load_config_file
from train.init_from import NEEDS_INIT_FROM
from train.report import WANDB_MISSING, wandb_available

EPILOG = """overrides: KEY=VALUE with KEY one of
  model.FIELD   the network (model/config.py ModelConfig), e.g. model.n_layers=4 model.attention_impl=chunked
  data.FIELD    what it reads (train/data/ DataConfig), e.g. data.path=foo.txt data.level=gpt2
  train.FIELD   how it is trained (train/config.py TrainConfig), e.g. train.lr=3e-4 train.steps=2000
                train.profile=10:12 writes a jax.profiler trace of steps 10..12 into RUN_DIR/profile/
  mesh.FIELD    devices per mesh axis: mesh.data, mesh.fsdp, mesh.sequence, mesh.tensor (-1 = the rest)
  sharding=     the rules table: dp, fsdp, tp, sp, fsdp_tp, fsdp_sp (model/sharding.py)
  run_dir=  name=  goal=  (goal: e.g. 'val_loss <= 1.95')
values parsed by the field's type: 12, 3e-4, true/false, none, text. --dump-config shows every field.
example: python -m train --config shakespeare-char-cpu model.n_layers=2 train.lr=3e-4 data.path=foo.txt run_dir=runs/x"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train a preset (default: the induction-heads main job) and write a run directory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="PRESET|FILE",
        help=f"preset name (default: {DEFAULT_PRESET}; --list shows them) or a .json/.toml config file",
    )
    p.add_argument("--dump-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="RUN_DIR",
        help="continue RUN_DIR (or the config's run_dir) from its newest checkpoint",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="PATH",
        help="start a new run from this checkpoint's parameters (a Hugging Face GPT-2 directory or a run directory)",
    )
    p.add_argument("--list", action="store_true", help="list the presets and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--wandb",
        action="store_true",
        help="also log to Weights & Biases (pip install -e '.[wandb]'; WANDB_MODE=offline writes RUN_DIR/wandb/)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=3e-4")
    return p


def resolve(args: argparse.Namespace):
    """The RunConfig the arguments ask for (raises ConfigError / SetupError with one-line messages)."""
    init_from = getattr(args, "init_from", None)
    if args.resume is not None and init_from is not None:
        raise RunDirError("--init-from starts a new run and --resume continues one: pass only one of them")
    if args.resume:  # a run directory: its saved config is the base
        if not Path(args.resume).exists():
            raise RunDirError(
                f"--resume {args.resume}: no such directory, nothing to resume; check the path, or drop --resume "
                f"to start a new run there (python -m train run_dir={args.resume})"
            )
        cfg = load_run_config(args.resume)
        if args.config is not None and is_config_file(args.config):
            raise RunDirError(f"--resume continues {args.resume} from its saved config: drop --config {args.config}")
        if args.config is not None and args.config != cfg.name:
            raise RunDirError(
                f"{args.resume} is a {cfg.name!r} run, not {args.config!r}: drop --config or start a new run_dir"
            )
        return apply_overrides(cfg, args.overrides).replace(run_dir=args.resume)
    if args.config is not None and is_config_file(args.config):
        cfg = load_config_file(args.config)
    else:
        cfg = get_preset(args.config or DEFAULT_PRESET)
    if init_from is None and args.config not in NEEDS_INIT_FROM:
        cfg = apply_overrides(cfg, args.overrides)
    else:
        from train.init_from import apply_init_from

        # the model comes from the checkpoint, so train.seq_len is checked against it, not the preset's model
        keys = [o.partition("=")[0].strip() for o in args.overrides]
        parsed = apply_overrides(cfg.replace(train=cfg.train.replace(seq_len=None)), args.overrides)
        model_overrides = {k[6:]: getattr(parsed.model, k[6:]) for k in keys if k.startswith("model.")}
        seq_len = parsed.train.seq_len if "train.seq_len" in keys else cfg.train.seq_len
        cfg = apply_init_from(parsed, init_from, model_overrides)
        try:
            cfg = cfg.replace(train=cfg.train.replace(seq_len=seq_len))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if args.resume is not None and cfg.run_dir is None:  # a bare --resume would otherwise start a new run
        raise RunDirError(
            "--resume needs the run directory to continue: python -m train --resume RUN_DIR "
            "(or run_dir=RUN_DIR); to start a new run, drop --resume"
        )
    return cfg


# Set by a launcher (the sweep runner, experiments/sweep/run.py) to its PID: this process then gets SIGTERM
# when the launcher dies, however it dies (SIGKILL and the OOM killer included), and saves a checkpoint.
PARENT_ENV = "ATTENTION_LAB_PARENT_PID"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """SIGTERM to this process when its parent dies (Linux prctl PR_SET_PDEATHSIG), if PARENT_ENV asks for it.

    Set here, after exec (PDEATHSIG survives exec, but a preexec_fn is unsafe in the sweep's threads).
    If the parent died before the prctl took effect (it is already gone), act as if signalled at once.
    The kernel sends it when the parent *thread* that started this process ends: the sweep's worker
    threads wait on their process, so they outlive it unless the whole runner dies.
    """
    parent = os.environ.pop(PARENT_ENV, None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if str(os.getppid()) != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    tune_host()
    args = build_parser().parse_intermixed_args(argv)  # overrides before or after the flags
    if args.list:
        for name, fn in PRESETS.items():
            print(f"{name:22s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0

    try:
        cfg = resolve(args)  # config errors surface here, before jax is imported
        if args.dump_config:
            print(cfg.to_json())
            return 0
        if args.wandb and not wandb_available():
            raise SetupError(WANDB_MISSING)
        configure_xla(cfg)
        from train.loop import train

        result = train(
            cfg,
            resume=args.resume is not None,
            progress=False if args.no_progress else None,
            wandb=args.wandb,
            exit_on_early_signal=True,  # SIGINT/SIGTERM during set-up or compiling end the process at once
        )
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(result)
    if result.interrupted in ("SIGINT", "SIGTERM"):
        return {"SIGINT": 130, "SIGTERM": 143}[result.interrupted]
    return 0


def report(result) -> None:
    """Print where the run's files are, the final evaluation, the speed and whether the goal was met."""
    d = result.run_dir
    print(f"\nrun directory: {d}")
    for key, label in [
        ("config", "config"),
        ("metrics", "metrics"),
        ("checkpoints", "checkpoints"),
        ("loss_plot", "loss curve"),
        ("attention_plot", "attention"),
        ("profile", "profile"),
        ("summary", "summary"),
    ]:
        if key in result.files:
            print(f"  {label:12s} {result.files[key]}")
    if result.interrupted:
        print(
            f"interrupted ({result.interrupted}) at step {result.step}: checkpoint saved; "
            f"continue with: python -m train --resume {d}"
        )
        return
    s = result.stats
    if result.final is not None:
        print(f"final evaluation (step {result.step}): " + "  ".join(f"{k} {v:.4f}" for k, v in result.final.items()))
    if s.get("train_s", 0) > 0:
        print(
            f"speed: median {s['ms_per_step_median']:.2f} ms/step, {s['tokens_per_s']:,.0f} tokens/s "
            f"({s['tokens_per_step']} tokens/step; compile {s['compile_s']:.1f} s, wall {s['wall_s']:.1f} s)"
        )
    if result.heads:
        print_heads(result.heads)
    goal = result.config.goal
    if result.success is None:
        print("success criterion: none set (goal=...)")
    else:
        name = parse_goal(goal)[0]
        verdict = "MET" if result.success else "NOT MET"
        print(f"success criterion {goal}: {verdict} ({name} = {result.final[name]:.4f})")
    print(f"sample from it: python -m train.sample {d} --prompt ... --max-new-tokens 200")


def print_heads(heads: dict) -> None:
    """The head detectors' table (summary.json 'heads') and the induction head it names."""
    kinds = [k for k in heads if k != "induction_head"]
    print("head detectors (model/detectors.py, on repeated random tokens):")
    print("  head  " + "  ".join(f"{k:>16s}" for k in kinds))
    for layer, row in enumerate(heads[kinds[0]]):
        for head in range(len(row)):
            print(f"  L{layer}H{head}  " + "  ".join(f"{heads[k][layer][head]:16.3f}" for k in kinds))
    best = heads["induction_head"]
    verdict = "an induction head" if best["score"] >= 0.5 else "no induction head yet (score < 0.5)"
    print(f"induction head: L{best['layer']}H{best['head']}, prefix-matching score {best['score']:.3f}: {verdict}")
