"""train/sample.py: cached decoding equals full forward passes (to 1e-5 in float32), the filters, the command.

The reference for every generated step is an independent full forward pass (no cache) over the
context the documented sliding rule gives: the newest tokens, refilled to ``max_len - shift`` tokens
whenever feeding one more would overflow the ``max_len`` cache.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train.data as data
from model.config import ModelConfig
from model.transformer import Transformer
from train.config import RunConfig, TrainConfig
from train.data import DataConfig
from train.loop import train
from train.sample import SamplingConfig, make_generate, next_token

T = 16
TINY = ModelConfig(vocab_size=48, max_len=T, n_layers=2, d_model=32, n_heads=4)  # as in test_train_step.py
# the run of tests/test_train_loop.py (dropout, 2 microbatches): its compilations are shared
LOOP_MODEL = TINY.replace(dropout=0.1)
LOOP_TC = TrainConfig(
    batch_size=8, grad_accum=2, steps=4, lr=1e-2, warmup_steps=2, decay_steps=10, eval_every=4, eval_batches=2
)
TEXT = "to be, or not to be: that is the question.\n" * 40


def reference_logits(model, params, tokens: np.ndarray, prompt_len: int, shift: int) -> np.ndarray:
    """Logits [B, N, V] of each new token from a full forward pass over its context, by the sliding rule.

    The forward pass always reads a window of max_len tokens starting at the context's start (padded
    with zeros past the end of the sequence); causality makes the logits at the context's last position
    independent of what follows it, and the one window shape means one compilation.
    """
    t_max = model.config.max_len
    keep = t_max - shift
    full = jax.jit(lambda p, x: model.apply({"params": p}, x))
    padded = np.concatenate([tokens, np.zeros((tokens.shape[0], t_max), tokens.dtype)], axis=1)
    start, out = 0, []
    for j in range(prompt_len, tokens.shape[1]):  # token j is predicted from tokens[start:j]
        if j - start > t_max:  # feeding token j-1 would have overflowed: refill with the newest `keep`
            start = j - keep
        window = np.asarray(full(params, jnp.asarray(padded[:, start : start + t_max])))
        out.append(window[:, j - 1 - start])
    return np.stack(out, axis=1)


def test_cached_logits_equal_full_forward_at_every_step():
    model = Transformer(TINY)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, T), jnp.int32))["params"]
    prompt = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 6)).astype(np.int32)
    sc = SamplingConfig(temperature=1.0, top_k=20)
    max_new, shift = 40, 5  # 6 + 40 tokens through a 16-token cache: plain decode steps, then refills
    generate = make_generate(model, 6, max_new, sc, context_shift=shift, return_logits=True)
    new, logits = generate(params, jnp.asarray(prompt), jax.random.key(1))
    tokens = np.concatenate([prompt, np.asarray(new)], axis=1)
    assert new.shape == (2, max_new) and logits.shape == (2, max_new, TINY.vocab_size)
    expected = reference_logits(model, params, tokens, 6, shift)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5, rtol=1e-5)
    # with the same key the same tokens come out (sampling is a pure function of the key)
    again = generate(params, jnp.asarray(prompt), jax.random.key(1))[0]
    assert np.array_equal(np.asarray(again), np.asarray(new))


def test_sampling_filters():
    logits = jnp.asarray(np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000, np.float32)))
    keys = jax.random.key(0)
    greedy = next_token(logits, keys, SamplingConfig(temperature=0.0))
    assert (np.asarray(greedy) == 0).all()
    top2 = np.asarray(next_token(logits, keys, SamplingConfig(top_k=2)))
    assert set(np.unique(top2)) == {0, 1}
    np.testing.assert_allclose((top2 == 0).mean(), 0.5 / 0.8, atol=0.03)  # renormalised over the top 2
    nucleus = np.asarray(next_token(logits, keys, SamplingConfig(top_p=0.9)))
    assert set(np.unique(nucleus)) == {0, 1, 2}  # 0.5 + 0.3 < 0.9, so the third token is needed too
    assert set(np.unique(np.asarray(next_token(logits, keys, SamplingConfig(top_p=0.4))))) == {0}
    plain = np.asarray(next_token(logits, keys, SamplingConfig()))
    np.testing.assert_allclose(np.bincount(plain, minlength=4) / plain.size, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny character-level run, trained for a few steps."""
    tmp = tmp_path_factory.mktemp("sample")
    os.environ[data.CACHE_ENV] = str(tmp / "cache")
    (tmp / "tiny.txt").write_text(TEXT, encoding="utf-8")
    cfg = RunConfig(
        name="tiny-text",
        model=LOOP_MODEL,
        data=DataConfig(task="text", path=str(tmp / "tiny.txt")),
        train=LOOP_TC,
        run_dir=str(tmp / "run"),
    )
    train(cfg, progress=False, plots=False, log=lambda m: None)
    return tmp


def sample_cli(args, tmp) -> subprocess.CompletedProcess:
    env = dict(os.environ, ATTN_CACHE_DIR=str(tmp / "cache"), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "train.sample", str(tmp / "run"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_sample_command_prints_text_and_speed(text_run):
    proc = sample_cli(["--prompt", "to be", "--max-new-tokens", "40", "--greedy"], text_run)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("to be") and len(proc.stdout.rstrip("\n")) == len("to be") + 40
    assert set(proc.stdout) <= set(TEXT)  # only characters of the vocabulary, though the model has 48 ids
    assert "tokens/s" in proc.stderr


def test_sample_command_rejects_characters_outside_the_vocabulary(text_run):
    proc = sample_cli(["--prompt", "to be Z", "--max-new-tokens", "5"], text_run)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'Z'" in lines[0], proc.stderr
