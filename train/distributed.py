"""Scale-out set-up: the mesh, rules and shardings of a RunConfig, and multi-process start-up.

    cfg = apply_overrides(get_preset("induction"), ["mesh.fsdp=8", "sharding=fsdp"])
    plan = sharding_plan(cfg)              # None on one device: the unsharded fast path
    with use_mesh(plan.mesh, plan.rules):  # train/loop.py traces init, train and eval steps in here
        ...

Multi-process (one process per host, or several per host for tests): :func:`initialize` calls
``jax.distributed.initialize`` from the environment before anything touches a device:

    JAX_COORDINATOR_ADDRESS=host0:12345 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 python -m train ...

Under SLURM (``srun``) and on Cloud TPU pods jax finds all three itself; set ``JAX_DISTRIBUTED=1``
(SLURM) or run on a TPU pod, and :func:`initialize` calls it with no arguments. On CPU the
collectives between processes go through gloo (``jax_cpu_collectives_implementation``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from model.sharding import batch_sharding, check_divisible, get_rules, make_mesh, state_shardings, use_mesh
from train.config import ConfigError, RunConfig

ENV_ADDRESS, ENV_NUM, ENV_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
ENV_AUTO = "JAX_DISTRIBUTED"  # '1': call jax.distributed.initialize() with no arguments (SLURM, TPU pods)


def initialize(environ: dict[str, str] | None = None) -> bool:
    """Start multi-process JAX when the environment asks for it; returns whether it did.

    ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` give everything
    explicitly; ``JAX_DISTRIBUTED=1`` lets jax detect the cluster (SLURM_* variables, TPU metadata).
    Must run before the first use of a device. A partial set of variables raises one clear error.
    """
    env = os.environ if environ is None else environ
    given = [k for k in (ENV_ADDRESS, ENV_NUM, ENV_ID) if env.get(k)]
    if not given and env.get(ENV_AUTO, "") not in ("1", "true"):
        return False
    if given and len(given) != 3:
        missing = sorted({ENV_ADDRESS, ENV_NUM, ENV_ID} - set(given))
        raise ConfigError(f"multi-process start-up: {', '.join(given)} set but {', '.join(missing)} not; set all three")
    # CPU processes exchange data through gloo (the default 'none' would fail on the first collective)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if given:
        try:
            num, pid = int(env[ENV_NUM]), int(env[ENV_ID])
        except ValueError:
            raise ConfigError(f"{ENV_NUM}={env[ENV_NUM]!r}, {ENV_ID}={env[ENV_ID]!r}: must be integers") from None
        if not 0 <= pid < num:
            raise ConfigError(f"{ENV_ID}={pid} is not in [0, {ENV_NUM}={num})")
        jax.distributed.initialize(coordinator_address=env[ENV_ADDRESS], num_processes=num, process_id=pid)
    else:
        jax.distributed.initialize()
    return True


@dataclasses.dataclass(frozen=True)
class ShardingPlan:
    """The mesh of a run and where its state and batches live."""

    mesh: jax.sharding.Mesh
    rules: Any
    state_sharding: Any  # a TrainState of NamedShardings
    batch_sharding: NamedSharding  # of a [B, T] batch array

    def put(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """:func:`put_batch` on this plan's mesh and rules."""
        return put_batch(batch, self.mesh, self.rules)


def put_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh, rules) -> dict[str, jax.Array]:
    """Place a batch that every process computed whole (the data is a pure function of the step) on ``mesh``.

    Arrays ``[B, T, ...]`` (or ``[B]``) are split by the rules' 'batch' and 'length' axes. Each process
    fills only its own devices' slices, so this works across hosts without moving data. The one way
    a batch is placed on a mesh (the training loop, the sharding tests).
    """
    out = {}
    for k, x in batch.items():
        x = np.asarray(x)
        sh = batch_sharding(mesh, rules, x.ndim)
        out[k] = jax.make_array_from_callback(x.shape, sh, lambda idx, x=x: x[idx])
    return out


def sharding_plan(cfg: RunConfig, devices=None) -> ShardingPlan | None:
    """The ShardingPlan of ``cfg.mesh`` / ``cfg.sharding``, or None when it uses a single device in one process.

    ``devices`` defaults to the first ``prod(mesh)`` of ``jax.devices()`` when every axis is fixed (so
    MeshConfig(data=2) trains on two devices of eight), else all of them. A mesh that does not fit the
    devices, or a dimension a mesh axis does not divide, raises ConfigError (one line) before compiling.
    """
    from train.step import state_shapes  # the model and optimizer train/step.py builds, built once

    if devices is None:
        devices = jax.devices()
        sizes = [getattr(cfg.mesh, f.name) for f in dataclasses.fields(cfg.mesh)]
        if -1 not in sizes and int(np.prod(sizes)) <= len(devices):
            devices = devices[: int(np.prod(sizes))]
    try:
        mesh = make_mesh(cfg.mesh, devices)
        if mesh.devices.size == 1 and jax.process_count() == 1:
            return None
        rules = get_rules(cfg.sharding)
        with use_mesh(mesh, rules):  # ring attention looks for its mesh even when only shapes are traced
            shapes = state_shapes(cfg.model, cfg.train, cfg.seq_len)
        s_sharding = state_shardings(mesh, shapes, shapes.params, rules)
        b_sharding = batch_sharding(mesh, rules)
        # the batch must split evenly over the mesh axes that hold its rows and positions
        micro = jax.ShapeDtypeStruct((cfg.train.micro_batch_size, cfg.seq_len), np.int32)
        check_divisible(mesh, b_sharding.spec, micro, what="batch [train.batch_size/grad_accum, seq_len]")
    except ValueError as e:
        raise ConfigError(f"mesh={cfg.mesh}, sharding={cfg.sharding!r}: {e}") from None
    return ShardingPlan(mesh, rules, s_sharding, b_sharding)


__all__ = ["initialize", "sharding_plan", "ShardingPlan", "put_batch"]
