"""python -m experiments.bench.accelerator (issue 19) on the CPU: every section writes its part of the report.

The fast test runs the device and correctness sections at tiny sizes, with an implementation that does not
exist so that a failing implementation is seen to be a row, not a crash; the slow one is the whole --smoke run.
Speeds are never asserted.
"""

from __future__ import annotations

import json

import pytest

from experiments.bench import accelerator


def _report(out):
    md = (out / "report.md").read_text()
    data = json.loads((out / "report.json").read_text())
    return md, data["sections"]


def test_correctness_rows_pass_skip_or_error_and_the_report_is_written(tmp_path, capsys):
    out = tmp_path / "acc"
    argv = ["--smoke", "--out", str(out), "--sections", "device,correctness", "--impls", "xla,cudnn,nope"]
    assert accelerator.main(argv + ["--budget-s", "300"]) == 0
    md, sections = _report(out)
    assert list(sections) == ["device", "correctness"]
    assert sections["device"]["data"]["backend"] == "cpu" and sections["device"]["data"]["devices"]
    rows = sections["correctness"]["data"]
    assert {r["case"] for r in rows} == {"causal", "padded", "sliding_window", "gqa"}
    assert {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    by_impl = {i: {r["status"] for r in rows if r["impl"] == i} for i in ("xla", "cudnn", "nope")}
    assert by_impl == {"xla": {"PASS"}, "cudnn": {"n/a"}, "nope": {"ERROR"}}
    assert all("unknown attention implementation 'nope'" in r["error"] for r in rows if r["impl"] == "nope")
    assert "## correctness" in md and "| gqa | bfloat16 | xla | PASS |" in md
    assert "report:" in capsys.readouterr().out


def test_an_exhausted_budget_leaves_rows_saying_so(tmp_path):
    out = tmp_path / "acc"
    # the whole budget is the reserve: every case finds its share used up and says so
    argv = ["--smoke", "--out", str(out), "--sections", "correctness,sampling", "--budget-s", "1"]
    assert accelerator.main(argv) == 0
    _, sections = _report(out)
    for name in ("correctness", "sampling"):
        assert {r["status"] for r in sections[name]["data"]} <= {"skipped: budget", "n/a"}, name


def test_bad_arguments_exit_2(capsys):
    assert accelerator.main(["--sections", "nope"]) == 2
    assert "unknown section" in capsys.readouterr().out


@pytest.mark.slow
def test_smoke_run_exercises_every_section(tmp_path):
    out = tmp_path / "acc"
    assert accelerator.main(["--smoke", "--out", str(out), "--budget-s", "600"]) == 0
    md, sections = _report(out)
    assert list(sections) == list(accelerator.SECTIONS)
    assert not any("error" in s["data"] for s in sections.values() if isinstance(s["data"], dict)), sections
    statuses = {r["status"] for r in sections["correctness"]["data"]}
    assert "PASS" in statuses and "FAIL" not in statuses and "ERROR" not in statuses
    speed = sections["attention_speed"]["data"]
    assert any(r["status"] == "ok" and r.get("auto_choice") for r in speed)
    assert [r["status"] for r in sections["train_step"]["data"]["rows"]] == ["ok", "ok"]
    assert [r["status"] for r in sections["sampling"]["data"]] == ["ok", "ok"]
    real = sections["real_run"]["data"]
    assert real["status"] in ("finished", "interrupted: budget") and real["val_loss"] is not None
    assert "nanogpt_val_loss" in md and (out / "shakespeare-char").is_dir()
