"""The catalogue of bad inputs (issue 7): each gets one ``error:`` line naming the problem, exit code 2, no traceback.

CASES is the single source of docs/bad_inputs.md: ``python tests/test_bad_inputs.py > docs/bad_inputs.md``
regenerates it, and a test fails if the file and the table drift apart. Each case calls the real
command-line ``main()`` in-process (``python -m train`` or ``python -m train.sample``) on real files:
a tiny trained run (module fixture), text files with bad contents, directories in the way.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

TINY = [  # the induction preset shrunk to seconds
    "train.steps=2",
    "train.batch_size=4",
    "train.eval_every=2",
    "train.eval_batches=1",
    "train.log_every=1",
    "train.checkpoint_every=2",
]
TEXT = ["--config", "shakespeare-char-cpu", "model.n_layers=1", "model.d_model=16", "model.n_heads=2", *TINY]


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    what: str  # the bad input, for the catalogue
    tool: str  # a key of PROGS: 'train' (python -m train), 'sample' (python -m train.sample), 'heads', 'sweep'
    argv: tuple[str, ...]  # {run}: a trained induction run; {text_run}: a trained text run; {tmp}: a scratch dir
    phrase: str  # must appear in the one-line message
    setup: Callable[[Path], None] | None = None  # writes files under {tmp} first
    notice: bool = False  # valid, but not what it may seem: exit 0 and one `notice: ...` (or `warning: ...`) line


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_bytes(content)


def _mkdir_with_file(tmp: Path) -> None:
    (tmp / "notarun").mkdir()
    (tmp / "notarun" / "notes.txt").write_text("not a run")


def _copy_run_with_config(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        shutil.copytree(tmp / "run", tmp / "other")
        path = tmp / "other" / "config.json"
        d = json.loads(path.read_text())
        change(d)
        path.write_text(json.dumps(d))

    return setup


def _foreign_checkpoints(tmp: Path) -> None:
    """A run whose checkpoints come from a model of another width (the config says d_model=32)."""
    shutil.copytree(tmp / "run", tmp / "foreign")
    shutil.rmtree(tmp / "foreign" / "checkpoints")
    shutil.copytree(tmp / "wide" / "checkpoints", tmp / "foreign" / "checkpoints")


def _broken_json(tmp: Path) -> None:
    shutil.copytree(tmp / "run", tmp / "broken")
    (tmp / "broken" / "config.json").write_text('{"name": "induction", ')


def _no_checkpoints(tmp: Path) -> None:
    shutil.copytree(tmp / "run", tmp / "nockpt")
    shutil.rmtree(tmp / "nockpt" / "checkpoints")


_HELD: list = []  # locks held for the rest of the session (flock conflicts between two opens in one process too)


def _held_run_dir(tmp: Path) -> None:
    from train.lock import DirLock

    _HELD.append(DirLock(tmp / "busy"))


def _held_sweep_out(tmp: Path) -> None:
    """A sweep directory held as a live runner holds it (experiments/sweep/run.py takes this lock first)."""
    from train.lock import DirLock

    _HELD.append(DirLock(tmp / "sw", what="sweep directory"))


def _torn_metrics(tmp: Path) -> None:
    """The tail a kill -9 in the middle of a metrics write leaves: the last line cut mid-JSON."""
    shutil.copytree(tmp / "run", tmp / "torn")
    with open(tmp / "torn" / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "kind": "train", "loss": 3.1')


def _torn_vocab(tmp: Path) -> None:
    shutil.copytree(tmp / "run", tmp / "tornvocab")
    path = tmp / "tornvocab" / "vocab.json"
    path.write_text(path.read_text()[:30])


def _torn_sweep_spec(tmp: Path) -> None:
    (tmp / "spec").mkdir()
    (tmp / "spec" / "sweep.json").write_text('{"name": "t", "base": "induction", "ax')


RUN_SETUPS = (_foreign_checkpoints, _broken_json, _no_checkpoints, _torn_metrics, _torn_vocab)  # copy the trained run


CASES = [
    Case("unknown-preset", "unknown preset", "train", ("--config", "nope"), "unknown config 'nope'"),
    Case("unknown-key", "misspelt override key", "train", ("model.n_layerz=2",), "n_layerz"),
    Case("no-equals", "override without `=`", "train", ("train.lr",), "KEY=VALUE"),
    Case("unknown-section", "unknown override section", "train", ("optim.lr=3",), "optim"),
    Case("bad-int", "text where an integer belongs", "train", ("train.steps=abc",), "train.steps"),
    Case(
        "file-unknown-key",
        "config file with a misspelt key",
        "train",
        ("--config", "{tmp}/bad.toml"),
        "n_layerz",
        _write("bad.toml", b"[model]\nn_layerz = 2\n"),
    ),
    Case(
        "file-wrong-type",
        "config file with text where a number belongs",
        "train",
        ("--config", "{tmp}/bad.json"),
        "TrainConfig.lr",
        _write("bad.json", b'{"train": {"lr": "fast"}}'),
    ),
    Case(
        "file-bad-json",
        "config file that is not valid JSON",
        "train",
        ("--config", "{tmp}/bad.json"),
        "not valid JSON",
        _write("bad.json", b'{"train": {"lr": 3e-4,}}'),
    ),
    Case(
        "file-bad-toml",
        "config file that is not valid TOML",
        "train",
        ("--config", "{tmp}/bad.toml"),
        "not valid TOML",
        _write("bad.toml", b"[model\nn_layers = 2\n"),
    ),
    Case("file-missing", "config file that does not exist", "train", ("--config", "{tmp}/no.toml"), "no such file"),
    Case("negative-steps", "negative steps", "train", ("train.steps=-5",), "must be positive"),
    Case("zero-batch", "zero batch size", "train", ("train.batch_size=0",), "must be positive"),
    Case(
        "accum-not-dividing",
        "grad_accum not dividing batch_size",
        "train",
        ("train.batch_size=10", "train.grad_accum=3"),
        "not a multiple of train.grad_accum",
    ),
    Case("seq-too-long", "seq_len above max_len", "train", ("train.seq_len=1000",), "exceeds model.max_len"),
    Case("bad-schedule", "unknown lr schedule", "train", ("train.schedule=linear",), "unknown; choose one of"),
    Case("bad-beta", "beta1 outside [0, 1)", "train", ("train.beta1=1.5",), "must be in [0, 1)"),
    Case("bad-goal", "malformed success goal", "train", ("goal=accuracy>0.9",), "write it as"),
    Case("heads-not-dividing", "n_heads not dividing d_model", "train", ("model.n_heads=5",), "n_heads"),
    Case("bad-attention", "unknown attention implementation", "train", ("model.attention_impl=foo",), "foo"),
    Case("bad-nonfinite", "max_nonfinite of 0", "train", ("train.max_nonfinite=0",), "train.max_nonfinite=0"),
    Case("mesh-not-dividing", "mesh axis not dividing the heads", "train", ("mesh.tensor=3",), "mesh"),
    Case("mesh-too-big", "mesh larger than the devices", "train", ("mesh.data=64",), "mesh"),
    Case(
        "missing-data",
        "data file that does not exist",
        "train",
        (*TEXT, "data.path={tmp}/nothing.txt", "run_dir={tmp}/r"),
        "nothing.txt",
    ),
    Case(
        "empty-data",
        "empty data file",
        "train",
        (*TEXT, "data.path={tmp}/empty.txt", "run_dir={tmp}/r"),
        "empty",
        _write("empty.txt", b""),
    ),
    Case(
        "non-utf8-data",
        "data file that is not UTF-8 (character level)",
        "train",
        (*TEXT, "data.path={tmp}/latin1.txt", "run_dir={tmp}/r"),
        "UTF-8",
        _write("latin1.txt", "caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 50),
    ),
    Case("run-dir-exists", "existing run_dir without --resume", "train", ("run_dir={run}",), "pass --resume"),
    Case(
        "run-dir-is-file",
        "run_dir that is a file",
        "train",
        ("run_dir={tmp}/afile",),
        "is a file",
        _write("afile", b"x"),
    ),
    Case("resume-not-a-run", "--resume of a directory that is not a run", "train", ("--resume", "{tmp}"), "not a run"),
    Case(
        "resume-other-preset",
        "--resume with another --config",
        "train",
        ("--resume", "{run}", "--config", "mqar"),
        "drop --config",
    ),
    Case(
        "resume-changed-model",
        "--resume with a changed model field",
        "train",
        ("--resume", "{run}", "model.d_model=64"),
        "was trained with model.d_model=32",
    ),
    Case(
        "resume-foreign-checkpoint",
        "checkpoint written by another config (d_model 64 into a d_model 32 run)",
        "train",
        ("--resume", "{tmp}/foreign"),
        "no readable checkpoint",
        _foreign_checkpoints,
    ),
    Case(
        "resume-broken-config",
        "config.json torn or not valid JSON (written atomically: only damage from outside the lab tears it)",
        "train",
        ("--resume", "{tmp}/broken"),
        "not valid JSON",
        _broken_json,
    ),
    Case(
        "resume-unknown-field",
        "config.json with an unknown field",
        "train",
        ("--resume", "{tmp}/other"),
        "no field",
        _copy_run_with_config(lambda d: d["train"].update(lrr=1.0)),
    ),
    Case("sample-not-a-run", "sample from a directory that is not a run", "sample", ("{tmp}",), "not a run"),
    Case(
        "sample-zero-tokens",
        "sample --max-new-tokens 0",
        "sample",
        ("{run}", "--prompt", "1 2", "--max-new-tokens", "0"),
        ">= 1",
    ),
    Case(
        "sample-bad-token",
        "induction prompt with an id outside the vocabulary",
        "sample",
        ("{run}", "--prompt", "1 99"),
        "prompt ids must be in [0, 65)",
    ),
    Case(
        "sample-char-outside-vocab",
        "text prompt with characters outside the vocabulary",
        "sample",
        ("{text_run}", "--prompt", "日本"),
        "vocabulary",
    ),
    Case(
        "sample-long-shift",
        "sample --context-shift beyond max_len",
        "sample",
        ("{run}", "--prompt", "1 2", "--context-shift", "1000"),
        "context_shift=1000",
    ),
    Case(
        "sample-no-step",
        "sample --step that was never saved",
        "sample",
        ("{run}", "--prompt", "1 2", "--step", "7"),
        "step 7",
    ),
    Case(
        "absurd-steps",
        "a step count beyond any int32",
        "train",
        ("train.steps=99999999999999999999",),
        "beyond 2**31 - 1",
    ),
    Case(
        "too-big-for-memory",
        "a model that cannot fit in memory",
        "train",
        ("model.n_layers=100000",),
        "pass train.memory_check=false",
    ),
    Case("nan-lr", "NaN learning rate", "train", ("train.lr=nan",), "NaN and infinity are not valid for train.lr"),
    Case("inf-rope-base", "infinite rope base", "train", ("model.rope_base=inf",), "NaN and infinity"),
    Case("heads-zero-workers", "experiment with --workers 0", "heads", ("--workers", "0"), "--workers 0: must be >= 1"),
    Case("heads-negative-workers", "experiment with --workers -2", "heads", ("--workers", "-2"), "must be >= 1"),
    Case(
        "sweep-zero-workers",
        "sweep with --workers 0",
        "sweep",
        ("--config", "induction", "--grid", "model.n_layers=1,2", "--out", "{tmp}/sw", "--workers", "0"),
        "--workers 0: must be >= 1",
    ),
    Case(
        "sweep-bad-grid-value",
        "sweep whose last grid value is bad (checked before any point trains)",
        "sweep",
        ("--config", "induction", "--grid", "train.lr=1e-3,-1", "--out", "{tmp}/sw"),
        "point lr=-1: train.lr=-1.0",
    ),
    Case(
        "sample-empty-text-prompt",
        "empty text prompt",
        "sample",
        ("{text_run}", "--prompt", ""),
        "the prompt is empty",
    ),
    Case(
        "sample-top-k-beyond-vocab",
        "sample --top-k beyond the vocabulary",
        "sample",
        ("{run}", "--prompt", "1 2", "--max-new-tokens", "3", "--top-k", "100000"),
        "it keeps every token",
        notice=True,
    ),
    Case(
        "sample-beyond-max-len",
        "sample --max-new-tokens beyond max_len",
        "sample",
        ("{run}", "--prompt", "1 2", "--max-new-tokens", "100"),
        "the context slides",
        notice=True,
    ),
    Case(
        "sample-bad-temperature",
        "sample --temperature -1",
        "sample",
        ("{run}", "--prompt", "1 2", "--temperature", "-1"),
        "temperature",
    ),
    # issue 16: names that are paths, resumes that would start over, a run directory in use
    Case("name-is-a-path", "name that is a path", "train", ("name=../../tmp/escape",), "a name is not a path"),
    Case("resume-no-dir", "--resume with no run directory", "train", ("--resume",), "--resume needs the run directory"),
    Case(
        "resume-empty-dir",
        "--resume of an empty directory",
        "train",
        ("run_dir={tmp}/empty", "--resume"),
        "nothing to resume",
        lambda tmp: (tmp / "empty").mkdir(),
    ),
    Case(
        "resume-no-checkpoints",
        "--resume of a run whose checkpoints/ was deleted",
        "train",
        ("--resume", "{tmp}/nockpt"),
        "checkpoints is missing",
        _no_checkpoints,
    ),
    Case(
        "run-dir-in-use",
        "run_dir held by another live process",
        "train",
        ("run_dir={tmp}/busy",),
        "in use by process",
        _held_run_dir,
    ),
    Case(
        "resume-missing-dir",
        "--resume of a directory that does not exist",
        "train",
        ("--resume", "{tmp}/nothere"),
        "no such directory",
    ),
    Case(
        "sweep-out-in-use",
        "sweep --out held by another live sweep runner",
        "sweep",
        ("--config", "induction", "--grid", "train.seed=0,1", "--out", "{tmp}/sw"),
        "sweep directory",
        _held_sweep_out,
    ),
    Case(
        "resume-torn-vocab",
        "vocab.json torn (written atomically: only damage from outside the lab tears it)",
        "train",
        ("--resume", "{tmp}/tornvocab"),
        "vocab.json is not valid JSON",
        _torn_vocab,
    ),
    Case(
        "sweep-torn-spec",
        "sweep.json torn (written atomically: only damage from outside the lab tears it)",
        "sweep",
        ("--spec", "{tmp}/spec/sweep.json"),
        "sweep.json is not a sweep spec",
        _torn_sweep_spec,
    ),
    Case(
        "resume-torn-metrics",
        "--resume of a run whose metrics.jsonl ends in a torn line (a kill -9 during a write)",
        "train",
        ("--resume", "{tmp}/torn"),
        "dropped 1 incomplete record(s) (its last line",
        _torn_metrics,
        notice=True,
    ),
]


def render_markdown() -> str:
    lines = [
        "# Bad inputs and the messages they get",
        "",
        "Generated from `CASES` in tests/test_bad_inputs.py (`python tests/test_bad_inputs.py > docs/bad_inputs.md`);",
        "the test runs every row and checks: exit code 2, one line `error: ...` on stderr containing the phrase,",
        "no traceback. `RUN` is a trained induction run, `TEXT_RUN` a trained character-level run, `TMP` a scratch",
        "directory; `TINY` stands for the overrides that shrink the preset to seconds.",
        "",
        "| # | bad input | command | the message contains |",
        "|---|---|---|---|",
    ]
    errors, notices = [c for c in CASES if not c.notice], [c for c in CASES if c.notice]
    lines += [_row(i, c) for i, c in enumerate(errors, 1)]
    lines += [
        "",
        "## Valid inputs that get a notice",
        "",
        "These run (exit code 0) but do not do what they may seem to, or find something to repair; each prints one",
        "line `notice: ...` (`warning: ...` for a damaged file) on stderr saying what happens and goes on.",
        "",
        "| # | input | command | the notice contains |",
        "|---|---|---|---|",
    ]
    lines += [_row(i, c) for i, c in enumerate(notices, 1)]
    return "\n".join(lines) + "\n"


def _row(i: int, c: Case) -> str:
    args = " ".join(shlex.quote(a) if a == "" else a for a in c.argv).replace(" ".join(TINY), "TINY")
    args = args.replace("{run}", "RUN").replace("{text_run}", "TEXT_RUN").replace("{tmp}", "TMP")
    cmd = f"{PROGS[c.tool]} {args}".replace("|", "\\|")
    return f"| {i} | {c.what} | `{cmd}` | `{c.phrase}` |"


PROGS = {
    "train": "python -m train",
    "sample": "python -m train.sample",
    "heads": "python -m experiments.heads",
    "sweep": "python -m experiments.sweep",
}


def _main(tool: str):
    """The command line's main(argv) -> exit code (an experiment's SystemExit(code) is its exit code)."""
    if tool == "train":
        from train.cli import main
    elif tool == "sample":
        from train.sample import main
    elif tool == "sweep":
        from experiments.sweep import main
    else:
        import importlib

        main = importlib.import_module(f"experiments.{tool}").main

    def run(argv):
        try:
            return main(argv)
        except SystemExit as e:
            return e.code

    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Trained tiny runs: an induction one, a wider one (for foreign checkpoints) and a character-level one."""
    import train.data as data

    root = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv(data.CACHE_ENV, str(root / "cache"))
    corpus = root / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 40)
    try:
        from train.cli import main

        assert main(["--no-progress", *TINY, f"run_dir={root}/run", "model.d_model=32"]) == 0
        assert main(["--no-progress", *TINY, f"run_dir={root}/wide", "model.d_model=64"]) == 0
        assert main(["--no-progress", *TEXT, f"data.path={corpus}", f"run_dir={root}/text"]) == 0
        yield root
    finally:
        mp.undo()


