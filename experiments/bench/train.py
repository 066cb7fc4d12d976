"""Training speed per preset: ms/step, tokens/s and MFU against this machine's measured matmul peak.

    python -m experiments.bench.train                                   # every preset
    python -m experiments.bench.train --presets shakespeare-char-cpu --steps 200
    python -m experiments.bench.train --presets shakespeare-char-cpu mesh.data=2   # dotted overrides

With torch installed (``pip install -e '.[bench]'``) the text presets are also timed in nanoGPT's
eager PyTorch step (experiments/bench/nanogpt_torch.py) on the same batches, interleaved chunk by chunk
with the JAX step so that both see the same machine load; the "x nanoGPT" column is the ratio of
tokens/s measured that way.

For each preset the jitted train step (train/step.py, exactly what ``python -m train`` runs) is
compiled, warmed up, then timed in chunks of steps with one device sync per chunk; the table shows
the median over chunks. Batches come from the preset's own data, drawn before timing (the loop
builds each next batch while the current step runs, so data preparation is not on the step's clock).

Model FLOPs per step, the formula of nanoGPT's ``estimate_mfu`` (PaLM appendix B):
``tokens * (6 * N + 12 * L * T * H * Dh)`` with N the parameters without the position table, L
layers, T the sequence length, H * Dh the attention width: 6N for the matmuls of forward and backward,
12 L T H Dh for the attention scores and weighted values. MFU = those FLOPs per second / peak, where
peak is the best of ten 2048 x 2048 float32 ``jnp.dot`` in the same process.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

from model.host import configure_xla, tune_host


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 GFLOP/s of an n x n jnp.dot over ``repeats`` calls (after one compile-and-run)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def model_flops_per_step(cfg, params_shapes) -> tuple[int, float]:
    """(N parameters without the position table, model FLOPs of one training step) by the formula above."""
    import jax

    n = sum(int(math.prod(x.shape)) for x in jax.tree.leaves(params_shapes))
    if "pos_embed" in params_shapes:
        n -= int(math.prod(params_shapes["pos_embed"].shape))
    m, t = cfg.model, cfg.seq_len
    per_token = 6 * n + 12 * m.n_layers * t * m.n_heads * m.head_dim
    return n, per_token * cfg.train.batch_size * t


def torch_baseline(cfg):
    """nanoGPT's eager step on ``cfg`` (a closure over int64 torch batches), or None without torch / for
    configs nanoGPT's model does not express (synthetic tasks, other positions, norms, biases...)."""
    from experiments.bench.nanogpt_torch import make_torch_step, torch_unsupported

    if torch_unsupported(cfg):
        return None
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    return make_torch_step(cfg)


def bench_preset(name: str, max_steps: int, max_seconds: float, overrides=(), with_torch: bool = True) -> dict:
    from model.sharding import use_mesh
    from train.config import apply_overrides, get_preset
    from train.data import build_dataset
    from train.distributed import sharding_plan

    cfg = apply_overrides(get_preset(name), overrides)
    ds = build_dataset(cfg.data, cfg.seq_len)
    if cfg.model.vocab_size < ds.vocab_size:
        cfg = cfg.replace(model=cfg.model.replace(vocab_size=ds.vocab_size))
    plan = sharding_plan(cfg)  # None on one device; else the loop's mesh, rules and shardings
    if plan is not None:
        with use_mesh(plan.mesh, plan.rules):
            return _bench(cfg, ds, plan, max_steps, max_seconds, with_torch)
    return _bench(cfg, ds, None, max_steps, max_seconds, with_torch)


