"""experiments/sweep/: grid and random points, commands, SLURM script, and a real sweep of tiny runs.

The end-to-end test trains real (tiny) models in subprocesses with two workers: one point succeeds,
one fails on a missing data file and is recorded; a second invocation skips the finished point and
retries the failed one.
"""

from __future__ import annotations

import csv
import json
import shlex
import subprocess

import pytest

import train.data as data
from experiments import sweep as sw

TINY = (
    "model.n_layers=1",
    "model.d_model=16",
    "model.n_heads=2",
    "model.max_len=16",
    "train.batch_size=4",
    "train.steps=3",
    "train.warmup_steps=1",
    "train.eval_every=3",
    "train.eval_batches=1",
    "train.log_every=1",
    "train.checkpoint_every=3",
    "train.async_checkpoint=false",
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


def test_grid_points_in_order_with_stable_ids():
    s = sw.Sweep.make("h", "shakespeare-char-cpu", ["train.steps=5"], {"model.n_heads": [1, 4], "train.seed": [0, 1]})
    pts = s.points()
    assert [p.id for p in pts] == ["n_heads=1,seed=0", "n_heads=1,seed=1", "n_heads=4,seed=0", "n_heads=4,seed=1"]
    assert pts[2].overrides(s) == ["train.steps=5", "model.n_heads=4", "train.seed=0"]
    assert sw.Sweep.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    # the same field name in two sections keeps the full keys
    t = sw.Sweep.make("v", "mqar", axes={"model.vocab_size": [64], "data.vocab_size": [32]})
    assert t.points()[0].id == "model.vocab_size=64,data.vocab_size=32"
    # booleans and None become override text
    u = sw.Sweep.make("c", "induction", axes={"model.causal": [True, False], "model.d_head": [None]})
    assert [p.values for p in u.points()] == [
        {"model.causal": "true", "model.d_head": "none"},
        {"model.causal": "false", "model.d_head": "none"},
    ]


def test_random_search_is_seeded_and_within_ranges():
    axes = (("train.lr", ("log:1e-4:1e-2",)), ("model.n_layers", ("int:1:3",)), ("model.positions", ("rotary", "none")))
    s = sw.Sweep("r", "induction", axes=axes, random=20, seed=3)
    pts = s.points()
    assert [p.values for p in pts] == [
        p.values for p in sw.Sweep("r", "induction", axes=axes, random=20, seed=3).points()
    ]
    assert [p.values for p in pts] != [
        p.values for p in sw.Sweep("r", "induction", axes=axes, random=20, seed=4).points()
    ]
    lrs = [float(p.values["train.lr"]) for p in pts]
    assert all(1e-4 <= x <= 1e-2 for x in lrs) and max(lrs) / min(lrs) > 3
    assert {p.values["model.n_layers"] for p in pts} <= {"1", "2", "3"}
    assert {p.values["model.positions"] for p in pts} == {"rotary", "none"}
    assert pts[0].id.startswith("000-") and len({p.id for p in pts}) == 20
    s.check()  # every drawn point is a valid RunConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(base="nope"), "unknown config 'nope'"),
        (dict(fixed=("run_dir=x",)), "run_dir is set by the sweep"),
        (dict(fixed=("train.steps",)), "write it as KEY=VALUE"),
        (dict(fixed=("model.n_heads=2",), axes=(("model.n_heads", ("1",)),)), "both a fixed override and an axis"),
        (dict(axes=(("train.lr", ("log:1e-4:1e-2",)),)), "needs random search"),
        (dict(axes=(("train.lr", ()),)), "has no values"),
    ],
)
def test_bad_specs_raise_one_line(kwargs, message):
    base = dict(name="x", base="induction")
    base.update(kwargs)
    with pytest.raises(sw.SweepError, match=message):
        sw.Sweep(**base)


def test_check_names_the_bad_point():
    s = sw.Sweep.make("x", "induction", axes={"model.n_heads": [4, 3]})
    with pytest.raises(sw.SweepError, match=r"point n_heads=3: .*does not divide d_model"):
        s.check()
    assert sw.main(["--config", "induction", "--grid", "model.nope=1", "--dry-run"]) == 2


def test_commands_fresh_then_resume(tmp_path):
    s = sw.Sweep.make("x", "induction", ["train.steps=3"], {"model.n_layers": [1, 2]})
    p = s.points()[1]
    cmd = sw.train_command(s, p, tmp_path)
    assert cmd[:6] == ["python", "-m", "train", "--no-progress", "--config", "induction"]
    assert cmd[6:] == ["train.steps=3", "model.n_layers=2", f"run_dir={tmp_path / 'runs' / 'n_layers=2'}"]
    run_dir = sw.run_dir_of(tmp_path, p)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")  # a started run: continued from its checkpoint
    assert sw.train_command(s, p, tmp_path)[4:] == ["--resume", str(run_dir), "train.steps=3", "model.n_layers=2"]


