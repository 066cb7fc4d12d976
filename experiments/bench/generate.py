"""Sampling a GPT-2 at batch 1: our cached one-jit sampler against transformers' ``generate`` with its cache.

    PYTHONPATH=$PWD /work/peer-venv/bin/python -m experiments.bench.generate            # gpt2-small shape
    PYTHONPATH=$PWD /work/peer-venv/bin/python -m experiments.bench.generate --tokens 256 --rounds 5

Needs torch and transformers next to jax (the project's venv has no torch: run it from a venv that has
both). Both models have the gpt2-small shape (12 layers, width 768, 12 heads, 1024 positions, vocabulary
50257) with random weights: speed does not depend on the weights, and no weights are downloaded. Each
draws ``--tokens`` new tokens (temperature 1, no top-k) after an 8-token prompt, in rounds that
alternate the two samplers so that both see the same machine load; the table shows the median and the
best round. Ours: :func:`train.sample.make_generate` (prefill, then a ``lax.scan`` over new tokens with a
key/value cache, the whole loop in one jit; compile excluded). transformers: ``GPT2LMHeadModel.generate``
with ``use_cache=True``, ``do_sample=True``, ``min_new_tokens = max_new_tokens`` (so it never stops
early), under ``torch.inference_mode`` in float32 (one warm-up call excluded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.bench.generate", description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=128, help="new tokens per sample (default: %(default)s)")
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per sampler (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        import torch
        import transformers
    except ImportError:
        print("error: this benchmark needs torch and transformers (run it from /work/peer-venv)", file=sys.stderr)
        return 2
    import jax
    import jax.numpy as jnp
    import numpy as np

    from model.config import get_preset
    from model.transformer import Transformer
    from train.sample import SamplingConfig, make_generate

    cfg = get_preset("gpt2-small").replace(norm_eps=1e-5, dropout=0.0)
    n, t0 = args.tokens, args.prompt_len
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, t0)).astype(np.int32)

    # ours
    model = Transformer(cfg)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, t0), jnp.int32))["params"]
    generate = make_generate(model, t0, n, SamplingConfig(temperature=1.0))
    start = time.perf_counter()
    compiled = generate.lower(params, jnp.asarray(prompt), jax.random.key(0)).compile()
    compile_s = time.perf_counter() - start

    def ours(i):
        np.asarray(compiled(params, jnp.asarray(prompt), jax.random.key(i)))

    # transformers
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads)
    )
    hf_model.train(False)  # inference mode (torch's Module.eval), no dropout
    ids = torch.from_numpy(prompt.astype(np.int64))

    def theirs(i):
        torch.manual_seed(i)
        with torch.inference_mode():
            out = hf_model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=True,
                top_k=0,
                use_cache=True,
                pad_token_id=0,
            )
        assert out.shape[1] == t0 + n

    ours(0)
    theirs(0)
    times: dict[str, list[float]] = {"ours (JAX, cached, one jit)": [], "transformers generate (cache)": []}
    for r in range(args.rounds):
        for name, fn in [(k, ours if k.startswith("ours") else theirs) for k in times][:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            fn(r + 1)
            times[name].append(time.perf_counter() - start)

    print(
        f"gpt2-small shape (random weights), batch 1, {t0}-token prompt, {n} new tokens, {args.rounds} rounds; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}; our compile {compile_s:.1f} s\n"
    )
    print("| sampler | median tokens/s | best tokens/s |\n|---|---:|---:|")
    speed = {}
    for name, ts in times.items():
        speed[name] = n / statistics.median(ts)
        print(f"| {name} | {speed[name]:.1f} | {n / min(ts):.1f} |")
    a, b = speed.values()
    print(f"\nratio (ours / transformers, median): {a / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
