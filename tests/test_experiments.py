"""The experiments: every --smoke run end to end (tiny models, in this process; marked slow, as end-to-end
runs are), the pieces they compute checked against independent references (fast), and (marked
experiment) every full run asserting its acceptance claims.

Smoke runs train real tiny models with the real training loop and checkpoints; they check that each
report is written with its command, tables, PNGs and one PASS/FAIL line per claim. Their numbers
mean nothing, so their claims are not asserted; the slow tests run the full experiments and do.
Runs happen in this process (``--runner inprocess``) so compiled steps are shared between
experiments whose tiny configs coincide.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import train.data as data
from experiments import context, heads, induction, masking, mqar, positions, show_attention, value_map
from experiments.common import Claim, Report, loglog_slope, markdown_table

INPROCESS = ["--runner", "inprocess"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path_factory.getbasetemp() / "token-cache"))


def check_report(out: Path, n_claims: int, pngs: list[str], command: str) -> str:
    """The report exists, names its command, has ``n_claims`` PASS/FAIL lines and embeds existing PNGs."""
    text = (out / "report.md").read_text()
    assert command in text
    verdicts = re.findall(r"^- \*\*(PASS|FAIL)\*\* ", text, flags=re.M)
    assert len(verdicts) == n_claims, text
    for name in pngs:
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
        assert f"]({name})" in text, name
    saved = json.loads((out / "report.json").read_text())
    assert [c["passed"] for c in saved["claims"]] == [v == "PASS" for v in verdicts]
    return text


# ---------------------------------------------------------------------------- shared helpers
def test_loglog_slope_recovers_exponents():
    x = np.array([256, 512, 1024, 2048])
    assert loglog_slope(x, 3.0 * x**2.0) == pytest.approx(2.0)
    assert loglog_slope(x, 0.5 * x) == pytest.approx(1.0)
    assert np.isnan(loglog_slope([1], [1]))


def test_report_renders_claims_tables_and_figures(tmp_path):
    rep = Report("T", "python -m experiments.x --smoke")
    rep.claim(Claim("a", True, "1 >= 0"))
    rep.claim(Claim("b", False, "0 >= 1", acceptance=False))
    rep.table(["k", "v"], [["x", 1.23456], ["y", None]])
    rep.figure(tmp_path / "f.png", "cap", tmp_path)
    text = rep.render()
    assert "- **PASS** a: 1 >= 0" in text
    assert "- **FAIL** b (reported, not an acceptance criterion): 0 >= 1" in text
    assert "| x | 1.235 |" in text and "| y | – |" in text and "![cap](f.png)" in text
    assert markdown_table(["a"], [[1]]).splitlines()[1] == "|---:|"


# ---------------------------------------------------------------------------- induction
def test_smoke_verdicts_say_on_the_same_line_that_they_mean_nothing(tmp_path, capsys):
    from experiments.common import finish

    rep = Report("t", "cmd")
    rep.claim(Claim("a claim", False, "x = 1"))
    rep.claim(Claim("another", True, "y = 2"))
    finish((rep.write(tmp_path), rep), smoke=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "- FAIL (smoke run: too small to judge) a claim: x = 1",
        "- PASS (smoke run: too small to judge) another: y = 2",
    ]
    finish((rep.write(tmp_path), rep))  # a full run: the verdict alone
    assert capsys.readouterr().out.splitlines()[0] == "- FAIL a claim: x = 1"


def test_shifted_induction_targets_follow_the_earlier_occurrence():
    rng = np.random.default_rng(0)
    seqs, mask, period = induction.shifted_induction_sequences(rng, 256, 64, 64, 16)
    assert seqs.shape == (256, 65) and mask.shape == (256, 64)
    assert (seqs[:, 0] == 64).all() and len(set(period.tolist())) > 10  # BOS; the period varies
    inputs, targets = seqs[:, :-1], seqs[:, 1:]
    for b in range(256):  # a loop, independent of the vectorised construction
        L = int(period[b])
        start2 = 64 - L + 1
        assert list(seqs[b, start2 : start2 + L]) == list(seqs[b, start2 - L : start2])  # the repeat
        rows = np.flatnonzero(mask[b])
        assert list(rows) == list(range(start2, 64))  # every predictable position, and only those
        for t in rows:
            assert targets[b, t] == inputs[b, t - L + 1]
    # the repeat starts at different positions, so no fixed offset predicts it
    assert len(set((64 - period + 1).tolist())) > 10


def test_head_scores_on_constructed_patterns():
    L, B, H, T = 2, 3, 2, 16
    period = np.array([6, 7, 8])
    mask = np.zeros((B, T), bool)
    for b in range(B):
        mask[b, T - period[b] + 1 :] = True
    pat = np.zeros((L, B, H, T, T))
    pat[...] = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]  # uniform causal attention
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                pat[1, b, 0, t] = 0
                pat[1, b, 0, t, t - period[b] + 1] = 1.0  # an ideal induction head
                pat[0, b, 1, t] = 0
                pat[0, b, 1, t, t - 1] = 1.0  # an ideal previous-token head
    prefix, previous = induction.head_scores(pat, mask, period)
    assert prefix[1, 0] == pytest.approx(1.0) and previous[0, 1] == pytest.approx(1.0)
    queries = [t for b in range(B) for t in range(T) if mask[b, t]]
    assert prefix[0, 0] == pytest.approx(np.mean([1 / (t + 1) for t in queries]))


def test_induction_markers_land_on_allowed_cells():
    for t, period in [(16, 8), (64, 32), (64, 20), (9, 2)]:
        queries, keys = induction.induction_markers(t, period)
        assert len(queries) == period - 1 and queries[-1] == t - 1
        assert np.all((0 <= keys) & (keys <= queries))  # the causal mask allows key <= query only
        assert np.all(queries - keys == period - 1)


@pytest.mark.slow
def test_induction_smoke(tmp_path, monkeypatch, capsys):
    out = tmp_path / "induction"
    drawn = {}
    save = induction.save_figure

    def spy(fig, path, *a, **k):  # the red markers as drawn: x is the key (column), y the query (row)
        if path.name == "induction_head.png":
            line = fig.axes[0].lines[0]
            drawn["keys"], drawn["queries"] = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        return save(fig, path, *a, **k)

    monkeypatch.setattr(induction, "save_figure", spy)
    r = induction.main(["--smoke", "--out", str(out)])
    assert len(drawn["keys"]) and np.all(drawn["keys"] <= drawn["queries"]), drawn  # not in the masked triangle
    verdicts = [ln for ln in capsys.readouterr().out.splitlines() if "PASS" in ln or "FAIL" in ln]
    assert verdicts and all("(smoke run: too small to judge)" in ln for ln in verdicts), verdicts
    text = check_report(
        out, 2, ["loss_by_position.png", "accuracy.png", "attention_grid.png", "induction_head.png"], "--smoke"
    )
    assert "Prefix-matching and previous-token scores per head" in text
    runs = r["results"]["runs"]
    assert {(x["task"], x["layers"]) for x in runs} == {("shifted", 1), ("shifted", 2)}
    for x in runs:  # scores are attention weights: in [0, 1]
        assert np.all((0 <= x["prefix_matching"]) & (x["prefix_matching"] <= 1))
        assert x["prefix_matching"].shape == (x["layers"], 2)


# ---------------------------------------------------------------------------- sweeps of tiny Shakespeare runs
def smoke_run(tmp_path_factory, module):
    """``python -m experiments.NAME --smoke`` once per test module (in this process): (out dir, main's result)."""
    out = tmp_path_factory.mktemp(module.NAME)
    return out, module.main(["--smoke", "--out", str(out), *INPROCESS])


@pytest.fixture(scope="module")
def masking_smoke(tmp_path_factory):
    return smoke_run(tmp_path_factory, masking)


@pytest.mark.slow
def test_masking_smoke(masking_smoke):
    out, r = masking_smoke
    text = check_report(out, 3, ["masking.png"], "--smoke")
    assert "Samples (prompt | generated" in text
    res = r["results"]
    # for the causal model, token-by-token decoding through the KV cache computes the full pass's function
    m = res["masked"]
    np.testing.assert_allclose(m["generation_view_by_position"], m["train_view_by_position"], rtol=1e-4, atol=1e-5)
    assert not res["unmasked"]["causal"] and m["causal"]
    assert all("|" in s for s in m["samples"])


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A tiny character-level run (1 layer x 4 heads, context 16) trained 2 steps on the smoke corpus."""
    from experiments.common import smoke_text
    from train.config import apply_overrides, get_preset
    from train.loop import train

    d = tmp_path_factory.mktemp("char-run")
    overrides = ["model.n_layers=1", "model.d_model=16", "model.n_heads=4", "model.max_len=16"]
    overrides += ["train.steps=2", "train.batch_size=4", "train.eval_every=2", "train.eval_batches=1"]
    overrides += [f"data.path={smoke_text(d)}", f"run_dir={d / 'run'}"]
    train(
        apply_overrides(get_preset("shakespeare-char-cpu"), overrides), progress=False, plots=False, log=lambda m: None
    )
    return str(d / "run")


def test_show_attention_draws_every_head(char_run, tmp_path, capsys):
    run_dir = char_run
    png = tmp_path / "pat.png"
    assert show_attention.main([run_dir, "--prompt", "First Citizen", "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
    assert "1 layers x 4 heads, 13 tokens" in capsys.readouterr().out
    pat, labels, _ = show_attention.patterns_for_prompt(run_dir, "Speak")
    assert pat.shape == (1, 4, 5, 5) and labels == list("Speak")
    np.testing.assert_allclose(pat.sum(-1), 1.0, rtol=1e-5)  # rows of a pattern sum to 1
    assert np.all(np.triu(pat, k=1) == 0)  # causal: nothing above the diagonal


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("Speak §", r"error: prompt character '§' \(U\+00A7\) at position 6 is not in the \d+-character vocabulary"),
        ("Speak" * 8, r"error: the prompt has 40 tokens but the model's context is max_len=16: shorten the prompt"),
    ],
)
def test_show_attention_bad_prompt_is_one_line(char_run, prompt, message, capsys):
    run_dir = char_run
    assert show_attention.main([run_dir, "--prompt", prompt]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(message + ".*", err) and "\n" not in err


def test_show_attention_not_a_run(tmp_path, capsys):
    assert show_attention.main([str(tmp_path), "--prompt", "a"]) == 2
    assert "is not a run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_value_map_smoke(tmp_path):
    out = tmp_path / "value_map"
    r = value_map.main(["--smoke", "--out", str(out), *INPROCESS])
    text = check_report(out, 2, ["value_map.png"], "--smoke")
    assert r["claims"][0].passed  # analytic == traced parameter counts: a property of the code, not of training
    assert "| value |" in text and "| value_down |" in text


@pytest.fixture(scope="module")
def heads_smoke(tmp_path_factory):
    return smoke_run(tmp_path_factory, heads)


@pytest.mark.slow
def test_heads_smoke(heads_smoke):
    out, r = heads_smoke
    text = check_report(out, 2, ["heads.png", "curves_heads.png"], "--smoke")  # no h=1 run: one claim per width
    assert "## Side by side" in text and "## d_model 32" in text and "## d_model 16" in text
    assert "- **FAIL** d_model 32: heads with d_head <= 4" in text or "- **PASS** d_model 32: heads" in text
    assert "d_model 16: heads with d_head <= 4" in text  # each width's claim, named
    assert "| 4 | 8 |" in text and "| 8 | 4 |" in text and "| 8 | 2 |" in text  # h and d_head = d_model / h
    assert "| 5.00 | 25.5 |" in text  # the paper's h=4 dev perplexity and BLEU beside ours
    # side by side: h=4 trained at width 32 (d_head 8), not at width 16 (its d_head 4, no loss), then the paper
    assert re.search(r"^\| 4 \| 8 \| [\d.]+ \| [\d.]+ \| 4 \| – \| – \| 5\.00 \| 25\.5 \|$", text, flags=re.M), text
    assert {x["status"] for x in r["rows"]} == {"ok"} and len(r["rows"]) == 3
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["widths"]) == {"32", "16"}


@pytest.mark.slow
def test_heads_report_names_the_position_kind_and_extra_settings(tmp_path):
    """With --positions and --set the report says what every run had (not the rotary note, not 'learned')."""
    out = tmp_path / "heads"
    heads.main(
        ["--smoke", "--out", str(out), "--positions", "sinusoidal", "--set", "model.embed_scale=true", *INPROCESS]
    )
    text = (out / "report.md").read_text()
    assert "Positions: **sinusoidal** (`--positions`). Also set for every run: model.embed_scale=true." in text
    assert "frequency pairs" not in text and "learned table" not in text
    configs = [json.loads(p.read_text()) for p in out.glob("d*/runs/*/config.json")]
    assert len(configs) == 3
    assert all(c["model"]["positions"] == "sinusoidal" and c["model"]["embed_scale"] is True for c in configs)


@pytest.fixture(scope="module")
def positions_smoke(tmp_path_factory):
    return smoke_run(tmp_path_factory, positions)


@pytest.mark.slow
def test_positions_smoke(positions_smoke):
    out, r = positions_smoke
    text = check_report(out, 2, ["positions.png"], "--smoke")
    assert [x["model.positions"] for x in r["rows"]] == list(positions.KINDS)
    assert all(x["status"] == "ok" for x in r["rows"])
    assert "model.embed_scale=true" in text  # the paper's setting in every arm: only the positions vary
    assert "How strong is each position signal" in text and "| sinusoidal | true |" in text


@pytest.mark.slow
def test_positions_signal_scales_read_the_trained_tables(positions_smoke):
    """The RMS table recomputed by hand from the saved parameters: both embedding layers' signals include
    sqrt(d_model) (the smoke runs use embed_scale, as the full ones do)."""
    from train.sample import load_run

    _, r = positions_smoke
    scales = positions.signal_scales(r["rows"])
    assert list(scales) == list(positions.KINDS)
    learned = next(x for x in r["rows"] if x["model.positions"] == "learned")
    cfg, _, params, _ = load_run(learned["run_dir"])
    table = np.asarray(params["embed"]["embedding"], np.float64)
    e = scales["learned"]
    assert e["table"] == pytest.approx(np.sqrt(np.mean(table**2)))
    assert e["token"] == pytest.approx(e["table"] * np.sqrt(cfg.model.d_model))
    assert cfg.model.embed_scale
    raw = np.sqrt(np.mean(np.asarray(params["pos_embed"], np.float64) ** 2))
    assert e["position_unscaled"] == pytest.approx(raw)
    assert e["position"] == pytest.approx(raw * np.sqrt(cfg.model.d_model))
    assert scales["sinusoidal"]["position"] == pytest.approx(np.sqrt(0.5), rel=1e-3)  # sin^2 + cos^2 = 1 per pair
    assert scales["rotary"]["position"] == scales["none"]["position"] == 0.0


@pytest.mark.slow
def test_mqar_smoke(tmp_path):
    out = tmp_path / "mqar"
    mqar.main(["--smoke", "--out", str(out), *INPROCESS])
    check_report(out, 2, ["accuracy.png"], "--smoke")


def test_experiment_print_commands(tmp_path, capsys):
    assert heads.main(["--out", str(tmp_path), "--print-commands"]) is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(heads.HEADS) * len(heads.SEEDS) * len(heads.WIDTHS)
    assert all(x.startswith("python -m train --no-progress --config shakespeare-char-cpu") for x in lines)
    for w in heads.WIDTHS:  # each width its own sweep, with its own steps
        mine = [x for x in lines if f"model.d_model={w} " in x]
        assert len(mine) == len(heads.HEADS) * len(heads.SEEDS)
        assert all(f"train.steps={heads.STEPS[w]} " in x and f"/d{w}/runs/" in x for x in mine)
    assert "model.n_heads=32 train.seed=1" in lines[-1]


@pytest.mark.slow
def test_context_smoke(tmp_path):
    out = tmp_path / "context"
    r = context.main(["--smoke", "--out", str(out)])
    check_report(out, 2, ["context.png"], "--smoke")
    rows = r["rows"]
    assert {x["impl"] for x in rows} == {"reference", "xla", "chunked"} and all(x["bytes"] > 0 for x in rows)
    # the reference implementation materialises the T x T pattern: its scratch grows 4x per doubling of T
    ref = sorted((x["T"], x["bytes"]) for x in rows if x["impl"] == "reference" and x["mode"] == "fwd")
    assert r["slopes"][("reference", "fwd")]["memory"] == pytest.approx(loglog_slope(*zip(*ref, strict=True)))


# ---------------------------------------------------------------------------- claim logic on constructed results
def test_heads_claims_follow_the_numbers():
    def summary(losses):
        return {h: {"h": h, "d_head": 128 // h, "mean": v, "pm": 0.0} for h, v in losses.items()}

    c = heads.claims(summary({1: 1.60, 4: 1.55, 32: 1.62}))
    assert [x.passed for x in c] == [False, True]  # h=32 only 0.02 worse than h=1; h=1 worse than h=4
    c = heads.claims(summary({1: 1.60, 4: 1.55, 32: 1.70}))
    assert c[0].passed and "h=32 (d_head 4) - h=1: +0.100" in c[0].detail
    c = heads.claims(summary({1: 1.50, 4: 1.55, 32: 1.70}))
    assert c[0].passed and not c[1].passed and not c[1].acceptance  # one head best here: reported as FAIL
    # every narrow head must clear both references: at width 64, h=16 (d_head 4) and h=32 (d_head 2)
    s64 = {h: {"h": h, "d_head": 64 // h, "mean": v, "pm": 0.0} for h, v in {1: 1.6, 4: 1.6, 16: 1.66, 32: 1.9}.items()}
    c = heads.claims(s64, "d_model 64: ")
    assert c[0].passed and c[0].name.startswith("d_model 64: ") and "h=16 (d_head 4) - h=1: +0.060" in c[0].detail
    s64[16]["mean"] = 1.64
    assert not heads.claims(s64)[0].passed  # 0.04 < 0.05


def test_positions_claims_follow_the_numbers():
    s = {k: {"mean": v, "pm": 0.01} for k, v in {"learned": 1.60, "sinusoidal": 1.63, "none": 1.70}.items()}
    assert [c.passed for c in positions.claims(s)] == [True, True]
    s["sinusoidal"]["mean"], s["none"]["mean"] = 1.70, 1.58
    assert [c.passed for c in positions.claims(s)] == [False, False]


@pytest.mark.slow
def test_set_adds_an_override_to_every_run(tmp_path):
    """``--set train.weight_decay=0``: every run's saved config has it, and the report's command line says so."""
    from train.config import load_run_config

    out = tmp_path / "value-map-nowd"
    r = value_map.main(
        ["--smoke", "--out", str(out), "--set", "train.weight_decay=0", "train.grad_clip=0.5", *INPROCESS]
    )
    assert r["rows"] and {x["status"] for x in r["rows"]} == {"ok"}
    for row in r["rows"]:
        cfg = load_run_config(row["run_dir"])
        assert cfg.train.weight_decay == 0.0 and cfg.train.grad_clip == 0.5
    assert "train.weight_decay=0" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "bad, says",
    [
        ("model.value_map=full", "is both a fixed override and an axis"),
        ("train.wd=0", "unknown key 'train.wd'"),
        ("train.weight_decay", "KEY=VALUE"),
    ],
)
def test_set_rejects_bad_overrides_in_one_line(bad, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        value_map.main(["--smoke", "--out", str(tmp_path / "m"), "--set", bad])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and says in err and err.startswith("error: --set:") and "\n" not in err
    assert not (tmp_path / "m" / "runs").exists()  # no run was started


# ---------------------------------------------------------------------------- the full experiments (slow)
@pytest.mark.experiment
@pytest.mark.parametrize("module", [induction, mqar, masking, value_map, heads, positions])
def test_full_experiment_meets_its_acceptance_claims(module, tmp_path):
    r = module.main(["--out", str(tmp_path / module.NAME)])
    assert any(c.acceptance for c in r["claims"])
    failed = [c.line() for c in r["claims"] if c.acceptance and not c.passed]
    assert not failed, failed


@pytest.mark.experiment
def test_full_context_memory_slopes(tmp_path):
    """At T = 256 .. 4096 the materialising reference attention's scratch grows ~T^2 and the chunked one's ~T."""
    r = context.main(["--out", str(tmp_path / "context")])
    assert r["claims"] and all(c.passed for c in r["claims"]), [c.line() for c in r["claims"]]
