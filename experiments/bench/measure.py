"""How the benchmarks measure: wall time of interleaved calls, XLA's compiled scratch, peak RSS, the devices
the JAX side runs on, and torch SDPA's time and memory. Used by experiments.bench.attention and experiments.context.

- time: :func:`time_interleaved`, the median of ``repeats`` calls after one warm-up (compile excluded),
  the callables timed in rounds, in a fresh random order each round, so load from other processes hits
  them alike.
- extra memory, JAX: :func:`temp_bytes`, ``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``
  (the scratch beyond inputs and outputs), per device, times the number of devices.
- extra memory, torch: :func:`torch_extra_bytes`, the peak RSS growth (VmHWM) of one SDPA call in a fresh subprocess.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from model.attention import attention

GiB = 1024**3


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * GiB


def peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def reset_peak_rss() -> int:
    """Reset this process's peak RSS to its current RSS (Linux clear_refs 5); returns the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


class Devices:
    """The devices the JAX sides run on: a 1-D mesh (``None`` for jax's single default device)."""

    def __init__(self, n: int):
        self.n = n
        self.mesh = None
        if n > 1:
            devices = jax.devices()
            if len(devices) < n:
                raise SystemExit(
                    f"bench.attention: --devices {n} needs {n} devices, jax has {len(devices)} "
                    "(XLA_FLAGS already sets the device count, or jax started before the flag was set): "
                    "pass --devices 1 or unset XLA_FLAGS"
                )
            self.mesh = jax.sharding.Mesh(np.array(devices[:n]), ("cores",))

    def put(self, x, axis: int):
        """x sharded over the devices along ``axis`` (x unchanged on one device)."""
        if self.mesh is None:
            return x
        spec = [None] * x.ndim
        spec[axis] = "cores"
        return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(*spec)))

    def replicate(self, tree):
        if self.mesh is None:
            return tree
        return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))

    def split_axis(self, b: int, h: int) -> int:
        """The attention inputs' axis to shard: batch (0) if it divides, else heads (2)."""
        if b % self.n == 0:
            return 0
        if h % self.n == 0:
            return 2
        raise SystemExit(f"bench.attention: neither B={b} nor H={h} divides over --devices {self.n}; pick another")


def inputs(b: int, t: int, h: int, d: int, seed: int = 0, devices: Devices | None = None):
    ks = jax.random.split(jax.random.key(seed), 3)
    xs = tuple(jax.random.normal(k, (b, t, h, d), jnp.float32) for k in ks)
    if devices is None:
        return xs
    axis = devices.split_axis(b, h)
    return tuple(devices.put(x, axis) for x in xs)


def jax_fns(impl: str, causal: bool = True):
    """(forward, fwd+bwd) jitted callables of q, k, v for one implementation."""

    def fwd(q, k, v):
        return attention(q, k, v, causal=causal, implementation=impl)

    def loss(q, k, v):
        return jnp.sum(fwd(q, k, v))

    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def temp_bytes(fn, *args, devices: int = 1) -> int:
    """XLA's scratch bytes for the compiled ``fn(*args)`` (beyond inputs and outputs), summed over ``devices``.

    XLA reports the scratch of one device of an SPMD program; every device needs as much.
    """
    return devices * int(fn.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def block(x):
    return jax.block_until_ready(x)


def time_interleaved(calls: dict, repeats: int) -> dict[str, float]:
    """Median wall seconds per call of each zero-argument callable: one warm-up each, then rounds in random order."""
    for f in calls.values():
        f()
    times = {name: [] for name in calls}
    order = list(calls)
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        # A fresh order each round: what ran just before a call (e.g. a dense path that evicted the
        # caches and freed gigabytes) must not favour or penalise one implementation systematically.
        for name in rng.permutation(order):
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ---------------------------------------------------------------------------- torch SDPA
def import_torch(threads: int):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


def torch_fns(torch, q, k, v):
    """(forward, fwd+bwd) zero-argument callables of torch SDPA on copies of q, k, v as [B, H, T, Dh]."""
    tq, tk, tv = (torch.from_numpy(np.array(x)).transpose(1, 2).contiguous() for x in (q, k, v))
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fwd():
        with torch.no_grad():
            return sdpa(tq, tk, tv, is_causal=True)

    def fwd_bwd():
        a, b, c = (x.detach().requires_grad_() for x in (tq, tk, tv))
        sdpa(a, b, c, is_causal=True).sum().backward()
        return a.grad, b.grad, c.grad

    return fwd, fwd_bwd


_TORCH_MEM_SCRIPT = """
import resource, sys, torch
b, t, h, d, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(int(sys.argv[6]))
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize()
sdpa = torch.nn.functional.scaled_dot_product_attention
# warm up at a tiny size so that one-time library set-up is not counted as the call's memory
w = torch.randn(1, 1, 16, d, requires_grad=True)
sdpa(w, w, w, is_causal=True).sum().backward()
q, k, v = (torch.randn(b, h, t, d, requires_grad=(mode == 'fwd_bwd')) for _ in range(3))
base = rss()
if mode == 'fwd':
    with torch.no_grad():
        out = sdpa(q, k, v, is_causal=True)
else:
    sdpa(q, k, v, is_causal=True).sum().backward()
# VmHWM (this process's peak RSS); not ru_maxrss, which a child inherits from its parent across exec
with open('/proc/self/status') as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmHWM:'))
print(max(peak - base, 0))
"""


def torch_extra_bytes(b, t, h, d, mode, threads) -> int | None:
    """Peak RSS growth of one torch SDPA call in a fresh subprocess (None if it fails)."""
    try:
        res = subprocess.run(
            [sys.executable, "-c", _TORCH_MEM_SCRIPT, str(b), str(t), str(h), str(d), mode, str(threads)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        return int(res.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None
