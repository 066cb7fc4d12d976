"""The command line of a sweep: ``python -m experiments.sweep ...`` (see the package docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import experiments.sweep as package
from experiments.sweep.results import results_markdown, slurm_script, write_outputs
from experiments.sweep.run import print_commands, run_sweep
from experiments.sweep.spec import Sweep, SweepError, load_spec, parse_axis, write_spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.sweep",
        description="Run a sweep over config overrides of a train preset: resumable, N local workers or SLURM.",
        epilog=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="base preset (python -m train --list)")
    p.add_argument("--spec", default=None, help="a sweep.json written by an earlier invocation (or its directory)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed override (repeatable)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="an axis (repeatable)")
    p.add_argument("--random", type=int, default=0, metavar="N", help="draw N random points instead of the grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the random search")
    p.add_argument("--name", default=None, help="sweep name (default: the output directory's name)")
    p.add_argument(
        "--out", default=None, help="output directory (default: runs/sweep-<config>, or the spec's directory)"
    )
    p.add_argument("--workers", type=int, default=1, help="points trained at once")
    p.add_argument("--runner", choices=("subprocess", "inprocess"), default="subprocess")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a point is stopped and failed")
    p.add_argument("--point", type=int, action="append", default=None, help="run only this point index (repeatable)")
    p.add_argument("--print-commands", action="store_true", help="print one `python -m train` line per point and exit")
    p.add_argument("--slurm", default=None, metavar="FILE", help="write a SLURM array script and exit")
    p.add_argument("--slurm-cpus", type=int, default=4, metavar="N", help="CPUs per task (default 4)")
    p.add_argument("--slurm-mem", default="8G", help="memory per task (default 8G)")
    p.add_argument("--slurm-time", default="02:00:00", help="time limit per task (default 02:00:00)")
    p.add_argument("--slurm-gpus", type=int, default=0, metavar="N", help="GPUs per task (default 0: CPU only)")
    p.add_argument("--slurm-partition", default=None)
    p.add_argument("--slurm-account", default=None)
    p.add_argument("--slurm-parallel", type=int, default=32, metavar="N", help="tasks running at once (default 32)")
    p.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="one more #SBATCH line, e.g. --sbatch=--qos=high",
    )
    p.add_argument("--report", action="store_true", help="only collect the results, table and plots")
    p.add_argument("--dry-run", action="store_true", help="list the points and check their configs, train nothing")
    return p


def sweep_from_args(args: argparse.Namespace) -> tuple[Sweep, Path]:
    if args.spec:
        if args.config or args.set or args.grid:
            raise SweepError("--spec already holds the config, fixed overrides and axes: drop --config/--set/--grid")
        sweep = load_spec(args.spec)
        spec = Path(args.spec)
        out = Path(args.out) if args.out else (spec if spec.is_dir() else spec.parent)
        return sweep, out
    if not args.config:
        raise SweepError("give --config PRESET (and --grid KEY=V1,V2 axes), or --spec OUT/sweep.json")
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{args.config}"
    axes = tuple(parse_axis(g) for g in args.grid)
    sweep = Sweep(args.name or out.name, args.config, tuple(args.set), axes, random=args.random, seed=args.seed)
    return sweep, out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.workers < 1:  # before anything is written
            raise SweepError(f"--workers {args.workers}: must be >= 1")
        sweep, out = sweep_from_args(args)
        if args.print_commands:
            print_commands(sweep, out)
            return 0
        if args.slurm:
            sweep.check()
            out.mkdir(parents=True, exist_ok=True)
            write_spec(sweep, out)
            script = Path(args.slurm)
            text = slurm_script(
                sweep,
                out,
                script,
                cpus=args.slurm_cpus,
                mem=args.slurm_mem,
                time_limit=args.slurm_time,
                parallel=args.slurm_parallel,
                gpus=args.slurm_gpus,
                partition=args.slurm_partition,
                account=args.slurm_account,
                extra=args.sbatch,
            )
            script.write_text(text)
            print(f"wrote {script} ({len(sweep.points())} tasks); submit with: sbatch {script}")
            return 0
        if args.dry_run:
            sweep.check()
            for p in sweep.points():
                print(f"{p.index:4d} {p.id}: {' '.join(p.overrides(sweep))}")
            return 0
        if args.report:
            rows = write_outputs(sweep, out)
        else:
            n = len(sweep.points())
            if args.point is not None and any(not 0 <= i < n for i in args.point):
                raise SweepError(f"--point {args.point}: the sweep has points 0..{n - 1}")
            rows = run_sweep(
                sweep, out, workers=args.workers, runner=args.runner, timeout=args.timeout, only=args.point
            )
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(results_markdown(sweep, rows))
    print(f"\nwrote {out / 'results.md'}, results.csv, results.jsonl, curves.png, final.png")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} point(s) failed; rerun the same command to retry them (logs in {out / 'logs'})")
    return 1 if failed else 0
