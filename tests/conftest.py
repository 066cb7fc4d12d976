"""Test set-up: 8 fake CPU devices for every test (real meshes, real collectives), float32 matmuls exact.

XLA_FLAGS must be set before jax is first imported, so it is set here, at collection time.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
