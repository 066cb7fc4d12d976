"""Parameter accounting: the lecture's GPT-3 figures, and analytic == jax.eval_shape for every preset."""

import itertools
import subprocess
import sys

import pytest

from model.config import PRESETS, get_preset
from model.params import analytic_counts, format_report, lecture_rows, main, traced_counts, vocab_padding


def test_gpt3_figures_of_the_lecture():
    rows = {r.what: r.count for r in lecture_rows(get_preset("gpt3-175b"))}
    assert rows["query map Wq, one head"] == 1_572_864
    assert rows["key map Wk, one head"] == 1_572_864
    assert rows["one head: query + key + value down + value up"] == 6_291_456
    assert rows["one block's attention (96 heads)"] == 603_979_776
    assert rows["all 96 layers' attention"] == 57_982_058_496
    assert rows["alternative: full-rank value map, one head"] == 12288 * 12288


def test_gpt3_attention_weights_match_traced_model():
    # The lecture's 96-layer figure is exactly what the Flax model creates for its attention weights.
    traced = traced_counts(get_preset("gpt3-175b"))
    assert sum(traced[k] for k in ("query", "key", "value_down", "value_up")) == 57_982_058_496


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_analytic_equals_eval_shape_for_every_preset(name):
    cfg = get_preset(name)
    assert analytic_counts(cfg) == traced_counts(cfg)


VARIANTS = list(itertools.product(["factored", "full"], [True, False], ["learned", "rotary"], [4, 1], [True, False]))


@pytest.mark.parametrize("value_map,use_bias,positions,kv,mlp", VARIANTS)
def test_analytic_equals_eval_shape_for_variants(value_map, use_bias, positions, kv, mlp):
    cfg = get_preset("tiny").replace(
        value_map=value_map, use_bias=use_bias, positions=positions, n_kv_heads=kv, mlp=mlp, tie_embeddings=mlp
    )
    assert analytic_counts(cfg) == traced_counts(cfg)


def test_known_model_sizes():
    # GPT-2 small is the well-known 124,439,808; nanoGPT prints 0.80M for its CPU model (without positions).
    # Its tables are padded to 50,264 rows (vocab_multiple 8): the padding is counted apart.
    gpt2 = get_preset("gpt2-small")
    assert sum(analytic_counts(gpt2).values()) - vocab_padding(gpt2) == 124_439_808
    assert vocab_padding(gpt2) == 7 * 768
    c = analytic_counts(get_preset("shakespeare-char-cpu"))
    assert round((sum(c.values()) - c["pos_embed"]) / 1e6, 2) == 0.80


def test_report_and_command(capsys):
    text, agree = format_report(get_preset("gpt3-175b"), "gpt3-175b")
    assert agree and "57,982,058,496" in text and "603,979,776" in text
    assert main(["--preset", "tiny", "n_layers=3"]) == 0
    assert "analytic == eval_shape" in capsys.readouterr().out


def test_command_rejects_bad_input():
    r = subprocess.run([sys.executable, "-m", "model.params", "--preset", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown model preset 'nope'" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "model.params", "--preset", "tiny", "n_heads=3"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "n_heads=3 does not divide d_model=32" in r.stderr


@pytest.mark.parametrize(
    "override, says",
    [
        ("n_layers=abc", "override n_layers='abc': expected int"),
        ("n_layerz=3", "unknown key 'n_layerz': ModelConfig has no field 'n_layerz'; known: vocab_size"),
        ("n_layers", "override 'n_layers' is not key=value"),
        ("model.embed_scale=maybe", "override model.embed_scale='maybe': expected bool"),
    ],
)
def test_command_names_a_bad_override(override, says, capsys):
    """The same value rules as train's overrides (model.config_base.parse_value), one line, exit code 2."""
    assert main(["--preset", "tiny", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and says in err and "\n" not in err


def test_command_takes_typed_overrides(capsys):
    assert main(["--preset", "tiny", "model.n_kv_heads=2", "embed_scale=true", "d_head=none", "init_std=0.5"]) == 0
    assert "analytic == eval_shape" in capsys.readouterr().out
