"""What every experiment shares: its command line, reading run directories, and the report it writes.

An experiment is ``python -m experiments.NAME [--smoke] [--out runs/NAME]``. It trains or measures,
then writes ``OUT/report.md``: the exact command, markdown tables, PNG plots and one PASS/FAIL line
per claim, each computed from the results (a :class:`Claim` holds the numbers it was decided on).

    args = experiment_parser("heads", __doc__).parse_args(argv)
    report = Report("Heads", command_line("heads", argv))
    report.table(["h", "val loss"], rows)
    report.figure(path, "validation loss against h")
    report.claim(Claim("h=32 worse than h=4 by >= 0.05 nats", delta >= 0.05, f"delta = {delta:.3f}"))
    report.write(out)          # OUT/report.md and OUT/report.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from train.files import read_jsonl as _read_jsonl
from train.files import write_atomic

REPORT_FILE = "report.md"
RESULTS_FILE = "report.json"


# ---------------------------------------------------------------------------- command line
class ExperimentParser(argparse.ArgumentParser):
    """An experiment's parser: counts that must be positive (``--workers``, ``--steps``, ``--repeats``) are
    checked as soon as the arguments are parsed, before anything is built or written; a bad one is one
    ``error:`` line and exit code 2."""

    POSITIVE = ("workers", "steps", "repeats")

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        for name in self.POSITIVE:
            value = getattr(ns, name, None)
            if isinstance(value, int) and value < 1:
                print(f"error: --{name} {value}: must be >= 1", file=sys.stderr)
                raise SystemExit(2)
        return ns, rest


def experiment_parser(name: str, doc: str | None, *, sweep: bool = True) -> argparse.ArgumentParser:
    """The options every experiment has: --smoke, --out; with ``sweep``: --workers, --runner, --print-commands."""
    p = ExperimentParser(
        prog=f"python -m experiments.{name}",
        description=(doc or "").strip().splitlines()[0] if doc else None,
        epilog=(doc or "").strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny models and a few steps: checks the pipeline, not the claims"
    )
    p.add_argument(
        "--out", type=Path, default=None, help=f"output directory (default: runs/{name}, or runs/{name}-smoke)"
    )
    if sweep:
        p.add_argument(
            "--workers", type=int, default=1, help="training runs at once (default 1: the machine is shared)"
        )
        p.add_argument(
            "--runner",
            choices=("subprocess", "inprocess"),
            default="subprocess",
            help="each run as `python -m train ...` in its own process, or in this process (one at a time)",
        )
        p.add_argument("--print-commands", action="store_true", help="print the training commands and exit")
        p.add_argument("--slurm", type=Path, default=None, help="write a SLURM array script for the sweep and exit")
        p.add_argument(
            "--set",
            nargs="+",
            default=[],
            metavar="KEY=VALUE",
            help="more overrides for every run, e.g. train.weight_decay=0 (give it its own --out)",
        )
    return p


def default_out(name: str, args: argparse.Namespace) -> Path:
    return args.out if args.out is not None else Path("runs") / (f"{name}-smoke" if args.smoke else name)


def command_line(name: str, argv: Sequence[str] | None) -> str:
    """The exact command that reproduces this invocation: ``python -m experiments.NAME ARGS...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", f"experiments.{name}", *args])


# ---------------------------------------------------------------------------- run directories
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete records of a JSON-lines file; a torn last line is dropped with one warning (train/files.py)."""
    return _read_jsonl(path)


def eval_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The evaluation records of a run's metrics.jsonl (step, train/val loss and accuracy), in step order."""
    return [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if r.get("kind") == "eval"]


def final_eval(run_dir: str | Path) -> dict[str, Any] | None:
    """The last evaluation record of a run (None if it has none)."""
    records = eval_records(run_dir)
    return records[-1] if records else None


