"""The host's CPU: how many cores, how many XLA devices on them, and how the allocator should behave.

Everything here runs before jax creates its backend (XLA reads its flags once), so nothing here imports
jax. model/, train/ and experiments/ all take their host settings from this one module::

    from model.host import request_host_devices
    request_host_devices(2)    # before jax starts: 2 CPU devices, one thread each
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import sys


def host_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else os.cpu_count())."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def tune_host() -> None:
    """Keep XLA's per-step temporary buffers in one malloc heap that is never given back to the OS.

    XLA on CPU allocates a step's temporaries afresh at every call (80 MB for shakespeare-char-cpu);
    glibc serves blocks above 32 MB with a fresh mmap, so every step page-faults all of it (20,000
    faults, about half the step time on a small VM). With mmap off, trimming off and one arena, the
    freed block is reused by the next step. Call before jax starts its threads; a no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # <malloc.h>
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    libc.mallopt(m_arena_max, 1)


def request_host_devices(n: int) -> None:
    """Ask XLA for ``n`` CPU devices that run their ops on one thread each (one device per core).

    jax sees one CPU device unless told otherwise; with one device per core, work split over a mesh
    (a batch- or head-sharded jit) runs on all cores at once, each device a single-threaded chain of
    ops. Must run before jax creates its backend; XLA_FLAGS already naming these settings are left alone.
    """
    if n <= 1:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags += f" --xla_force_host_platform_device_count={n}"
    if "xla_cpu_multi_thread_eigen" not in flags:
        flags += " --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = flags.strip()


def configure_xla(cfg) -> None:
    """A mesh of several devices on a CPU: one XLA device per mesh slot, each running its ops on one thread.

    ``cfg`` is a run config with a ``mesh`` (a MeshConfig; -1 takes the cores the other axes leave).
    jax sees one CPU device unless told otherwise, so ``mesh.data=2`` would find too few devices.
    Splitting the batch over per-core devices keeps both cores busy with independent halves of the
    step (README: how much that buys). Must run before jax creates its backend (see
    :func:`request_host_devices`).
    """
    mesh = getattr(cfg, "mesh", None)
    if mesh is None:
        return
    sizes = [getattr(mesh, f.name) for f in dataclasses.fields(mesh)]
    cores = host_cores()
    fixed = math.prod(s for s in sizes if s != -1)
    request_host_devices(fixed * max(1, cores // fixed) if -1 in sizes else fixed)


def cpu_devices_hint(backend: str, choice: str, devices: int, cores: int) -> str | None:
    """A one-line hint when the chunked kernel runs on one XLA:CPU device of a multi-core machine.

    That device runs the kernel's block matmuls one at a time on one thread (README: how much slower
    than one device per core with the batch sharded over them).
    """
    if backend != "cpu" or choice != "chunked" or devices > 1 or cores <= 1:
        return None
    return (
        f"attention 'chunked' on 1 CPU device of {cores} cores: for all cores, start with one device per core "
        f"(model.host.request_host_devices({cores}) before jax starts) and shard the batch over them"
    )
