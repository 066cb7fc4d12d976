"""The training loop: a run directory, the step in a hot loop, evaluation, logging, checkpoints, signals.

    result = train(get_preset("induction"))               # writes runs/induction-<date>-<time>/
    result = train(cfg, resume=True)                       # continues cfg.run_dir from its newest checkpoint

A run directory holds::

    config.json      the resolved RunConfig (model.vocab_size raised to the data's if it was smaller)
    vocab.json       the data's vocabulary (train/data/), so sampling needs no corpus
    metrics.jsonl    one JSON object per line: {"step", "kind": "train"|"eval", metrics...}
    checkpoints/     Orbax checkpoints <step>/{state,meta} (train/checkpoint.py)
    loss.png         training and evaluation loss (and accuracy) against step
    attention.png    the attention pattern of every head of every layer on one validation sequence
    summary.json     final metrics, the success criterion, timings
    tensorboard/     every metrics record and both figures as TensorBoard events (wandb/ too with --wandb)
    profile/         with train.profile=START:STOP, jax.profiler's trace of those steps

(metrics.jsonl, summary.json and the plots are written by train/report.py.) ``_train`` runs four
phases, one function each: ``_setup`` (run directory via train/rundir.py, data, mesh), ``_restore_or_init``,
``_hot_loop`` and ``_report``.

Exact resume: batch number s is a pure function of (data.seed, s), dropout keys are fold_in(seed, s)
and the checkpoint holds the whole TrainState, so a run stopped at step k and resumed logs the same
metrics, bit for bit on CPU, as one never stopped. SIGINT and SIGTERM finish the current step, save
a checkpoint and return (exit codes 130 / 143 from the command line).

The hot loop reads the metrics device -> host only every ``train.log_every`` steps; the next batch is
built and put on the device while the current step runs (dispatch is asynchronous); the state is donated.
NaN/Inf steps are counted on the device (``_nonfinite_counter``, fused after each step); the host reads
that counter one step behind (after step s+1 is dispatched, the count of step s, which is done by then
or nearly: the device always has the next step queued), so a streak of ``train.max_nonfinite`` bad
steps ending at step h stops the run at step h+1 at the latest (at h itself when h is a log or
checkpoint step), before anything of step h+1 is logged or saved. The count (streak and total) is
saved in each checkpoint's meta and restored on resume, so ``nonfinite_steps`` continues as if the run
had never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from model.transformer import attention_patterns
from train.checkpoint import CHECKPOINT_DIR, Checkpointer
from train.config import CONFIG_FILE, ConfigError, RunConfig, RunDirError, SetupError, goal_met, load_run_config
from train.distributed import sharding_plan
from train.files import read_jsonl, write_atomic
from train.report import (
    METRICS_FILE,
    PROFILE_DIR,
    MetricsLog,
    NoLog,
    Progress,
    StepProfiler,
    excerpt,
    join_labels,
    plot_attention,
    plot_losses,
    write_summary,
)
from train.rundir import SETUP_MARKER, discard_unstarted, prepare
from train.signals import SignalCatcher
from train.step import build_steps

# Evaluation batches are batch numbers EVAL_OFFSET + i of each split: the same fixed set at every
# evaluation (comparable across steps) and never a batch that training draws.
EVAL_OFFSET = 1_000_000_000


@dataclasses.dataclass
class RunResult:
    """What a call to :func:`train` did."""

    run_dir: Path
    config: RunConfig
    step: int  # updates applied when the call returned
    final: dict[str, float] | None  # the last evaluation (None if interrupted before one)
    success: bool | None  # the goal on the final evaluation (None: no goal, or interrupted)
    interrupted: str | None  # 'SIGINT' / 'SIGTERM' / 'stop_after' if stopped early, else None
    stats: dict[str, float]  # timings: compile_s, train_s, ms_per_step_median, tokens_per_s ...
    files: dict[str, Path]
    heads: dict | None = None  # induction tasks: the head detectors' scores and the induction head (summary.json)


# ====================================================================== evaluation
def _floats(tree: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def evaluate(eval_step, params, ds, cfg: RunConfig, put: Callable) -> dict[str, float]:
    """Mean loss and accuracy over the masked positions of ``eval_batches`` fixed batches of each split.

    Returns {'train_loss', 'train_accuracy', 'val_loss', 'val_accuracy'}; one host sync per split.
    """
    tc = cfg.train
    out: dict[str, float] = {}
    for split in ("train", "val"):
        sums = None
        for i in range(tc.eval_batches):
            r = eval_step(params, put(ds.batch(split, EVAL_OFFSET + i, tc.batch_size, cfg.seq_len)))
            sums = r if sums is None else jax.tree.map(lambda a, b: a + b, sums, r)
        s = _floats(sums)
        count = max(s["count"], 1.0)
        out[f"{split}_loss"] = s["loss_sum"] / count
        out[f"{split}_accuracy"] = s["correct"] / count
    return out


# ====================================================================== the loop
class NonFiniteError(SetupError):
    """The loss or gradients stayed NaN/Inf for ``train.max_nonfinite`` steps in a row (one line: which steps).

    A SetupError so that the command line prints it as one ``error:`` line (exit code 2).
    """


def _nonfinite_counter(limit: int) -> Callable:
    """Jitted ``(counts, flag, step) -> counts`` over int32 [streak, total, hit] kept on the device (no host sync).

    ``streak``: bad steps in a row; ``total``: bad steps since the run started (restored on resume from the
    checkpoint's meta); ``hit``: the first step at which the streak reached ``limit`` (-1 until then), so
    a streak is caught even if good steps follow it before the host reads the counter.
    """

    @jax.jit
    def count(c, flag, step):
        streak = jnp.where(flag > 0, c[0] + 1, 0)
        hit = jnp.where((c[2] < 0) & (streak >= limit), step, c[2])
        return jnp.stack([streak, c[1] + flag, hit]).astype(jnp.int32)

    return count


def train(cfg: RunConfig, **kwargs) -> RunResult:
    """Train ``cfg`` in ``cfg.run_dir`` (see :func:`_train` for the options) on the mesh of ``cfg.mesh``.

    Everything that is traced (init, train and eval steps) is traced inside ``use_mesh``, which this
    scope closes however the run ends.
    """
    with contextlib.ExitStack() as scope:
        return _train(cfg, scope=scope, **kwargs)


@dataclasses.dataclass
class _Run:
    """What phase 1 settles: the resolved config, where the run lives and how its arrays are placed."""

    cfg: RunConfig
    run_dir: Path
    ds: Any  # train.data.Dataset
    resuming: bool
    state_sharding: Any
    batch_sharding: Any
    put: Callable[[dict[str, np.ndarray]], dict[str, jax.Array]]  # host batch -> device batch
    metrics_log: MetricsLog
    profiler: StepProfiler  # train.profile's trace (stopped by the run's scope however the run ends)
    created: bool = False  # this process created run_dir (a fresh run)


INDUCTION_TASKS = ("induction", "shifted_induction")  # runs that end with the head detectors' table


def head_detectors(model, params, seq_len: int) -> dict:
    """The detectors' ``[L][H]`` scores (model/detectors.py) on repeated random tokens, and the best induction head."""
    from model.detectors import detector_table

    table = {k: np.asarray(v).round(4).tolist() for k, v in detector_table(model, params, jax.random.key(0)).items()}
    scores = np.asarray(table["prefix_matching"])
    layer, head = np.unravel_index(int(scores.argmax()), scores.shape)
    return {**table, "induction_head": {"layer": int(layer), "head": int(head), "score": float(scores.max())}}


def _setup(cfg, scope, *, resume, log, state_sharding, batch_sharding, wandb=False) -> _Run:
    """Phase 1: run directory, data, config, mesh; errors here are the user's (one line each, as SetupError)."""
    writer = jax.process_index() == 0  # only process 0 writes the run directory's files (Orbax coordinates itself)
    try:
        cfg, run_dir, ds, resuming, lock = prepare(cfg, resume=resume, log=log, lock=writer)
    except SetupError:
        raise
    except (ValueError, OSError) as e:  # ConfigError, the data's one-line ValueErrors, unreadable files
        raise SetupError(str(e)) from None
    if lock is not None:  # held until the run returns; the kernel releases it if the process dies
        scope.callback(lock.release)
    plan = None
    if state_sharding is None and batch_sharding is None:
        plan = sharding_plan(cfg)  # None on one device; a bad mesh raises ConfigError here, before compiling
    if plan is not None:
        from model.sharding import use_mesh

        scope.enter_context(use_mesh(plan.mesh, plan.rules))
        state_sharding, batch_sharding = plan.state_sharding, plan.batch_sharding
        log(f"mesh {dict(plan.mesh.shape)} ({cfg.sharding}) over {plan.mesh.devices.size} devices")
        put = plan.put
    else:
        target = batch_sharding if batch_sharding is not None else jax.devices()[0]
        put = functools.partial(jax.device_put, device=target)
    created = not run_dir.exists()
    try:  # a read-only or full disk fails here, before any compiling or training
        run_dir.mkdir(parents=True, exist_ok=True)
        if writer and not resuming:
            (run_dir / SETUP_MARKER).write_text("set up, no step done yet: the same command starts it afresh\n")
        if writer:
            write_atomic(run_dir / CONFIG_FILE, cfg.to_json() + "\n")
            ds.save_vocab(run_dir)
    except OSError as e:
        raise RunDirError(
            f"cannot write the run directory {run_dir} ({e.strerror or e}): choose another run_dir"
        ) from None
    metrics_log = (MetricsLog if writer else NoLog)(
        run_dir / METRICS_FILE, wandb=wandb, name=cfg.name, config=cfg.to_dict()
    )
    scope.callback(metrics_log.close)  # the TensorBoard writer's file (and the W&B run), however the run ends
    profiler = StepProfiler(cfg.train.profile_steps if writer else None, run_dir / PROFILE_DIR)
    scope.callback(profiler.stop)
    return _Run(cfg, run_dir, ds, resuming, state_sharding, batch_sharding, put, metrics_log, profiler, created)


def _check_restart(run: _Run, listing: list[str] | None, log: Callable[[str], None]) -> None:
    """A resumed run without a checkpoint restarts from step 0 only if it stopped before its first save could commit.

    ``listing``: what checkpoints/ held (None: no such directory; Checkpointer creates it before the first
    record is logged). The step-k record is logged before the save of step k starts, and an asynchronous
    save waits for the one before it, so a run killed before its first checkpoint committed logged at
    most 2 * checkpoint_every steps. More than that with no checkpoint, or no checkpoints/ at all, means
    it was deleted or emptied: retraining from step 0 over the run's metrics is refused.
    """
    ce = run.cfg.train.checkpoint_every
    trained = max(
        (r.get("step", 0) for r in read_jsonl(run.metrics_log.path, warn=None) if r.get("kind") == "train"), default=0
    )
    if trained == 0:
        return
    where = run.run_dir / CHECKPOINT_DIR
    if listing is None or trained > 2 * ce:
        found = "is missing" if listing is None else "holds no checkpoint"
        raise RunDirError(
            f"{where} {found} but {run.metrics_log.path} shows training up to step {trained}: resuming would retrain "
            f"from step 0 over it; to start over deliberately, delete {run.run_dir} or train into a new run_dir"
        )
    log(f"no checkpoint was committed in {where} before the run stopped (at step {trained}): training from step 0")


def _restore_or_init(run: _Run, steps, ckpt: Checkpointer, log: Callable[[str], None], listing: list[str] | None):
    """Phase 2: (state, start step): restored from the newest readable checkpoint, or initialised under jit."""
    start = ckpt.latest_step() if run.resuming else None
    if start is None:
        if run.resuming:
            _check_restart(run, listing, log)
        run.metrics_log.truncate_after(-1)
        if run.cfg.init_from is not None:  # fine-tuning: the checkpoint's parameters, a fresh optimizer, step 0
            from train.init_from import init_state

            log(f"initialising from {run.cfg.init_from}")
            return init_state(steps.init(), run.cfg), 0, (0, 0)
        return steps.init(), 0, (0, 0)
    state, meta = ckpt.restore(steps.abstract_state(), warn=log)  # skips a corrupted newest checkpoint
    start = int(meta["step"])
    if int(state.step) != start or meta["data_position"] != start:
        raise RunDirError(f"checkpoint {start} in {ckpt.directory} is inconsistent (step {int(state.step)})")
    run.metrics_log.truncate_after(start)
    log(f"resuming {run.run_dir} from step {start}")
    streak, total = meta.get("nonfinite", (0, 0))  # checkpoints written before it was saved: none counted
    return state, start, (int(streak), int(total))


@dataclasses.dataclass
class _Loop:
    """What phase 3 leaves behind."""

    state: Any
    step: int
    final: dict[str, float] | None  # the last evaluation
    interrupted: str | None
    windows: list[tuple[int, float]]  # (steps, seconds) between logs, compile excluded
    compile_s: float


def _hot_loop(run: _Run, steps, ckpt: Checkpointer, state, start: int, counts, *, progress, stop_after, signals, scope):
    """Phase 3: train from ``start`` to ``train.steps`` (or a signal, or ``stop_after``), logging, evaluating, saving."""
    cfg, ds, put, metrics_log, profiler = run.cfg, run.ds, run.put, run.metrics_log, run.profiler
    tc, seq_len = cfg.train, cfg.seq_len
    train_step, eval_step = steps.train_step, steps.eval_step
    tokens_per_step = tc.batch_size * seq_len
    final: dict[str, float] | None = None
    interrupted: str | None = None
    windows: list[tuple[int, float]] = []
    compile_s = 0.0

    bar = Progress(tc.steps, start, disable=(not progress) if progress is not None else None)
    scope.callback(bar.close)  # its clock thread stops however the run ends
    if start == 0:
        final = evaluate(eval_step, state.params, ds, cfg, put)
        metrics_log.write({"step": 0, "kind": "eval", **final})
    step = start
    batch = put(ds.batch("train", step, tc.batch_size, seq_len)) if step < tc.steps else None
    window_steps, window_t = 0, time.perf_counter()
    count_nonfinite = _nonfinite_counter(tc.max_nonfinite)
    nonfinite = jnp.asarray([*counts, -1], jnp.int32)  # [streak, total, hit step]: see _nonfinite_counter

    def check(c: list[int], step: int) -> None:
        """Stop (no save) once the streak hit the limit; refused updates never reached the params."""
        if c[2] >= 0:
            bar.close()
            ckpt.close()
            good = ckpt.latest_step()
            hit = c[2]
            raise NonFiniteError(
                f"non-finite loss or gradients in train.max_nonfinite={tc.max_nonfinite} steps in a row "
                f"(steps {hit - tc.max_nonfinite + 1}..{hit}; {c[1]} refused updates up to step {hit}): "
                f"stopped at step {step}; the last good checkpoint is step {good}; "
                f"lower train.lr or check the data, then resume"
            )

    while step < tc.steps:
        first = step == start
        with profiler.step(step + 1, state):
            state, metrics = train_step(state, batch)
        step += 1
        if not first:  # the count after step-1, read while this step runs (the device is never left idle)
            check(jax.device_get(nonfinite).tolist(), step)
        nonfinite = count_nonfinite(nonfinite, metrics["nonfinite"], step)
        if step < tc.steps:  # build and send the next batch while this step runs
            batch = put(ds.batch("train", step, tc.batch_size, seq_len))
        if first:  # the first call compiles: keep it out of the timings
            jax.block_until_ready(metrics)
            compile_s = time.perf_counter() - window_t
            window_steps, window_t = 0, time.perf_counter()
            signals.started()  # a signal now stops after a step, with a checkpoint
            (run.run_dir / SETUP_MARKER).unlink(missing_ok=True)
            bar.compiled()  # from here on the bar shows the steps' rate, not one that counts the compilation
        else:
            window_steps += 1
            bar.update(1)
        if (trace := profiler.after(step, metrics)) is not None:
            took = f"written in {profiler.write_s:.1f} s; README: Profiler traces"
            bar.write(f"profiler trace of train.profile={tc.profile}: {trace} ({took})")
            window_steps, window_t = 0, time.perf_counter()  # traced steps and writing the trace are not step time
        stopping = (signals.received is not None or step == stop_after) and step < tc.steps
        if step % tc.log_every == 0 or step == tc.steps or stopping:
            counted = jax.device_get(nonfinite).tolist()
            m, n_bad = _floats(metrics), counted[1]  # the metrics' one sync
            m.pop("nonfinite")
            now = time.perf_counter()
            rec = {"step": step, "kind": "train", **m, "nonfinite_steps": n_bad}
            if window_steps:
                windows.append((window_steps, now - window_t))
                rec["ms_per_step"] = 1e3 * (now - window_t) / window_steps
                rec["tokens_per_s"] = tokens_per_step * window_steps / (now - window_t)
                bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:,.0f}", refresh=False)
            metrics_log.write(rec)
            window_steps, window_t = 0, now
            check(counted, step)
        if step % tc.eval_every == 0 or step == tc.steps:
            final = evaluate(eval_step, state.params, ds, cfg, put)
            metrics_log.write({"step": step, "kind": "eval", **final})
            bar.write(f"step {step}: " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()))
        if step % tc.checkpoint_every == 0 or step == tc.steps or stopping:
            counted = jax.device_get(nonfinite).tolist()
            check(counted, step)  # never save at (or after) the step a streak hit the limit
            meta = {"step": step, "data_position": step, "nonfinite": counted[:2], "config": cfg.to_dict()}
            ckpt.save(state, meta)
        if step % tc.eval_every == 0 or step % tc.checkpoint_every == 0:
            window_steps, window_t = 0, time.perf_counter()  # evaluation and saving are not step time
        if stopping:
            interrupted = signals.received or "stop_after"
            break
    bar.close()
    profiler.stop()  # a run stopped inside the window keeps the steps it traced
    ckpt.close()  # waits for the asynchronous writes
    return _Loop(state, step, final, interrupted, windows, compile_s)


