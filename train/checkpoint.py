"""Checkpoints of a run with Orbax: ``RUN_DIR/checkpoints/<step>/{state,meta}``.

``state`` is the TrainState (params, optimizer state, step), written by Orbax's StandardSave
(array files and JSON metadata, no pickle); ``meta`` is JSON: the step, the data position (equal to
the step, since batch number s is a pure function of (data.seed, s)) and the run's config. Loading
never executes code: arrays are read into an abstract target (``train.step.abstract_state``, built
with ``jax.eval_shape``), so they land with the target's shapes, dtypes and shardings.

    ckpt = Checkpointer(run_dir / "checkpoints", keep=3)
    ckpt.save(state, {"step": 100, "data_position": 100, "config": cfg.to_dict()})
    state, meta = ckpt.restore(abstract_state(model, tx, seq_len))   # the newest checkpoint
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """A CheckpointManager that keeps the newest ``keep`` checkpoints and writes in the background when ``async_save``.

    An asynchronous save copies the arrays to host memory before ``save`` returns, so the next
    (donating) train step may reuse the device buffers at once; the files are written by a
    background thread. ``wait()`` blocks until every pending write is committed; ``close()`` waits too.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # a save killed half-way leaves a tmp directory: drop it on the next start
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)

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
        return self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, abstract_state, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of checkpoint ``step`` (default: the newest), read into ``abstract_state``'s shapes and shardings."""
        step = self._resolve(step)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()),
        )
        return restored.state, restored.meta

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
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
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