# ---------------------------------------------------------------------------- numbers
def mean(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.fmean(xs) if xs else math.nan


def spread(xs: Iterable[float]) -> float:
    """Half the range of ``xs`` (the +- of two seeds); 0 for one value, nan for none."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return (max(xs) - min(xs)) / 2 if xs else math.nan


def fmt(x: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals, None/nan as an en dash, the rest as str."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, float):
        if math.isnan(x):
            return "–"
        return f"{x:.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10_000 else str(x)
    return str(x)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """The exponent k of y ~ c * x^k, fitted by least squares on log-log axes (np.polyfit); nan if < 2 points."""
    pts = [(a, b) for a, b in zip(x, y, strict=True) if a and b and a > 0 and b > 0]
    if len(pts) < 2:
        return math.nan
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it to ``path`` and close it; returns ``path`` (for :meth:`Report.figure`)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def seed_losses(rows: Sequence[dict[str, Any]], key: str, metric: str = "val_loss") -> dict[str, dict[str, Any]]:
    """Finished sweep rows grouped by ``row[key]`` (first-seen order): ``{value: {"losses": {seed: metric},
    "mean": seed mean, "pm": half the range over seeds}}``."""
    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["status"] == "ok":
            by.setdefault(r[key], {"losses": {}})["losses"][int(r["train.seed"])] = r[metric]
    for e in by.values():
        e["mean"], e["pm"] = mean(e["losses"].values()), spread(e["losses"].values())
    return by


def val_curve(run_dir: str | Path) -> tuple[list[int], list[float]]:
    """(steps, validation losses) of a run's evaluations, for plotting."""
    recs = eval_records(run_dir)
    return [x["step"] for x in recs], [x["val_loss"] for x in recs]


# ---------------------------------------------------------------------------- the report
@dataclass
class Claim:
    """One checked statement: ``passed`` is computed from the results; ``detail`` shows the numbers."""

    name: str
    passed: bool
    detail: str
    acceptance: bool = True  # False: reported (e.g. a paper's claim we check) but not an acceptance criterion

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def line(self, smoke: bool = False) -> str:
        """The claim's markdown line; ``smoke``: its verdict is marked as meaningless (tiny models, few steps)."""
        verdict = f"{self.verdict} {SMOKE_VERDICT}" if smoke else self.verdict
        tag = "" if self.acceptance else " (reported, not an acceptance criterion)"
        return f"- **{verdict}** {self.name}{tag}: {self.detail}"


SMOKE_VERDICT = "(smoke run: too small to judge)"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub markdown table; numbers right-aligned, cells through :func:`fmt`."""
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in rows) and any(r[i] is not None for r in rows)
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(c, digits).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


@dataclass
class Report:
    """A markdown report built section by section, written with its machine-readable twin (report.json)."""

    title: str
    command: str
    parts: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # saved to report.json (tables' numbers)

    def text(self, s: str) -> None:
        self.parts.append(s.strip())

    def heading(self, s: str) -> None:
        self.parts.append(f"## {s}")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> None:
        self.parts.append(markdown_table(headers, rows, digits))

    def figure(self, path: Path, caption: str, out: Path | None = None) -> None:
        """Embed ``path`` (relative to the report's directory ``out`` when given)."""
        rel = path.relative_to(out) if out is not None and path.is_relative_to(out) else path
        self.parts.append(f"![{caption}]({rel.as_posix()})\n\n*{caption}*")

    def code(self, s: str, lang: str = "") -> None:
        self.parts.append(f"```{lang}\n{s.rstrip()}\n```")

    def claim(self, c: Claim) -> Claim:
        self.claims.append(c)
        return c

    def render(self) -> str:
        out = [f"# {self.title}", "", "Reproduce with:", "", f"```bash\n{self.command}\n```", ""]
        if self.claims:
            out += ["## Claims (computed from the results below)", ""]
            out += [c.line() for c in self.claims] + [""]
        for p in self.parts:
            out += [p, ""]
        return "\n".join(out).rstrip() + "\n"

    def write(self, out: Path) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        path = out / REPORT_FILE
        write_atomic(path, self.render())
        results = {"title": self.title, "command": self.command, "claims": [asdict(c) for c in self.claims]}
        results.update(self.data)
        write_atomic(out / RESULTS_FILE, json.dumps(results, indent=1, default=_json_default) + "\n")
        return path


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def publish(out: Path, dest: Path) -> list[Path]:
    """Copy ``out``/report.md, report.json and every image the report embeds to ``dest`` (same relative paths).

    ``python -m experiments.common publish runs/masking docs/results/masking``: a small, versionable copy
    of a report (run directories, checkpoints and logs stay behind).
    """
    import re
    import shutil

    text = (out / REPORT_FILE).read_text()
    files = [REPORT_FILE, RESULTS_FILE] + re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    copied = []
    for rel in dict.fromkeys(files):
        src = out / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
            copied.append(dest / rel)
    return copied


def runs_note(sweep, axes: str, smoke: bool, steps: int, detail: str = "") -> str:
    """The paragraph under a sweep experiment's claims: its training command, then the budget (or 'smoke')."""
    text = f"Runs: `python -m train --config {sweep.base} {' '.join(sweep.fixed)} {axes}`{detail}. "
    if smoke:
        return text + "**Smoke run: tiny model, a few steps; the numbers mean nothing.**"
    return text + (
        f"{steps} steps per run (nanoGPT's CPU run: 2000), cosine schedule compressed to them. Seeds set "
        "the initialisation (train.seed); every run sees the same batches (data.seed 0), so +- is the spread "
        "over initialisations only."
    )


def failed_note(rows: Sequence[dict[str, Any]]) -> str | None:
    """'Failed points: ...' naming each failed point and its error, or None when every point finished."""
    failed = [r for r in rows if r["status"] != "ok"]
    return "Failed points: " + "; ".join(f"{r['id']}: {r.get('error')}" for r in failed) if failed else None


def add_steps_and_seeds(p: argparse.ArgumentParser, steps: int | None, seeds: Sequence[int]) -> None:
    """--steps (default ``steps``; None: the experiment's own per-setting default) and --seeds."""
    default = "the experiment's" if steps is None else steps
    p.add_argument("--steps", type=int, default=steps, help=f"training steps per run (default {default})")
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help=f"training seeds (default {seeds})")


def finish(written: tuple[Path, Report], smoke: bool = False, **results: Any) -> dict[str, Any]:
    """An experiment's last step, given what its write_report returned: the claims on the terminal and where the
    report is. Returns what its main() returns: ``{"report": path, "claims": [...], **results}``.

    ``smoke``: each claim's line says, next to its PASS or FAIL, that a smoke run is too small to judge.
    """
    path, report = written
    for c in report.claims:
        print(c.line(smoke).replace("**", ""))
    print(f"report: {path}")
    return {"report": path, "claims": report.claims, **results}


# ---------------------------------------------------------------------------- tiny Shakespeare settings
# A few lines of the play in the corpus, for --smoke runs: they need no corpus file (CI has none).
SMOKE_TEXT = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved.

First Citizen:
First, you know Caius Marcius is chief enemy to the people.
"""


def smoke_text(out: Path) -> Path:
    """Write the smoke corpus (SMOKE_TEXT, repeated) into ``out`` and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "smoke.txt"
    path.write_text(SMOKE_TEXT * 20)
    return path


def shakespeare_overrides(steps: int, smoke: bool, out: Path) -> list[str]:
    """Fixed overrides of the 'shakespeare-char-cpu' preset for an experiment: ``steps`` steps with the
    cosine schedule compressed to them (nanoGPT's 2000 when steps=2000), or a tiny model for --smoke."""
    if smoke:
        return [
            f"data.path={smoke_text(out)}",
            "model.n_layers=1",
            "model.d_model=32",
            "model.max_len=16",
            "train.batch_size=4",
            "train.steps=3",
            "train.warmup_steps=1",
            "train.decay_steps=3",
            "train.eval_every=3",
            "train.eval_batches=1",
            "train.checkpoint_every=3",
        ]
    return [
        f"train.steps={steps}",
        f"train.decay_steps={steps}",
        f"train.warmup_steps={min(100, steps // 10)}",
        f"train.eval_every={max(1, steps // 4)}",
        "train.eval_batches=20",
        f"train.checkpoint_every={steps}",
    ]


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "publish":
        sys.exit("usage: python -m experiments.common publish OUT_DIR DEST_DIR")
    for f in publish(Path(sys.argv[2]), Path(sys.argv[3])):
        print(f)