def _report(run: _Run, steps, done: _Loop, t_start: float, plots: bool) -> RunResult:
    """Phase 4: timings, the final evaluation, the goal, the plots and summary.json."""
    cfg, run_dir, ds = run.cfg, run.run_dir, run.ds
    tokens_per_step = cfg.train.batch_size * cfg.seq_len
    windows = done.windows
    train_s = sum(s for _, s in windows)
    n_steps = sum(n for n, _ in windows)
    stats = {
        "compile_s": done.compile_s,
        "wall_s": time.perf_counter() - t_start,
        "train_s": train_s,
        "ms_per_step_median": 1e3 * statistics.median(s / n for n, s in windows) if windows else math.nan,
        "tokens_per_s": tokens_per_step * n_steps / train_s if train_s > 0 else math.nan,
        "tokens_per_step": tokens_per_step,
    }
    files = {"run_dir": run_dir, "config": run_dir / CONFIG_FILE, "metrics": run.metrics_log.path}
    files["checkpoints"] = run_dir / CHECKPOINT_DIR
    if run.profiler.written is not None:
        files["profile"] = run.profiler.written
    final, success = done.final, None
    if done.interrupted is None:
        if final is None:  # resumed a finished run: evaluate its final state again
            final = evaluate(steps.eval_step, done.state.params, ds, cfg, run.put)
        success = goal_met(cfg.goal, final)
        # the attention plot runs a jitted function on the global params, which every process would have
        # to join; only process 0 reports, so multi-process runs skip the plots (metrics.jsonl has the data)
        if plots and jax.process_count() == 1:
            views = run.metrics_log.figure_at  # the same figures as TensorBoard / W&B images at the final step
            records = run.metrics_log.read()
            files["loss_plot"] = plot_losses(records, run_dir / "loss.png", cfg.name, views(done.step, "loss"))
            val = ds.batch("val", EVAL_OFFSET, 1, cfg.seq_len)
            patterns = jax.jit(lambda p, x: attention_patterns(steps.model, p, x))(done.state.params, val["inputs"])
            pattern = np.asarray(patterns)[:, 0]  # [L, H, T, T] of the one sequence
            labels = [ds.decode([int(t)]) for t in val["inputs"][0]]
            title = f"{cfg.name}: attention patterns on {excerpt(join_labels(labels), 80)}"
            also = views(done.step, "attention")
            files["attention_plot"] = plot_attention(pattern, labels, run_dir / "attention.png", title, also=also)
        summary = {"step": done.step, "final": final, "goal": cfg.goal, "success": success, "stats": stats}
        if cfg.data.task in INDUCTION_TASKS and jax.process_count() == 1:
            summary["heads"] = head_detectors(steps.model, done.state.params, cfg.seq_len)
        files["summary"] = write_summary(run_dir, summary)
    heads = summary.get("heads") if done.interrupted is None else None
    return RunResult(run_dir, cfg, done.step, final, success, done.interrupted, stats, files, heads)


