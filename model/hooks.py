"""Look inside a model: an activation cache at TransformerLens-named hook points, interventions, patching sweeps.

    logits, cache = run_with_cache(model, params, tokens)              # every hook point
    logits, cache = run_with_cache(model, params, tokens, names=["blocks.1.attn.hook_pattern"])
    logits = run_with_hooks(model, params, tokens, hooks=ablate_heads([(1, 3)]))
    table = patching_sweep(model, params, clean, corrupted, metric)    # [L, H], one compiled call

Names and shapes are TransformerLens's (see :func:`hook_names`): ``hook_embed``, ``hook_pos_embed``
``[B,T,D]``; per layer ``blocks.{l}.hook_resid_pre``, ``ln1.hook_normalized``, ``attn.hook_q/hook_k/hook_v``
``[B,T,H,Dh]`` (k and v have G heads under GQA), ``attn.hook_attn_scores`` and ``attn.hook_pattern``
``[B,H,Q,K]``, ``attn.hook_z`` ``[B,T,H,Dh]``, ``hook_attn_out``, ``hook_resid_mid``, ``ln2.hook_normalized``,
``mlp.hook_pre/hook_post`` ``[B,T,d_mlp]``, ``hook_mlp_out``, ``hook_resid_post``; ``ln_final.hook_normalized``.
``lnX.hook_normalized`` is the norm's output (scale and bias applied), as in TransformerLens's LayerNorm
without folding. ``hook_q``/``hook_k`` are before rotary positions (TransformerLens's ``hook_rot_q`` is after).

The cached run computes the pattern with the 'reference' attention implementation whenever
``hook_pattern`` or ``hook_attn_scores`` is asked for (the one path that returns it); the other hook
points do not change the implementation. Masked entries of ``hook_attn_scores`` are ``-inf``, as in
TransformerLens; masked entries of ``hook_pattern`` are exactly 0.

Every function is pure and traceable: wrap it in ``jax.jit`` (closing over or passing the arrays a
hook uses). A hook is ``fn(activation) -> activation`` of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from model import hook_points as hp
from model.transformer import Transformer

BLOCK_POINTS = (
    "hook_resid_pre",
    "ln1.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_normalized",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)
# which axis of an activation is the head axis and which the (query) position axis
HEAD_AXIS = {"hook_q": 2, "hook_k": 2, "hook_v": 2, "hook_z": 2, "hook_pattern": 1, "hook_attn_scores": 1}
POSITION_AXIS = {"hook_pattern": 2, "hook_attn_scores": 2}  # every other point: axis 1


def hook_names(config) -> list[str]:
    """Every hook point name of a model on ``config``, in forward order."""
    names = ["hook_embed"] + (["hook_pos_embed"] if config.positions in ("learned", "sinusoidal") else [])
    mlp_only = ("ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out")
    for layer in range(config.n_layers):
        names += [f"blocks.{layer}.{p}" for p in BLOCK_POINTS if config.mlp or p not in mlp_only]
    return names + ["ln_final.hook_normalized"]


def _flatten(tree: dict, config) -> dict[str, jax.Array]:
    """The 'intermediates' collection as a flat TransformerLens-named dict (scanned layers split per layer)."""
    out: dict[str, jax.Array] = {}

    def walk(node, prefix: tuple[str, ...]):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, (*prefix, key))
                continue
            if key == "attention_pattern":  # the older return_attention sow, not a hook point
                continue
            (array,) = value
            parts = [hp._RENAME.get(p, p) for p in prefix]
            if parts and parts[0] == "blocks":  # scanned: a leading layer axis
                for layer in range(config.n_layers):
                    out[".".join(["blocks", str(layer), *parts[1:], key])] = array[layer]
            elif parts and parts[0].startswith("block_"):
                out[".".join(["blocks", parts[0][len("block_") :], *parts[1:], key])] = array
            else:
                out[".".join([*parts, key])] = array

    walk(tree, ())
    return out


def _check_names(config, names: Sequence[str]) -> None:
    known = set(hook_names(config))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown hook names {unknown}; this model has e.g. {sorted(known)[:6]} (see hook_names)")


def run_with_cache(
    model: Transformer, params, tokens: jax.Array, names: Sequence[str] | None = None, *, hooks: dict | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(logits [B,T,V], cache)``: the forward pass and a flat dict of activations, TransformerLens-named.

    ``names`` keeps only those hook points (None: all of :func:`hook_names`); only those are computed.
    Works with scanned and unrolled layers and under jax.jit. ``hooks`` (unrolled layers only; see
    :func:`run_with_hooks`) are applied as well, and the cache shows each point after its hook.
    """
    if names is not None:
        names = list(names)
        _check_names(model.config, names)
    with hp.hooking(collect=True, names=names, hooks=hooks):
        logits, state = model.apply({"params": params}, tokens, mutable=["intermediates"])
    cache = _flatten(state.get("intermediates", {}), model.config)
    if names is not None:
        cache = {n: cache[n] for n in names}
    return logits, cache