def test_print_commands_and_slurm_script(tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["--config", "induction", "--set", "train.steps=3", "--grid", "model.n_layers=1,2", "--out", str(out)]
    assert sw.main(args + ["--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [shlex.split(x)[-2:] for x in lines] == [
        ["model.n_layers=1", f"run_dir={out}/runs/n_layers=1"],
        ["model.n_layers=2", f"run_dir={out}/runs/n_layers=2"],
    ]
    script = tmp_path / "sweep.slurm"
    assert sw.main(args + ["--slurm", str(script)]) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-1%" in text
    assert f'-m experiments.sweep --spec {out / "sweep.json"} --point "$SLURM_ARRAY_TASK_ID"' in text
    assert sw.load_spec(out) == sw.sweep_from_args(sw.build_parser().parse_args(args))[0]
    subprocess.run(["bash", "-n", str(script)], check=True)  # valid shell syntax


def test_sweep_records_failure_skips_finished_and_retries(tmp_path):
    text = tmp_path / "good.txt"
    text.write_text("to be, or not to be: that is the question.\n" * 40)
    missing = tmp_path / "missing.txt"
    s = sw.Sweep.make("paths", "shakespeare-char-cpu", TINY, {"data.path": [str(text), str(missing)]})
    out = tmp_path / "sw"
    logs: list[str] = []
    rows = sw.run_sweep(s, out, workers=2, log=logs.append)
    ok, failed = rows
    assert ok["status"] == "ok" and failed["status"] == "failed"
    assert "no such file" in failed["error"] and str(missing) in failed["error"]
    # the final metrics are the run's last evaluation record
    records = [json.loads(x) for x in (out / "runs" / ok["id"] / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "eval"][-1]
    assert ok["step"] == 3 and ok["val_loss"] == pytest.approx(last["val_loss"])
    for name in ("results.md", "results.csv", "results.jsonl", "curves.png", "final.png", "sweep.json"):
        assert (out / name).is_file(), name
    table = list(csv.DictReader((out / "results.csv").open()))
    assert [r["status"] for r in table] == ["ok", "failed"]
    assert "failed: error: data.path=" in (out / "results.md").read_text()

    # second invocation: the finished point is skipped (its run untouched), the failed one is tried again
    summary = out / "runs" / ok["id"] / "summary.json"
    before = summary.stat().st_mtime_ns
    failed_log = out / "logs" / f"{failed['id']}.log"
    failed_log.write_text("stale")
    rows = sw.run_sweep(s, out, runner="inprocess", log=logs.append)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert summary.stat().st_mtime_ns == before
    assert "no such file" in failed_log.read_text()  # rewritten by the retry
    assert any("1 of 2 points already finished, skipped" in x for x in logs)


def test_runs_of_a_changed_sweep_are_refused(tmp_path):
    from train.config import apply_overrides, get_preset

    s = sw.Sweep.make("x", "induction", ["train.steps=3"], {"model.n_layers": [1]})
    p = s.points()[0]
    run_dir = sw.run_dir_of(tmp_path, p)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(
        apply_overrides(get_preset("induction"), ["train.steps=5", "model.n_layers=1"]).to_json()
    )
    with pytest.raises(sw.SweepError, match=r"train\.steps=5 in .*config\.json, the sweep says 3"):
        sw.run_sweep(s, tmp_path)
    same = apply_overrides(get_preset("induction"), [*p.overrides(s), f"run_dir={run_dir}", "model.vocab_size=40"])
    (run_dir / "config.json").write_text(same.to_json())  # run_dir and a raised vocabulary do not count
    assert sw.stale_points(s, tmp_path, s.points()) == {}


def test_slurm_script_for_a_gpu_sweep_has_the_requested_lines(tmp_path, capsys):
    out, script = tmp_path / "sw", tmp_path / "gpu.slurm"
    args = ["--config", "induction", "--grid", "train.lr=1e-3,3e-3,1e-2", "--out", str(out), "--slurm", str(script)]
    gpu = ["--slurm-gpus", "2", "--slurm-partition", "a100", "--slurm-account", "lab42", "--slurm-mem", "64G"]
    assert (
        sw.main(args + gpu + ["--slurm-parallel", "3", "--sbatch=--qos=high", "--sbatch", "#SBATCH --exclusive"]) == 0
    )
    text = script.read_text()
    sbatch = [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH ")]
    for want in ["--array=0-2%3", "--mem=64G", "--partition=a100", "--account=lab42", "--gpus-per-task=2"]:
        assert want in sbatch, (want, sbatch)
    assert sbatch[-2:] == ["--qos=high", "--exclusive"]
    assert "JAX_PLATFORMS=cpu" not in text  # a GPU task lets jax find its GPUs
    subprocess.run(["bash", "-n", str(script)], check=True)

    cpu = tmp_path / "cpu.slurm"
    assert sw.main([*args[:-1], str(cpu)]) == 0
    assert "--gpus-per-task" not in cpu.read_text() and "JAX_PLATFORMS=cpu python" in cpu.read_text()

    capsys.readouterr()
    assert sw.main([*args, "--sbatch", "qos=high"]) == 2  # not an option: one line, no script
    assert "give one option such as --qos=high" in capsys.readouterr().err
