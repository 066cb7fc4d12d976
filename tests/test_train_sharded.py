"""The training loop on a mesh: every strategy and a resume onto another mesh continue the single-device curve.

Real 8-device CPU meshes (tests/conftest.py), real Orbax checkpoints on tmp_path, the real train step.
Tolerance: fp32 losses agree within 1e-5 (sharded reductions sum in another order than one device).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

import train.data as data
from model.config import ModelConfig
from model.sharding import MeshConfig
from train.config import ConfigError, RunConfig, TrainConfig, apply_overrides
from train.data import DataConfig
from train.distributed import sharding_plan
from train.loop import train
from train.report import read_metrics
from train.step import state_shapes

T = 16
# 8 heads and a vocabulary of 48 so that 8-way tensor parallelism divides both; width 32 for 8-way FSDP
MODEL = ModelConfig(vocab_size=48, max_len=T, n_layers=2, d_model=32, n_heads=8, dtype="float32")
# decay_steps fixed: the 3-step runs follow the same learning-rate schedule as the 6-step reference
TC = TrainConfig(
    batch_size=8,
    steps=3,
    lr=1e-2,
    warmup_steps=1,
    decay_steps=6,
    log_every=1,
    eval_every=100,
    eval_batches=1,
    checkpoint_every=100,
)
TOL = 1e-5  # fp32


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


ONE = MeshConfig(data=1)


def config(run_dir: Path, mesh: MeshConfig = ONE, sharding: str = "dp", **train_changes) -> RunConfig:
    model = MODEL.replace(attention_impl="ring") if "sp" in sharding else MODEL
    return RunConfig(
        name="tiny",
        model=model,
        data=DataConfig(task="induction", vocab_size=8),
        train=dataclasses.replace(TC, **train_changes),
        run_dir=str(run_dir),
        mesh=mesh,
        sharding=sharding,
    )


def quiet(msg: str) -> None:
    pass


def losses(run_dir: Path) -> np.ndarray:
    return np.array([r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-device run (no mesh at all: the fast path)."""
    d = tmp_path_factory.mktemp("ref") / "run"
    train(config(d, steps=6), progress=False, plots=False, log=quiet)
    return losses(d)


STRATEGIES = [
    ("dp", MeshConfig(data=8)),
    ("fsdp", MeshConfig(data=1, fsdp=8)),
    ("tp", MeshConfig(data=1, tensor=8)),
    ("sp", MeshConfig(data=1, sequence=8)),
    ("fsdp_tp", MeshConfig(data=2, fsdp=2, tensor=2)),
]


@pytest.mark.slow  # ~40 s each on 2 busy cores (8-device compilation)
@pytest.mark.parametrize("sharding,mesh", STRATEGIES, ids=[s for s, _ in STRATEGIES])
def test_every_strategy_gives_the_single_device_losses(sharding, mesh, tmp_path, reference):
    messages: list[str] = []
    train(config(tmp_path / "run", mesh, sharding), progress=False, plots=False, log=messages.append)
    assert any(m.startswith("mesh ") and "over 8 devices" in m for m in messages), messages
    got = losses(tmp_path / "run")
    assert got.shape == (3,)
    np.testing.assert_allclose(got, reference[:3], rtol=0, atol=TOL)


def test_fsdp_state_is_split_over_the_devices():
    cfg = config(Path("unused"), MeshConfig(data=1, fsdp=8), "fsdp")
    plan = sharding_plan(cfg)
    params = plan.state_sharding.params
    # each parameter's sharding says how much of it one device holds: the matrices are split 8 ways
    shapes = state_shapes(cfg.model, cfg.train, cfg.seq_len)
    total = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes.params))
    per_device = sum(
        int(np.prod(sh.shard_shape(s.shape)))
        for s, sh in zip(jax.tree.leaves(shapes.params), jax.tree.leaves(params), strict=True)
    )
    assert per_device < total / 4  # only the norms' scales are replicated


@pytest.mark.slow  # three compilations on three meshes
def test_resume_on_another_mesh_continues_the_curve(tmp_path, reference):
    """6 steps: 3 on 8 devices with FSDP, 2 more on 2 devices data-parallel, the last on 1 device."""
    d = tmp_path / "run"
    train(config(d, MeshConfig(data=1, fsdp=8), "fsdp", steps=6), progress=False, plots=False, log=quiet, stop_after=3)
    train(
        config(d, MeshConfig(data=2), "dp", steps=6), resume=True, progress=False, plots=False, log=quiet, stop_after=5
    )
    r = train(config(d, steps=6), resume=True, progress=False, plots=False, log=quiet)
    assert r.step == 6
    got = losses(d)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, reference, rtol=0, atol=TOL)


def test_mesh_overrides_type_check_and_bad_meshes_fail_before_compiling(tmp_path):
    cfg = apply_overrides(config(tmp_path / "x"), ["mesh.fsdp=8", "mesh.data=1", "sharding=fsdp"])
    assert cfg.mesh == MeshConfig(data=1, fsdp=8) and cfg.sharding == "fsdp"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="mesh.fsdp"):
        apply_overrides(cfg, ["mesh.fsdp=two"])
    with pytest.raises(ConfigError, match="sharding='zero'"):
        apply_overrides(cfg, ["sharding=zero"])
    with pytest.raises(ConfigError, match="multiply to 16 but there are 8 devices"):
        train(apply_overrides(cfg, ["mesh.fsdp=16"]), progress=False, log=quiet)
    with pytest.raises(ConfigError, match="size 32.* not divisible by mesh axis 'fsdp' of size 3"):
        train(apply_overrides(cfg, ["mesh.fsdp=3"]), progress=False, log=quiet)  # 3 of the 8 devices
    with pytest.raises(ConfigError, match="unused|map no logical axis"):
        train(apply_overrides(cfg, ["mesh.fsdp=1", "mesh.tensor=8"]), progress=False, log=quiet)