def unrolled(model: Transformer, params) -> tuple[Transformer, dict]:
    """The same model with its layers unrolled (``block_0 .. block_{L-1}``), and its parameters to match."""
    cfg = model.config
    if not cfg.scan_layers:
        return model, params
    params = dict(params)
    blocks = params.pop("blocks")
    for i in range(cfg.n_layers):
        params[f"block_{i}"] = jax.tree.map(lambda x, i=i: x[i], blocks)
    return Transformer(cfg.replace(scan_layers=False)), params


def run_with_hooks(model: Transformer, params, tokens: jax.Array, hooks: dict[str, Callable]) -> jax.Array:
    """Logits ``[B,T,V]`` of a forward in which each named activation ``a`` is replaced by ``hooks[name](a)``.

    Layer-specific names need a static layer index, so scanned layers are unrolled for this call (same
    function, same numbers). ``attn.hook_attn_scores`` can be cached but not replaced; replacing
    ``attn.hook_pattern`` reweights the values with the new pattern.
    """
    _check_names(model.config, list(hooks))
    model, params = unrolled(model, params)
    with hp.hooking(hooks=hooks):
        return model.apply({"params": params}, tokens)


# ---------------------------------------------------------------------------- built-in hooks
def _heads_by_layer(heads: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    return by_layer


def ablate_heads(heads: Sequence[tuple[int, int]], means: dict[str, jax.Array] | None = None) -> dict[str, Callable]:
    """Hooks that silence heads ``[(layer, head), ...]`` at ``attn.hook_z``: zero-ablation, or with
    ``means`` (from :func:`mean_z`) mean-ablation, each head's output replaced by its mean output."""
    hooks = {}
    for layer, hs in _heads_by_layer(heads).items():
        name = f"blocks.{layer}.attn.hook_z"
        idx = jnp.asarray(hs)

        def fn(z, idx=idx, name=name):
            fill = (
                jnp.zeros_like(z[:, :, idx])
                if means is None
                else jnp.broadcast_to(means[name][idx], z[:, :, idx].shape)
            )
            return z.at[:, :, idx].set(fill.astype(z.dtype))

        hooks[name] = fn
    return hooks


def mean_z(cache: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Each layer's mean head output ``[H, Dh]`` over batch and positions, for mean-ablation."""
    return {n: a.mean(axis=(0, 1)) for n, a in cache.items() if n.endswith("attn.hook_z")}


def _axis_mask(x: jax.Array, axis: int, index) -> jax.Array:
    """A boolean mask broadcastable to ``x``: True at ``index`` along ``axis``."""
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return jnp.zeros(x.shape[axis], bool).at[jnp.asarray(index)].set(True).reshape(shape)


def patch(source: jax.Array, heads=None, positions=None, *, point: str = "hook_z") -> Callable:
    """A hook putting ``source`` (this hook point's activation in another run) into this run.

    With ``heads`` and/or ``positions`` (lists of indices) only those are patched; ``point`` (the last
    part of the hook name, e.g. 'hook_z', 'hook_resid_pre', 'hook_pattern') says which axes they are.
    """

    def fn(x):
        keep = jnp.ones((1,) * x.ndim, bool)
        if heads is not None:
            keep = keep & _axis_mask(x, HEAD_AXIS[point], heads)
        if positions is not None:
            keep = keep & _axis_mask(x, POSITION_AXIS.get(point, 1), positions)
        return jnp.where(keep, source.astype(x.dtype), x)

    return fn


# ---------------------------------------------------------------------------- patching sweeps
_SWEEPS: dict = {}  # (config, metric, point, over, batch_size) -> the jitted sweep
# batch_size=None: cells per chunk so that a forward has about this many sequences. On 2 CPU cores (4-layer
# model, T=64) 16 cells x B=4 = 64 rows in one forward ran 2x slower than a loop of 16 single patches,
# while chunks of 4 and 16 rows ran at 0.83-0.86 of the loop (experiments/bench/patching.py).
ROWS_PER_FORWARD = 16


def patching_sweep(
    model: Transformer,
    params,
    clean: jax.Array,
    corrupted: jax.Array,
    metric: Callable[[jax.Array], jax.Array],
    *,
    point: str = "attn.hook_z",
    over: str = "heads",
    batch_size: int | None = None,
) -> jax.Array:
    """Activation patching of every (layer, head) or (layer, position) in one compiled call.

    ``table[l, i] = metric(logits)`` of the ``corrupted`` run with the ``clean`` run's activation at
    ``blocks.{l}.{point}`` patched in at head ``i`` (``over='heads'``) or position ``i``
    (``over='positions'``); ``metric`` maps logits ``[B,T,V]`` to a scalar. The cells are one-hot
    selectors ``[L, n]`` mapped by ``jax.lax.map`` with ``batch_size`` of them vmapped at a time (None:
    all at once), so the sweep is one jitted program, not one Python forward per cell.
    Returns ``[L, H]`` or ``[L, T]``.
    """
    model, params = unrolled(model, params)
    n_layers = model.config.n_layers
    short = point.split(".")[-1]
    if over not in ("heads", "positions"):
        raise ValueError(f"over={over!r}: choose 'heads' or 'positions'")
    if over == "heads" and short not in HEAD_AXIS:
        raise ValueError(f"{point} has no head axis; patch heads at one of {sorted(HEAD_AXIS)}")
    axis = HEAD_AXIS[short] if over == "heads" else POSITION_AXIS.get(short, 1)
    names = [f"blocks.{layer}.{point}" for layer in range(n_layers)]

    cache_key = (model.config, metric, point, over, batch_size)
    if cache_key in _SWEEPS:  # the compiled sweep is reused for the same model, metric and cells
        return _SWEEPS[cache_key](params, clean, corrupted)

    @jax.jit
    def sweep(params, clean, corrupted):
        _, source = run_with_cache(model, params, clean, names)
        n = source[names[0]].shape[axis]
        b = corrupted.shape[0]
        cells = n_layers * n
        chunk = min(batch_size or max(1, ROWS_PER_FORWARD // b), cells)
        n_chunks = -(-cells // chunk)
        # one-hot selectors [cells, L, n], padded with all-zero ones (no patch) to whole chunks
        selectors = jnp.eye(n_chunks * chunk, cells, dtype=bool).reshape(n_chunks, chunk, n_layers, n)

        def one_chunk(sel):  # [c, L, n]: c cells as c copies of the corrupted batch, one forward of c * B rows
            hooks = {}
            for layer, name in enumerate(names):
                shape = [chunk, 1] + [1] * (source[name].ndim - 1)
                shape[1 + axis] = n  # [c, 1, ..., n at the cell axis, ...]
                chosen = sel[:, layer].reshape(shape)

                def fn(x, c=chosen, s=source[name]):
                    x = x.reshape(chunk, b, *x.shape[1:])
                    return jnp.where(c, s.astype(x.dtype)[None], x).reshape(chunk * b, *x.shape[2:])

                hooks[name] = fn
            tokens = jnp.tile(corrupted, (chunk,) + (1,) * (corrupted.ndim - 1))
            logits = run_with_hooks(model, params, tokens, hooks)
            return jax.vmap(metric)(logits.reshape(chunk, b, *logits.shape[1:]))

        return jax.lax.map(one_chunk, selectors).reshape(-1)[:cells].reshape(n_layers, n)

    _SWEEPS[cache_key] = sweep
    return sweep(params, clean, corrupted)
