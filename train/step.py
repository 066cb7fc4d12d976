"""The training step and the evaluation step: pure functions of (state, batch), jitted with optional shardings.

    steps = build_steps(cfg.model, cfg.train, cfg.seq_len)          # model, optimizer, jitted functions
    state = steps.init()                                              # a fresh TrainState, built under jit
    state, metrics = steps.train_step(state, batch)                   # batch: inputs/targets/loss_mask [B, T]
    sums = steps.eval_step(state.params, batch)                       # {'loss_sum', 'correct', 'count'}

The model and optimizer of a (model config, train config) are built in one place,
:func:`model_and_optimizer`; :func:`build_steps` and the sharding plan (train/distributed.py, which
needs the state's shapes) both take them from there.

Sharding (train/distributed.py builds them): ``state_sharding`` is a TrainState-shaped pytree (or a prefix
of one) of ``jax.sharding.Sharding``; ``batch_sharding`` the same for the batch dict. When given they
become the jit's in/out shardings, and the state is born with them (``steps.init()``), never
materialised elsewhere first.

Optimizer (nanoGPT's): AdamW with decoupled weight decay on the matrices and embeddings only (not
biases or norm scales), global-norm clipping, a linear warmup then cosine decay (or constant).
Gradient accumulation is a ``lax.scan`` over microbatches that sums the *unnormalised* masked loss
and divides once by the total number of counted tokens, so the update equals the big batch's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from model.config import ModelConfig
from model.transformer import Transformer, token_losses
from train.config import TrainConfig

Batch = dict[str, jax.Array]  # inputs [B, T] int32, targets [B, T] int32, loss_mask [B, T] float32
Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training. ``step`` counts optimizer updates (and is the data position)."""

    step: jax.Array  # int32 scalar: updates applied so far; batch number `step` is the next one
    params: Any  # the model's parameters (a plain nested dict)
    opt_state: Any  # the optimizer's state (optax)


# ---------------------------------------------------------------------------- optimizer
def make_schedule(tc: TrainConfig) -> optax.Schedule:
    """nanoGPT's get_lr: lr * (s+1)/(warmup+1) for s < warmup, then cosine to min_lr at decay_steps (or constant).

    optax's linear warmup from lr/(warmup+1) to lr over ``warmup`` steps is exactly nanoGPT's formula.
    """
    lr, warmup = tc.lr, tc.warmup_steps
    decay = tc.decay_steps if tc.decay_steps is not None else tc.steps
    if tc.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules(
            [optax.linear_schedule(lr / (warmup + 1), lr, warmup), optax.constant_schedule(lr)], [warmup]
        )
    if warmup == 0:
        return optax.cosine_decay_schedule(lr, decay, alpha=tc.min_lr / lr)
    return optax.warmup_cosine_decay_schedule(lr / (warmup + 1), lr, warmup, max(decay, warmup + 1), tc.min_lr)


