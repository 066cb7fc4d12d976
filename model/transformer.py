"""The decoder-only Transformer language model.

    model = Transformer(get_preset("shakespeare-char-cpu"))
    params = model.init(jax.random.key(0), tokens)["params"]        # a plain dict of arrays
    logits = jax.jit(model.apply)({"params": params}, tokens)       # [B, T, V] float32

tokens ``[B, T]`` int -> embed (+ positions) -> L blocks (scanned or unrolled) -> norm -> unembed ->
logits ``[B, T, V]``. The tables have ``config.padded_vocab_size`` rows (``vocab_size`` rounded up to
``vocab_multiple``, so tensor parallelism can split them); the padded logits are sliced off right after
the unembedding, so nothing downstream ever sees them and they get no gradient; next-token cross-entropy is :func:`token_losses` (per position) and
:func:`next_token_loss` (their mean). With ``embed_scale`` the
token embeddings are multiplied by sqrt(d_model) before positions are added (Vaswani et al. 2017, 3.4);
the tied unembedding uses the unscaled table, as in the paper.

One forward call returns the attention pattern of every head of every layer:
:func:`attention_patterns` -> ``[L, B, H, T, T]``.

Incremental decoding: :func:`init_cache` makes an empty key/value cache; ``model.apply(
{"params": p, "cache": c}, tokens, decode=True, mutable=["cache"])`` appends ``tokens`` to it and
returns logits for them only.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from model import hook_points as hp
from model.attention import matmul_rows
from model.config import ModelConfig
from model.layers import Block, _normal, dtype_of, make_norm
from model.positions import sinusoidal_table
from model.sharding import with_logical_constraint as constrain

_REMAT_POLICIES = {
    "full": None,  # save nothing inside a block; recompute it all in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


class Transformer(nn.Module):
    """Decoder-only language model on ``config``; see the module docstring for the data path."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        *,
        train: bool = False,
        decode: bool = False,
        return_attention: bool = False,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length] integers; got shape {tokens.shape}")
        t = tokens.shape[1]
        cfg.check_length(t)
        pdt = dtype_of(cfg.param_dtype)

        # ---- embed: token embedding plus position information
        embed = nn.Embed(
            cfg.padded_vocab_size, cfg.d_model, embedding_init=_normal(cfg.init_std), param_dtype=pdt, name="embed"
        )
        # FSDP gathers the table's width before the lookup (a gather from a width-sharded table into a
        # batch-sharded stream is a reshard the partitioner does badly); tensor parallelism keeps its vocab split.
        table = constrain(embed.embedding, ("vocab", None))  # [Vp, D]: padded_vocab_size rows
        x = constrain(jnp.take(table, tokens, axis=0).astype(jnp.float32), ("batch", "length", "act_embed"))
        if cfg.embed_scale:  # Vaswani et al. 3.4: the embedding layers' weights times sqrt(d_model)
            x = x * jnp.float32(cfg.embed_multiplier)
        x = hp.point(self, "hook_embed", x)
        if positions is None:
            if decode:  # the next position to fill is the number of tokens decoded so far
                index = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
                start = index.value
                if not self.is_initializing():
                    index.value = start + t
                positions = (start + jnp.arange(t, dtype=jnp.int32))[None, :]
            else:
                positions = jnp.arange(t, dtype=jnp.int32)[None, :]  # [1, T]
        if cfg.positions == "learned":
            scale = cfg.embed_multiplier  # a learned table is an embedding layer too: same scale, same speed
            table = self.param("pos_embed", _normal(cfg.pos_table_std / scale), (cfg.max_len, cfg.d_model), pdt)
            pos = jnp.take(table, positions, axis=0).astype(jnp.float32) * jnp.float32(scale)
            x = x + hp.point(
                self, "hook_pos_embed", jnp.broadcast_to(pos, x.shape) if hp.active(self, "hook_pos_embed") else pos
            )
        elif cfg.positions == "sinusoidal":
            pos = jnp.take(jnp.asarray(sinusoidal_table(cfg.max_len, cfg.d_model)), positions, axis=0)
            x = x + hp.point(
                self, "hook_pos_embed", jnp.broadcast_to(pos, x.shape) if hp.active(self, "hook_pos_embed") else pos
            )
        x = nn.Dropout(cfg.dropout, deterministic=not train)(x)

        # ---- the blocks, one compiled block scanned over layers or L unrolled ones
        block_cls = Block
        if cfg.remat != "none":
            block_cls = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        block_kwargs = dict(deterministic=not train, decode=decode, sow_attention=return_attention)
        if cfg.scan_layers:
            stack = nn.scan(
                block_cls,
                variable_axes={"params": 0, "intermediates": 0, "cache": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=cfg.n_layers,
            )(cfg, **block_kwargs, name="blocks")
            x, _ = stack(x, positions)
        else:
            for i in range(cfg.n_layers):
                x, _ = block_cls(cfg, **block_kwargs, name=f"block_{i}")(x, positions)

        # ---- unembed: logits over the vocabulary, in float32
        x = hp.point(self, "ln_final.hook_normalized", make_norm(cfg, "norm_final")(x))
        if cfg.tie_embeddings:  # the unembedding is the embedding table, transposed: [D, Vp]
            w = embed.embedding.T
        else:
            w = self.param("unembed", _normal(cfg.init_std), (cfg.d_model, cfg.padded_vocab_size), pdt)
        cdt = dtype_of(cfg.dtype)  # the unembedding matmul runs in the compute dtype like every other
        logits = matmul_rows(x.astype(cdt), w.astype(cdt))
        logits = constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))  # no-op outside use_mesh
        # the padded columns never count: every consumer (loss, accuracy, sampling, hooks) sees [B, T, V]
        return logits[..., : cfg.vocab_size] if cfg.padded_vocab_size != cfg.vocab_size else logits


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """The next-token cross-entropy of every position, ``-log softmax(logits)[target]``: ``[B, T]`` float32.

    logits ``[B, T, V]``, targets ``[B, T]`` int. The one cross-entropy of the project: the mean
    (:func:`next_token_loss`), the training step's masked sums (train/step.py) and the experiments'
    per-token losses are all computed from it.
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def next_token_loss(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array | None = None) -> jax.Array:
    """Mean cross-entropy of predicting ``targets`` ``[B, T]`` from ``logits`` ``[B, T, V]``, in float32.

    ``loss_mask`` ``[B, T]`` (1 = counts) restricts the mean to some positions (e.g. the answers of a
    recall task); a batch with no counted position has loss 0.
    """
    losses = token_losses(logits, targets)
    if loss_mask is None:
        return jnp.mean(losses)
    m = loss_mask.astype(jnp.float32)
    return jnp.sum(losses * m) / jnp.maximum(jnp.sum(m), 1.0)


def attention_patterns(model: Transformer, params, tokens: jax.Array) -> jax.Array:
    """The attention pattern of every head of every layer from one forward pass: ``[L, B, H, T, T]``."""
    _, state = model.apply({"params": params}, tokens, return_attention=True, mutable=["intermediates"])
    inter = state["intermediates"]
    if model.config.scan_layers:
        return inter["blocks"]["attention"]["attention_pattern"][0]
    return jnp.stack([inter[f"block_{i}"]["attention"]["attention_pattern"][0] for i in range(model.config.n_layers)])


def init_cache(model: Transformer, batch_size: int):
    """An empty key/value cache for ``batch_size`` sequences of up to ``config.max_len`` tokens.

    Built with jax.eval_shape, so nothing but the zeros of the cache itself is allocated.
    """
    tokens = jnp.zeros((batch_size, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, decode=True))["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def unroll_layers(params: dict, n_layers: int) -> dict:
    """Scanned parameters (``params['blocks']`` with a leading layer axis) as ``block_0 .. block_{L-1}``.

    The parameters of ``Transformer(config.replace(scan_layers=False))``: sampling runs unrolled blocks.
    """
    params = dict(params)
    blocks = params.pop("blocks")
    for i in range(n_layers):
        params[f"block_{i}"] = jax.tree.map(lambda x, i=i: x[i], blocks)
    return params
