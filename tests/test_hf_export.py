"""train/hf_export.py: a trained run of ours written as a GPT-2 directory gives the run's own logits.

The run is tiny (a few steps) and GPT-2-shaped (biases, LayerNorm eps 1e-5). Loaded back with
model.hf.load the logits are bit-identical; with transformers installed, GPT2LMHeadModel.from_pretrained
of the export agrees within 1e-4.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import train.data as data
from model import hf
from model.config import ModelConfig
from model.transformer import Transformer
from train.config import CONFIG_FILE, RunConfig, TrainConfig, load_run_config
from train.data import DataConfig
from train.hf_export import main as export_main
from train.loop import train
from train.sample import load_run

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(vocab_size=48, max_len=16, n_layers=2, d_model=32, n_heads=4, use_bias=True, norm_eps=1e-5)
TC = TrainConfig(batch_size=8, steps=3, lr=1e-2, warmup_steps=1, decay_steps=10, eval_every=3, eval_batches=1)
TEXT = "to be, or not to be: that is the question.\n" * 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    os.environ[data.CACHE_ENV] = str(tmp / "cache")
    (tmp / "tiny.txt").write_text(TEXT, encoding="utf-8")
    cfg = RunConfig(
        name="gpt2-shaped",
        model=MODEL,
        data=DataConfig(task="text", path=str(tmp / "tiny.txt")),
        train=TC,
        run_dir=str(tmp / "run"),
    )
    train(cfg, progress=False, plots=False, log=lambda m: None)
    return tmp


def test_export_gives_the_runs_logits(run, capsys):
    assert export_main([str(run / "run"), str(run / "hf")]) == 0
    assert "wrote" in capsys.readouterr().out
    _, model, params, _ = load_run(run / "run")
    cfg, loaded = hf.load(run / "hf")
    tokens = np.random.default_rng(0).integers(0, MODEL.vocab_size, (2, MODEL.max_len)).astype(np.int32)
    ours = np.asarray(jax.jit(model.apply)({"params": params}, tokens))
    np.testing.assert_array_equal(np.asarray(jax.jit(Transformer(cfg).apply)({"params": loaded}, tokens)), ours)
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        import torch
        from transformers import GPT2LMHeadModel

        with torch.no_grad():
            theirs = GPT2LMHeadModel.from_pretrained(run / "hf").eval()(torch.as_tensor(tokens).long()).logits.numpy()
        diff = float(np.max(np.abs(theirs - ours)))
        print(f"transformers on an exported run: max |diff| = {diff:.2e}")
        assert diff < 1e-4


@pytest.mark.slow  # a real `python -m model.hf export` process: jax's import twice (it hands over to a child)
def test_export_subcommand_of_model_hf_writes_the_runs_params(run):
    """The documented command does the export (model/hf.py hands over to train.hf_export, never importing it)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "model.hf", "export", str(run / "run"), str(run / "hf-cli")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "wrote" in res.stdout, res.stderr[-2000:]
    cfg, loaded = hf.load(run / "hf-cli")
    run_cfg, _, params, _ = load_run(run / "run")
    assert cfg.n_layers == run_cfg.model.n_layers and cfg.d_model == run_cfg.model.d_model
    ours = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    theirs = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
    assert len(ours) == len(theirs)
    for path, a in ours:  # every parameter of the run's checkpoint, bit for bit
        np.testing.assert_array_equal(theirs[path], np.asarray(a), err_msg=jax.tree_util.keystr(path))


def test_export_refuses_a_run_gpt2_cannot_express(run, tmp_path, capsys):
    cfg = load_run_config(run / "run")
    rotary = dataclasses.replace(cfg, model=cfg.model.replace(positions="rotary"), run_dir=str(tmp_path / "r"))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / CONFIG_FILE).write_text(json.dumps(rotary.to_dict()))
    assert export_main([str(tmp_path / "r"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "ModelConfig.positions='rotary'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hf").exists()
