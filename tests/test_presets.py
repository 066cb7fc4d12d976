"""Every CPU preset meets its own success criterion at its defaults, for train.seed 0, 1 and 2 (issue 18, item 3).

``python -m pytest -q -m presets``: 12 runs of ``python -m train --config NAME train.seed=S``, one after
the other (each uses both cores), about an hour on a quiet 2-core machine; each must print MET.
shakespeare-char is GPU-sized and not run. The README's table of the 12 runs came from these commands.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]
CPU_PRESETS = ["induction", "mqar", "copy", "shakespeare-char-cpu"]


def test_the_cpu_presets_are_every_preset_but_the_gpu_one():
    # shakespeare-char is GPU-sized; finetune-shakespeare needs --init-from a GPT-2 checkpoint (no weights here)
    assert sorted(PRESETS) == sorted([*CPU_PRESETS, "shakespeare-char", "finetune-shakespeare"])


@pytest.mark.presets
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", CPU_PRESETS)
def test_preset_meets_its_criterion(name, seed, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), ATTN_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("XLA_FLAGS", None)  # one device, as a user runs it
    cmd = [sys.executable, "-m", "train", "--no-progress", "--config", name, f"train.seed={seed}"]
    r = subprocess.run(cmd + [f"run_dir={tmp_path / 'run'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ": MET (" in r.stdout, (r.stdout + r.stderr)[-2000:]  # "success criterion GOAL: MET (metric = x)"
