"""Sampling speed: this project's cached, one-jit sampler against nanoGPT's uncached eager sampler.

    python -m experiments.bench.sample                                  # shakespeare-char-cpu, 500 tokens, batch 1
    python -m experiments.bench.sample --run-dir runs/shakespeare-char-cpu --tokens 500

Both draw ``--tokens`` new tokens at batch 1 (temperature 1) from the same prompt length, in rounds
that alternate the two samplers so that both see the same machine load; the table shows the median
and best round. The JAX side is :func:`train.sample.make_generate` (prefill, then a ``lax.scan`` over
new tokens with a key/value cache, the whole loop in one jit); the PyTorch side is nanoGPT's
``GPT.generate`` (experiments/bench/nanogpt_torch.py: the cropped context runs through the model again for
every token). Speed does not depend on the weights, so without ``--run-dir`` both use fresh
initialisations of the preset's model; with it, the JAX side samples from the run's parameters.
It also prints the largest difference between the cached sampler's logits and a full forward pass
over the same context (the correctness half of the claim).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from model.host import tune_host


def main(argv: list[str] | None = None) -> int:
    tune_host()
    p = argparse.ArgumentParser(prog="python -m experiments.bench.sample", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="shakespeare-char-cpu", help="the model of this preset (default: %(default)s)")
    p.add_argument("--run-dir", default=None, help="sample from this run's parameters (its config's model)")
    p.add_argument("--tokens", type=int, default=500, help="new tokens per sample (default: %(default)s)")
    p.add_argument("--prompt-len", type=int, default=8, help="prompt tokens (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per sampler (default: %(default)s)")
    p.add_argument("--no-torch", action="store_true", help="skip the nanoGPT PyTorch sampler")
    args = p.parse_args(argv)
    if args.tokens < 1 or args.rounds < 1 or args.prompt_len < 1:
        print("error: --tokens, --rounds and --prompt-len must be >= 1", file=sys.stderr)
        return 2

    import jax
    import jax.numpy as jnp
    import numpy as np

    from model.transformer import Transformer
    from train.config import get_preset, load_run_config
    from train.sample import SamplingConfig, load_params, make_generate

    if args.run_dir:
        try:
            model, params = load_params(args.run_dir, load_run_config(args.run_dir))
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        model_cfg = model.config
    else:
        model_cfg = get_preset(args.preset).model
        model, params = Transformer(model_cfg), None
    prompt_len = min(args.prompt_len, model_cfg.max_len)
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, model_cfg.vocab_size, (1, prompt_len)), jnp.int32)
    if params is None:
        params = model.init(jax.random.key(0), prompt)["params"]

    sc = SamplingConfig(temperature=1.0)
    generate = make_generate(model, prompt_len, args.tokens, sc)  # what train.sample runs: tokens only
    t0 = time.perf_counter()
    jax.block_until_ready(generate(params, prompt, jax.random.key(0)))
    compile_s = time.perf_counter() - t0
    with_logits = make_generate(model, prompt_len, args.tokens, sc, return_logits=True)
    tokens, logits = with_logits(params, prompt, jax.random.key(0))

    # correctness: the logits of each drawn token against a full forward pass over the same context
    # (only while the context fits the window, where both see exactly the same tokens)
    seq = jnp.concatenate([prompt, tokens], axis=1)
    n_check = min(args.tokens, model_cfg.max_len - prompt_len + 1)
    full = jax.jit(model.apply)({"params": params}, seq[:, : prompt_len + n_check - 1])
    diff = float(jnp.max(jnp.abs(full[:, prompt_len - 1 :] - logits[:, :n_check])))

    torch_gen = None
    if not args.no_torch:
        try:
            import torch

            from experiments.bench.nanogpt_torch import generate as torch_generate
            from experiments.bench.nanogpt_torch import make_model
        except ImportError:
            print("(torch not installed: `pip install -e '.[bench]'` adds the nanoGPT sampler)")
        else:
            tmodel = make_model(model_cfg).train(False)  # inference mode
            tprompt = torch.from_numpy(np.array(prompt)).long()
            torch.manual_seed(0)

            def torch_gen():
                return torch_generate(tmodel, tprompt, args.tokens)

            torch_gen()  # warm-up

    times: dict[str, list[float]] = {"jax": [], "torch": []}
    for r in range(args.rounds):
        t0 = time.perf_counter()
        jax.block_until_ready(generate(params, prompt, jax.random.key(r + 1)))
        times["jax"].append(time.perf_counter() - t0)
        if torch_gen is not None:
            t0 = time.perf_counter()
            torch_gen()
            times["torch"].append(time.perf_counter() - t0)

    print(
        f"backend {jax.default_backend()}; model {model_cfg.n_layers} layers x {model_cfg.d_model} wide, "
        f"max_len {model_cfg.max_len}; {args.tokens} new tokens at batch 1 after a {prompt_len}-token prompt; "
        f"{args.rounds} alternating rounds; JAX compile {compile_s:.1f} s"
    )
    print(f"cached vs full-forward logits, first {n_check} tokens: max abs difference {diff:.2e}\n")
    print("| sampler | median ms | tokens/s (median) | tokens/s (best round) |")
    print("|---|---:|---:|---:|")
    rows = {"jax": "this project (KV cache, one jit)", "torch": "nanoGPT generate (PyTorch eager, no cache)"}
    med = {}
    for key, label in rows.items():
        if not times[key]:
            continue
        med[key] = statistics.median(times[key])
        best = min(times[key])
        print(f"| {label} | {med[key] * 1e3:.1f} | {args.tokens / med[key]:,.0f} | {args.tokens / best:,.0f} |")
    if "torch" in med:
        print(f"\nspeed-up over nanoGPT (medians, same rounds): {med['torch'] / med['jax']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
