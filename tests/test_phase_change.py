"""experiments/phase_change.py (experiment i): the windows and claims on made-up curves, the ICL score, bad input,
and the smoke run end to end (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import phase_change as pc

S = pc.setup(False)


def _curve(steps, prefix, icl):
    return {"step": list(steps), "prefix_matching": list(prefix), "icl": list(icl), "loss": [0.0] * len(steps)}


def test_icl_score_is_late_minus_early_loss():
    by_position = np.zeros(S.seq_len)
    by_position[slice(*S.early)] = 2.0
    by_position[slice(*S.late)] = 1.5
    by_position[100] = 99.0  # neither band
    assert pc.icl_score(by_position, S) == pytest.approx(-0.5)


def test_best_window_finds_the_steepest_rise_within_the_width():
    steps = [0, 100, 200, 300, 400, 500]
    values = [0.0, 0.1, 0.2, 0.9, 0.95, 1.0]
    assert pc.best_window(steps, values, 100, +1) == (200, 300, pytest.approx(0.7))
    assert pc.best_window(steps, values, 200, +1) == (100, 300, pytest.approx(0.8))
    assert pc.best_window(steps, values[::-1], 100, -1) == (200, 300, pytest.approx(-0.7))
    assert pc.best_window(steps, [1.0] * 6, 100, +1)[2] == 0.0  # flat: no rise


def _results(two, one):
    return {"runs": [{"layers": 2, "curve": two}, {"layers": 1, "curve": one}]}


def test_claims_pass_on_a_phase_change_and_fail_without_one():
    steps = range(0, 2001, 25)
    jump = [0.05 if s < 800 else 0.7 if s > 900 else 0.05 + 0.65 * (s - 800) / 100 for s in steps]
    icl2 = [-0.05 if s < 800 else -0.4 if s > 900 else -0.05 - 0.35 * (s - 800) / 100 for s in steps]
    flat = [0.02] * len(jump)
    icl1 = [-0.05 - 0.02 * s / 2000 for s in steps]
    c = pc.claims(_results(_curve(steps, jump, icl2), _curve(steps, flat, icl1)), S)
    assert [x.passed for x in c] == [True, True, True, True], [x.line() for x in c]
    # a 2-layer model whose ICL score does not move when prefix matching jumps fails the second claim
    c = pc.claims(_results(_curve(steps, jump, [-0.05] * len(jump)), _curve(steps, flat, icl1)), S)
    assert [x.passed for x in c] == [True, False, True, False]  # and nothing for the 1-layer drop to be half of
    # a 1-layer model with the same phase change fails its two
    c = pc.claims(_results(_curve(steps, jump, icl2), _curve(steps, jump, icl2)), S)
    assert [x.passed for x in c] == [True, True, False, False]
    # a slow rise over all of training is no jump (more than the window of 1/10 of the steps)
    slow = list(np.linspace(0.0, 0.9, len(jump)))
    c = pc.claims(_results(_curve(steps, slow, icl2), _curve(steps, flat, icl1)), S)
    assert not c[0].passed


def test_a_missing_corpus_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        pc.main(["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: data.path=") and "no such file" in err and "\n" not in err


@pytest.mark.slow
def test_phase_change_smoke(tmp_path, capsys):
    out = tmp_path / "pc"
    r = pc.main(["--smoke", "--out", str(out)])
    text = (out / "report.md").read_text()
    assert (out / "phase_change.png").is_file() and (out / "loss_by_position.png").is_file()
    assert "## Claims" in text and len(r["claims"]) == 4
    s = pc.setup(True)
    for run in r["results"]["runs"]:
        c = run["curve"]
        assert c["step"] == list(range(0, s.steps + 1, s.probe_every))
        assert all(0.0 <= p <= 1.0 for p in c["prefix_matching"])
        assert len(run["final_by_position"]) == s.seq_len and np.all(np.isfinite(c["icl"]))
    verdicts = [ln for ln in capsys.readouterr().out.splitlines() if "PASS" in ln or "FAIL" in ln]
    assert len(verdicts) == 4 and all("(smoke run: too small to judge)" in ln for ln in verdicts)
