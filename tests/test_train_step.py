"""train/step.py: one step per task, gradient accumulation, weight-decay mask, schedule, shardings.

Tolerances (float32 on CPU): the masked loss against an independent NumPy cross-entropy 1e-5; gradients
of 1 vs 4 microbatches rtol 1e-5 / atol 1e-7 (only the order of float additions differs); parameters
after one AdamW step 1e-6 (lr 1e-3, so 1e-3 of the update size).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import train.data as data
from model.config import ModelConfig
from model.transformer import Transformer
from train.config import TrainConfig
from train.data import DataConfig, build_dataset
from train.step import (
    TrainState,
    build_steps,
    decay_mask,
    loss_and_grads,
    make_schedule,
    make_train_step,
)

T = 16
V = 48  # one vocabulary for every task (the tiny text file has fewer characters), so one compile serves all


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


# The tiny model and optimizer of these tests; tests/test_train_loop.py, test_checkpoint.py and
# test_sample.py use the same ones, so train.step.build_steps's cache shares the compilations.
TINY = ModelConfig(vocab_size=V, max_len=T, n_layers=2, d_model=32, n_heads=4)
TC = TrainConfig(batch_size=8, steps=10, lr=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.1)


def data_config(task: str, tmp_path) -> DataConfig:
    if task == "text":
        path = tmp_path / "tiny.txt"
        path.write_text("to be, or not to be: that is the question.\n" * 40, encoding="utf-8")
        return DataConfig(task="text", path=str(path))
    if task == "mqar":
        return DataConfig(task="mqar", vocab_size=16, n_pairs=2)
    return DataConfig(task=task, vocab_size=8)


def host(tree):
    """A NumPy copy (np.asarray of a CPU array is a view that would pin the buffer and block donation)."""
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


class Setup:
    """The compiled model, optimizer and steps (compiles dominate these tests' time), and a fresh state."""

    def __init__(self):
        self.steps = build_steps(TINY, TC, T)
        self.model, self.tx, self.schedule, self.tc = self.steps.model, self.steps.tx, self.steps.schedule, TC
        self.train_step, self.eval_step = self.steps.train_step, self.steps.eval_step
        self.state0 = self.steps.init()  # never passed to a donating step
        self._copy = jax.jit(lambda s: jax.tree.map(jnp.copy, s))  # fresh device buffers, which a step may donate

    def fresh_state(self) -> TrainState:
        return self._copy(self.state0)


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


def _mean_loss(setup, params, batch) -> float:
    sums = host(setup.eval_step(params, batch))
    return float(sums["loss_sum"] / sums["count"])


@pytest.mark.parametrize("task", ["text", "induction", "mqar", "copy"])
def test_one_step_lowers_the_loss_and_moves_every_parameter(task, tmp_path, setup):
    ds = build_dataset(data_config(task, tmp_path), T)
    assert ds.vocab_size <= V
    state = setup.fresh_state()
    before = host(state.params)
    batch = ds.batch("train", 0, 8, T)
    loss0 = _mean_loss(setup, state.params, batch)
    donated = jax.tree.leaves(state.params)[0]

    state, metrics = setup.train_step(state, batch)
    m = host(metrics)
    loss1 = _mean_loss(setup, state.params, batch)
    assert donated.is_deleted(), "the step should donate (reuse) the state's buffers"
    assert int(state.step) == 1
    np.testing.assert_allclose(m["loss"], loss0, rtol=1e-5)  # the step reports the loss before its update
    assert loss1 < loss0 - 1e-3, (loss0, loss1)
    assert m["lr"] == pytest.approx(1e-2) and m["grad_norm"] > 0 and 0 <= m["accuracy"] <= 1
    after = host(state.params)
    for path, a in jax.tree_util.tree_leaves_with_path(before):
        b = after
        for k in path:
            b = b[k.key]
        assert not np.array_equal(a, b), f"{jax.tree_util.keystr(path)} did not change"


def _numpy_masked_loss(logits, targets, mask) -> float:
    """Cross-entropy in float64 NumPy: log-sum-exp minus the target's logit, averaged over masked positions."""
    z = logits.astype(np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    nll = lse - np.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    return float((nll * mask).sum() / mask.sum())


def test_gradient_accumulation_equals_the_big_batch(setup):
    model = setup.model
    ds = build_dataset(DataConfig(task="induction", vocab_size=8), T)
    batch = ds.batch("train", 3, 8, T)
    # a loss mask with a different number of counted positions in every row, so that averaging
    # per microbatch (wrong) and per token (right) give different answers
    rng = np.random.default_rng(0)
    batch["loss_mask"] = (rng.random((8, T)) < np.linspace(0.1, 0.9, 8)[:, None]).astype(np.float32)
    params = setup.fresh_state().params
    key = jax.random.key(2)

    loss1, acc1, g1 = jax.jit(lambda p, b: loss_and_grads(model, p, b, key, 1))(params, batch)
    loss4, acc4, g4 = jax.jit(lambda p, b: loss_and_grads(model, p, b, key, 4))(params, batch)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, batch["inputs"]))
    np.testing.assert_allclose(float(loss1), _numpy_masked_loss(logits, batch["targets"], batch["loss_mask"]), 1e-5)
    np.testing.assert_allclose(float(loss4), float(loss1), rtol=1e-6)
    assert float(acc4) == float(acc1)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)

    # the full step: one AdamW update from 4 microbatches equals the one from the whole batch. Adam's
    # first update is lr * g / (|g| + eps): where |g| is within float noise of 0 its sign is noise, so
    # those entries (|g| < 1e-5, 100x the gradients' agreement above) are left out of the comparison.
    tc4 = dataclasses.replace(setup.tc, grad_accum=4)
    one, m1 = setup.train_step(setup.fresh_state(), batch)
    four, m4 = make_train_step(model, setup.tx, tc4, setup.schedule)(setup.fresh_state(), batch)
    np.testing.assert_allclose(float(m4["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    leaves = zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params), jax.tree.leaves(g1), strict=True)
    for a, b, g in leaves:
        sure = np.abs(np.asarray(g)) > 1e-5
        assert sure.mean() > 0.5
        np.testing.assert_allclose(np.asarray(b)[sure], np.asarray(a)[sure], atol=1e-6)  # lr 1e-2


@pytest.mark.parametrize("scan_layers", [True, False])
def test_weight_decay_on_matrices_and_embeddings_only(scan_layers):
    cfg = ModelConfig(
        vocab_size=11, max_len=T, n_layers=3, d_model=16, n_heads=2, use_bias=True, tie_embeddings=False
    ).replace(scan_layers=scan_layers)
    model = Transformer(cfg)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, T), jnp.int32)))["params"]
    mask = decay_mask(params)
    matrices = {"query", "key", "value_down", "value_up", "fc_in", "fc_out", "embedding", "pos_embed", "unembed"}
    seen = set()
    for path, decayed in jax.tree_util.tree_leaves_with_path(mask):
        name = path[-1].key
        seen.add(name)
        assert decayed == (name in matrices), jax.tree_util.keystr(path)
    assert {"query_bias", "fc_out_bias", "scale", "bias", "embedding", "value_up"} <= seen