def needs_runs(c: Case) -> bool:
    """Cases that need the trained runs (their fixture trains three tiny runs: slow on a loaded 2-core box)."""
    return (
        any("{run}" in a or "{text_run}" in a for a in c.argv)
        or c.setup in RUN_SETUPS
        or (c.setup is not None and c.setup.__qualname__.startswith("_copy_run_with_config"))
    )


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if needs_runs(c) else []) for c in CASES]
)
def test_bad_input_gets_one_clear_line(case, request, tmp_path, capsys, monkeypatch):
    import train.data as data

    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    runs = request.getfixturevalue("runs") if needs_runs(case) else None
    if runs is not None:
        for name in ("run", "wide"):
            shutil.copytree(runs / name, tmp_path / name)
    if case.setup is not None:
        case.setup(tmp_path)
    before = {p.relative_to(tmp_path) for p in tmp_path.rglob("*")}
    subs = {"{run}": str(tmp_path / "run"), "{tmp}": str(tmp_path)}
    if runs is not None:
        subs["{text_run}"] = str(runs / "text")
    argv = []
    for a in case.argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    if case.tool == "train":
        argv = ["--no-progress", *argv]
    code = _main(case.tool)(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    if case.notice:
        assert code == 0 and "Traceback" not in out + err, (code, err[-1500:])
        notices = [line for line in lines if line.startswith(("notice: ", "warning: "))]
        assert len(notices) == 1 and case.phrase in notices[0], lines
        return
    assert code == 2, (code, out[-500:], err[-1500:])
    assert "Traceback" not in out + err
    assert lines and lines[-1].startswith("error: "), err
    assert case.phrase in lines[-1], lines[-1]
    if case.tool in ("heads", "sweep"):  # refused before anything was written
        assert {p.relative_to(tmp_path) for p in tmp_path.rglob("*")} == before
    if os.environ.get("BAD_INPUTS_MESSAGES"):  # collect the real messages (for the README), paths shortened
        with open(os.environ["BAD_INPUTS_MESSAGES"], "a") as f:
            f.write(f"{case.id}\t{lines[-1].replace(str(tmp_path), 'TMP')}\n")


def test_catalogue_has_at_least_20_distinct_cases():
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)
    assert sum(not needs_runs(c) for c in CASES) >= 20  # at least 20 run in the default (not slow) suite


def test_readme_counts_the_cases():
    """The README's faults section gives the catalogue's sizes; they are counted here, not typed."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    m = re.search(
        r"The (\d+) cases, each tested\s+by tests/test_bad_inputs\.py.*?with the (\d+) valid inputs", readme, re.S
    )
    assert m, "README: 'The N cases, each tested by tests/test_bad_inputs.py ... with the M valid inputs'"
    errors = sum(not c.notice for c in CASES)
    assert (int(m.group(1)), int(m.group(2))) == (errors, len(CASES) - errors)


def test_docs_match_the_table():
    doc = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
    assert doc.read_text() == render_markdown(), "regenerate: python tests/test_bad_inputs.py > docs/bad_inputs.md"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
