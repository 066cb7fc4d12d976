"""model/detectors.py: detection patterns as TransformerLens defines them, scores, and attribution adding up."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import detectors, hf
from model.config import ModelConfig
from model.transformer import Transformer


def _tl_patterns(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """TransformerLens 2.x head_detector's get_*_detection_pattern, transcribed to NumPy (one sequence)."""
    t = len(tokens)
    prev = np.tril(np.eye(t, k=-1))
    eq = np.equal.outer(tokens, tokens).astype(float)
    np.fill_diagonal(eq, 0)
    dup = np.tril(eq)
    shifted = np.roll(dup, 1, axis=1)
    ind = np.tril(np.concatenate([np.zeros((t, 1)), shifted[:, 1:]], axis=1))
    return {"previous_token": prev, "duplicate_token": dup, "induction": ind}


def test_detection_patterns_match_transformer_lens():
    tokens = np.array([[3, 5, 7, 3, 5, 9, 3, 7], [1, 1, 2, 1, 2, 2, 4, 1]])
    for b in range(2):
        want = _tl_patterns(tokens[b])
        for kind in detectors.KINDS:
            got = np.asarray(detectors.detection_pattern(jnp.asarray(tokens), kind)[b])
            np.testing.assert_array_equal(got, want[kind], err_msg=kind)


def test_scores_of_ideal_heads():
    n, t = 5, 10
    tokens = detectors.repeated_random_tokens(jax.random.key(0), 2, n, 1000)
    prev = jnp.eye(t, k=-1).at[0, 0].set(1.0)  # row 0 can only attend to itself
    induction = (
        prev.at[jnp.arange(n, t), jnp.arange(n, t) - n + 1]
        .set(1.0)
        .at[jnp.arange(n, t), jnp.arange(n - 1, t - 1)]
        .set(0.0)
    )
    patterns = jnp.broadcast_to(jnp.stack([prev, induction])[:, None, None], (2, 2, 1, t, t))  # [L, B, H, T, T]
    np.testing.assert_allclose(detectors.head_scores(patterns, tokens, "previous_token")[0, 0], (t - 1) / t, atol=1e-6)
    np.testing.assert_allclose(detectors.prefix_matching(patterns, n)[:, 0], [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(detectors.head_scores(patterns, tokens, "induction")[1, 0], n / t, atol=1e-6)


@pytest.mark.parametrize(
    "source",
    ["gpt2-tiny", ModelConfig(vocab_size=40, max_len=16, n_layers=2, d_model=32, n_heads=4, norm="rmsnorm", mlp=False)],
)
def test_attribution_adds_up_to_the_logit(source):
    if source == "gpt2-tiny":
        cfg, params = hf.load(Path(__file__).resolve().parent / "fixtures" / "gpt2-tiny")
        model = Transformer(cfg)
    else:
        cfg, model = source, Transformer(source)
        params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    out = detectors.logit_attribution(model, params, tokens)
    assert out["heads"].shape == (cfg.n_layers, 2, 15, cfg.n_heads)
    assert float(jnp.abs(out["residual"]).max()) < 1e-4
    assert float(jnp.abs(out["heads"]).max()) > 1e-3  # the heads do contribute


def test_detector_table_shapes():
    cfg = ModelConfig(vocab_size=40, max_len=16, n_layers=2, d_model=32, n_heads=4)
    model = Transformer(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))["params"]
    table = detectors.detector_table(model, params, jax.random.key(3), batch=2)
    assert set(table) == {*detectors.KINDS, "prefix_matching"}
    for scores in table.values():
        assert scores.shape == (2, 4) and bool(jnp.all((scores >= 0) & (scores <= 1)))
