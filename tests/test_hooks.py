"""model/hooks.py: the activation cache, its zero cost when off, interventions and patching sweeps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import hook_points as hp
from model import hooks
from model.config import ModelConfig
from model.transformer import Transformer, attention_patterns

CFG = ModelConfig(vocab_size=50, max_len=16, n_layers=2, d_model=32, n_heads=4, use_bias=True)


def _setup(cfg=CFG):
    model = Transformer(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, cfg.max_len), 0, cfg.vocab_size)
    return model, model.init(jax.random.key(0), tokens)["params"], tokens


def _finite_max_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert np.array_equal(np.isinf(a), np.isinf(b))
    finite = ~np.isinf(a)
    return float(np.max(np.abs(a[finite] - b[finite])))


def test_cache_names_shapes_and_logits():
    model, params, tokens = _setup()
    logits, cache = jax.jit(lambda p, t: hooks.run_with_cache(model, params=p, tokens=t))(params, tokens)
    assert list(cache) == hooks.hook_names(CFG) or sorted(cache) == sorted(hooks.hook_names(CFG))
    b, t, h, dh = 2, CFG.max_len, CFG.n_heads, CFG.head_dim
    assert cache["hook_embed"].shape == cache["hook_pos_embed"].shape == (b, t, CFG.d_model)
    assert cache["blocks.1.attn.hook_q"].shape == cache["blocks.1.attn.hook_z"].shape == (b, t, h, dh)
    assert cache["blocks.0.attn.hook_pattern"].shape == cache["blocks.0.attn.hook_attn_scores"].shape == (b, h, t, t)
    assert cache["blocks.0.mlp.hook_post"].shape == (b, t, CFG.mlp_dim)
    np.testing.assert_allclose(logits, model.apply({"params": params}, tokens), atol=1e-5)
    # the residual stream adds up; masked scores are -inf and the pattern matches return_attention's
    r = cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_attn_out"]
    np.testing.assert_allclose(r, cache["blocks.1.hook_resid_mid"], atol=1e-6)
    np.testing.assert_allclose(
        cache["hook_embed"] + cache["hook_pos_embed"], cache["blocks.0.hook_resid_pre"], atol=1e-6
    )
    scores = np.asarray(cache["blocks.0.attn.hook_attn_scores"])
    assert np.all(np.isneginf(scores[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]]))
    pats = attention_patterns(model, params, tokens)
    np.testing.assert_allclose(cache["blocks.1.attn.hook_pattern"], pats[1], atol=1e-6)


def test_scanned_and_unrolled_agree():
    model, params, tokens = _setup()
    _, scanned = hooks.run_with_cache(model, params, tokens)
    m2, p2 = hooks.unrolled(model, params)
    assert not m2.config.scan_layers
    _, unrolled = hooks.run_with_cache(m2, p2, tokens)
    assert sorted(scanned) == sorted(unrolled)
    for name in scanned:
        assert _finite_max_diff(scanned[name], unrolled[name]) < 1e-5, name


def test_names_filter_keeps_only_what_is_asked():
    model, params, tokens = _setup()
    names = ["blocks.1.attn.hook_pattern", "hook_embed", "blocks.0.mlp.hook_pre"]
    _, cache = hooks.run_with_cache(model, params, tokens, names=names)
    assert list(cache) == names
    with pytest.raises(ValueError, match="unknown hook names"):
        hooks.run_with_cache(model, params, tokens, names=["blocks.9.hook_z"])


def _lowered(model, params, tokens) -> str:
    return jax.jit(model.apply).lower({"params": params}, tokens).as_text()


@pytest.mark.parametrize("scan", [True, False])
def test_zero_cost_when_off(monkeypatch, scan):
    """The plain forward lowers to the same text as a model whose hook points are deleted outright."""
    model, params, tokens = _setup(CFG.replace(scan_layers=scan, attention_impl="xla"))
    with_points = _lowered(model, params, tokens)
    monkeypatch.setattr(hp, "point", lambda module, name, x: x)
    monkeypatch.setattr(hp, "active", lambda module, name: False)
    monkeypatch.setattr(hp, "record", lambda module, name, make: None)
    assert _lowered(model, params, tokens) == with_points
    monkeypatch.undo()
    # and the test can fail: a cached run is a different program
    cached = jax.jit(lambda p, t: hooks.run_with_cache(model, p, t)).lower(params, tokens).as_text()
    assert cached != with_points


def test_zero_ablation_and_mean_ablation():
    model, params, tokens = _setup()
    _, cache = hooks.run_with_cache(model, params, tokens)
    ablated = hooks.run_with_hooks(model, params, tokens, hooks.ablate_heads([(1, 2)]))
    assert not np.allclose(ablated, cache and model.apply({"params": params}, tokens))
    # the ablated head's z is zero, the others are untouched
    _, c2 = hooks.run_with_cache(*hooks.unrolled(model, params), tokens, hooks=hooks.ablate_heads([(1, 2)]))
    assert np.all(np.asarray(c2["blocks.1.attn.hook_z"][:, :, 2]) == 0)
    np.testing.assert_allclose(c2["blocks.1.attn.hook_z"][:, :, 3], cache["blocks.1.attn.hook_z"][:, :, 3], atol=1e-6)
    means = hooks.mean_z(cache)
    _, c3 = hooks.run_with_cache(*hooks.unrolled(model, params), tokens, hooks=hooks.ablate_heads([(0, 1)], means))
    np.testing.assert_allclose(c3["blocks.0.attn.hook_z"][0, 5, 1], means["blocks.0.attn.hook_z"][1], atol=1e-6)


def test_patching_whole_activation_reproduces_source_run():
    model, params, tokens = _setup()
    other = tokens[::-1]
    clean_logits, clean = hooks.run_with_cache(model, params, other)
    # patching the whole residual stream before layer 0 turns the run into the other run
    name = "blocks.0.hook_resid_pre"
    out = hooks.run_with_hooks(model, params, tokens, {name: hooks.patch(clean[name], point="hook_resid_pre")})
    np.testing.assert_allclose(out, clean_logits, atol=1e-5)
    # patching all heads of every layer's z at every position does too
    hk = {f"blocks.{i}.attn.hook_z": hooks.patch(clean[f"blocks.{i}.attn.hook_z"], heads=range(4)) for i in range(2)}
    hk["blocks.1.hook_mlp_out"] = hooks.patch(clean["blocks.1.hook_mlp_out"], point="hook_mlp_out")
    hk["blocks.0.hook_mlp_out"] = hooks.patch(clean["blocks.0.hook_mlp_out"], point="hook_mlp_out")
    hk["blocks.0.hook_resid_pre"] = hooks.patch(clean["blocks.0.hook_resid_pre"], point="hook_resid_pre")
    np.testing.assert_allclose(hooks.run_with_hooks(model, params, tokens, hk), clean_logits, atol=1e-5)


def test_hooks_on_scanned_layers_need_unrolling():
    model, params, tokens = _setup()
    with pytest.raises(ValueError, match="unrolled"):
        hooks.run_with_cache(model, params, tokens, hooks=hooks.ablate_heads([(0, 0)]))


@pytest.mark.parametrize(
    "over,point,batch_size",
    [("heads", "attn.hook_z", 3), ("heads", "attn.hook_z", None), ("positions", "hook_resid_pre", 3)],
)
def test_vmapped_sweep_equals_loop_of_single_patches(over, point, batch_size):
    """The batched sweep (cells as copies of the batch, in chunks: 3 leaves a padded last chunk) = one forward per cell."""
    model, params, tokens = _setup(CFG.replace(max_len=8))
    clean, corrupted = tokens, tokens.at[:, 3].set((tokens[:, 3] + 1) % CFG.vocab_size)
    target = tokens[:, 1:]

    def metric(logits):
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.take_along_axis(logp, target[..., None], -1).mean()

    table = patching_sweep = hooks.patching_sweep(
        model, params, clean, corrupted, metric, point=point, over=over, batch_size=batch_size
    )
    _, cache = hooks.run_with_cache(model, params, clean)
    short = point.split(".")[-1]
    n = CFG.n_heads if over == "heads" else 8
    loop = np.zeros((CFG.n_layers, n))
    for layer in range(CFG.n_layers):
        name = f"blocks.{layer}.{point}"
        for i in range(n):
            sel = dict(heads=[i]) if over == "heads" else dict(positions=[i])
            fn = hooks.patch(cache[name], point=short, **sel)
            loop[layer, i] = metric(hooks.run_with_hooks(model, params, corrupted, {name: fn}))
    assert patching_sweep.shape == loop.shape
    np.testing.assert_allclose(table, loop, atol=1e-5)
    if over == "positions":  # patching the corrupted position's residual before layer 0 restores the clean loss
        np.testing.assert_allclose(table[0, 3], metric(model.apply({"params": params}, clean)), atol=1e-5)


def test_replacing_the_pattern_reweights_the_values():
    model, params, tokens = _setup()
    plain = model.apply({"params": params}, tokens)
    same = hooks.run_with_hooks(model, params, tokens, {"blocks.1.attn.hook_pattern": lambda p: p * 1.0})
    np.testing.assert_allclose(same, plain, atol=1e-5)  # recomputed from an equal pattern: the same logits
    # each query attends to itself only: the head's output is its own value
    own = jnp.eye(CFG.max_len)
    hk = {"blocks.1.attn.hook_pattern": lambda p: jnp.broadcast_to(own, p.shape)}
    _, cache = hooks.run_with_cache(*hooks.unrolled(model, params), tokens, hooks=hk)
    np.testing.assert_allclose(cache["blocks.1.attn.hook_pattern"][0, 0], own)
    np.testing.assert_allclose(cache["blocks.1.attn.hook_z"], cache["blocks.1.attn.hook_v"], atol=1e-6)
    assert np.abs(hooks.run_with_hooks(model, params, tokens, hk) - plain).max() > 0
    with pytest.raises(ValueError, match="cached but not replaced"):
        hooks.run_with_hooks(model, params, tokens, {"blocks.0.attn.hook_attn_scores": lambda s: s})


@pytest.mark.slow
def test_patching_benchmark_prints_both_tables(capsys):
    """experiments/bench/patching.py: the forward table and the sweep table, the sweeps agreeing with the loop."""
    from experiments.bench import patching as bench

    assert bench.main(["--preset", "tiny", "--repeats", "1", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    for row in ("forward, hook points off", "forward, hook points deleted", "run_with_cache (all)"):
        assert row in out
    for row in (
        "patching_sweep, chunks of 4 cells",
        "vmapped over selectors (before)",
        "Python loop of single patches",
    ):
        assert row in out
    diff = float(out.split("max |sweep - loop| = ")[1].split()[0])
    assert diff < 1e-4
