"""Checkpoints of a run with Orbax: ``RUN_DIR/checkpoints/<step>/{state,meta}``.

``state`` is the TrainState (params, optimizer state, step), written by Orbax's StandardSave
(array files and JSON metadata, no pickle); ``meta`` is JSON: the step, the data position (equal to
the step, since batch number s is a pure function of (data.seed, s)) and the run's config. Loading
never executes code: arrays are read into an abstract target (``Steps.abstract_state()`` of
train/step.py, built with ``jax.eval_shape``), so they land with the target's shapes, dtypes and shardings.

    ckpt = Checkpointer(run_dir / "checkpoints", keep=3)
    ckpt.save(state, {"step": 100, "data_position": 100, "config": cfg.to_dict()})
    state, meta = ckpt.restore(steps.abstract_state())   # the newest checkpoint (steps = build_steps(...))
    tree_equal(state, other)                             # bitwise comparison, e.g. of a resumed run's state

Faults: a save that cannot be written (read-only or full disk) raises :class:`CheckpointError` (one
line, naming the step and the newest checkpoint that is still intact; Orbax writes into a tmp
directory and renames it on commit, so the earlier checkpoints are never touched). Restoring the
newest checkpoint when its files are truncated or corrupted logs a one-line warning naming the step
and falls back to the previous one.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from train.config import SetupError


class CheckpointError(SetupError):
    """A checkpoint cannot be written or read; the message is one line naming the step and what to do."""


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


CHECKPOINT_DIR = "checkpoints"  # the checkpoints' folder inside a run directory

# the usual causes, named up front: Orbax/TensorStore bury the OS error deep in a long message
_CAUSES = (
    ("No space left on device", "disk full: No space left on device"),
    ("Read-only file system", "Read-only file system"),
    ("Permission denied", "Permission denied"),
    ("Disk quota exceeded", "Disk quota exceeded"),
)


def _short(e: BaseException) -> str:
    """The exception as one short line (Orbax's messages can span lines), with a known OS cause first."""
    text = " ".join(str(e).split())
    cause = next((c for needle, c in _CAUSES if needle in text), None)
    return f"{cause}; " * (cause is not None) + f"{type(e).__name__}: {text[:160]}"


class Checkpointer:
    """A CheckpointManager that keeps the newest ``keep`` checkpoints and writes in the background when ``async_save``.

    An asynchronous save copies the arrays to host memory before ``save`` returns, so the next
    (donating) train step may reuse the device buffers at once; the files are written by a
    background thread. ``wait()`` blocks until every pending write is committed; ``close()`` waits too.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        self._check_writable()
        self._pending: int | None = None  # the step of the newest save, named if its background write fails
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # a save killed half-way leaves a tmp directory: drop it on the next start
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)

    def _check_writable(self) -> None:
        """Fail before training (not at the first save) if the directory cannot be created or written."""
        probe = os.path.join(self.directory, f".write-probe-{uuid.uuid4().hex}")
        try:
            os.makedirs(self.directory, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"\0" * 4096)  # a few KB, so a full disk is caught too
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise CheckpointError(
                f"cannot write checkpoints to {self.directory} ({e.strerror or e}): "
                f"choose a writable run_dir or free space"
            ) from None
        finally:
            if os.path.exists(probe):
                os.remove(probe)

    def latest_step(self) -> int | None:
        """The step of the newest committed checkpoint, or None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, state, meta: dict[str, Any]) -> bool:
        """Save ``state`` (a pytree of arrays) and ``meta`` (JSON-able, must hold 'step') as checkpoint meta['step'].

        Returns False (and writes nothing) if that step is already saved.
        """
        step = int(meta["step"])
        if step in self._manager.all_steps():
            return False
        previous, self._pending = self._pending, step
        try:
            return self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            )
        except Exception as e:  # an earlier async write's failure surfaces here too
            failed = previous if previous is not None and previous not in self._manager.all_steps() else step
            raise self._save_error(failed, e) from None

    def _save_error(self, step: int | str, e: BaseException) -> CheckpointError:
        steps = self._manager.all_steps()
        good = f"the newest intact checkpoint is step {max(steps)}" if steps else "no earlier checkpoint exists"
        return CheckpointError(
            f"saving checkpoint {step} in {self.directory} failed ({_short(e)}); {good}: "
            f"free space or fix permissions, then continue with --resume"
        )

    def restore(
        self, abstract_state, step: int | None = None, *, warn: Callable[[str], None] = _warn
    ) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of checkpoint ``step`` (default: the newest readable one), read into ``abstract_state``.

        Without ``step``, a checkpoint whose files are truncated or corrupted is reported with
        ``warn`` (one line naming the step) and the previous one is tried; CheckpointError if none
        can be read. An explicit ``step`` that cannot be read raises CheckpointError at once.
        """
        if step is not None:
            return self._restore_one(abstract_state, self._resolve(step))
        candidates = sorted(self._manager.all_steps(), reverse=True)
        if not candidates:
            self._resolve(None)  # raises the "no checkpoint" FileNotFoundError
        failures = []
        for s in candidates:
            try:
                restored = self._restore_one(abstract_state, s)
            except CheckpointError as e:
                failures.append(s)
                warn(f"{e}; trying the previous checkpoint" if s != candidates[-1] else str(e))
                continue
            for bad in failures:  # set aside, so a resumed run re-saves these steps instead of skipping them
                target = os.path.join(self.directory, f"corrupted-{bad}-{uuid.uuid4().hex[:8]}")
                os.rename(os.path.join(self.directory, str(bad)), target)
                warn(f"moved the unreadable checkpoint {bad} to {target}; restored step {s}")
            if failures:
                self._manager.reload()
            return restored
        raise CheckpointError(
            f"no readable checkpoint in {self.directory} (steps {failures} failed: corrupted, or written by a run "
            f"with another model config); start a new run_dir"
        )

    def _restore_one(self, abstract_state, step: int) -> tuple[Any, dict[str, Any]]:
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
            )
            state, meta = restored.state, restored.meta
            if not isinstance(meta, dict) or int(meta.get("step", -1)) != step:
                raise ValueError(f"its meta names step {meta.get('step') if isinstance(meta, dict) else meta!r}")
        except Exception as e:  # Orbax/TensorStore raise many kinds (ValueError, OSError, RuntimeError ...)
            raise CheckpointError(f"checkpoint {step} in {self.directory} is unreadable ({_short(e)})") from None
        return state, meta

    def restore_meta(self, step: int | None = None) -> dict[str, Any]:
        """Only the JSON meta of checkpoint ``step`` (default: the newest)."""
        step = self._resolve(step)
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def _resolve(self, step: int | None) -> int:
        steps = self._manager.all_steps()
        if step is None:
            step = self._manager.latest_step()
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"no checkpoint{'' if step is None else f' at step {step}'} in {self.directory} "
                f"(found steps {sorted(steps)}): train the run first or pick an existing step"
            )
        return step

    def wait(self) -> None:
        """Block until every pending write is committed; a failed background write raises CheckpointError."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._save_error(self._pending if self._pending is not None else "(background)", e) from None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tree_equal(a, b) -> bool:
    """True if two pytrees have the same structure and bitwise-equal leaves (for tests and resume checks)."""
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    return all(
        x.shape == y.shape and x.dtype == y.dtype and bool((jax.device_get(x) == jax.device_get(y)).all())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
