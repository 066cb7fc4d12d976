"""SIGINT/SIGTERM during a run: after the first step they stop the loop with a checkpoint; before it, at once."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class SignalCatcher:
    """SIGINT/SIGTERM set a flag that the loop reads after each step (only in the main thread).

    Before the first step has finished (set-up, restoring, compiling) there is nothing to save, and the
    main thread may sit in XLA's compiler for minutes, where no Python handler runs. So until
    :meth:`started`, a watcher thread reads the signal from ``signal.set_wakeup_fd`` (written by the C
    handler the moment the signal arrives), calls ``on_early`` (which removes a half-made run
    directory), prints one line and ends the process with 130 / 143 within moments.
    """

    def __init__(self, enabled: bool, on_early: Callable[[str], None] | None = None):
        self.received: str | None = None
        self._old: dict[int, Any] = {}
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._on_early = on_early
        self._started = threading.Event()
        self._fds: tuple[int, int] | None = None
        self._old_wakeup = -1

    def __enter__(self):
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
            if self._on_early is not None:
                r, w = os.pipe()
                os.set_blocking(w, False)
                self._fds = (r, w)
                self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
                threading.Thread(target=self._watch, args=(r,), daemon=True, name="early-signals").start()
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def _watch(self, r: int) -> None:
        while True:
            try:
                data = os.read(r, 1)
            except OSError:
                return
            if not data or self._started.is_set():
                return
            if data[0] not in (signal.SIGINT, signal.SIGTERM):
                continue
            name = signal.Signals(data[0]).name
            try:
                self._on_early(name)
            finally:
                os._exit(SIGNAL_EXIT_CODES[name])

    def started(self) -> None:
        """The first step is done: from now on a signal stops the loop after a step, with a checkpoint."""
        self._started.set()

    def __exit__(self, *exc):
        self._started.set()
        if self._fds is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._fds[1])  # the watcher reads end-of-file and returns
        for sig, old in self._old.items():
            signal.signal(sig, old)