def decay_mask(params: Any) -> Any:
    """True for the parameters that get weight decay: matrices and embeddings (unscanned rank >= 2), as in nanoGPT.

    Decided by name, so the extra leading layer axis of scanned block parameters does not count:
    biases ('*bias') and norm scales ('scale') are never decayed, everything else is a map or an
    embedding of rank >= 2 (``model.sharding.LOGICAL_AXES``).
    """

    def decayed(path, leaf) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale" or name == "bias" or name.endswith("_bias"):
            return False
        scanned = any(getattr(k, "key", None) == "blocks" for k in path)
        return leaf.ndim - int(scanned) >= 2

    return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(tc: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(clip -> AdamW with masked weight decay, the learning-rate schedule)."""
    schedule = make_schedule(tc)
    parts = []
    if tc.grad_clip:  # None or 0 disables clipping
        parts.append(optax.clip_by_global_norm(tc.grad_clip))
    parts.append(
        optax.adamw(schedule, b1=tc.beta1, b2=tc.beta2, eps=tc.eps, weight_decay=tc.weight_decay, mask=decay_mask)
    )
    return optax.chain(*parts), schedule


# ---------------------------------------------------------------------------- state
def state_initializer(model: Transformer, tx: optax.GradientTransformation, seed: int, seq_len: int) -> Callable:
    """A function of no arguments that builds the TrainState (params from ``key(seed)``, fresh optimizer state)."""

    def init() -> TrainState:
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        params = model.init(jax.random.key(seed), tokens)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    return init


def abstract_state(model: Transformer, tx: optax.GradientTransformation, seq_len: int, state_sharding=None):
    """The TrainState as ``jax.ShapeDtypeStruct`` leaves (no allocation), with shardings when given.

    This is the target Orbax restores into. Without ``state_sharding`` every leaf gets the default
    device's sharding, so a restored state lands where ``Steps.init`` would have put it.
    """
    shapes = jax.eval_shape(state_initializer(model, tx, 0, seq_len))
    if state_sharding is None:
        state_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = _broadcast_prefix(state_sharding, shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def _committed(state_sharding):
    """``state_sharding``, or the default device when None: a fresh state is then *committed* to it.

    A restored state and every state the train step returns are committed; a fresh uncommitted one
    would make jit compile the step a second time at step 2 (a committed input changes the cache key).
    """
    return state_sharding if state_sharding is not None else jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _broadcast_prefix(prefix, tree):
    """Expand a pytree prefix of shardings (e.g. one sharding for everything) to the full structure of ``tree``."""
    treedef = jax.tree_util.tree_structure(prefix)  # shardings are leaves
    subtrees = treedef.flatten_up_to(tree)
    expanded = [jax.tree.map(lambda _, p=p: p, sub) for p, sub in zip(jax.tree.leaves(prefix), subtrees, strict=True)]
    return treedef.unflatten(expanded)


# ---------------------------------------------------------------------------- losses
def masked_sums(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of masked cross-entropies, number of masked positions predicted right, number of masked positions).

    logits ``[B, T, V]``, targets ``[B, T]`` int, loss_mask ``[B, T]`` (1 = counts). Float32 scalars;
    sums rather than means so that microbatches and eval batches add up exactly. The cross-entropy
    is the model's (``model.transformer.token_losses``).
    """
    losses = token_losses(logits, targets)  # [B, T]
    m = loss_mask.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(losses * m), jnp.sum(correct * m), jnp.sum(m)


def loss_and_grads(
    model: Transformer, params, batch: Batch, rng: jax.Array, grad_accum: int = 1, train: bool = True
) -> tuple[jax.Array, jax.Array, Any]:
    """(masked mean loss, masked accuracy, gradient of the mean loss) of one batch, in ``grad_accum`` microbatches.

    batch leaves ``[B, T]`` with B a multiple of ``grad_accum``; microbatch ``i`` gets dropout key
    ``fold_in(rng, i)``. The gradient is the sum of the microbatches' gradients of the *summed* loss
    divided by the batch's total count of masked positions: the big batch's gradient, up to the order
    of float additions.
    """

    def summed_loss(p, micro, key):
        logits = model.apply({"params": p}, micro["inputs"], train=train, rngs={"dropout": key})
        loss_sum, correct, count = masked_sums(logits, micro["targets"], micro["loss_mask"])
        return loss_sum, (correct, count)

    grad_fn = jax.value_and_grad(summed_loss, has_aux=True)
    if grad_accum == 1:
        (loss_sum, (correct, count)), grads = grad_fn(params, batch, jax.random.fold_in(rng, 0))
    else:
        # [B, T] -> [A, B/A, T]: microbatch i is rows i*B/A .. (i+1)*B/A - 1 of the batch
        micro = jax.tree.map(lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch)

        def body(carry, xs):
            i, mb = xs
            (ls, (c, n)), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, carry, (g, ls, c, n)), None

        zero = jnp.zeros((), jnp.float32)
        init = (jax.tree.map(jnp.zeros_like, params), zero, zero, zero)
        (grads, loss_sum, correct, count), _ = jax.lax.scan(body, init, (jnp.arange(grad_accum), micro))
    denom = jnp.maximum(count, 1.0)  # a batch with nothing to count has loss 0 and zero gradients
    grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
    return loss_sum / denom, correct / denom, grads


