"""The attention half of ``python -m experiments.bench.accelerator``: correctness and speed per implementation.

Correctness: each implementation against 'reference' (float32, ``jax.default_matmul_precision('highest')``,
on the same rounded inputs) in values and in the gradients of ``sum(out * cotangent)``, on four cases
(causal, padded by lengths, sliding window, GQA) in float32 and bfloat16. Tolerances are the tests':
tests/test_attention.py ``TOL`` (float32 rtol = atol = 1e-5, bfloat16 1e-2) for values and float32
gradients, tests/test_chunked.py ``BF16_GRAD_TOL`` (5e-2 absolute) for bfloat16 gradients.

Speed: forward and forward+backward of causal self-attention per implementation and length, timed with
:func:`experiments.bench.measure.time_interleaved`, XLA's scratch with :func:`~experiments.bench.measure.temp_bytes`.

Whatever an implementation does (not apply to this backend, raise, disagree) is a row, never a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.measure import GiB, available_bytes, temp_bytes, time_interleaved
from model.attention import attention

IMPLEMENTATIONS = ("xla", "cudnn", "pallas", "chunked", "auto")
DTYPES = ("float32", "bfloat16")
# (rtol, atol) per dtype and quantity; see the module docstring for where each comes from
TOL = {
    ("float32", "values"): (1e-5, 1e-5),
    ("float32", "grads"): (1e-5, 1e-5),
    ("bfloat16", "values"): (1e-2, 1e-2),
    ("bfloat16", "grads"): (0.0, 5e-2),
}
SKIPPED = "skipped: budget"


def cases(t: int, h: int, dh: int) -> dict[str, tuple[int, dict]]:
    """name -> (key/value heads G, attention() mask keywords) for sequences of ``t`` tokens, ``h`` heads."""
    short = max(1, t - t // 4 - 3)
    return {
        "causal": (h, dict(causal=True)),
        "padded": (h, dict(causal=True, kv_lengths=[t, short], q_lengths=[t, short])),
        "sliding_window": (h, dict(causal=True, window=max(2, t // 4))),
        "gqa": (max(1, h // 4), dict(causal=True)),
    }


def why_not(impl: str, backend: str, q_shape, dtype, kw: dict) -> str | None:
    """None when ``impl`` should take this call on ``backend``, else why not (the kernels' own rules)."""
    if impl not in ("cudnn", "pallas"):
        return None
    try:
        from model.kernels.accelerators import cudnn_supports, pallas_supports
    except ImportError:  # the rules moved: try the call and let its error speak
        return None
    t = q_shape[1]
    mask = dict(k_len=t, causal=kw.get("causal", False), window=kw.get("window"))
    if impl == "cudnn":
        if backend != "gpu":
            return f"cuDNN needs an NVIDIA GPU (backend {backend})"
        return cudnn_supports(q_shape, dtype, **mask)
    has_padding = "kv_lengths" in kw or "q_lengths" in kw
    return pallas_supports(q_shape, dtype, backend, has_padding=has_padding, **mask)


def auto_choice(q_shape, dtype, kw: dict) -> str:
    """What implementation='auto' resolves to for this call ('?' if the registry does not say)."""
    try:
        from model.attention import select_implementation

        return select_implementation(
            q_shape,
            dtype,
            k_len=q_shape[1],
            causal=kw.get("causal", False),
            window=kw.get("window"),
            has_padding="kv_lengths" in kw or "q_lengths" in kw,
        )
    except Exception:  # noqa: BLE001 - the registry is being reworked; the marker is a nicety
        return "?"


def short(e: BaseException, n: int = 160) -> str:
    msg = " ".join(f"{type(e).__name__}: {e}".split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def _values_and_grads(impl: str, kw: dict) -> Callable:
    """(q, k, v, cot) -> ((dq, dk, dv), out) of ``sum(out * cot)`` for ``impl`` (not jitted)."""

    def loss(q, k, v, cot):
        kwj = {k: (jnp.asarray(v, jnp.int32) if isinstance(v, list) else v) for k, v in kw.items()}
        o = attention(q, k, v, implementation=impl, **kwj)
        return jnp.sum(o.astype(jnp.float32) * cot), o

    return jax.grad(loss, argnums=(0, 1, 2), has_aux=True)


def _run(jobs: dict) -> dict:
    """Run {name: (fn, args)} as ONE jitted program (compiling is what costs on a CPU): {name: result or error}.

    A job that fails to trace is its error at once (cheap); if the program then fails to compile or run,
    each job runs alone so that only the failing ones are errors.
    """
    out, good = {}, {}
    for n, (f, x) in jobs.items():
        try:
            jax.eval_shape(f, *x)
            good[n] = (f, x)
        except Exception as e:  # noqa: BLE001
            out[n] = e
    try:
        fn = jax.jit(lambda a: {n: f(*a[n]) for n, (f, _) in good.items()})
        return out | jax.block_until_ready(fn({n: x for n, (_, x) in good.items()}))
    except Exception:  # noqa: BLE001 - find which
        pass
    for n, (f, x) in good.items():
        try:
            out[n] = jax.block_until_ready(jax.jit(f)(*x))
        except Exception as e:  # noqa: BLE001
            out[n] = e
    return out


def _compare(got, want, rtol: float, atol: float) -> tuple[float, float]:
    """(max |got - want|, worst |got - want| / (atol + rtol |want|)): <= 1 passes."""
    a, b = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if not np.isfinite(a).all():
        return float("inf"), float("inf")
    err = np.abs(a - b)
    return float(err.max()), float((err / (atol + rtol * np.abs(b))).max())


def correctness(
    impls, backend: str, deadline: float, *, b: int = 2, t: int = 128, h: int = 8, dh: int = 64
) -> list[dict]:
    """One row per (case, dtype, implementation): max errors of values and gradients, PASS/FAIL/n/a/ERROR.

    Each case is one compiled program holding the float32 reference and every implementation in both dtypes.
    """
    rows = []
    rng = np.random.default_rng(0)
    for case, (g, kw) in cases(t, h, dh).items():
        raw = [rng.standard_normal(s) for s in ((b, t, h, dh), (b, t, g, dh), (b, t, g, dh), (b, t, h, dh))]
        cot = jnp.asarray(raw[3], jnp.float32)
        shape = f"B{b} T{t} H{h} G{g} Dh{dh}"
        if time.monotonic() > deadline:
            rows += [dict(case=case, dtype=d, shape=shape, impl=i, status=SKIPPED) for d in DTYPES for i in impls]
            continue
        jobs, pending = {}, []
        for dtype in DTYPES:
            q, k, v = (jnp.asarray(x, dtype) for x in raw[:3])
            # the reference in float32 on the same (rounded) inputs
            jobs["reference", dtype] = (
                _values_and_grads("reference", kw),
                ([x.astype(jnp.float32) for x in (q, k, v)] + [cot]),
            )
            for impl in impls:
                row = dict(case=case, dtype=dtype, shape=shape, impl=impl)
                if impl == "auto":
                    row["auto_choice"] = auto_choice(q.shape, q.dtype, kw)
                reason = why_not(impl, backend, q.shape, q.dtype, kw)
                if reason:
                    rows.append(dict(row, status="n/a", error=reason))
                    continue
                jobs[impl, dtype] = (_values_and_grads(impl, kw), [q, k, v, cot])
                pending.append(row)
        with jax.default_matmul_precision("highest"):
            results = _run({"|".join(key): job for key, job in jobs.items()})
        for row in pending:
            got, want = results[f"{row['impl']}|{row['dtype']}"], results[f"reference|{row['dtype']}"]
            if isinstance(got, Exception) or isinstance(want, Exception):
                rows.append(dict(row, status="ERROR", error=short(got if isinstance(got, Exception) else want)))
                continue
            ok = True
            for what, x, y in [("values", [got[1]], [want[1]]), ("grads", got[0], want[0])]:
                rtol, atol = TOL[row["dtype"], what]
                errs = [_compare(a, c, rtol, atol) for a, c in zip(x, y, strict=True)]
                row[f"{what}_max_err"] = max(e[0] for e in errs)
                ok &= max(e[1] for e in errs) <= 1.0
            rows.append(dict(row, status="PASS" if ok else "FAIL"))
    order = {
        (c, d, i): n for n, (c, d, i) in enumerate((c, d, i) for c in cases(t, h, dh) for d in DTYPES for i in impls)
    }
    return sorted(rows, key=lambda r: order[r["case"], r["dtype"], r["impl"]])


def correctness_table(rows: list[dict]) -> str:
    lines = [
        "| case | dtype | impl | status | values max err | grads max err | note |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        impl = r["impl"] + (f" (-> {r['auto_choice']})" if r.get("auto_choice") else "")
        v, g = r.get("values_max_err"), r.get("grads_max_err")
        note = r.get("error", "")
        lines.append(
            f"| {r['case']} | {r['dtype']} | {impl} | {r['status']} | "
            f"{'' if v is None else f'{v:.2e}'} | {'' if g is None else f'{g:.2e}'} | {note} |"
        )
    tols = ", ".join(f"{d} {w}: rtol {r:g} atol {a:g}" for (d, w), (r, a) in TOL.items())
    return "\n".join(lines) + f"\n\nTolerances (the tests'): {tols}. Shapes: {rows[0]['shape'] if rows else ''}.\n"


# ---------------------------------------------------------------------------- speed
def device_bytes() -> int:
    """Memory the first device may use (its allocator's limit; the host's free memory on CPU)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    except Exception:  # noqa: BLE001 - not every backend reports
        pass
    return available_bytes()


def _fns(impl: str) -> tuple[Callable, Callable]:
    def fwd(q, k, v):
        return attention(q, k, v, causal=True, implementation=impl)

    def loss(q, k, v):
        return jnp.sum(fwd(q, k, v).astype(jnp.float32))

    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def speed(impls, backend: str, lengths, deadline: float, *, b: int, h: int, dh: int, dtype, repeats: int) -> list[dict]:
    """One row per (T, implementation, mode): median ms, tokens/s, XLA scratch; 'auto' marks its choice."""
    rows = []
    limit = device_bytes()
    for t in lengths:
        shape = (b, t, h, dh)
        keys = jax.random.split(jax.random.key(t), 3)
        q, k, v = (jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)
        choice = auto_choice(shape, q.dtype, dict(causal=True))
        calls, pending = {}, []
        for impl in ("reference", *impls):
            base = dict(T=t, impl=impl, dtype=jnp.dtype(dtype).name, shape=f"B{b} H{h} Dh{dh}")
            if impl == "auto":
                base["auto_choice"] = choice
            if time.monotonic() > deadline:
                rows += [dict(base, mode=m, status=SKIPPED) for m in ("fwd", "fwd+bwd")]
                continue
            reason = why_not(impl, backend, shape, q.dtype, dict(causal=True))
            if reason:
                rows += [dict(base, mode=m, status="n/a", error=reason) for m in ("fwd", "fwd+bwd")]
                continue
            for mode, fn in zip(("fwd", "fwd+bwd"), _fns(impl), strict=True):
                row = dict(base, mode=mode)
                try:
                    row["scratch_bytes"] = temp_bytes(fn, q, k, v)
                    if row["scratch_bytes"] > 0.8 * limit:
                        rows.append(dict(row, status=f"skipped: scratch {row['scratch_bytes'] / GiB:.1f} GiB"))
                        continue
                    jax.block_until_ready(fn(q, k, v))  # compile + one run, errors surface here
                except Exception as e:  # noqa: BLE001 - a failing implementation is a row
                    rows.append(dict(row, status="ERROR", error=short(e)))
                    continue
                calls[impl, mode] = lambda fn=fn, a=(q, k, v): jax.block_until_ready(fn(*a))
                pending.append(row)
        if calls and time.monotonic() < deadline:
            try:
                times, err = time_interleaved({f"{i}|{m}": f for (i, m), f in calls.items()}, repeats), ""
            except Exception as e:  # noqa: BLE001
                times, err = {}, short(e)
            for row in pending:
                s = times.get(f"{row['impl']}|{row['mode']}")
                if s is None:
                    rows.append(dict(row, status="ERROR", error=err or "not timed"))
                else:
                    rows.append(dict(row, status="ok", ms=1e3 * s, tokens_per_s=b * t / s))
        else:
            rows += [dict(r, status=SKIPPED) for r in pending]
    order = {name: n for n, name in enumerate(("reference", *impls))}
    return sorted(rows, key=lambda r: (r["T"], order[r["impl"]], r["mode"]))


def speed_table(rows: list[dict]) -> str:
    lines = [
        "| T | impl | mode | status | ms (median) | tokens/s | scratch MiB | note |",
        "|---:|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        impl = r["impl"] + (f" (-> {r['auto_choice']})" if r.get("auto_choice") else "")
        ms = f"{r['ms']:.3f}" if "ms" in r else ""
        tps = f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else ""
        mib = f"{r['scratch_bytes'] / 2**20:.1f}" if "scratch_bytes" in r else ""
        lines.append(
            f"| {r['T']} | {impl} | {r['mode']} | {r['status']} | {ms} | {tps} | {mib} | {r.get('error', '')} |"
        )
    return "\n".join(lines) + "\n"
