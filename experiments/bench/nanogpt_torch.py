"""nanoGPT's model and training step in eager PyTorch: the baseline that bench_train times side by side.

The issue's bar is "x times nanoGPT's tokens/s on the same machine". nanoGPT itself is not a
dependency, so this module rebuilds the parts of its ``model.py`` / ``train.py`` that a CPU step runs,
for the configs this project's text presets use: a pre-norm GPT with learned positions, bias-free
LayerNorms and Linears (nanoGPT's ``bias=False``), one fused q/k/v Linear, causal
``F.scaled_dot_product_attention``, exact GELU, tied embeddings, GPT-2 initialisation (std 0.02,
``c_proj`` layers 0.02 / sqrt(2 L)), AdamW with weight decay on rank >= 2 tensors, global-norm
clipping, ``zero_grad(set_to_none=True)``. Eager mode, as nanoGPT's documented CPU run
(``--compile=False``). Needs the optional extra ``pip install -e '.[bench]'`` (torch).

    step = make_torch_step(cfg)          # cfg: a train.config.RunConfig
    loss = step(inputs, targets)         # int64 [B, T] torch tensors -> float
    model = make_model(cfg.model)        # the nn.Module alone
    ids = generate(model, prompt, 500)   # nanoGPT's sampler: no cache, the cropped context every token
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable


def make_model(m, seed: int = 0, *, gelu: str = "none", eps: float = 1e-5):
    """nanoGPT's GPT (see the module docstring) for the ModelConfig ``m``; ``forward(idx, targets=None)``
    returns the logits ``[B, T, V]``, or the mean cross-entropy when ``targets`` are given.

    ``gelu='tanh'`` and ``eps=1e-6`` give ModelConfig's default GELU and LayerNorm (the tests compare logits);
    the defaults are nanoGPT's (exact GELU, PyTorch's eps 1e-5), which the shakespeare-char presets use."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.manual_seed(seed)
    d, h, n_layers, t_max, vocab = m.d_model, m.n_heads, m.n_layers, m.max_len, m.vocab_size

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(d, eps=eps, bias=False)
            self.c_attn = nn.Linear(d, 3 * d, bias=False)
            self.attn_proj = nn.Linear(d, d, bias=False)
            self.ln_2 = nn.LayerNorm(d, eps=eps, bias=False)
            self.c_fc = nn.Linear(d, m.mlp_dim, bias=False)
            self.mlp_proj = nn.Linear(m.mlp_dim, d, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
            q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, d))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate=gelu))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, d)
            self.wpe = nn.Embedding(t_max, d)
            self.blocks = nn.ModuleList(Block() for _ in range(n_layers))
            self.ln_f = nn.LayerNorm(d, eps=eps, bias=False)
            self.lm_head = nn.Linear(d, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * n_layers) if name.endswith("proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx, targets=None):
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for block in self.blocks:
                x = block(x)
            logits = self.lm_head(self.ln_f(x))
            if targets is None:
                return logits
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    return GPT()


def make_torch_step(cfg) -> Callable:
    """One nanoGPT training step (forward, backward, clip, AdamW) on ``cfg``'s model, as a closure."""
    import torch

    model = make_model(cfg.model, cfg.train.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    tc = cfg.train
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr,
        betas=(tc.beta1, tc.beta2),
        eps=tc.eps,
    )

    def step(inputs, targets) -> float:
        loss = model(inputs, targets)
        loss.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # nanoGPT reads the loss every iteration (its log line)

    step.model, step.optimizer = model, opt
    return step


def generate(model, idx, max_new_tokens: int, temperature: float = 1.0):
    """nanoGPT's ``GPT.generate``: each new token runs the whole (cropped) context again, no cache."""
    import torch

    t_max = model.wpe.num_embeddings
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(idx[:, -t_max:])[:, -1, :] / temperature
            probs = torch.softmax(logits, dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
    return idx


def train_and_evaluate(cfg, seed: int, eval_batches: int = 300, log=print) -> dict:
    """nanoGPT's training run of ``cfg`` (a text RunConfig) in PyTorch; val loss after ``cfg.train.steps``.

    nanoGPT's loop: random training windows drawn with its own generator (seeded by ``seed``), its
    get_lr (linear warmup, cosine to min_lr at decay_steps), the step of :func:`make_torch_step`. The
    validation loss is the mean over the same ``eval_batches`` batches ``python -m train`` evaluates
    (``ds.batch('val', i)``, i < eval_batches), so the two frameworks are scored on identical text.
    """
    import numpy as np
    import torch

    from train.data import build_dataset

    tc, t = cfg.train, cfg.seq_len
    ds = build_dataset(cfg.data, t)
    model_cfg = cfg.model.replace(vocab_size=ds.vocab_size)
    cfg = cfg.replace(model=model_cfg, train=dataclasses.replace(tc, seed=seed))
    step = make_torch_step(cfg)
    model = step.model
    rng = np.random.default_rng(seed)
    train_tokens = np.asarray(ds.split_tokens("train"), dtype=np.int64)
    decay = tc.decay_steps if tc.decay_steps is not None else tc.steps

    def lr_at(it: int) -> float:  # nanoGPT's get_lr, written out: the baseline shares no code with train/step.py
        if it < tc.warmup_steps:
            return tc.lr * (it + 1) / (tc.warmup_steps + 1)
        ratio = min(1.0, (it - tc.warmup_steps) / max(1, decay - tc.warmup_steps))
        return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (tc.lr - tc.min_lr)

    for it in range(tc.steps):
        for group in step.optimizer.param_groups:
            group["lr"] = lr_at(it)
        starts = rng.integers(0, len(train_tokens) - t, tc.batch_size)
        windows = torch.from_numpy(train_tokens[starts[:, None] + np.arange(t + 1)])
        loss = step(windows[:, :-1], windows[:, 1:])
        if it % 250 == 0:
            log(f"step {it}: train loss {loss:.4f}")
    model.train(False)  # inference mode
    total = count = 0.0
    with torch.no_grad():
        for i in range(eval_batches):
            b = ds.batch("val", i, tc.batch_size, t)
            x, y = torch.from_numpy(b["inputs"]).long(), torch.from_numpy(b["targets"]).long()
            total += model(x, y).item() * y.numel()
            count += y.numel()
    return {"seed": seed, "steps": tc.steps, "val_loss": total / count, "eval_batches": eval_batches}


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.bench.nanogpt_torch [--seeds 1337 1] [KEY=VALUE ...]``: nanoGPT's run in PyTorch."""
    import argparse
    import sys
    import time

    from train.config import SetupError, apply_overrides, get_preset

    p = argparse.ArgumentParser(prog="python -m experiments.bench.nanogpt_torch", description=main.__doc__)
    p.add_argument("--config", default="shakespeare-char-cpu", help="a text preset (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337], help="nanoGPT seeds (default: 1337)")
    p.add_argument("--eval-batches", type=int, default=300, help="validation batches (default: %(default)s)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        cfg = apply_overrides(get_preset(args.config), args.overrides)
        if why := torch_unsupported(cfg):
            raise SetupError(f"{args.config}: {why}")
    except (SetupError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("| seed | steps | val loss | validation batches | wall s |\n|---:|---:|---:|---:|---:|", flush=True)
    for seed in args.seeds:
        t0 = time.perf_counter()
        r = train_and_evaluate(cfg, seed, args.eval_batches, log=lambda m: print(m, file=sys.stderr))
        print(f"| {seed} | {r['steps']} | {r['val_loss']:.4f} | {r['eval_batches']} | {time.perf_counter() - t0:.0f} |")
    return 0


def torch_unsupported(cfg) -> str | None:
    """Why nanoGPT's model cannot express ``cfg`` (None when it can)."""
    m = cfg.model
    checks = {
        "a text task": cfg.data.task == "text",
        "learned positions": m.positions == "learned",
        "LayerNorm": m.norm == "layernorm",
        "the factored value map": m.value_map == "factored",
        "an MLP": m.mlp,
        "the causal mask": m.causal,
        "tied embeddings": m.tie_embeddings,
        "no biases": not m.use_bias,
        "as many key/value heads as query heads": m.kv_heads == m.n_heads,
        "d_head * n_heads == d_model": m.head_dim * m.n_heads == m.d_model,
        "no dropout": m.dropout == 0.0 and m.attention_dropout == 0.0,
        "float32": m.dtype == "float32",
        "no embedding scale": not getattr(m, "embed_scale", False),
        "no gradient accumulation": cfg.train.grad_accum == 1,
    }
    missing = [k for k, ok in checks.items() if not ok]
    return f"nanoGPT's model needs {', '.join(missing)}" if missing else None


if __name__ == "__main__":
    import sys

    sys.exit(main())
