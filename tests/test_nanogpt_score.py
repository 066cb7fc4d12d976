"""The nanoGPT scorer (experiments/bench/nanogpt_score.py): its statistics, its windows, its score of a run of ours.

The statistics are checked against the standard library's ``statistics``; the score of a tiny run of
ours against a float64 NumPy cross-entropy of the run's logits on windows cut independently from a
``val.bin`` written as nanoGPT's prepare.py writes it. The PyTorch side needs nanoGPT's own model.py,
which is not part of the project: ``NANOGPT_DIR=/path/to/nanoGPT`` (and torch) runs the cross-check
that nanoGPT's model, given the tiny run's weights, scores the same loss, and that its training step (model.py,
configure_optimizers, clipping, get_lr) moves the same weights as our train_step.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import pytest

from experiments.bench import nanogpt_score as ns

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def test_mean_and_standard_error_match_the_statistics_module():
    x = [1.8920, 1.8929, 1.8996, 1.9013, 1.8871]
    mean, se = ns.mean_se(x)
    assert mean == pytest.approx(statistics.mean(x), abs=1e-12)
    assert se == pytest.approx(statistics.stdev(x) / math.sqrt(len(x)), abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 values"):
        ns.mean_se([1.9])


def test_the_verdict_is_twice_the_standard_error_of_the_difference():
    a = [1.0, 1.2]  # mean 1.1, se 0.1
    b = [1.1, 1.3]  # mean 1.2, se 0.1: difference 0.1, its se sqrt(0.02) = 0.1414
    c = ns.compare(a, b)
    assert (c.mean_a, c.se_a, c.mean_b, c.se_b) == pytest.approx((1.1, 0.1, 1.2, 0.1))
    assert c.diff == pytest.approx(0.1) and c.se == pytest.approx(math.sqrt(0.02))
    assert not c.differ
    far = ns.compare(a, [x + 0.29 for x in a])  # 0.29 > 2 x 0.1414 = 0.283
    near = ns.compare(a, [x + 0.28 for x in a])
    assert far.differ and not near.differ
    assert ns.compare(b, a).diff == pytest.approx(-0.1)  # the sign: second minus first


def test_the_windows_are_fixed_by_their_seed_and_stay_inside_the_split():
    s = ns.window_starts(1000, 400, 64, seed=0)
    assert np.array_equal(s, ns.window_starts(1000, 400, 64, seed=0))
    assert not np.array_equal(s, ns.window_starts(1000, 400, 64, seed=1))
    assert s.min() >= 0 and s.max() < 1000 - 64
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = ns.gather(tokens, s, 64)
    assert x.shape == y.shape == (400, 64) and x.dtype == np.int64
    assert np.array_equal(x[:, 0], s) and np.array_equal(y, x + 1)
    with pytest.raises(ValueError, match="too few for block"):
        ns.window_starts(64, 1, 64, seed=0)


def _nanogpt_bins(text: str, out: Path) -> dict[str, np.ndarray]:
    """nanoGPT's data/shakespeare_char/prepare.py, written out: sorted characters, first 90% train."""
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.uint16)
    n = int(len(text) * 0.9)
    out.mkdir(parents=True, exist_ok=True)
    ids[:n].tofile(out / "train.bin")
    ids[n:].tofile(out / "val.bin")
    return ns.read_bins(out)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 4-step run of the shakespeare-char-cpu preset, shrunk, with nanoGPT's GELU and LayerNorm eps."""
    from train.config import apply_overrides, get_preset
    from train.loop import train

    tmp = tmp_path_factory.mktemp("score")
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTN_CACHE_DIR", str(tmp / "cache"))  # the corpus cache of this module's runs
    (tmp / "input.txt").write_text(TEXT, encoding="utf-8")
    overrides = [f"data.path={tmp / 'input.txt'}", f"run_dir={tmp / 'run'}", "train.steps=4", "train.eval_every=4"]
    overrides += ["train.eval_batches=1", "train.warmup_steps=1", "model.n_layers=2", "model.d_model=32"]
    overrides += ["model.max_len=16", "model.gelu=exact", "model.norm_eps=1e-5"]
    cfg = apply_overrides(get_preset("shakespeare-char-cpu"), overrides)
    train(cfg, progress=False, plots=False, log=lambda *a, **k: None)
    yield tmp, _nanogpt_bins(TEXT, tmp / "nanogpt" / "data" / "shakespeare_char")
    mp.undo()


