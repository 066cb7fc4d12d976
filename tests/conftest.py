"""Test set-up: 8 fake CPU devices for every test (real meshes, real collectives), float32 matmuls exact.

XLA_FLAGS must be set before jax is first imported, so it is set here, at collection time. The device
count is added to whatever XLA_FLAGS the caller's environment holds (replacing a count it names), so
the suite sees 8 devices whatever the shell exported; tests/test_devices.py checks it.
"""

import os
import re

DEVICES = 8
_flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", os.environ.get("XLA_FLAGS", ""))
os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count={DEVICES}".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
