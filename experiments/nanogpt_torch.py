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

import math
from collections.abc import Callable


def make_model(m, seed: int = 0, *, gelu: str = "none", eps: float = 1e-5):
    """nanoGPT's GPT (see the module docstring) for the ModelConfig ``m``; ``forward(idx, targets=None)``
    returns the logits ``[B, T, V]``, or the mean cross-entropy when ``targets`` are given.

    ``gelu='tanh'`` and ``eps=1e-6`` give this project's GELU and LayerNorm (the tests compare logits);
    the defaults are nanoGPT's (exact GELU, PyTorch's eps 1e-5)."""
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
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

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
