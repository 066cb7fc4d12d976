"""Hook points' cost when off, and the patching sweep against a Python loop of single-patch forwards.

    python -m experiments.bench.patching            # 4-layer model (shakespeare-char-cpu), prints two tables

Forward: the jitted ``model.apply`` (hook points present but off), the same forward with the hook
points deleted outright (``model.hook_points.point``/``record``/``active`` replaced by no-ops before
tracing, as tests/test_hooks.py::test_zero_cost_when_off does for the lowered text) and
``run_with_cache`` (every hook point cached), interleaved call by call; medians.

Sweep: :func:`model.hooks.patching_sweep` over every (layer, head) at ``attn.hook_z``: the cells as
copies of the corrupted batch in one forward (``--batch-size`` cells per chunk), against the earlier
design, the forward vmapped over one-hot selectors (kept here as ``vmapped_sweep`` to measure it), and
a loop: for each (layer, head) one forward with ``run_with_hooks`` + ``patch`` (jitted per layer, the
head index an argument, so 4 compiles for 16 cells). Each is timed cold (compile included) and warm
(best of the later runs; compiled programs are reused).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from model import hook_points as hp
from model import hooks
from model.config import get_preset
from model.transformer import Transformer


def _loss(tokens):
    def metric(logits):
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    return metric


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile()


def forward_table(model, params, tokens, rounds: int) -> list[tuple[str, float]]:
    """Median seconds per call of the three forwards, interleaved round by round."""
    plain = _compiled(lambda p, t: model.apply({"params": p}, t), params, tokens)
    saved = hp.point, hp.record, hp.active
    hp.point, hp.record, hp.active = (lambda m, n, x: x), (lambda m, n, make: None), (lambda m, n: False)
    try:
        bare = _compiled(lambda p, t: model.apply({"params": p}, t), params, tokens)
    finally:
        hp.point, hp.record, hp.active = saved
    cached = _compiled(lambda p, t: hooks.run_with_cache(model, p, t), params, tokens)
    fns = [
        ("forward, hook points off", plain),
        ("forward, hook points deleted", bare),
        ("run_with_cache (all)", cached),
    ]
    times: dict[str, list[float]] = {label: [] for label, _ in fns}
    for _ in range(rounds):
        for label, fn in fns:
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, tokens))
            times[label].append(time.perf_counter() - t0)
    return [(label, statistics.median(times[label])) for label, _ in fns]


def vmapped_sweep(model, params, clean, corrupted, metric):
    """The earlier patching_sweep: the forward vmapped over one-hot cell selectors (for comparison only)."""
    model, params = hooks.unrolled(model, params)
    n_layers = model.config.n_layers
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]

    @jax.jit
    def sweep(params, clean, corrupted):
        _, source = hooks.run_with_cache(model, params, clean, names)
        n = source[names[0]].shape[2]

        def one(selector):
            hk = {}
            for layer, name in enumerate(names):
                chosen = selector[layer].reshape(1, 1, n, 1) > 0
                hk[name] = lambda x, c=chosen, s=source[name]: jnp.where(c, s.astype(x.dtype), x)
            return metric(hooks.run_with_hooks(model, params, corrupted, hk))

        cells = jnp.eye(n_layers * n, dtype=jnp.float32).reshape(n_layers * n, n_layers, n)
        return jax.vmap(one)(cells).reshape(n_layers, n)

    return sweep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="shakespeare-char-cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each sweep (the first is cold)")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved calls of each forward")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="cells per chunk of the sweep (default: hooks.ROWS_PER_FORWARD // batch)",
    )
    args = ap.parse_args(argv)
    if min(args.batch, args.repeats, args.rounds) < 1 or (args.batch_size is not None and args.batch_size < 1):
        print("error: --batch, --repeats, --rounds and --batch-size must be >= 1")
        return 2
    cfg = get_preset(args.preset)
    model = Transformer(cfg)
    clean = jax.random.randint(jax.random.key(1), (args.batch, cfg.max_len), 0, cfg.vocab_size)
    corrupted = clean.at[:, cfg.max_len // 2].set((clean[:, cfg.max_len // 2] + 1) % cfg.vocab_size)
    params = model.init(jax.random.key(0), clean)["params"]
    metric = _loss(clean)
    m_u, p_u = hooks.unrolled(model, params)
    names = [f"blocks.{i}.attn.hook_z" for i in range(cfg.n_layers)]
    _, cache = jax.jit(lambda p, t: hooks.run_with_cache(m_u, p, t, names))(p_u, clean)
    print(
        f"{args.preset}: L={cfg.n_layers} H={cfg.n_heads} T={cfg.max_len} B={args.batch}, {jax.devices()[0].platform}"
    )

    forward = forward_table(model, params, clean, args.rounds)
    base = forward[1][1]
    print(f"\n{'forward (jitted, compiled once)':34s} {'median ms':>10s} {'/ deleted':>10s}")
    for label, t in forward:
        print(f"{label:34s} {1e3 * t:10.2f} {t / base:10.2f}")

    single = jax.jit(
        lambda p, src, t, head, layer: metric(
            hooks.run_with_hooks(m_u, p, t, {names[layer]: hooks.patch(src, heads=head[None])})
        ),
        static_argnums=4,
    )

    def loop():
        out = np.zeros((cfg.n_layers, cfg.n_heads))
        for layer in range(cfg.n_layers):
            for head in range(cfg.n_heads):
                out[layer, head] = single(p_u, cache[names[layer]], corrupted, jnp.int32(head), layer)
        return out

    def sweep():
        return np.asarray(hooks.patching_sweep(model, params, clean, corrupted, metric, batch_size=args.batch_size))

    old = vmapped_sweep(model, params, clean, corrupted, metric)
    chunk = args.batch_size or max(1, hooks.ROWS_PER_FORWARD // args.batch)
    n_cells = cfg.n_layers * cfg.n_heads

    def all_at_once():
        return np.asarray(hooks.patching_sweep(model, params, clean, corrupted, metric, batch_size=n_cells))

    methods = [
        (f"patching_sweep, chunks of {chunk} cells", sweep),
        (f"patching_sweep, all {n_cells} cells at once", all_at_once),
        ("vmapped over selectors (before)", lambda: np.asarray(old(p_u, clean, corrupted))),
        ("Python loop of single patches", loop),
    ]
    rows = []
    for label, fn in methods:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            table = fn()
            times.append(time.perf_counter() - t0)
        rows.append((label, times[0], min(times[1:] or times), table))
    loop_warm = rows[-1][2]
    print(f"\n{'sweep of every (layer, head)':40s} {'cold s':>8s} {'warm s':>8s} {'warm / loop':>12s}")
    for label, cold, warm, _ in rows:
        print(f"{label:40s} {cold:8.2f} {warm:8.3f} {warm / loop_warm:12.2f}")
    diff = max(float(np.max(np.abs(r[3] - rows[-1][3]))) for r in rows)
    print(f"max |sweep - loop| = {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
