"""The padded vocabulary (issue 18, item 1): tables of ``padded_vocab_size`` rows, padded logits never count.

A padded model whose padded rows hold huge values gives the unpadded model's logits, loss, accuracy,
gradients and sampled tokens at the same weights; Hugging Face export strips the padding and import
restores it; parameter accounting shows both counts; the padded rows' initial values do not move the
real rows' (a bigger table drawn from the same key starts with the same rows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import hf
from model.config import ModelConfig
from model.params import format_report, vocab_padding
from model.transformer import Transformer, next_token_loss
from train.sample import SamplingConfig, make_generate
from train.step import masked_sums

V = 13  # odd on purpose
BASE = ModelConfig(vocab_size=V, max_len=16, n_layers=2, d_model=16, n_heads=2, vocab_multiple=1)
HUGE = 1e4  # padded rows filled with this: any leak into the softmax would dominate it


def _pad(a: np.ndarray, rows: int, axis: int) -> np.ndarray:
    shape = list(a.shape)
    shape[axis] = rows - a.shape[axis]
    return np.concatenate([a, np.full(shape, HUGE, a.dtype)], axis=axis)


def padded_twin(cfg: ModelConfig, params: dict, multiple: int) -> tuple[ModelConfig, dict]:
    """``cfg`` with ``vocab_multiple`` and ``params`` with their tables padded by rows of HUGE."""
    pcfg = cfg.replace(vocab_multiple=multiple)
    rows = pcfg.padded_vocab_size
    p = jax.tree.map(np.asarray, params)
    p["embed"] = {"embedding": _pad(p["embed"]["embedding"], rows, 0)}
    if "unembed" in p:
        p["unembed"] = _pad(p["unembed"], rows, 1)
    return pcfg, p


@pytest.mark.parametrize("tie", [True, False])
def test_padded_rows_never_leak_into_logits_loss_accuracy_or_gradients(tie):
    cfg = BASE.replace(tie_embeddings=tie)
    tokens = jax.random.randint(jax.random.key(1), (3, 16), 0, V)
    targets = jnp.roll(tokens, -1, axis=1)
    params = Transformer(cfg).init(jax.random.key(0), tokens)["params"]
    pcfg, pparams = padded_twin(cfg, params, 8)
    assert pcfg.padded_vocab_size == 16 and pparams["embed"]["embedding"].shape == (16, 16)

    logits = Transformer(cfg).apply({"params": params}, tokens)
    plogits = Transformer(pcfg).apply({"params": pparams}, tokens)
    assert plogits.shape == (3, 16, V)  # sliced to the true vocabulary
    np.testing.assert_allclose(plogits, logits, rtol=0, atol=1e-5)
    mask = jnp.ones_like(tokens)
    for got, want in zip(masked_sums(plogits, targets, mask), masked_sums(logits, targets, mask), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)

    def loss(p, c):
        return next_token_loss(Transformer(c).apply({"params": p}, tokens), targets)

    g, pg = jax.grad(loss)(params, cfg), jax.grad(loss)(pparams, pcfg)
    np.testing.assert_allclose(pg["embed"]["embedding"][:V], g["embed"]["embedding"], rtol=0, atol=1e-6)
    assert not np.any(pg["embed"]["embedding"][V:])  # the padded rows get no gradient
    if not tie:
        assert not np.any(pg["unembed"][:, V:])


@pytest.mark.parametrize("sc", [SamplingConfig(1.0), SamplingConfig(1.0, top_k=3), SamplingConfig(0.9, top_p=0.8)])
def test_padded_model_samples_the_same_tokens(sc):
    cfg = BASE.replace(max_len=8)
    prompt = jnp.array([[1, 2, 3], [4, 5, 6]], jnp.int32)
    params = Transformer(cfg).init(jax.random.key(0), prompt)["params"]
    pcfg, pparams = padded_twin(cfg, params, 8)
    key = jax.random.key(7)
    toks, logits = make_generate(Transformer(cfg), 3, 12, sc, return_logits=True)(params, prompt, key)
    ptoks, plogits = make_generate(Transformer(pcfg), 3, 12, sc, return_logits=True)(pparams, prompt, key)
    assert plogits.shape[-1] == V
    np.testing.assert_array_equal(ptoks, toks)
    assert int(ptoks.max()) < V


def test_a_padded_table_starts_with_the_unpadded_rows():
    """jax's partitionable threefry draws element i from (key, i): the embedding's real rows do not move.

    Every preset ties the unembedding to it, so padding leaves their trajectories unchanged. An untied
    unembedding ``[D, Vp]`` is padded along its last axis, so its draw does change (flat indices shift).
    """
    tokens = jnp.zeros((1, 4), jnp.int32)
    a = Transformer(BASE).init(jax.random.key(3), tokens)["params"]
    b = Transformer(BASE.replace(vocab_multiple=8)).init(jax.random.key(3), tokens)["params"]
    np.testing.assert_array_equal(b["embed"]["embedding"][:V], a["embed"]["embedding"])


def test_default_pads_to_a_multiple_of_8_and_old_configs_load_unpadded():
    assert ModelConfig(vocab_size=65).padded_vocab_size == 72
    assert ModelConfig(vocab_size=50257).padded_vocab_size == 50264
    assert ModelConfig(vocab_size=64).padded_vocab_size == 64
    saved = {k: v for k, v in ModelConfig().to_dict().items() if k != "vocab_multiple"}  # a run from before
    assert ModelConfig.from_dict(saved).padded_vocab_size == 65
    with pytest.raises(ValueError, match="vocab_multiple"):
        ModelConfig(vocab_multiple=0)


def test_parameter_report_shows_both_counts():
    cfg = ModelConfig(vocab_size=65, tie_embeddings=False)
    assert vocab_padding(cfg) == 2 * 7 * cfg.d_model
    text, agree = format_report(cfg)
    assert agree and "padded to 72" in text and f"{2 * 7 * cfg.d_model:,}" in text
    assert "total without the padding" in text


def test_hf_export_strips_the_padding_and_import_restores_it():
    cfg = ModelConfig(vocab_size=V, max_len=8, n_layers=1, d_model=16, n_heads=2, use_bias=True, vocab_multiple=8)
    tokens = jnp.array([[1, 2, 3, 4]], jnp.int32)
    params = Transformer(cfg).init(jax.random.key(0), tokens)["params"]
    tensors = hf.tensors_from_params(cfg, params)
    assert tensors["transformer.wte.weight"].shape == (V, 16)
    back = hf.params_from_tensors(cfg, tensors)
    assert back["embed"]["embedding"].shape == (16, 16)
    np.testing.assert_array_equal(back["embed"]["embedding"][:V], np.asarray(params["embed"]["embedding"][:V]))
    np.testing.assert_allclose(
        Transformer(cfg).apply({"params": back}, tokens), Transformer(cfg).apply({"params": params}, tokens), atol=1e-6
    )


# ---------------------------------------------------------------------------- tensor parallelism, end to end
SHRINK = [
    "model.n_layers=1",
    "model.d_model=32",
    "model.n_heads=2",
    "model.max_len=16",
    "train.batch_size=8",
    "train.steps=3",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.eval_every=100",
    "train.eval_batches=1",
    "train.checkpoint_every=100",
]
MESHES = {
    "one": ["mesh.data=1"],
    "tp": ["mesh.data=4", "mesh.tensor=2", "sharding=tp"],
    "fsdp_tp": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "sharding=fsdp_tp"],
}


def _train_losses(tmp_path, name: str, args: list[str]) -> list[float]:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu", ATTN_CACHE_DIR=str(tmp_path / "cache"))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    run = tmp_path / name
    cmd = [sys.executable, "-m", "train", "--no-progress", *args, f"run_dir={run}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [x["loss"] for x in records if x["kind"] == "train"]


@pytest.mark.slow  # 6 runs of `python -m train`, 8-device compilations: a few minutes
@pytest.mark.parametrize("vocab", ["shakespeare-char", "gpt2-vocab"])
def test_tensor_parallel_runs_on_odd_vocabularies_match_one_device(vocab, tmp_path):
    """The issue's failing README command: vocabularies of 65 and 50,257 under tp and fsdp_tp on 8 devices."""
    if vocab == "shakespeare-char":  # the preset (vocabulary 65, dropout 0.2) on a small text
        text = tmp_path / "text.txt"
        text.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 200)
        base = ["--config", "shakespeare-char", f"data.path={text}", *SHRINK]
    else:  # GPT-2's vocabulary on token ids of a synthetic task
        base = ["--config", "induction", "model.vocab_size=50257", *SHRINK]
    losses = {m: _train_losses(tmp_path, m, base + args) for m, args in MESHES.items()}
    assert len(losses["one"]) == 3
    for m in ("tp", "fsdp_tp"):
        np.testing.assert_allclose(losses[m], losses["one"], rtol=0, atol=1e-5, err_msg=m)