@pytest.mark.slow
def test_a_run_of_ours_is_scored_on_the_windows_of_val_bin(tiny_run):
    from train.sample import load_run

    tmp, bins = tiny_run
    starts = ns.window_starts(len(bins["val"]), 30, 16, seed=3)
    x, y = ns.gather(bins["val"], starts, 16)
    step, loss = ns.score_run(tmp / "run", bins, x, y, batch=7)  # batches of 7: a ragged last one
    assert step == 4
    cfg, model, params, _ = load_run(tmp / "run")
    idx = starts[:, None] + np.arange(17)
    w = bins["val"].astype(np.int64)[idx]
    logits = np.asarray(model.apply({"params": params}, w[:, :-1]), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ref = -np.take_along_axis(logp, w[:, 1:, None], -1).mean()
    assert loss == pytest.approx(ref, abs=1e-5)
    assert 0.0 < loss < math.log(cfg.model.vocab_size) + 0.5


@pytest.mark.slow
def test_a_run_trained_on_other_text_is_refused(tiny_run, tmp_path):
    tmp, _ = tiny_run
    other = _nanogpt_bins(TEXT[::-1], tmp_path)
    with pytest.raises(ValueError, match=r"train split .* is not nanoGPT's train.bin"):
        ns.score_run(tmp / "run", other, *ns.gather(other["val"], np.zeros(1, np.int64), 16))


@pytest.mark.slow
def test_a_run_of_another_task_is_refused(tiny_run, tmp_path):
    from train.config import get_preset

    _, bins = tiny_run
    (tmp_path / "config.json").write_text(json.dumps(get_preset("copy").to_dict()))
    with pytest.raises(ValueError, match="is a 'copy' run: only text runs"):
        ns.run_data(tmp_path, bins)


@pytest.mark.slow
def test_a_runs_own_validation_batches_give_back_its_final_val_loss(tiny_run):
    tmp, bins = tiny_run
    x, y = ns.eval_windows(tmp / "run", bins)
    assert x.shape == (12, 16)  # train.eval_batches=1 batch of the preset's 12 windows, seq_len = max_len 16
    final = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in final if "val_loss" in r][-1]
    assert ns.score_run(tmp / "run", bins, x, y)[1] == pytest.approx(val, abs=1e-5)


def test_the_command_names_a_missing_nanogpt_checkout_in_one_line(tmp_path, capsys):
    argv = ["--nanogpt-dir", str(tmp_path), "--nanogpt-ckpt", "a", "b", "--runs", "c", "d"]
    assert ns.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.py not found" in err and "nanoGPT checkout" in err


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("NANOGPT_DIR"), reason="needs NANOGPT_DIR=a checkout of karpathy/nanoGPT")
def test_nanogpts_model_on_our_weights_scores_the_same_loss(tiny_run, tmp_path):
    torch = pytest.importorskip("torch")
    import jax

    from train.sample import load_run

    tmp, bins = tiny_run
    cfg, _, params, _ = load_run(tmp / "run")
    m = cfg.model
    d, v = m.d_model, m.vocab_size
    t = lambda a: torch.from_numpy(np.array(a, np.float32))  # noqa: E731
    sd = {
        "transformer.wte.weight": t(params["embed"]["embedding"][:v]),
        "transformer.wpe.weight": t(params["pos_embed"]),
        "transformer.ln_f.weight": t(params["norm_final"]["scale"]),
    }
    for i in range(m.n_layers):
        p = jax.tree.map(lambda x, i=i: x[i], params["blocks"]) if m.scan_layers else params[f"block_{i}"]
        a, h = p["attention"], f"transformer.h.{i}."
        qkv = np.concatenate([a[n].reshape(d, d) for n in ("query", "key", "value_down")], axis=1)
        sd[h + "attn.c_attn.weight"] = t(qkv.T)
        sd[h + "attn.c_proj.weight"] = t(a["value_up"].reshape(d, d).T)
        sd[h + "ln_1.weight"], sd[h + "ln_2.weight"] = t(p["norm_attention"]["scale"]), t(p["norm_mlp"]["scale"])
        sd[h + "mlp.c_fc.weight"], sd[h + "mlp.c_proj.weight"] = t(p["mlp"]["fc_in"].T), t(p["mlp"]["fc_out"].T)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    args = dict(n_layer=m.n_layers, n_head=m.n_heads, n_embd=d, block_size=m.max_len, bias=False, vocab_size=v)
    torch.save({"model": sd, "model_args": {**args, "dropout": 0.0}, "iter_num": 4}, tmp_path / "ckpt.pt")
    starts = ns.window_starts(len(bins["val"]), 30, 16, seed=3)
    nano_dir = Path(os.environ["NANOGPT_DIR"])
    x, y = ns.gather(bins["val"], starts, 16)
    it, theirs = ns.score_nanogpt(tmp_path / "ckpt.pt", nano_dir, x, y, batch=7)
    _, ours = ns.score_run(tmp / "run", bins, x, y)
    assert it == 4 and theirs == pytest.approx(ours, abs=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("NANOGPT_DIR"), reason="needs NANOGPT_DIR=a checkout of karpathy/nanoGPT")