def _train(
    cfg: RunConfig,
    *,
    scope: contextlib.ExitStack,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    handle_signals: bool = True,
    exit_on_early_signal: bool = False,
    plots: bool = True,
    wandb: bool = False,
    state_sharding=None,
    batch_sharding=None,
) -> RunResult:
    """Train ``cfg`` in ``cfg.run_dir`` (created; or continued with ``resume``) and return what happened.

    ``stop_after``: stop after that step as if interrupted (a checkpoint is saved), for tests of resuming.
    ``exit_on_early_signal`` (the command line): SIGINT/SIGTERM before the first step is done end the process
    within moments, even during compilation, removing what a fresh run had written (see SignalCatcher).
    ``progress``: tqdm bar (None: only on a terminal). ``wandb``: log to W&B too (train/report.py).
    ``state_sharding`` / ``batch_sharding``: see train/step.py; without them the run uses ``cfg.mesh`` and
    ``cfg.sharding`` (train/distributed.py), entered into ``scope``.
    """
    made: list[_Run] = []  # the run once set up: what an early signal or error has to clean up

    def on_early(name: str) -> None:  # a signal before the first step: nothing to save; leave nothing behind
        run = made[0] if made else None
        if run is not None and not run.resuming and jax.process_index() == 0:
            discard_unstarted(run.run_dir, run.created)
        where = f" (removed what it had written in {run.run_dir})" if run is not None and not run.resuming else ""
        print(f"interrupted ({name}) before the first step: nothing to save{where}", file=sys.stderr, flush=True)

    signals = scope.enter_context(SignalCatcher(handle_signals, on_early if exit_on_early_signal else None))
    sharding = {"state_sharding": state_sharding, "batch_sharding": batch_sharding}
    run = _setup(cfg, scope, resume=resume, log=log, wandb=wandb, **sharding)
    made.append(run)
    tc = run.cfg.train
    try:
        steps = build_steps(
            run.cfg.model, tc, run.cfg.seq_len, state_sharding=run.state_sharding, batch_sharding=run.batch_sharding
        )
        where = run.run_dir / CHECKPOINT_DIR
        listing = sorted(p.name for p in where.iterdir()) if where.is_dir() else None  # before Orbax tidies it
        if run.resuming and listing is None:  # refused before Checkpointer creates an empty checkpoints/
            _check_restart(run, listing, log)
        ckpt = Checkpointer(run.run_dir / CHECKPOINT_DIR, keep=tc.keep_checkpoints, async_save=tc.async_checkpoint)
        state, start, counts = _restore_or_init(run, steps, ckpt, log, listing)
    except BaseException:  # e.g. out of memory while initialising: a fresh run leaves no half-made directory
        if not run.resuming and jax.process_index() == 0:
            discard_unstarted(run.run_dir, run.created)
        raise
    t_start = time.perf_counter()
    loop = {"progress": progress, "stop_after": stop_after, "signals": signals, "scope": scope}
    done = _hot_loop(run, steps, ckpt, state, start, counts, **loop)
    return _report(run, steps, done, t_start, plots)


__all__ = ["train", "prepare", "evaluate", "RunResult", "SetupError", "RunDirError", "ConfigError", "load_run_config"]
