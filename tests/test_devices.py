"""The suite runs on 8 CPU devices whatever XLA_FLAGS the caller exported (conftest adds the count)."""

import os
import subprocess
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]


def test_suite_sees_eight_devices():
    assert jax.device_count() == 8
    assert "--xla_force_host_platform_device_count=8" in os.environ["XLA_FLAGS"]


def test_device_count_survives_a_callers_xla_flags(tmp_path):
    """A caller's XLA_FLAGS (another flag, an empty value, another count) keeps its flags and gets 8 devices."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "import os, jax\n"
        "def test_probe():\n"
        "    assert jax.device_count() == 8\n"
        "    assert '--xla_cpu_multi_thread_eigen=false' in os.environ['XLA_FLAGS']\n"
    )
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    for flags in (
        "--xla_cpu_multi_thread_eigen=false",
        "--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=2",
    ):
        env = {**os.environ, "XLA_FLAGS": flags}
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(probe)],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