def test_nanogpts_own_training_step_equals_ours_from_the_same_weights():
    """nanoGPT's model.py, its configure_optimizers (AdamW, decay on rank >= 2), its clipping and its get_lr
    formula, 30 steps beside our train_step on the same batches: the parameters stay equal to 1e-5."""
    torch = pytest.importorskip("torch")
    import jax
    import jax.numpy as jnp

    from train.config import apply_overrides, get_preset
    from train.step import build_steps

    ng = ns.nanogpt_model(Path(os.environ["NANOGPT_DIR"]))
    over = ["model.n_layers=2", "model.d_model=32", "model.max_len=16", "train.warmup_steps=10", "train.steps=30"]
    cfg = apply_overrides(get_preset("shakespeare-char-cpu"), over)
    m, tc = cfg.model, cfg.train
    d, h, v = m.d_model, m.n_heads, m.vocab_size
    torch.manual_seed(0)
    args = dict(n_layer=m.n_layers, n_head=h, n_embd=d, block_size=m.max_len, bias=False, vocab_size=v, dropout=0.0)
    tm = ng.GPT(ng.GPTConfig(**args))
    opt = tm.configure_optimizers(tc.weight_decay, tc.lr, (tc.beta1, tc.beta2), "cpu")
    steps = build_steps(m, tc, m.max_len)
    state = steps.init()

    def ours_from(sd):
        p = jax.tree.map(np.array, state.params)
        p["embed"]["embedding"][:v] = sd["transformer.wte.weight"]
        p["pos_embed"], p["norm_final"]["scale"] = sd["transformer.wpe.weight"], sd["transformer.ln_f.weight"]
        for i in range(m.n_layers):
            b, pre = p[f"block_{i}"], f"transformer.h.{i}."
            q, k, val = np.split(sd[pre + "attn.c_attn.weight"].T, 3, axis=1)
            b["attention"].update(query=q.reshape(d, h, -1), key=k.reshape(d, h, -1), value_down=val.reshape(d, h, -1))
            b["attention"]["value_up"] = sd[pre + "attn.c_proj.weight"].T.reshape(h, -1, d)
            b["norm_attention"]["scale"], b["norm_mlp"]["scale"] = sd[pre + "ln_1.weight"], sd[pre + "ln_2.weight"]
            b["mlp"]["fc_in"], b["mlp"]["fc_out"] = sd[pre + "mlp.c_fc.weight"].T, sd[pre + "mlp.c_proj.weight"].T
        return p

    def torch_params():
        return {k: t.detach().numpy().copy() for k, t in tm.state_dict().items()}

    def get_lr(it):  # nanoGPT train.py's get_lr
        if it < tc.warmup_steps:
            return tc.lr * (it + 1) / (tc.warmup_steps + 1)
        ratio = (it - tc.warmup_steps) / (tc.decay_steps - tc.warmup_steps)
        return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (tc.lr - tc.min_lr)

    state = state.replace(params=jax.tree.map(jnp.asarray, ours_from(torch_params())))
    rng = np.random.default_rng(0)
    for it in range(tc.steps):
        w = rng.integers(0, v, (tc.batch_size, m.max_len + 1))
        x, y = np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:])
        for group in opt.param_groups:
            group["lr"] = get_lr(it)
        _, loss = tm(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        batch = {"inputs": jnp.asarray(x, jnp.int32), "targets": jnp.asarray(y, jnp.int32)}
        state, metrics = steps.train_step(state, {**batch, "loss_mask": jnp.ones(x.shape, jnp.float32)})
        assert float(metrics["loss"]) == pytest.approx(loss.item(), abs=1e-5)
    theirs = ours_from(torch_params())
    leaves = zip(jax.tree.leaves(theirs), jax.tree.leaves(state.params), strict=True)
    assert max(float(np.max(np.abs(a[:v] - np.asarray(b)[:v]))) for a, b in leaves) <= 1e-5
