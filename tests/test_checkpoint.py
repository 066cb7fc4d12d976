"""train/checkpoint.py: real Orbax checkpoints on disk — round trip, keep-N, asynchronous saves and donation."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import ModelConfig
from train.checkpoint import Checkpointer, tree_equal
from train.config import TrainConfig
from train.data import DataConfig, build_dataset
from train.step import TrainState, build_steps

# the tiny model and optimizer of tests/test_train_step.py (shared compilations)
T = 16
TINY = ModelConfig(vocab_size=48, max_len=T, n_layers=2, d_model=32, n_heads=4)
TC = TrainConfig(batch_size=8, steps=10, lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.1)


@pytest.fixture(scope="module")
def steps():
    return build_steps(TINY, TC, T)


def _trained(steps, n: int = 2) -> TrainState:
    """A state after ``n`` steps: non-trivial Adam moments and counts."""
    ds = build_dataset(DataConfig(task="induction", vocab_size=8), T)
    state = steps.init()
    for i in range(n):
        state, _ = steps.train_step(state, ds.batch("train", i, 8, T))
    return state


def _host(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def test_round_trip_restores_every_leaf_bit_for_bit(steps, tmp_path):
    state = _trained(steps)
    meta = {"step": 2, "data_position": 2, "config": {"name": "tiny", "nested": [1, 2.5, None]}}
    with Checkpointer(tmp_path / "ck", keep=3, async_save=False) as ck:
        assert ck.save(state, meta)
        assert not ck.save(state, meta)  # the same step twice writes nothing
    with Checkpointer(tmp_path / "ck") as ck:  # a new manager, as after a restart
        assert ck.latest_step() == 2
        restored, restored_meta = ck.restore(steps.abstract_state())
    assert isinstance(restored, TrainState)
    assert tree_equal(restored, state)
    assert restored_meta == meta
    device = jax.devices()[0]
    assert all(leaf.sharding == jax.sharding.SingleDeviceSharding(device) for leaf in jax.tree.leaves(restored))
    # the meta is plain JSON on disk; nothing is pickled
    meta_files = list((tmp_path / "ck" / "2" / "meta").glob("*"))
    assert any(json.loads(f.read_text()) == meta for f in meta_files if f.is_file())
    assert not [p for p in (tmp_path / "ck").rglob("*") if p.suffix in (".pkl", ".pickle")]


def test_keeps_only_the_newest_checkpoints(steps, tmp_path):
    state = steps.init()
    with Checkpointer(tmp_path / "ck", keep=2) as ck:
        for step in (1, 2, 3, 4):
            ck.save(state, {"step": step, "data_position": step})
        ck.wait()
        assert ck.all_steps() == [3, 4]
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if p.is_dir()) == ["3", "4"]
    with Checkpointer(tmp_path / "ck") as ck:
        assert ck.restore_meta(3) == {"step": 3, "data_position": 3}
        with pytest.raises(FileNotFoundError, match="no checkpoint at step 1"):
            ck.restore(steps.abstract_state(), 1)


def test_async_save_survives_the_next_donating_step(steps, tmp_path):
    state = _trained(steps, 1)
    expected = _host(state)
    batch = build_dataset(DataConfig(task="induction", vocab_size=8), T).batch("train", 5, 8, T)
    with Checkpointer(tmp_path / "ck", async_save=True) as ck:
        ck.save(state, {"step": 1, "data_position": 1})
        # the step donates the buffers being written; JAX copies instead where Orbax still holds them
        state, _ = steps.train_step(state, batch)
        jax.block_until_ready(state)
    with Checkpointer(tmp_path / "ck") as ck:
        restored, _ = ck.restore(steps.abstract_state())
    assert tree_equal(restored, expected)
    assert not tree_equal(restored.params, _host(state.params))


def test_restore_without_checkpoints_names_the_directory(steps, tmp_path):
    with Checkpointer(tmp_path / "empty") as ck:
        assert ck.latest_step() is None
        with pytest.raises(FileNotFoundError, match="no checkpoint in .*empty"):
            ck.restore(steps.abstract_state())


def test_tree_equal_sees_one_changed_bit():
    a = {"w": jnp.arange(4.0), "b": jnp.zeros(2)}
    b = {"w": jnp.arange(4.0).at[3].set(np.nextafter(np.float32(3), np.float32(4))), "b": jnp.zeros(2)}
    assert tree_equal(a, a) and not tree_equal(a, b)
