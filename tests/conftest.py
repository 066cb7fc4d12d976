"""Test set-up: 8 fake CPU devices for every test (real meshes, real collectives), float32 matmuls exact.

Compilation is most of the suite's time (a tiny model's eager ops compile one by one, ~65 ms each),
so the tests compile with XLA's cheap CPU back end and keep a persistent compilation cache in
``.jax-test-cache/`` (gitignored; JAX_COMPILATION_CACHE_DIR overrides it). Both reach subprocesses
through the environment. A second run of the suite reads its programs from the cache.

XLA_FLAGS must be set before jax is first imported, so it is set here, at collection time. The device
count is added to whatever XLA_FLAGS the caller's environment holds (replacing a count it names), so
the suite sees 8 devices whatever the shell exported; tests/test_devices.py checks it.
"""

import os
import re

DEVICES = 8
_flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", os.environ.get("XLA_FLAGS", ""))
_fast_compile = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
for _flag in _fast_compile.split():
    if _flag.split("=")[0] not in _flags:  # the caller's own setting of a flag wins
        _flags = f"{_flags} {_flag}"
os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count={DEVICES}".strip()
CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".jax-test-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
CACHE_LIMIT = 2**30  # one suite's programs take ~30 MB; past 1 GiB of old versions' entries the cache starts afresh
# (jax's own bound, JAX_COMPILATION_CACHE_MAX_SIZE, needs the filelock package and failed on entries made without it)
if os.path.isdir(CACHE) and sum(e.stat().st_size for e in os.scandir(CACHE) if e.is_file()) > CACHE_LIMIT:
    import shutil

    shutil.rmtree(CACHE, ignore_errors=True)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
