"""Memory preflight: will a run fit? Estimated from shapes before anything is allocated or compiled.

    est = estimate(cfg)                    # bytes: parameters, optimizer, gradients, activations, runtime
    check(cfg)                             # raises MemoryCheckError (one line, both numbers) if it cannot fit

The training state's size comes from ``jax.eval_shape`` of the state of the same model with 1 and 2
layers (every block adds the same parameters and optimizer state), so a model of 100,000 layers is
never traced. Activations are a formula in the shapes, per layer and token of a microbatch, calibrated
against the compiled train step's ``memory_analysis()`` temporaries of the presets (float32; the CPU
backend keeps several copies of the scores and the MLP's hidden units for the backward pass)::

    activations = L * B_micro * T * 4 * (ACT_D * D + ACT_MLP * d_mlp + ACT_SCORES * H * T) + logits
    logits      = B_micro * T * V * 4 * ACT_LOGITS

With remat the blocks keep only their inputs (plus one block's temporaries). The rest of the process
(Python, jax, XLA's compiled code and thread pools) is ``RUNTIME_BYTES``, measured as the peak RSS of
a tiny run. README "Memory preflight" compares estimates with measured peaks.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from train.config import RunConfig, SetupError

GB = 1e9
# per-layer, per-token float32 values kept for the backward pass (calibrated, see the module docstring)
ACT_D = 4
ACT_MLP = 8
ACT_SCORES = 6
ACT_LOGITS = 4
RUNTIME_BYTES = 600e6  # python + jax + XLA runtime and compiled code: the peak RSS of a tiny run


class MemoryCheckError(SetupError):
    """The run is estimated not to fit in the memory available (one line giving both numbers)."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    params: float  # bytes
    optimizer: float
    gradients: float  # gradients and the update, each the size of the parameters
    activations: float
    runtime: float

    @property
    def total(self) -> float:
        return self.params + self.optimizer + self.gradients + self.activations + self.runtime

    def parts(self) -> str:
        return (
            f"parameters {_gb(self.params)}, optimizer {_gb(self.optimizer)}, gradients {_gb(self.gradients)}, "
            f"activations {_gb(self.activations)}, runtime {_gb(self.runtime)}"
        )


def _gb(x: float) -> str:
    return f"{x / GB:.3g} GB" if x >= 0.1 * GB else f"{x / 1e6:.3g} MB"


def _nbytes(tree) -> float:
    import jax

    return float(sum(np.prod(x.shape, dtype=np.float64) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def state_bytes(cfg: RunConfig) -> tuple[float, float]:
    """(parameter bytes, optimizer-state bytes) from the shapes of the same model with 1 and 2 layers."""
    from train.step import state_shapes

    def sizes(n_layers: int) -> tuple[float, float]:
        # The shapes do not depend on the attention kernel; 'reference' needs no mesh (ring attention does).
        model = cfg.model.replace(n_layers=n_layers, attention_impl="reference")
        s = state_shapes(model, cfg.train, cfg.seq_len)
        return _nbytes(s.params), _nbytes(s.opt_state)

    n = cfg.model.n_layers
    if n <= 2:
        return sizes(n)
    (p1, o1), (p2, o2) = sizes(1), sizes(2)
    return p1 + (n - 1) * (p2 - p1), o1 + (n - 1) * (o2 - o1)


def activation_bytes(cfg: RunConfig) -> float:
    """Bytes the train step's temporaries need (the backward pass's saved values), from the shapes."""
    m, tc = cfg.model, cfg.train
    t = cfg.seq_len
    tokens = tc.micro_batch_size * t
    keys = min(t, m.sliding_window) if m.sliding_window else t
    per_token = ACT_D * m.d_model + (ACT_MLP * m.mlp_dim if m.mlp else 0) + ACT_SCORES * m.n_heads * keys
    layer = 4.0 * tokens * per_token
    logits = 4.0 * tokens * m.vocab_size * ACT_LOGITS
    if m.remat == "none":
        return m.n_layers * layer + logits
    return m.n_layers * 4.0 * tokens * m.d_model * 2 + layer + logits  # block inputs kept, one block recomputed


def estimate(cfg: RunConfig) -> Estimate:
    params, opt = state_bytes(cfg)
    return Estimate(params, opt, 2 * params, activation_bytes(cfg), RUNTIME_BYTES)


def available_bytes() -> tuple[float, str]:
    """(bytes available to this process, where the number comes from): MemAvailable, or a cgroup limit if lower."""
    best, source = float("inf"), "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                best, source = float(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    for limit_file, usage_file in [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ]:
        try:
            limit = Path(limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 2**60:
                continue
            free = int(limit) - int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if free < best:
            best, source = float(free), f"the cgroup limit {limit_file}"
    return best, source


def check(cfg: RunConfig, available: float | None = None) -> Estimate:
    """Raise MemoryCheckError when the estimate exceeds the memory available (unless train.memory_check=false)."""
    est = estimate(cfg)
    if available is None:
        available, source = available_bytes()
    else:
        source = "given"
    if cfg.train.memory_check and est.total > available:
        raise MemoryCheckError(
            f"this run needs about {_gb(est.total)} of memory ({est.parts()}) but {_gb(available)} is available "
            f"({source}): shrink the model or the batch (or train.grad_accum), or pass train.memory_check=false "
            f"to try anyway"
        )
    return est


if __name__ == "__main__":  # python -m train.memory [--config NAME] [KEY=VALUE ...]: the estimate, nothing run
    import argparse

    from train.config import DEFAULT_PRESET, apply_overrides, get_preset

    ap = argparse.ArgumentParser(prog="python -m train.memory", description="The memory estimate of a run.")
    ap.add_argument("--config", default=DEFAULT_PRESET)
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    a = ap.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    c = apply_overrides(get_preset(a.config), a.overrides)
    e = estimate(c)
    print(f"{c.name}: about {_gb(e.total)} ({e.parts()}); available {_gb(available_bytes()[0])}")
