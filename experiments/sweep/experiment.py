"""An experiment that runs a sweep: its shared command-line options applied to the sweep, and the main()
of an experiment that is one sweep (experiments.positions, experiments.value_map)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments.common import add_steps_and_seeds, command_line, default_out, experiment_parser, finish
from experiments.sweep.results import slurm_script
from experiments.sweep.run import print_commands, run_sweep
from experiments.sweep.spec import Sweep, SweepError, write_spec


def run_for_experiment(
    sweep: Sweep, out: Path, args, log: Callable[[str], None] = print
) -> list[dict[str, Any]] | None:
    """An experiment's sweep under its command-line options (experiments.common.experiment_parser).

    ``--print-commands`` prints the training commands and ``--slurm FILE`` writes the array script
    (both return None: nothing was trained here); otherwise the points run (finished ones skipped).
    """
    out = Path(out)
    try:
        if getattr(args, "print_commands", False):
            print_commands(sweep, out)
            return None
        if getattr(args, "slurm", None):
            sweep.check()
            out.mkdir(parents=True, exist_ok=True)
            write_spec(sweep, out)
            args.slurm.write_text(slurm_script(sweep, out, args.slurm))
            print(
                f"wrote {args.slurm} ({len(sweep.points())} tasks); after they finish, rerun this command for the report"
            )
            return None
        return run_sweep(sweep, out, workers=args.workers, runner=args.runner, log=log)
    except SweepError as e:  # a bad point, a changed sweep: one line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def check_sweeps(sweeps) -> None:
    """Resolve every point of every sweep an experiment will run, before it trains any: the first bad key or
    value is one ``error:`` line and exit code 2 (a bad value of the last sweep must not wait for the first)."""
    try:
        for sweep in sweeps:
            sweep.check()
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def with_set(sweep, args: argparse.Namespace):
    """``sweep`` with the ``--set KEY=VALUE`` overrides added to every run, every point's config checked.

    A bad override (an unknown key or value, one of the sweep's axes, no '=') is a one-line error and
    exit code 2 before anything is trained.
    """
    if not getattr(args, "set", None):
        return sweep
    try:
        sweep = dataclasses.replace(sweep, fixed=(*sweep.fixed, *args.set))
        sweep.check()  # every point's config resolves: a bad key or value is named now, not per run
    except SweepError as e:
        print(f"error: --set: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return sweep


def sweep_experiment_main(name: str, doc: str | None, argv, steps: int, seeds: Sequence[int], make_sweep, write_report):
    """The main() of an experiment that is one sweep: parse --steps/--seeds and the shared options, run the
    sweep (or print its commands), write the report, print the claims. Returns report path, claims and rows
    (None when nothing was trained here)."""
    p = experiment_parser(name, doc)
    add_steps_and_seeds(p, steps, seeds)
    args = p.parse_args(argv)
    out = default_out(name, args)
    sweep = with_set(make_sweep(args.smoke, out, args.steps, args.seeds), args)
    rows = run_for_experiment(sweep, out, args)
    if rows is None:
        return None
    return finish(
        write_report(out, sweep, rows, command_line(name, argv), args.smoke, args.steps), args.smoke, rows=rows
    )
