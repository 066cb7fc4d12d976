"""model/hf.py: GPT-2 checkpoints in and out, checked against transformers' own logits.

tests/fixtures/gpt2-tiny/ is a random 3-layer GPT-2 saved by transformers, with the logits transformers
computed for fixed tokens (tests/fixtures/make_gpt2_fixture.py made both; CI has no torch). The tests
marked ``transformers`` regenerate and compare whenever torch and transformers are importable, e.g.
from a venv outside the project that has both and jax:

    PYTHONPATH=$PWD /work/peer-venv/bin/python -m pytest -q tests/test_hf.py
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from model import hf
from model.config import ModelConfig
from model.transformer import Transformer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "gpt2-tiny"
TOL = 1e-4
HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
needs_transformers = pytest.mark.skipif(not HAS_TORCH, reason="torch and transformers are not installed")
# a model of ours that GPT-2 can express: biases, GPT-2's LayerNorm epsilon, learned positions
OURS = ModelConfig(vocab_size=64, max_len=32, n_layers=2, d_model=32, n_heads=4, use_bias=True, norm_eps=1e-5)


def logits_of(cfg: ModelConfig, params, tokens) -> np.ndarray:
    return np.asarray(jax.jit(Transformer(cfg).apply)({"params": params}, np.asarray(tokens, np.int32)))


def stored():
    z = np.load(TINY / "logits.npz")
    return z["tokens"], z["logits"]


def random_params(cfg: ModelConfig, seed: int = 0):
    """Our init, with every bias and norm parameter random too (init makes them 0 and 1)."""
    params = Transformer(cfg).init(jax.random.key(seed), np.zeros((1, 4), np.int32))["params"]
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [np.asarray(x) + rng.normal(0, 0.1, x.shape).astype(np.float32) for x in leaves]
    return jax.tree.unflatten(tree, leaves)


# ---------------------------------------------------------------------------- against the stored logits
@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_logits_equal_transformers(scan):
    cfg, params = hf.load(TINY, scan_layers=scan)
    assert (cfg.n_layers, cfg.d_model, cfg.vocab_size, cfg.norm_eps, cfg.gelu) == (3, 64, 1000, 1e-5, "tanh")
    tokens, want = stored()
    got = logits_of(cfg, params, tokens)
    diff = float(np.max(np.abs(got - want)))
    print(f"max |ours - transformers| = {diff:.2e} (logits up to {np.abs(want).max():.1f})")
    assert diff < TOL


def test_load_save_load_is_exact(tmp_path):
    cfg, params = hf.load(TINY)
    hf.save(cfg, params, tmp_path)
    cfg2, params2 = hf.load(tmp_path)
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    # and tensor by tensor, the file we write holds what transformers wrote
    theirs, ours = hf.read_tensors(TINY), hf.read_tensors(tmp_path)
    assert set(ours) == {n for n in theirs if not n.startswith("lm_head")}
    for name, t in ours.items():
        np.testing.assert_array_equal(t, theirs[name], err_msg=name)


def test_our_model_saved_then_loaded_gives_identical_logits(tmp_path):
    params = random_params(OURS)
    tokens = np.random.default_rng(1).integers(0, OURS.vocab_size, (2, OURS.max_len))
    hf.save(OURS, params, tmp_path)
    cfg, loaded = hf.load(tmp_path)
    assert cfg.replace(dropout=0.0, attention_dropout=0.0) == OURS
    np.testing.assert_array_equal(logits_of(cfg, loaded, tokens), logits_of(OURS, params, tokens))


def test_unprefixed_names_and_sharded_index(tmp_path):
    """GPT2Model's names (no ``transformer.``) and a sharded checkpoint load the same parameters."""
    from safetensors.numpy import save_file

    tensors = hf.read_tensors(TINY)
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for f, ns in shards.items():
        save_file({n.removeprefix("transformer."): tensors[n] for n in ns}, str(tmp_path / f))
    index = {"weight_map": {n.removeprefix("transformer."): f for f, ns in shards.items() for n in ns}}
    (tmp_path / hf.INDEX).write_text(json.dumps(index))
    shutil.copy(TINY / hf.CONFIG, tmp_path / hf.CONFIG)
    _, want = hf.load(TINY)
    _, got = hf.load(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_bfloat16_checkpoint(tmp_path):
    """NumPy has no bfloat16, so safetensors.numpy cannot read BF16 files; ours reads them as float32."""
    import ml_dtypes

    tensors = hf.read_tensors(TINY)
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.astype(ml_dtypes.bfloat16).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    (tmp_path / hf.WEIGHTS).write_bytes(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    shutil.copy(TINY / hf.CONFIG, tmp_path / hf.CONFIG)
    _, got = hf.load(tmp_path)
    _, want = hf.load(TINY)
    rounded = jax.tree.map(lambda a: np.asarray(a).astype(ml_dtypes.bfloat16).astype(np.float32), want)
    jax.tree.map(np.testing.assert_array_equal, got, rounded)


# ---------------------------------------------------------------------------- errors
def broken_copy(tmp_path, config=None, tensors=None) -> Path:
    """A copy of the fixture with ``config`` keys changed and ``tensors`` (name -> array or None) changed."""
    from safetensors.numpy import save_file

    cfg = json.loads((TINY / hf.CONFIG).read_text()) | (config or {})
    (tmp_path / hf.CONFIG).write_text(json.dumps(cfg))
    t = hf.read_tensors(TINY)
    for name, value in (tensors or {}).items():
        t.pop(name) if value is None else t.__setitem__(name, value)
    save_file(t, str(tmp_path / hf.WEIGHTS))
    return tmp_path


@pytest.mark.parametrize(
    "config, tensors, match",
    [
        ({"model_type": "llama"}, None, "model_type='llama'"),
        ({"scale_attn_by_inverse_layer_idx": True}, None, "scale_attn_by_inverse_layer_idx"),
        ({"activation_function": "relu"}, None, "activation_function='relu'"),
        (None, {"transformer.h.0.attn.rotary.weight": np.zeros(4, np.float32)}, "tensor h.0.attn.rotary.weight"),
        (None, {"transformer.h.3.ln_1.weight": np.ones(64, np.float32)}, "tensor h.3.ln_1.weight"),
        (None, {"transformer.wpe.weight": np.zeros((32, 64), np.float32)}, r"tensor wpe.weight: shape \(32, 64\)"),
        (None, {"transformer.h.1.mlp.c_fc.bias": None}, "tensor h.1.mlp.c_fc.bias: missing"),
        (None, {"lm_head.weight": np.zeros((1000, 64), np.float32)}, "lm_head.weight differs"),
        ({"n_embd": 128}, None, "tensor .*: shape"),
    ],
    ids=["model_type", "layer_idx", "activation", "unknown", "extra-layer", "shape", "missing", "untied", "config"],
)
def test_what_we_cannot_express_is_one_line(tmp_path, config, tensors, match):
    with pytest.raises(hf.HFFormatError, match=match) as e:
        hf.load(broken_copy(tmp_path, config, tensors))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(positions="rotary"), "positions"),
        (dict(use_bias=False), "use_bias"),
        (dict(n_kv_heads=1), "n_kv_heads"),
        (dict(d_head=16), "d_head"),
    ],
)
def test_save_refuses_what_gpt2_cannot_express(tmp_path, change, field):
    with pytest.raises(hf.HFFormatError, match=f"ModelConfig.{field}"):
        hf.save(OURS.replace(**change), {}, tmp_path)


