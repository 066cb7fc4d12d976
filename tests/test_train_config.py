"""train/config.py: presets, JSON round trip, dotted overrides parsed by field type (never eval)."""

from __future__ import annotations

import json

import pytest

from model.config import get_preset as get_model_preset
from train.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    TrainConfig,
    apply_overrides,
    get_preset,
    goal_met,
    parse_goal,
)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = get_preset(name)
    assert cfg.name == name
    assert RunConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_shakespeare_presets_match_nanogpt():
    cpu = get_preset("shakespeare-char-cpu")
    m, t = cpu.model, cpu.train
    assert (m.max_len, m.n_layers, m.n_heads, m.d_model, m.dropout, m.use_bias) == (64, 4, 4, 128, 0.0, False)
    assert (t.batch_size, t.steps, t.lr, t.min_lr, t.decay_steps, t.warmup_steps) == (12, 2000, 1e-3, 1e-4, 2000, 100)
    assert (t.beta1, t.beta2, t.eps, t.weight_decay, t.grad_clip) == (0.9, 0.99, 1e-8, 0.1, 1.0)
    assert (t.eval_every, t.eval_batches) == (250, 20)
    big = get_preset("shakespeare-char")
    assert big.model == get_model_preset("shakespeare-char")
    assert (big.model.n_layers, big.model.n_heads, big.model.d_model, big.model.max_len) == (6, 6, 384, 256)
    assert (big.train.batch_size, big.train.steps, big.train.decay_steps, big.train.eval_batches) == (
        64,
        5000,
        5000,
        200,
    )
    assert big.model.dropout == 0.2
    assert "nanoGPT" in (RunConfig.__doc__ or "")


def test_overrides_parse_by_field_type():
    cfg = apply_overrides(
        get_preset("shakespeare-char-cpu"),
        [
            "model.n_layers=2",  # int
            "train.lr=3e-4",  # float
            "train.min_lr=0",  # an int is a valid float
            "model.use_bias=true",  # bool
            "train.grad_clip=none",  # optional
            "data.path=foo.txt",  # str
            "model.positions='rotary'",  # quotes are removed
            "run_dir=runs/x",  # top level
            "goal=val_loss<=1.5",
        ],
    )
    assert cfg.model.n_layers == 2 and isinstance(cfg.model.n_layers, int)
    assert cfg.train.lr == 3e-4 and cfg.train.min_lr == 0.0 and isinstance(cfg.train.min_lr, float)
    assert cfg.model.use_bias is True and cfg.train.grad_clip is None
    assert cfg.data.path == "foo.txt" and cfg.model.positions == "rotary" and cfg.run_dir == "runs/x"
    assert parse_goal(cfg.goal) == ("val_loss", "<=", 1.5)


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.n_layer=2", "model.n_layer"),  # unknown field
        ("optim.lr=1", "optim.lr"),  # unknown section
        ("lr=1", "'lr'"),  # unknown top-level key
        ("train.steps=1.5", "train.steps"),  # float for an int
        ("train.steps=abc", "train.steps"),
        ("model.n_layers=true", "model.n_layers"),  # a bool is not an int
        ("model.use_bias=yes", "model.use_bias"),
        ("train.lr=__import__('os')", "train.lr"),  # never evaluated
        ("model.n_layers=0", "n_layers"),  # the section's own validation
        ("train.batch_size=10", "grad_accum"),  # cross-field check: 10 % grad_accum (3) != 0 below
        ("train.steps", "KEY=VALUE"),
    ],
)
def test_bad_overrides_raise_one_line_naming_the_key(override, named):
    base = get_preset("induction")
    if "batch_size" in override:
        base = apply_overrides(base, ["train.grad_accum=4", "train.batch_size=12"])
    with pytest.raises(ConfigError) as e:
        apply_overrides(base, [override])
    assert named in str(e.value) and "\n" not in str(e.value)


def test_config_checks():
    with pytest.raises(ConfigError, match="seq_len=128 exceeds model.max_len=64"):
        apply_overrides(get_preset("induction"), ["train.seq_len=128"])
    with pytest.raises(ConfigError, match="goal"):
        apply_overrides(get_preset("induction"), ["goal=accuracy is high"])
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="TrainConfig has no field 'lrr'"):
        RunConfig.from_dict({**get_preset("induction").to_dict(), "train": {"lrr": 1.0}})
    assert TrainConfig(batch_size=12, grad_accum=3).micro_batch_size == 4


def test_goal():
    assert goal_met("val_accuracy >= 0.9", {"val_accuracy": 0.95}) is True
    assert goal_met("val_loss <= 1.89", {"val_loss": 1.9}) is False
    assert goal_met(None, {"val_loss": 1.0}) is None
    with pytest.raises(ConfigError, match="no metric 'val_acc'"):
        goal_met("val_acc >= 0.9", {"val_accuracy": 1.0})
