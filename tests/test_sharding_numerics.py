"""Every sharding strategy computes what one device computes: loss, gradients and 3 AdamW steps.

Reference: the same model, params and batch on a single device with no mesh (reference attention).
Under test: params placed by the rules (param_shardings), moments sharded like them (init_opt_state),
a batch split by the rules (train.distributed.put_batch), one train step jitted with in/out shardings on 8 CPU devices.
Tolerance 1e-5 absolute in float32 (matmuls at 'highest' precision, set in conftest). Adam divides
each gradient by its own running RMS, which magnifies last-bit differences of near-zero gradients
into parameter differences proportional to the learning rate; lr = 1e-3 keeps them well below 1e-5
while three steps still move the parameters by ~3e-3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model import sharding as sh
from model.config import get_preset
from model.transformer import Transformer, next_token_loss
from train.distributed import put_batch

ATOL = 1e-5  # float32
CFG = get_preset("tiny")  # V=64, T=32, L=2, D=32, H=4, F=128
BATCH, LENGTH, STEPS = 8, 32, 3
LR = 1e-3
MESHES = {
    "dp": sh.MeshConfig(data=8),
    "fsdp": sh.MeshConfig(data=1, fsdp=8),
    "tp": sh.MeshConfig(data=2, tensor=4),
    "sp": sh.MeshConfig(data=2, sequence=4),
    "fsdp_tp": sh.MeshConfig(data=2, fsdp=2, tensor=2),  # the 2 x 2 x 2 mix
    "fsdp_sp": sh.MeshConfig(data=1, fsdp=2, sequence=4),
}
# Each strategy costs a compile of a sharded train step (seconds on CPU); the second mix runs with -m slow.
STRATEGY_PARAMS = [*MESHES][:-1] + [pytest.param("fsdp_sp", marks=pytest.mark.slow)]


def make_step(model, optimizer):
    def step(params, opt_state, inputs, targets):
        def loss_fn(p):
            return next_token_loss(model.apply({"params": p}, inputs), targets)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    return step


def batch():
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, CFG.vocab_size, (BATCH, LENGTH)).astype(np.int32)
    return {"inputs": inputs, "targets": np.roll(inputs, -1, axis=1)}


def run(step, params, opt_state, data):
    losses, first_grads = [], None
    for _ in range(STEPS):
        params, opt_state, loss, grads = step(params, opt_state, data["inputs"], data["targets"])
        losses.append(float(loss))
        first_grads = grads if first_grads is None else first_grads
    return params, losses, first_grads


@pytest.fixture(scope="module")
def reference():
    """Single device, no mesh: initial params, per-step losses, first gradients, params after 3 steps."""
    model, optimizer = Transformer(CFG), optax.adamw(LR)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((BATCH, LENGTH), jnp.int32))["params"]
    final, losses, grads = run(jax.jit(make_step(model, optimizer)), params, optimizer.init(params), batch())
    return params, losses, grads, final


def assert_trees_close(actual, expected, what):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=ATOL, rtol=0, err_msg=f"{what} {path}")


@pytest.mark.parametrize("strategy", STRATEGY_PARAMS)
def test_strategy_matches_single_device(strategy, reference):
    ref_params, ref_losses, ref_grads, ref_final = reference
    mesh, rules = sh.make_mesh(MESHES[strategy]), sh.get_rules(strategy)
    model = Transformer(CFG.replace(attention_impl="ring") if "sp" in strategy else CFG)
    optimizer = optax.adamw(LR)
    with sh.use_mesh(mesh, rules):
        # from host copies: the step donates its inputs, and the reference's buffers must survive
        params = jax.device_put(jax.tree.map(np.asarray, ref_params), sh.param_shardings(mesh, ref_params, rules))
        opt_state = sh.init_opt_state(optimizer, params, mesh, rules)
        data = put_batch(batch(), mesh, rules)
        p_sh = jax.tree.map(lambda x: x.sharding, params)
        o_sh = jax.tree.map(lambda x: x.sharding, opt_state)
        b_sh = sh.batch_sharding(mesh, rules)
        step = jax.jit(
            make_step(model, optimizer),
            in_shardings=(p_sh, o_sh, b_sh, b_sh),
            out_shardings=(p_sh, o_sh, None, p_sh),
            donate_argnums=(0, 1),
        )
        final, losses, grads = run(step, params, opt_state, data)
    np.testing.assert_allclose(losses, ref_losses, atol=ATOL, rtol=0)
    assert_trees_close(grads, ref_grads, "grad")
    assert_trees_close(final, ref_final, "params after 3 AdamW steps")
    expected = sh.param_shardings(mesh, params, rules)
    assert all(
        a.sharding.is_equivalent_to(b, a.ndim)
        for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(expected), strict=True)
    )


def test_fsdp_params_and_adam_state_are_born_sharded_an_eighth_per_device(reference):
    """init_params never materialises the model on one device and gives the unsharded init's values."""
    model, optimizer = Transformer(CFG), optax.adamw(LR)
    mesh, rules = sh.make_mesh(MESHES["fsdp"]), sh.get_rules("fsdp")
    params = sh.init_params(model, jax.random.key(0), jnp.zeros((BATCH, LENGTH), jnp.int32), mesh, rules)
    assert_trees_close(params, reference[0], "init")
    usage = sh.bytes_per_device(params, sh.init_opt_state(optimizer, params, mesh, rules))
    ref_params = reference[0]
    single_device_bytes = sum(x.nbytes for x in jax.tree.leaves((ref_params, optimizer.init(ref_params))))
    assert usage["total"] == single_device_bytes
    assert len(usage["per_device"]) == 8
    assert usage["max_per_device"] <= single_device_bytes / 6, usage


def test_pmap_of_the_pure_forward_still_works(reference):
    """Users who pmap model.apply (params replicated, batch split over 8 devices) get the unmapped logits."""
    model, params = Transformer(CFG), reference[0]
    tokens = jnp.asarray(batch()["inputs"])
    per_device = tokens.reshape(jax.device_count(), BATCH // jax.device_count(), LENGTH)
    logits = jax.pmap(lambda p, x: model.apply({"params": p}, x), in_axes=(None, 0))(params, per_device)
    expected = jax.jit(model.apply)({"params": params}, tokens)
    np.testing.assert_allclose(np.asarray(logits).reshape(expected.shape), np.asarray(expected), atol=ATOL, rtol=0)