def test_no_directory_is_one_line(tmp_path):
    with pytest.raises(hf.HFFormatError, match="not a checkpoint directory"):
        hf.load(tmp_path / "nowhere")
    shutil.copy(TINY / hf.CONFIG, tmp_path / hf.CONFIG)
    with pytest.raises(hf.HFFormatError, match="no model.safetensors"):
        hf.load(tmp_path)
    if importlib.util.find_spec("huggingface_hub") is None:  # a named model without the extra
        with pytest.raises(hf.HFFormatError, match="local directory"):
            hf.load("gpt2")


def test_named_model_through_the_hub(monkeypatch):
    """A name goes to huggingface_hub.snapshot_download; offline it is one line saying to pass a directory."""
    import types

    def offline(repo_id, **kw):
        raise ConnectionError("no network\nsecond line")

    hub = types.ModuleType("huggingface_hub")
    hub.snapshot_download = offline
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    with pytest.raises(hf.HFFormatError, match="cannot download 'gpt2' .*offline\\? pass a local directory") as e:
        hf.load("gpt2")
    assert "\n" not in str(e.value)
    hub.snapshot_download = lambda repo_id, **kw: str(TINY) if repo_id == "openai-community/gpt2" else offline(repo_id)
    cfg, _ = hf.load("openai-community/gpt2")
    assert cfg.vocab_size == 1000