def test_schedule_is_nanogpts():
    tc = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, decay_steps=2000, steps=2000)

    def nanogpt_lr(it):  # nanoGPT train.py get_lr, transcribed
        if it < tc.warmup_steps:
            return tc.lr * (it + 1) / (tc.warmup_steps + 1)
        if it > tc.decay_steps:
            return tc.min_lr
        ratio = (it - tc.warmup_steps) / (tc.decay_steps - tc.warmup_steps)
        return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (tc.lr - tc.min_lr)

    schedule = make_schedule(tc)
    steps = np.arange(0, 2100, 7)
    got = np.asarray(jax.vmap(schedule)(jnp.asarray(steps)))
    np.testing.assert_allclose(got, [nanogpt_lr(int(s)) for s in steps], rtol=2e-6)
    constant = make_schedule(TrainConfig(schedule="constant", warmup_steps=0, lr=3e-4))
    assert float(constant(1234)) == pytest.approx(3e-4)


def test_sharded_step_matches_single_device_and_keeps_shardings(setup):
    devices = np.array(jax.devices())
    assert devices.size == 8, "tests/conftest.py should give 8 CPU devices"
    mesh = jax.sharding.Mesh(devices, ("data",))
    replicated, by_batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    model, tx, tc = setup.model, setup.tx, setup.tc
    batch = build_dataset(DataConfig(task="induction", vocab_size=8), T).batch("train", 0, 8, T)
    plain, m_plain = setup.train_step(setup.fresh_state(), batch)

    sharded_steps = build_steps(TINY, tc, T, state_sharding=replicated, batch_sharding=by_batch)
    assert sharded_steps.model is model and sharded_steps.tx is tx  # built once per configs, sharded or not
    sharded = sharded_steps.init()  # born replicated on 8 devices
    assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(sharded))
    step = sharded_steps.train_step
    sharded, m_sharded = step(sharded, jax.device_put(batch, by_batch))
    assert isinstance(sharded, TrainState)
    assert all(leaf.sharding == replicated for leaf in jax.tree.leaves(sharded))
    np.testing.assert_allclose(float(m_sharded["loss"]), float(m_plain["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(sharded.params), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
