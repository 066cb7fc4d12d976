"""Config files (train/config_file.py): JSON and TOML give the presets' configs, a run's config.json reruns it."""

from __future__ import annotations

import json

import pytest

from train.cli import main
from train.config import apply_overrides, get_preset
from train.config_file import load_config_file

TINY = ["train.steps=4", "train.batch_size=4", "train.eval_every=2", "train.eval_batches=1", "train.log_every=1"]


def test_toml_and_json_equal_the_preset_with_overrides(tmp_path):
    want = apply_overrides(get_preset("mqar"), ["model.n_layers=1", "train.lr=0.003", "goal=val_accuracy >= 0.5"])
    (tmp_path / "c.toml").write_text(
        'preset = "mqar"\ngoal = "val_accuracy >= 0.5"\n[model]\nn_layers = 1\n[train]\nlr = 3e-3\n'
    )
    (tmp_path / "c.json").write_text(
        json.dumps({"preset": "mqar", "goal": "val_accuracy >= 0.5", "model": {"n_layers": 1}, "train": {"lr": 3e-3}})
    )
    assert load_config_file(str(tmp_path / "c.toml")) == want
    assert load_config_file(str(tmp_path / "c.json")) == want


def test_dump_config_prints_what_the_file_loads_back(tmp_path, capsys):
    assert main(["--config", "shakespeare-char-cpu", "model.n_layers=2", "sharding=fsdp", "--dump-config"]) == 0
    dumped = capsys.readouterr().out
    (tmp_path / "dumped.json").write_text(dumped)
    want = apply_overrides(get_preset("shakespeare-char-cpu"), ["model.n_layers=2", "sharding=fsdp"])
    assert load_config_file(str(tmp_path / "dumped.json")) == want
    assert not (tmp_path / "runs").exists()


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keep = ("step", "loss", "train_loss", "val_loss", "val_accuracy", "grad_norm", "lr")
    return [{k: r[k] for k in keep if k in r} for r in records]


@pytest.mark.parametrize("overrides", [[], ["train.lr=0.02"]])
def test_a_runs_config_json_reruns_it_bit_for_bit(tmp_path, monkeypatch, overrides):
    monkeypatch.chdir(tmp_path)
    assert main(["--no-progress", *TINY, "run_dir=a"]) == 0
    assert main(["--no-progress", "--config", "a/config.json", "run_dir=b", *overrides]) == 0
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) >= 4 and any("val_loss" in r for r in a)
    if overrides:  # the command line still wins over the file
        assert json.loads((tmp_path / "b" / "config.json").read_text())["train"]["lr"] == 0.02
        assert a != b
    else:
        assert a == b
        saved = [json.loads((tmp_path / d / "config.json").read_text()) for d in "ab"]
        assert {**saved[0], "run_dir": None} == {**saved[1], "run_dir": None}
