"""experiments/interventions.py (ablation and patching on the induction model) and the main job's head table.

The corruption and the metric are checked directly; the smoke run and the main job are slow (they train).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import interventions
from experiments.induction import ShiftedInduction

ROOT = Path(__file__).resolve().parents[1]


def test_corruption_replaces_exactly_the_first_copy_of_the_repeat():
    b = ShiftedInduction(64, 64, seed=3).batch_with_period("val", 0, 16, 64)
    inputs, period = b["inputs"], b["period"]
    bad = interventions.corrupt(inputs, period, 64)
    t = inputs.shape[1]
    for row, p in enumerate(period):
        start2 = t - p + 1
        first = np.arange(start2 - p, start2)
        np.testing.assert_array_equal(inputs[row, start2 - p : t - p], inputs[row, start2:])  # it is the repeat's
        assert np.all(bad[row, first] != inputs[row, first])  # every token of the first copy differs
        keep = np.setdiff1d(np.arange(t), first)
        np.testing.assert_array_equal(bad[row, keep], inputs[row, keep])  # BOS, noise and the second copy stay
        assert bad[row, first].max() < 64  # still ordinary tokens (BOS is 64)


def test_repeat_loss_is_the_masked_mean_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(2, 5))
    mask = np.zeros((2, 5), np.float32)
    mask[0, 3:] = mask[1, 1] = 1
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want = -np.mean([logp[0, 3, targets[0, 3]], logp[0, 4, targets[0, 4]], logp[1, 1, targets[1, 1]]])
    got = interventions.repeat_loss(jnp.asarray(targets), jnp.asarray(mask))(jnp.asarray(logits))
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


@pytest.mark.slow
def test_interventions_smoke(tmp_path, capsys):
    out = tmp_path / "iv"
    r = interventions.main(["--smoke", "--out", str(out)])["results"]
    text = (out / "report.md").read_text()
    assert "## Ablation" in text and "## Activation patching" in text and (out / "patching.png").is_file()
    assert len(r["top_k_zero"]) == 2 and r["sweep_restored"].shape == (2, 2)  # the smoke model: 2 layers x 2 heads
    # the sweep's cell for the named head is the single patch measured on its own
    nl, nh = r["named"]
    np.testing.assert_allclose(r["sweep_restored"][nl, nh], r["restored"], atol=1e-4)
    verdicts = [ln for ln in capsys.readouterr().out.splitlines() if "PASS" in ln or "FAIL" in ln]
    assert len(verdicts) == 4 and all("(smoke run: too small to judge)" in ln for ln in verdicts)


HEAD_ROW = re.compile(r"^\s+L(\d+)H(\d+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s*$")


@pytest.mark.slow
def test_main_job_names_an_induction_head(tmp_path):
    """`python -m train` (the induction preset at its defaults) prints the detector table and names a head >= 0.5."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), ATTN_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "train", "--no-progress", f"run_dir={tmp_path / 'run'}"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("head detectors"))
    columns = lines[header + 1].split()
    assert columns == ["head", "previous_token", "duplicate_token", "induction", "prefix_matching"], columns
    rows = [m for ln in lines[header + 2 :] if (m := HEAD_ROW.match(ln))]
    assert len(rows) == 2 * 4  # 2 layers x 4 heads
    prefix = {(int(m[1]), int(m[2])): float(m[6]) for m in rows}
    named = re.search(
        r"^induction head: L(\d+)H(\d+), prefix-matching score ([\d.]+): an induction head$", r.stdout, re.M
    )
    assert named, r.stdout[-2000:]
    head, score = (int(named[1]), int(named[2])), float(named[3])
    assert (
        score >= 0.5
        and score == pytest.approx(prefix[head], abs=1e-3)
        and score == pytest.approx(max(prefix.values()), abs=1e-3)
    )
    assert head[0] == 1  # an induction head needs a previous-token head before it: layer 1
    assert (tmp_path / "run" / "attention.png").is_file()