def test_untied_lm_head_round_trips(tmp_path):
    cfg = OURS.replace(tie_embeddings=False)
    params = random_params(cfg)
    hf.save(cfg, params, tmp_path)
    assert "lm_head.weight" in hf.read_tensors(tmp_path)
    cfg2, params2 = hf.load(tmp_path)
    assert not cfg2.tie_embeddings
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_new_config_fields_are_validated():
    assert (ModelConfig().norm_eps, ModelConfig().gelu) == (1e-6, "tanh")  # the defaults before GPT-2
    with pytest.raises(ValueError, match="ModelConfig.norm_eps=0"):
        ModelConfig(norm_eps=0.0)
    with pytest.raises(ValueError, match="ModelConfig.gelu='relu'"):
        ModelConfig(gelu="relu")


def test_gelu_and_eps_reach_the_model():
    """Each new field changes the logits: they are wired into the MLP and every norm."""
    cfg = OURS.replace(norm_eps=1e-6)
    params = random_params(cfg)
    tokens = np.arange(8)[None] % cfg.vocab_size
    base = logits_of(cfg, params, tokens)
    for change in (dict(gelu="exact"), dict(norm_eps=1e-1)):
        assert np.max(np.abs(logits_of(cfg.replace(**change), params, tokens) - base)) > 1e-4, change


# ---------------------------------------------------------------------------- command line
def test_inspect_prints_config_and_table(capsys):
    assert hf.main(["inspect", str(TINY)]) == 0
    out = capsys.readouterr().out
    assert "norm_eps" in out and "blocks/attention/query" in out and "(3, 64, 4, 16)" in out
    n = sum(int(np.prod(a.shape)) for a in hf.read_tensors(TINY).values())
    assert f"{n:,d}" in out.splitlines()[-1]


@pytest.mark.slow  # a child process (python -m train.hf_export) pays jax's import
def test_export_subcommand_hands_over_to_train_and_returns_its_one_line_error(tmp_path, capfd):
    """`python -m model.hf export` runs train's exporter in a child: a missing run is its one-line error, exit 2
    (the export that succeeds is tests/test_hf_export.py's, on a trained run)."""
    assert hf.main(["export", str(tmp_path / "nothere"), str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nothere" in err[0], err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- with transformers, when installed
@needs_transformers
def test_regenerated_fixture_matches_and_transformers_loads_our_save(tmp_path):
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_gpt2_fixture as mk
    finally:
        sys.path.remove(str(FIXTURES))
    from transformers import GPT2LMHeadModel

    tokens, want = stored()
    model = mk.make_model()
    np.testing.assert_allclose(mk.hf_logits(model, tokens), want, atol=1e-5)  # the fixture is what the script makes
    model.save_pretrained(tmp_path / "theirs")
    cfg, params = hf.load(tmp_path / "theirs")
    ours = logits_of(cfg, params, tokens)
    assert np.max(np.abs(ours - mk.hf_logits(model, tokens))) < TOL

    # transformers loads what we write and agrees with us: the fixture and a model of our own
    def from_pretrained(path):
        model, info = GPT2LMHeadModel.from_pretrained(path, output_loading_info=True)
        assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        return model.eval()

    hf.save(cfg, params, tmp_path / "ours")
    diff = np.max(np.abs(mk.hf_logits(from_pretrained(tmp_path / "ours"), tokens) - ours))
    print(f"transformers on our save of the fixture: max |diff| = {diff:.2e}")
    assert diff < TOL
    ids = np.random.default_rng(2).integers(0, OURS.vocab_size, (2, OURS.max_len))
    for i, mine in enumerate([OURS, OURS.replace(gelu="exact", tie_embeddings=False, d_mlp=48)]):
        p = random_params(mine)
        hf.save(mine, p, tmp_path / f"mine{i}")
        diff = np.max(np.abs(mk.hf_logits(from_pretrained(tmp_path / f"mine{i}"), ids) - logits_of(mine, p, ids)))
        print(f"transformers on our save of a model of ours (gelu {mine.gelu}): max |diff| = {diff:.2e}")
        assert diff < TOL
