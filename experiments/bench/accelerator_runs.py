"""The model half of ``python -m experiments.bench.accelerator``: matmul peak, train steps, sampling, the real run.

- peak: the best of a few jitted ``n x n`` matmuls per dtype (float32 at jax's default precision, and bfloat16).
- train step: :func:`experiments.bench.train.bench_preset` (the jitted step of ``python -m train``, timed in
  chunks) for shakespeare-char and for the GPT-2 small shape (12 x 768, vocab 50257, context 1024, bfloat16
  compute) with random weights; MFU = model FLOPs/s (nanoGPT's formula) / the measured peak of its dtype.
- sampling: :func:`train.sample.make_generate` (prefill + cached decode in one jit) at batch 1 and 8.
- real run: :func:`train.loop.train` on the shakespeare-char preset in this process (an accelerator is not
  shared with a child process); at the deadline a SIGINT stops it the way Ctrl-C does (checkpoint saved),
  and the last evaluation in its metrics.jsonl is what it measured.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.accelerator_attention import SKIPPED, short

NANOGPT_VAL_LOSS = 1.4697  # nanoGPT README, shakespeare-char on one A100 (5000 iterations)
GPT2_SHAPE = [
    "model.vocab_size=50257",
    "model.max_len=1024",
    "model.n_layers=12",
    "model.d_model=768",
    "model.n_heads=12",
    "model.use_bias=true",
    "model.dtype=bfloat16",
    "train.batch_size=8",
]
# --smoke: every model shrunk to seconds on a CPU (the GPT-2 shape keeps its vocabulary and dtype)
# and on one device (the tests run on 8 fake CPU devices; a full run trains data-parallel on all of them)
SMOKE_MODEL = ["model.n_layers=1", "model.d_model=32", "model.n_heads=2", "model.max_len=32", "train.batch_size=2"]
SMOKE_MODEL += ["mesh.data=1"]


def fallback_corpus(out: Path) -> Path | None:
    """None when tiny Shakespeare is on disk; else a local stand-in text (the project's README, repeated)."""
    from train.data import resolve_text_path

    try:
        resolve_text_path(None)
        return None
    except ValueError:
        pass
    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text(errors="replace") if readme.is_file() else "To be, or not to be: that is the question.\n"
    path = out / "stand-in-corpus.txt"
    path.write_text(text * max(1, 300_000 // max(1, len(text))))
    return path


def matmul_peak(dtype, n: int, repeats: int = 5) -> float:
    """Best TFLOP/s of a jitted ``n x n @ n x n`` in ``dtype`` (after one compile-and-run)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def train_steps(smoke: bool, corpus: Path | None, peaks: dict, deadline: float) -> list[dict]:
    from experiments.bench.train import bench_preset

    data = [] if corpus is None else [f"data.path={corpus}"]
    shrink = SMOKE_MODEL if smoke else []
    cases = [
        ("shakespeare-char", "shakespeare-char", data + shrink),
        ("gpt2-small shape", "shakespeare-char", data + GPT2_SHAPE + ["model.dropout=0.1"] + shrink),
    ]
    rows = []
    for label, preset, overrides in cases:
        row = dict(model=label, overrides=" ".join(o for o in overrides if not o.startswith("data.path")))
        left = deadline - time.monotonic()
        if left <= 0:
            rows.append(dict(row, status=SKIPPED))
            continue
        try:
            r = bench_preset(preset, 5 if smoke else 200, min(left / 2, 2.0 if smoke else 30.0), overrides, False)
        except Exception as e:  # noqa: BLE001 - a row, not a crash
            rows.append(dict(row, status="ERROR", error=short(e)))
            continue
        dtype = "bfloat16" if "model.dtype=bfloat16" in overrides else "float32"
        peak = peaks.get(dtype)
        mfu = None if not peak else r["gflop_per_s"] / 1e3 / (peak * r["devices"])  # the peak is one device's
        rows.append(dict(row, status="ok", dtype=dtype, mfu=mfu, peak_tflops=peak, **r))
    return rows


def train_table(rows: list[dict]) -> str:
    lines = [
        "| model | dtype | devices | status | params | tokens/step | ms/step | tokens/s | TFLOP/s | MFU | compile s | note |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | | | {r['status']} | | | | | | | | {r.get('error', '')} |")
            continue
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['devices']} | ok | {r['params']:,} | {r['tokens_per_step']:,} | {r['ms_per_step']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {r['gflop_per_s'] / 1e3:.3f} | {mfu} | {r['compile_s']:.1f} | |"
        )
    return "\n".join(lines) + "\n"


def sampling(smoke: bool, deadline: float) -> list[dict]:
    """Tokens/s of the cached sampler of the shakespeare-char model (random weights) at batch 1 and 8."""
    from model.transformer import Transformer
    from train.config import apply_overrides, get_preset
    from train.sample import SamplingConfig, make_generate

    cfg = get_preset("shakespeare-char")
    if smoke:
        cfg = apply_overrides(cfg, SMOKE_MODEL)
    model_cfg = cfg.model
    prompt_len, new = (4, 8) if smoke else (8, min(500, model_cfg.max_len - 8))
    model = Transformer(model_cfg)
    rows = []
    params = None
    for batch in (1, 8):
        row = dict(batch=batch, prompt=prompt_len, new_tokens=new)
        if time.monotonic() > deadline:
            rows.append(dict(row, status=SKIPPED))
            continue
        try:
            prompt = jnp.asarray(
                np.random.default_rng(0).integers(0, model_cfg.vocab_size, (batch, prompt_len)), jnp.int32
            )
            if params is None:
                params = model.init(jax.random.key(0), prompt)["params"]
            gen = make_generate(model, prompt_len, new, SamplingConfig(temperature=1.0))
            t0 = time.perf_counter()
            jax.block_until_ready(gen(params, prompt, jax.random.key(0)))
            compile_s = time.perf_counter() - t0
            times = []
            for r in range(2 if smoke else 5):
                if times and time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                jax.block_until_ready(gen(params, prompt, jax.random.key(r + 1)))
                times.append(time.perf_counter() - t0)
            s = float(np.median(times))
        except Exception as e:  # noqa: BLE001
            rows.append(dict(row, status="ERROR", error=short(e)))
            continue
        rows.append(dict(row, status="ok", ms=1e3 * s, tokens_per_s=batch * new / s, compile_s=compile_s))
    return rows


def sampling_table(rows: list[dict]) -> str:
    lines = [
        "| batch | new tokens | status | ms per sample | tokens/s | compile s | note |",
        "|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        ok = r["status"] == "ok"
        ms, tps, comp = (f"{r['ms']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{r['compile_s']:.1f}") if ok else ("", "", "")
        lines.append(
            f"| {r['batch']} | {r['new_tokens']} | {r['status']} | {ms} | {tps} | {comp} | {r.get('error', '')} |"
        )
    return "\n".join(lines) + "\n"


def real_run(out: Path, smoke: bool, corpus: Path | None, deadline: float, log, extra=()) -> dict:
    """Train the shakespeare-char preset until done or ``deadline`` (then SIGINT, as Ctrl-C); what it measured."""
    from train.config import apply_overrides, get_preset
    from train.loop import train

    overrides = [f"run_dir={out / 'shakespeare-char'}"]
    if corpus is not None:
        overrides.append(f"data.path={corpus}")
    if smoke:
        overrides += SMOKE_MODEL + ["train.steps=4", "train.eval_every=2", "train.eval_batches=1", "train.log_every=1"]
    overrides += list(extra)
    cfg = apply_overrides(get_preset("shakespeare-char"), overrides)
    res = dict(
        preset="shakespeare-char",
        steps_planned=cfg.train.steps,
        overrides=" ".join(overrides),
        corpus="tiny Shakespeare" if corpus is None else f"stand-in {corpus.name} (not comparable to nanoGPT)",
    )
    left = deadline - time.monotonic()
    if left <= 0:
        return dict(res, status=SKIPPED)
    # SIGINT at the deadline: train() catches it and stops after the current step (checkpoint saved).
    # Our own handler is in place around train() so that a late signal cannot become a KeyboardInterrupt.
    old = signal.signal(signal.SIGINT, lambda *_: None)
    timer = threading.Timer(left, lambda: signal.raise_signal(signal.SIGINT))
    timer.daemon = True
    t0 = time.perf_counter()
    try:
        timer.start()
        result = train(cfg, progress=False, log=log, plots=False)
    except Exception as e:  # noqa: BLE001
        return dict(res, status="ERROR", error=short(e), wall_s=time.perf_counter() - t0)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    wall = time.perf_counter() - t0
    evals = []
    metrics = result.files.get("metrics")
    if metrics and Path(metrics).is_file():
        evals = [r for r in map(json.loads, Path(metrics).read_text().splitlines()) if r.get("kind") == "eval"]
    last = evals[-1] if evals else {}
    val = last.get("val_loss")
    s = result.stats or {}
    return dict(
        res,
        status="interrupted: budget" if result.interrupted else "finished",
        step=result.step,
        last_eval_step=last.get("step"),
        val_loss=val,
        nanogpt_val_loss=NANOGPT_VAL_LOSS,
        val_loss_minus_nanogpt=None if val is None else val - NANOGPT_VAL_LOSS,
        wall_s=wall,
        ms_per_step_median=_finite(s.get("ms_per_step_median")),
        tokens_per_s=_finite(s.get("tokens_per_s")),
        run_dir=str(result.run_dir),
    )


def _finite(x):
    """x, or None for a missing or non-finite number (a run stopped before its second step has no speed)."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def real_run_text(r: dict) -> str:
    keys = ["status", "corpus", "steps_planned", "step", "last_eval_step", "val_loss", "nanogpt_val_loss"]
    keys += ["val_loss_minus_nanogpt", "wall_s", "ms_per_step_median", "tokens_per_s", "run_dir", "overrides", "error"]
    lines = ["| | |", "|---|---|"]
    for k in keys:
        if r.get(k) is not None:
            v = r[k]
            lines.append(f"| {k} | {f'{v:.4f}' if isinstance(v, float) else v} |")
    return "\n".join(lines) + "\n"
