"""model/sharding.py: rules tables, golden PartitionSpecs per strategy, mesh construction and its errors.

Nothing here runs a model; the numerical equivalence of the strategies is in test_sharding_numerics.py.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from model import sharding as sh
from model.config import get_preset
from model.transformer import Transformer

# A small config with every kind of parameter: biases and an untied unembedding.
CFG = get_preset("tiny").replace(use_bias=True, tie_embeddings=False)  # V=64, T=32, L=2, D=32, H=4, Dh=8, F=128
_ = None
F, T = "fsdp", "tensor"
STRATEGIES = ("dp", "fsdp", "tp", "sp", "fsdp_tp", "fsdp_sp")

# The golden table: each parameter's PartitionSpec under each strategy, columns in the order of STRATEGIES.
# Scanned block parameters lead with the (never sharded) layer axis. FSDP splits every matrix along the
# model width D; tensor parallelism splits heads, MLP columns and the vocabulary, and value_up / fc_out
# by rows (their contraction is the all-reduce); sequence parallelism leaves parameters replicated.
GOLDEN: dict[str, tuple[P, ...]] = {
    #                                   dp                fsdp              tp                sp                fsdp_tp           fsdp_sp
    "blocks/attention/query": (
        P(_, _, _, _),
        P(_, F, _, _),
        P(_, _, T, _),
        P(_, _, _, _),
        P(_, F, T, _),
        P(_, F, _, _),
    ),
    "blocks/attention/key": (P(_, _, _, _), P(_, F, _, _), P(_, _, T, _), P(_, _, _, _), P(_, F, T, _), P(_, F, _, _)),
    "blocks/attention/value_down": (
        P(_, _, _, _),
        P(_, F, _, _),
        P(_, _, T, _),
        P(_, _, _, _),
        P(_, F, T, _),
        P(_, F, _, _),
    ),
    "blocks/attention/value_up": (
        P(_, _, _, _),
        P(_, _, _, F),
        P(_, T, _, _),
        P(_, _, _, _),
        P(_, T, _, F),
        P(_, _, _, F),
    ),
    "blocks/attention/query_bias": (P(_, _, _), P(_, _, _), P(_, T, _), P(_, _, _), P(_, T, _), P(_, _, _)),
    "blocks/attention/key_bias": (P(_, _, _), P(_, _, _), P(_, T, _), P(_, _, _), P(_, T, _), P(_, _, _)),
    "blocks/attention/value_down_bias": (P(_, _, _), P(_, _, _), P(_, T, _), P(_, _, _), P(_, T, _), P(_, _, _)),
    "blocks/attention/value_up_bias": (P(_, _), P(_, F), P(_, _), P(_, _), P(_, F), P(_, F)),
    "blocks/mlp/fc_in": (P(_, _, _), P(_, F, _), P(_, _, T), P(_, _, _), P(_, F, T), P(_, F, _)),
    "blocks/mlp/fc_in_bias": (P(_, _), P(_, _), P(_, T), P(_, _), P(_, T), P(_, _)),
    "blocks/mlp/fc_out": (P(_, _, _), P(_, _, F), P(_, T, _), P(_, _, _), P(_, T, F), P(_, _, F)),
    "blocks/mlp/fc_out_bias": (P(_, _), P(_, F), P(_, _), P(_, _), P(_, F), P(_, F)),
    "blocks/norm_attention/scale": (P(_, _), P(_, F), P(_, _), P(_, _), P(_, F), P(_, F)),
    "blocks/norm_attention/bias": (P(_, _), P(_, F), P(_, _), P(_, _), P(_, F), P(_, F)),
    "blocks/norm_mlp/scale": (P(_, _), P(_, F), P(_, _), P(_, _), P(_, F), P(_, F)),
    "blocks/norm_mlp/bias": (P(_, _), P(_, F), P(_, _), P(_, _), P(_, F), P(_, F)),
    "embed/embedding": (P(_, _), P(_, F), P(T, _), P(_, _), P(T, F), P(_, F)),
    "pos_embed": (P(_, _), P(_, F), P(_, _), P(_, _), P(_, F), P(_, F)),
    "norm_final/scale": (P(_), P(F), P(_), P(_), P(F), P(F)),
    "norm_final/bias": (P(_), P(F), P(_), P(_), P(F), P(F)),
    "unembed": (P(_, _), P(F, _), P(_, T), P(_, _), P(F, T), P(F, _)),
}
# [B, T] batches: the batch over data (and fsdp), the length over 'sequence' under sequence parallelism.
GOLDEN_BATCH = {
    "dp": P("data", _),
    "fsdp": P(("data", "fsdp"), _),
    "tp": P("data", _),
    "sp": P("data", "sequence"),
    "fsdp_tp": P(("data", "fsdp"), _),
    "fsdp_sp": P(("data", "fsdp"), "sequence"),
}
# A mesh of 8 devices for each strategy (the config's 4 heads cap the tensor axis at 4).
MESHES = {
    "dp": sh.MeshConfig(data=8),
    "fsdp": sh.MeshConfig(data=1, fsdp=8),
    "tp": sh.MeshConfig(data=2, tensor=4),
    "sp": sh.MeshConfig(data=2, sequence=4),
    "fsdp_tp": sh.MeshConfig(data=2, fsdp=2, tensor=2),
    "fsdp_sp": sh.MeshConfig(data=1, fsdp=2, sequence=4),
}


def param_shapes(cfg=CFG):
    return jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), jnp.zeros((2, 8), jnp.int32))["params"])


def flat(tree) -> dict[str, object]:
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, P))[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in leaves}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_golden_partition_specs(strategy):
    specs = flat(sh.param_partition_specs(param_shapes(), sh.get_rules(strategy)))
    column = STRATEGIES.index(strategy)
    assert sorted(specs) == sorted(GOLDEN), "the golden table must list every parameter"
    for name, row in GOLDEN.items():
        assert specs[name] == row[column], f"{strategy}: {name} is {specs[name]}, expected {row[column]}"
    assert sh.batch_sharding(sh.make_mesh(MESHES[strategy]), sh.get_rules(strategy)).spec == GOLDEN_BATCH[strategy]


def test_unrolled_blocks_have_no_layer_axis():
    specs = flat(sh.param_partition_specs(param_shapes(CFG.replace(scan_layers=False)), sh.get_rules("fsdp_tp")))
    assert specs["block_1/attention/query"] == P(F, T, _)
    assert specs["block_0/mlp/fc_out"] == P(T, F)
    with pytest.raises(ValueError, match=r"'blocks/attention/key' has shape \(2, 32, 4, 8\) but logical axes"):
        sh.param_partition_specs(param_shapes(), sh.get_rules("dp"), scanned=False)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_shards_params_on_its_mesh(strategy):
    mesh = sh.make_mesh(MESHES[strategy])
    shardings = sh.param_shardings(mesh, param_shapes(), sh.get_rules(strategy))
    for name, s in flat(shardings).items():
        assert s.mesh is mesh and s.spec == GOLDEN[name][STRATEGIES.index(strategy)]


# ---------------------------------------------------------------------------- rules errors
def test_rule_tables_are_complete_and_valid():
    for strategy in STRATEGIES:
        table = sh.validate_rules(sh.get_rules(strategy))
        assert set(table) == set(sh.LOGICAL_NAMES)
    with pytest.raises(ValueError, match="unknown sharding strategy 'zero'"):
        sh.get_rules("zero")


def test_a_logical_name_mapped_twice_raises():
    rules = sh.get_rules("dp") + (("embed", "tensor"),)
    with pytest.raises(ValueError, match="map logical axis 'embed' twice"):
        sh.param_partition_specs(param_shapes(), rules)


def test_two_dims_on_one_mesh_axis_raise():
    # heads and embed both on 'tensor': query [layers, embed, heads, head_dim] would use it twice
    rules = tuple((n, "tensor" if n in ("embed", "heads") else None) for n in sh.LOGICAL_NAMES)
    with pytest.raises(
        ValueError, match=r"parameter 'blocks/attention/\w+': logical axes 'embed' and 'heads' both map"
    ):
        sh.param_partition_specs(param_shapes(), rules)
    with pytest.raises(ValueError, match="'batch' and 'length' both map to mesh axis 'data'"):
        sh.logical_to_spec(("batch", "length"), sh.RULES["dp"][:1] + (("length", "data"),) + sh.RULES["dp"][2:])


def test_missing_unknown_and_unmatched_names_raise():
    without_vocab = tuple(r for r in sh.get_rules("tp") if r[0] != "vocab")
    with pytest.raises(ValueError, match=r"no mesh axes for logical axis 'vocab': add \('vocab', None\)"):
        sh.validate_rules(without_vocab)
    with pytest.raises(ValueError, match="unknown logical axis 'hidden'"):
        sh.validate_rules(sh.get_rules("dp") + (("hidden", None),))
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        sh.validate_rules(tuple((n, "model" if n == "mlp" else a) for n, a in sh.get_rules("dp")))
    with pytest.raises(ValueError, match="logical axis 'hidden' has no sharding rule"):
        sh.logical_to_spec(("batch", "hidden"), sh.get_rules("dp"))
    with pytest.raises(ValueError, match="parameter 'adapter/lora_a' has no logical axes: add 'lora_a'"):
        sh.param_partition_specs({"adapter": {"lora_a": jnp.zeros((4, 4))}}, sh.get_rules("dp"))


# ---------------------------------------------------------------------------- mesh errors
def test_mesh_config_resolves_the_rest():
    assert sh.MeshConfig(data=-1, tensor=2).sizes(8) == {"data": 4, "fsdp": 1, "sequence": 1, "tensor": 2}
    mesh = sh.make_mesh(sh.MeshConfig(data=2, fsdp=2, tensor=2))
    assert mesh.axis_names == ("data", "fsdp", "sequence", "tensor") and mesh.devices.shape == (2, 2, 1, 2)
    with pytest.raises(ValueError, match="only one axis may be -1"):
        sh.MeshConfig(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match=r"MeshConfig.tensor=0: must be a positive int"):
        sh.MeshConfig(tensor=0)


@pytest.mark.parametrize(
    "mesh_cfg,message",
    [
        (sh.MeshConfig(data=2, fsdp=2), "multiply to 4 but there are 8 devices"),
        (sh.MeshConfig(data=-1, tensor=3), "use 3 devices, which does not divide the 8 devices"),
    ],
)
def test_bad_mesh_products_raise(mesh_cfg, message):
    with pytest.raises(ValueError, match=message):
        sh.make_mesh(mesh_cfg)


def test_an_axis_that_does_not_divide_a_dimension_raises_before_compiling(caplog):
    cfg = get_preset("tiny")
    model = Transformer(cfg)
    mesh = sh.make_mesh(sh.MeshConfig(data=1, tensor=8))  # 8 does not divide the 4 heads
    tokens, rng = jnp.zeros((8, 32), jnp.int32), jax.random.key(0)
    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        with pytest.raises(
            ValueError,
            match=r"parameter 'blocks/attention/key' dimension 2 \(size 4\) is not divisible by mesh axis 'tensor' of size 8",
        ):
            sh.init_params(model, rng, tokens, mesh, sh.get_rules("tp"))
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()], "raised only after compiling"


def test_an_idle_mesh_axis_raises():
    with pytest.raises(ValueError, match="mesh axis 'fsdp' has 8 devices but the sharding rules map no logical axis"):
        sh.param_shardings(sh.make_mesh(sh.MeshConfig(data=1, fsdp=8)), param_shapes(), sh.get_rules("dp"))


# ---------------------------------------------------------------------------- state and activations
def test_optimizer_moments_shard_like_their_params():
    import optax

    mesh = sh.make_mesh(MESHES["fsdp_tp"])
    rules = sh.get_rules("fsdp_tp")
    shapes = param_shapes()
    state = jax.eval_shape(optax.adamw(1e-3).init, shapes)
    shardings = sh.state_shardings(mesh, state, shapes, rules)
    adam = shardings[0]  # ScaleByAdamState(count, mu, nu)
    expected = flat(sh.param_shardings(mesh, shapes, rules))
    assert flat(adam.mu) == expected and flat(adam.nu) == expected
    assert adam.count.spec == P()


def test_logical_constraint_applies_only_inside_use_mesh():
    mesh = sh.make_mesh(MESHES["sp"])
    x = jnp.ones((4, 32, 16))
    fn = jax.jit(lambda x: sh.with_logical_constraint(x * 2, ("batch", "length", "act_embed")))
    with sh.use_mesh(mesh, sh.get_rules("sp")):
        out = fn(x)
    assert out.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, P("data", "sequence", None)), 3)
    assert sh.with_logical_constraint(x, ("batch", "length", "act_embed")) is x