def _bench(cfg, ds, plan, max_steps, max_seconds, with_torch) -> dict:
    import jax
    import numpy as np

    from train.step import build_steps

    tc, t = cfg.train, cfg.seq_len
    shardings = {} if plan is None else dict(state_sharding=plan.state_sharding, batch_sharding=plan.batch_sharding)
    steps = build_steps(cfg.model, tc, t, **shardings)
    state = steps.init()
    host = [ds.batch("train", i, tc.batch_size, t) for i in range(8)]
    target = jax.devices()[0] if plan is None else plan.batch_sharding
    batches = [jax.device_put(b, target) for b in host]
    n_params, flops = model_flops_per_step(cfg, state.params)
    torch_step = torch_baseline(cfg) if with_torch else None
    if torch_step is not None:
        import torch

        torch_batches = [(torch.from_numpy(b["inputs"]).long(), torch.from_numpy(b["targets"]).long()) for b in host]
        for i in range(3):  # warm-up
            torch_step(*torch_batches[i])

    t0 = time.perf_counter()
    state, m = steps.train_step(state, batches[0])  # compiles
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    state, m = steps.train_step(state, batches[1])  # one more warm-up step
    jax.block_until_ready(m)
    one = time.perf_counter() - t0 - compile_s
    chunk = max(1, min(25, int(0.5 / max(one, 1e-6))))  # about half a second per chunk
    per_step, torch_per_step, done, start = [], [], 0, time.perf_counter()
    while done < max_steps and (time.perf_counter() - start < max_seconds or len(per_step) < 3):
        t0 = time.perf_counter()
        for i in range(chunk):
            state, m = steps.train_step(state, batches[(done + i) % len(batches)])
        jax.block_until_ready(m)
        per_step.append((time.perf_counter() - t0) / chunk)
        if torch_step is not None:  # the same batches in nanoGPT's step, right after: the same machine load
            t0 = time.perf_counter()
            for i in range(chunk):
                torch_step(*torch_batches[(done + i) % len(batches)])
            torch_per_step.append((time.perf_counter() - t0) / chunk)
        done += chunk
    ms = 1e3 * statistics.median(per_step)
    assert np.isfinite(float(m["loss"]))
    torch_ms = 1e3 * statistics.median(torch_per_step) if torch_per_step else None
    return {
        "devices": 1 if plan is None else int(plan.mesh.devices.size),
        "torch_ms_per_step": torch_ms,
        "preset": cfg.name,
        "params": n_params,
        "tokens_per_step": tc.batch_size * t,
        "steps_timed": done,
        "ms_per_step": ms,
        "tokens_per_s": tc.batch_size * t / (ms / 1e3),
        "gflop_per_step": flops / 1e9,
        "gflop_per_s": flops / (ms / 1e3) / 1e9,
        "compile_s": compile_s,
    }


def main(argv: list[str] | None = None) -> int:
    tune_host()
    from train.config import PRESETS, SetupError, apply_overrides, get_preset

    p = argparse.ArgumentParser(prog="python -m experiments.bench.train", description=__doc__.split("\n")[0])
    p.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names (default: all)")
    p.add_argument("--steps", type=int, default=200, help="at most this many timed steps per preset")
    p.add_argument("--seconds", type=float, default=20.0, help="at most about this long per preset (>= 3 chunks)")
    p.add_argument("--no-torch", action="store_true", help="skip the nanoGPT PyTorch baseline")
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides for every preset, e.g. mesh.data=2"
    )
    args = p.parse_args(argv)
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        print(f"error: unknown preset {unknown[0]!r}; choose among {', '.join(PRESETS)}", file=sys.stderr)
        return 2
    try:  # bad overrides fail here, before jax starts; a mesh of several CPU devices is set up as `python -m train` does
        cfgs = [apply_overrides(get_preset(n), args.overrides) for n in names]
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfgs:
        configure_xla(cfgs[0])

    import jax

    peak = matmul_peak()
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s); fp32 matmul peak {peak:.0f} GFLOP/s")
    print("(best of 10 jnp.dot 2048x2048 in this process; MFU = model FLOPs/s / this peak)\n")
    if args.overrides:
        print(f"overrides: {' '.join(args.overrides)}")
    print(
        "| preset | devices | params (no pos.) | tokens/step | ms/step (median) | tokens/s | GFLOP/step | GFLOP/s "
        "| MFU | nanoGPT torch ms/step | x nanoGPT |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        try:
            r = bench_preset(name, args.steps, args.seconds, args.overrides, with_torch=not args.no_torch)
        except ValueError as e:  # e.g. no corpus for a text preset
            print(f"| {name} | skipped: {e} |")
            continue
        tms = r["torch_ms_per_step"]
        vs = f"{tms:.2f} | {tms / r['ms_per_step']:.2f}" if tms is not None else "– | –"
        print(
            f"| {name} | {r['devices']} | {r['params']:,} | {r['tokens_per_step']:,} | {r['ms_per_step']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {r['gflop_per_step']:.2f} | {r['gflop_per_s']:.0f} | "
            f"{100 * r['gflop_per_s'] / peak:.1f}% | {vs} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
