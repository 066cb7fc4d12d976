"""The patching sweep against a Python loop of single-patch forwards, and the plain forward with hook points.

    python -m experiments.bench.patching            # 4-layer model (shakespeare-char-cpu), prints a table

Sweep: :func:`model.hooks.patching_sweep` over every (layer, head) at ``attn.hook_z``, one jitted
lax.map of vmapped one-hot selectors. Loop: for each (layer, head) one forward with
``run_with_hooks`` + ``patch`` (jitted per layer, the head index an argument, so 4 compiles for 16
cells). Both are timed cold (compile included) and warm (best of the later runs; the sweep's
compiled program is reused).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from model import hooks
from model.config import get_preset
from model.transformer import Transformer


def _loss(tokens):
    def metric(logits):
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    return metric


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="shakespeare-char-cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None, help="cells vmapped at a time (default: all)")
    args = ap.parse_args(argv)
    cfg = get_preset(args.preset)
    model = Transformer(cfg)
    clean = jax.random.randint(jax.random.key(1), (args.batch, cfg.max_len), 0, cfg.vocab_size)
    corrupted = clean.at[:, cfg.max_len // 2].set((clean[:, cfg.max_len // 2] + 1) % cfg.vocab_size)
    params = model.init(jax.random.key(0), clean)["params"]
    metric = _loss(clean)
    m_u, p_u = hooks.unrolled(model, params)
    names = [f"blocks.{i}.attn.hook_z" for i in range(cfg.n_layers)]
    _, cache = jax.jit(lambda p, t: hooks.run_with_cache(m_u, p, t, names))(p_u, clean)

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

    rows = []
    for label, fn in [("vmapped sweep (1 jitted call)", sweep), ("Python loop of single patches", loop)]:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            table = fn()
            times.append(time.perf_counter() - t0)
        rows.append((label, times[0], min(times[1:] or times), table))
    diff = float(np.max(np.abs(rows[0][3] - rows[1][3])))
    print(
        f"{args.preset}: L={cfg.n_layers} H={cfg.n_heads} T={cfg.max_len} B={args.batch}, {jax.devices()[0].platform}"
    )
    print(f"{'method':34s} {'cold s':>8s} {'warm s':>8s}")
    for label, cold, warm, _ in rows:
        print(f"{label:34s} {cold:8.2f} {warm:8.2f}")
    print(f"max |sweep - loop| = {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
