"""train.profile=START:STOP (train/report.py StepProfiler): a jax.profiler trace of exactly those steps of the main job."""

from __future__ import annotations

import gzip
import json

import pytest

from train.cli import main
from train.config import ConfigError, apply_overrides, get_preset
from train.loop import train

TINY = ["train.steps=5", "train.batch_size=4", "train.eval_every=5", "train.eval_batches=1", "train.log_every=1"]


def test_a_trace_of_three_steps_of_the_main_job(tmp_path, capsys):
    cfg = apply_overrides(get_preset("induction"), [*TINY, "train.profile=2:4", f"run_dir={tmp_path / 'r'}"])
    result = train(cfg, progress=True, plots=False)
    trace = result.files["profile"]
    assert trace.parent == tmp_path / "r" / "profile" / "plugins" / "profile"  # where TensorBoard's plugin looks
    (xplane,) = trace.glob("*.xplane.pb")
    assert xplane.stat().st_size > 10_000  # the profile plugin's file
    events = json.loads(gzip.decompress((trace / "perfetto_trace.json.gz").read_bytes()))["traceEvents"]
    steps = [int(e["args"]["step_num"]) for e in events if e.get("name") == "train" and "step_num" in e.get("args", {})]
    assert steps == [2, 3, 4]  # the marked steps: exactly the window
    modules = {e["args"].get("hlo_module") for e in events if "args" in e}
    assert "jit_step" in modules  # the compiled train step's device work is in it (train/step.py)
    out = capsys.readouterr()
    assert f"profiler trace of train.profile=2:4: {trace}" in out.out
    assert "compiling (the first step)" in out.err  # the progress bar, before the first step ended
    assert "step/s" in out.err.split("compiling")[-1] or "s/step" in out.err.split("compiling")[-1]


@pytest.mark.parametrize("value", ["3", "a:b", "0:2", "4:2", "2:99", "2-4"])
def test_bad_windows_are_one_line(value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--no-progress", *TINY, f"train.profile={value}", "run_dir=r"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: train.profile={value!r}: write it as START:STOP"), line
    assert not (tmp_path / "r").exists()


def test_the_window_parses_and_may_change_on_resume():
    cfg = get_preset("induction")
    assert cfg.train.profile_steps is None
    assert apply_overrides(cfg, ["train.profile=10:12"]).train.profile_steps == (10, 12)
    assert apply_overrides(cfg, ["train.profile= 7 : 7 "]).train.profile_steps == (7, 7)
    with pytest.raises(ConfigError, match="1 <= START <= STOP <= train.steps=1000"):
        apply_overrides(cfg, ["train.profile=1:1001"])
    from train.rundir import RESUMABLE_CHANGES

    assert "train.profile" in RESUMABLE_CHANGES  # a trace changes nothing the run computes
