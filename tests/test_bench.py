"""The benchmark commands run and print their tables; the nanoGPT baseline is the same model as ours.

Speed itself is never asserted here (it belongs to the benchmarks' output). The PyTorch tests need the
optional extra ``.[bench]`` and are skipped without torch. Tolerance: float32 logits of the two
frameworks on the same weights agree to 1e-5 (only the kernels differ; measured 3.6e-7).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.bench import sample as bench_sample
from experiments.bench import train as bench_train
from model.config import ModelConfig
from model.transformer import Transformer


def test_bench_train_prints_a_row_per_preset(capsys):
    assert bench_train.main(["--presets", "induction", "--steps", "2", "--seconds", "0.1", "--no-torch"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| induction |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1"  # devices
    assert float(cells[4]) > 0 and float(cells[5].replace(",", "")) > 0  # ms/step, tokens/s
    assert re.search(r"fp32 matmul peak \d+ GFLOP/s", out)


def test_bench_train_rejects_a_bad_override(capsys):
    assert bench_train.main(["--presets", "induction", "model.n_layerz=2"]) == 2
    assert "n_layerz" in capsys.readouterr().err


def test_bench_sample_prints_the_speed_table_and_the_cache_check(capsys):
    argv = ["--preset", "induction", "--tokens", "12", "--rounds", "1", "--no-torch"]
    assert bench_sample.main(argv) == 0
    out = capsys.readouterr().out
    diff = float(re.search(r"max abs difference ([0-9.e+-]+)", out).group(1))
    assert diff <= 1e-5
    assert "| this project (KV cache, one jit) |" in out


# ---------------------------------------------------------------------------- the PyTorch baseline
def _copy_weights(tmodel, params, cfg: ModelConfig):
    """Our Flax parameters into nanoGPT's module (q/k/v fused into c_attn, [in, out] -> [out, in])."""
    import torch

    d = cfg.d_model

    def t(x):
        return torch.from_numpy(np.array(x, dtype=np.float32))

    with torch.no_grad():
        tmodel.wte.weight.copy_(t(params["embed"]["embedding"][: cfg.vocab_size]))  # the padded rows never count
        tmodel.wpe.weight.copy_(t(params["pos_embed"]))
        tmodel.ln_f.weight.copy_(t(params["norm_final"]["scale"]))
        for i, block in enumerate(tmodel.blocks):
            p = jax.tree.map(lambda x, i=i: x[i], params["blocks"])
            a = p["attention"]
            qkv = np.concatenate([a[n].reshape(d, d) for n in ("query", "key", "value_down")], axis=1)
            block.c_attn.weight.copy_(t(qkv.T))
            block.attn_proj.weight.copy_(t(a["value_up"].reshape(d, d).T))
            block.ln_1.weight.copy_(t(p["norm_attention"]["scale"]))
            block.ln_2.weight.copy_(t(p["norm_mlp"]["scale"]))
            block.c_fc.weight.copy_(t(p["mlp"]["fc_in"].T))
            block.mlp_proj.weight.copy_(t(p["mlp"]["fc_out"].T))


def test_nanogpt_baseline_computes_the_same_logits_as_our_model_on_the_same_weights():
    torch = pytest.importorskip("torch")
    from experiments.bench.nanogpt_torch import make_model

    cfg = ModelConfig(vocab_size=11, max_len=16, n_layers=2, d_model=32, n_heads=4, scan_layers=True)
    model = Transformer(cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (3, 16)), jnp.int32)
    params = model.init(jax.random.key(1), tokens)["params"]
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), params)
    tmodel = make_model(cfg, gelu="tanh", eps=1e-6).train(False)  # our GELU and LayerNorm eps
    _copy_weights(tmodel, params, cfg)
    ours = np.asarray(model.apply({"params": params}, tokens))
    with torch.no_grad():
        theirs = tmodel(torch.from_numpy(np.array(tokens)).long()).numpy()
    assert np.max(np.abs(ours - theirs)) <= 1e-5


def test_torch_unsupported_names_what_nanogpts_model_lacks():
    from experiments.bench.nanogpt_torch import torch_unsupported
    from train.config import apply_overrides, get_preset

    assert torch_unsupported(get_preset("shakespeare-char-cpu")) is None
    assert "a text task" in torch_unsupported(get_preset("induction"))
    rotary = apply_overrides(get_preset("shakespeare-char-cpu"), ["model.positions=rotary"])
    assert torch_unsupported(rotary) == "nanoGPT's model needs learned positions"


def test_nanogpt_torch_command_trains_and_scores_on_our_validation_batches(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    from experiments.bench import nanogpt_torch
    from train import data

    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    text = tmp_path / "t.txt"
    text.write_text("to be, or not to be: that is the question.\n" * 200, encoding="utf-8")
    argv = ["--eval-batches", "2", "--seeds", "3", "--", "train.steps=20", f"data.path={text}"]
    assert nanogpt_torch.main(argv) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    seed, steps, val, batches = (c.strip() for c in row.strip("|").split("|")[:4])
    assert (seed, steps, batches) == ("3", "20", "2")
    assert 0.0 < float(val) < np.log(20)  # 20 steps already beat the uniform guess over the ~20 characters


def test_bench_attention_shards_over_devices_and_writes_its_table(tmp_path, capsys):
    """--devices 2 (the per-core arrangement) on the test session's 8 CPU devices: the inputs are split on
    the batch axis, the scratch is the sum over both devices, and the report names the arrangement."""
    from experiments.bench import attention as bench_attention
    from experiments.bench import measure

    out = tmp_path / "bench"
    res = bench_attention.main(
        [
            "--only",
            "attention",
            "--impls",
            "chunked",
            "--T",
            "128",
            "--repeats",
            "1",
            "--devices",
            "2",
            "--out",
            str(out),
        ]
    )
    rows = res["attention"]
    assert {(r["impl"], r["mode"]) for r in rows} >= {("chunked", "fwd"), ("chunked", "fwd_bwd")}
    assert all(r["devices"] == 2 for r in rows)
    assert all(r["seconds"] > 0 for r in rows if r["impl"] == "chunked")
    # the summed scratch is twice one device's: check against a compile of the same sharded program
    devices = measure.Devices(2)
    q, k, v = measure.inputs(4, 128, 8, 64, devices=devices)
    assert q.sharding.spec[0] == "cores" and len(q.sharding.device_set) == 2
    fwd, _ = measure.jax_fns("chunked")
    one = fwd.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes
    row = next(r for r in rows if r["impl"] == "chunked" and r["mode"] == "fwd")
    assert row["extra_bytes"] == 2 * one
    text = (out / "results.md").read_text()
    assert "JAX on 2 devices (one per core" in text and "| 128 |" in text
    assert "T=   128     fwd chunked" in capsys.readouterr().out


def test_bench_attention_splits_heads_when_the_batch_does_not_divide():
    from experiments.bench import measure

    devices = measure.Devices(2)
    q, _, _ = measure.inputs(1, 16, 8, 8, devices=devices)
    assert q.sharding.spec[2] == "cores"
    with pytest.raises(SystemExit, match="divides"):
        measure.inputs(3, 16, 3, 8, devices=devices)


def test_bench_attention_rejects_an_unknown_implementation_and_too_many_devices(capsys):
    from experiments.bench import attention as bench_attention

    with pytest.raises(SystemExit) as e:
        bench_attention.main(["--impls", "torch"])
    assert e.value.code == 2 and "invalid choice: 'torch'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs 64 devices, jax has 8"):
        bench_attention.main(["--only", "attention", "--devices", "64", "--T", "16"])