# ---------------------------------------------------------------------------- steps
def make_train_step(
    model: Transformer,
    tx: optax.GradientTransformation,
    tc: TrainConfig,
    schedule: optax.Schedule | None = None,
    *,
    state_sharding=None,
    batch_sharding=None,
    donate: bool = True,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The jitted step ``(state, batch) -> (state + one update, metrics)``; the input state is donated.

    metrics: ``loss`` (masked mean cross-entropy of this batch, before the update), ``accuracy``
    (masked), ``grad_norm`` (global norm before clipping), ``lr`` (of this update); float32 scalars.
    Dropout key of step s: ``fold_in(key(tc.seed), s)``, so a resumed run draws the same masks.
    """
    base_key = tc.seed

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(jax.random.key(base_key), state.step)
        loss, accuracy, grads = loss_and_grads(model, state.params, batch, rng, tc.grad_accum)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # NaN/Inf guard: a non-finite loss, gradient or update is refused (params and optimizer state
        # kept bit for bit; the step still advances past the batch); the loop counts and stops on a streak
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old), (params, opt_state), (state.params, state.opt_state)
        )
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": grad_norm, "nonfinite": (~finite).astype(jnp.int32)}
        metrics["lr"] = jnp.asarray(schedule(state.step) if schedule is not None else jnp.nan, jnp.float32)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    kwargs: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
    if state_sharding is not None or batch_sharding is not None:
        kwargs["in_shardings"] = (state_sharding, batch_sharding)
        kwargs["out_shardings"] = (state_sharding, None)
    return jax.jit(step, **kwargs)


def make_eval_step(model: Transformer, *, params_sharding=None, batch_sharding=None) -> Callable[[Any, Batch], Metrics]:
    """The jitted ``(params, batch) -> {'loss_sum', 'correct', 'count'}`` (sums over masked positions, float32)."""

    def evaluate(params, batch: Batch) -> Metrics:
        logits = model.apply({"params": params}, batch["inputs"], train=False)
        loss_sum, correct, count = masked_sums(logits, batch["targets"], batch["loss_mask"])
        return {"loss_sum": loss_sum, "correct": correct, "count": count}

    kwargs: dict[str, Any] = {}
    if params_sharding is not None or batch_sharding is not None:
        kwargs["in_shardings"] = (params_sharding, batch_sharding)
    return jax.jit(evaluate, **kwargs)


# ---------------------------------------------------------------------------- all of it, compiled once
@dataclasses.dataclass(frozen=True)
class Steps:
    """The model, optimizer and jitted functions of one (model config, train config, seq_len)."""

    model: Transformer
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    seq_len: int
    init: Callable[[], TrainState]  # jitted; a fresh state (with the state sharding when given)
    train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    eval_step: Callable[[Any, Batch], Metrics]
    state_sharding: Any = None

    def abstract_state(self):
        return abstract_state(self.model, self.tx, self.seq_len, self.state_sharding)


def _compile_key(tc: TrainConfig) -> TrainConfig:
    """``tc`` without the fields that only say when to log, evaluate or save (they change no compiled function)."""
    key = dataclasses.replace(
        tc,
        eval_every=1,
        eval_batches=1,
        log_every=1,
        checkpoint_every=1,
        keep_checkpoints=1,
        async_checkpoint=False,
        memory_check=True,
    )
    if tc.schedule == "constant" or tc.decay_steps is not None:  # then the schedule ignores train.steps
        key = dataclasses.replace(key, steps=max(1, tc.warmup_steps))
    return key


def model_and_optimizer(
    model_config: ModelConfig, tc: TrainConfig
) -> tuple[Transformer, optax.GradientTransformation, optax.Schedule]:
    """(Transformer, optimizer, learning-rate schedule) of a run: the one place they are built (cached)."""
    return _model_and_optimizer(model_config, _compile_key(tc))


@functools.lru_cache(maxsize=8)
def _model_and_optimizer(model_config: ModelConfig, tc: TrainConfig):
    tx, schedule = make_optimizer(tc)
    return Transformer(model_config), tx, schedule


def state_shapes(model_config: ModelConfig, tc: TrainConfig, seq_len: int) -> TrainState:
    """The TrainState of a run as ``jax.ShapeDtypeStruct`` leaves without shardings (nothing is allocated)."""
    model, tx, _ = model_and_optimizer(model_config, tc)
    return jax.eval_shape(state_initializer(model, tx, 0, seq_len))


def build_steps(
    model_config: ModelConfig, tc: TrainConfig, seq_len: int, *, state_sharding=None, batch_sharding=None
) -> Steps:
    """Model, optimizer and jitted init / train / eval steps. Unsharded builds are cached per (configs, seq_len).

    jax.jit caches compiled executables per function object, so the cache lets several runs in one
    process (a sweep, a resumed run, the tests) share compilations.
    """
    key = _compile_key(tc)
    try:  # single shardings (or None) are hashable; a TrainState of shardings is not
        hash((state_sharding, batch_sharding))
    except TypeError:
        return _build_steps(model_config, key, seq_len, state_sharding, batch_sharding)
    return _cached_steps(model_config, key, seq_len, state_sharding, batch_sharding)


@functools.lru_cache(maxsize=8)
def _cached_steps(model_config: ModelConfig, tc: TrainConfig, seq_len: int, state_sharding, batch_sharding) -> Steps:
    return _build_steps(model_config, tc, seq_len, state_sharding, batch_sharding)


def _build_steps(model_config, tc, seq_len, state_sharding, batch_sharding) -> Steps:
    model, tx, schedule = model_and_optimizer(model_config, tc)
    init = jax.jit(state_initializer(model, tx, tc.seed, seq_len), out_shardings=_committed(state_sharding))
    train_step = make_train_step(model, tx, tc, schedule, state_sharding=state_sharding, batch_sharding=batch_sharding)
    params_sharding = state_sharding
    if state_sharding is not None and not isinstance(state_sharding, jax.sharding.Sharding):
        params_sharding = state_sharding.params  # a TrainState of shardings
    eval_step = make_eval_step(model, params_sharding=params_sharding, batch_sharding=batch_sharding)
    return Steps(model, tx, schedule, seq_len, init, train_step, eval_step, state_sharding)
