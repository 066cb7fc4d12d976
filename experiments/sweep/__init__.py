"""Sweeps: a base preset plus axes of overrides, run locally by N workers or on a cluster, resumable.

    python -m experiments.sweep --config shakespeare-char-cpu --set train.steps=500 \\
        --grid model.n_heads=1,4,16 --grid train.seed=0,1 --out runs/sweep-heads --workers 2
    python -m experiments.sweep --spec runs/sweep-heads/sweep.json            # resume: finished points are skipped
    python -m experiments.sweep --spec runs/sweep-heads/sweep.json --report   # only collect results, table and plots
    python -m experiments.sweep --spec runs/sweep-heads/sweep.json --print-commands   # one `python -m train` per line
    python -m experiments.sweep --spec runs/sweep-heads/sweep.json --slurm runs/sweep-heads/sweep.slurm
    python -m experiments.sweep --config mqar --random 8 --seed 0 --grid train.lr=log:1e-4:1e-2 --grid model.n_layers=1,2

A point is the base preset (``--config``) with the fixed overrides (``--set``) and one value of each
axis (``--grid KEY=V1,V2,...``); grids are the cartesian product in the order the axes are given.
``--random N`` instead draws N points: each axis value uniformly from its list, or from a range
``log:LO:HI`` (log-uniform), ``uniform:LO:HI`` or ``int:LO:HI`` (inclusive), with ``--seed``.

Each point is one run of ``python -m train`` (a subprocess: a crash or an out-of-memory kill stays
in its process) in ``OUT/runs/<point id>``, its output in ``OUT/logs/<point id>.log``. A point is
finished when its run directory has ``summary.json`` (written at the end of training); finished
points are skipped, a run directory with a checkpoint but no summary is continued with
``--resume``. A point that fails is recorded (``OUT/logs/<point id>.json``: return code, the last
error line) and the other points go on; the next invocation retries it. Final metrics are read from
each run's ``metrics.jsonl`` (its last evaluation record).

Dying together: each training process asks the kernel for SIGTERM when the runner dies (Linux
``prctl(PR_SET_PDEATHSIG)``, set by ``python -m train`` itself when the runner's PID is in its
environment, see train/cli.py), so however the runner ends (SIGTERM, Ctrl-C, SIGKILL, the OOM
killer) its runs finish their step, save a checkpoint and exit; no exit handler of the runner could
cover SIGKILL. A rerun that finds a point's run directory still locked by such a process (train/lock.py)
waits for it (up to ``LOCK_WAIT`` s, then leaves the point pending with one line), and one sweep
process works in OUT at a time (OUT/.lock; the array tasks of ``--point`` share it). The sweep's own
files are written atomically and read past a torn tail (train/files.py).

Outputs in OUT: ``sweep.json`` (the spec), ``results.jsonl`` and ``results.csv`` (one row per point),
``results.md`` (a markdown table), ``curves.png`` (validation loss against step, every point) and
``final.png`` (the final metric against the first axis).

On a cluster: ``--slurm FILE`` writes an array job with one task per point; each task runs
``python -m experiments.sweep --spec OUT/sweep.json --point $SLURM_ARRAY_TASK_ID`` (the same skipping
and recording), and ``--report`` afterwards collects everything.
"""

from experiments.sweep.cli import build_parser, main, sweep_from_args
from experiments.sweep.experiment import check_sweeps, run_for_experiment, sweep_experiment_main, with_set
from experiments.sweep.results import (
    METRIC_COLUMNS,
    REPO_ROOT,
    SLURM_TEMPLATE,
    collect,
    plot_curves,
    plot_final,
    result_row,
    results_markdown,
    slurm_script,
    write_outputs,
)
from experiments.sweep.run import print_commands, run_point, run_sweep, stale_points, train_command
from experiments.sweep.spec import (
    RANGE_RE,
    SPEC_FILE,
    Point,
    Sweep,
    SweepError,
    config_errors,
    is_finished,
    load_spec,
    parse_axis,
    run_dir_of,
    value_text,
    write_spec,
)

__all__ = [
    "METRIC_COLUMNS",
    "RANGE_RE",
    "REPO_ROOT",
    "SLURM_TEMPLATE",
    "SPEC_FILE",
    "Point",
    "Sweep",
    "SweepError",
    "build_parser",
    "check_sweeps",
    "collect",
    "config_errors",
    "is_finished",
    "load_spec",
    "main",
    "parse_axis",
    "plot_curves",
    "plot_final",
    "print_commands",
    "result_row",
    "results_markdown",
    "run_dir_of",
    "run_for_experiment",
    "run_point",
    "run_sweep",
    "slurm_script",
    "stale_points",
    "sweep_experiment_main",
    "sweep_from_args",
    "train_command",
    "value_text",
    "with_set",
    "write_outputs",
    "write_spec",
]
