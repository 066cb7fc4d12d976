"""TensorBoard events (train/report.py MetricsLog): every logged scalar at its step, continued across a resume."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tensorboardX.proto import event_pb2

from train.cli import main

TINY = ["train.steps=4", "train.batch_size=4", "train.eval_every=2", "train.eval_batches=1", "train.log_every=1"]


def read_events(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the TFRecord event files, applying a file's purge (SessionLog.START)."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4  # length, its crc, the record, its crc
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                scalars = {t: [(s, v) for s, v in pts if s < event.step] for t, pts in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def jsonl_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    want: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k, v in r.items():
            if k not in ("step", "kind") and isinstance(v, int | float) and not isinstance(v, bool):
                want.setdefault(f"{r['kind']}/{k}", []).append((r["step"], v))
    return want


def test_every_logged_scalar_is_an_event_at_its_step_across_a_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--no-progress", *TINY, "train.checkpoint_every=2", "run_dir=a"]) == 0
    first = read_events(tmp_path / "a" / "tensorboard")
    assert {"train/loss", "eval/val_loss", "eval/val_accuracy"} <= set(first)
    assert [s for s, _ in first["train/loss"]] == [1, 2, 3, 4]
    assert main(["--no-progress", "--resume", "a", "train.steps=6"]) == 0
    got, want = read_events(tmp_path / "a" / "tensorboard"), jsonl_scalars(tmp_path / "a")
    assert set(got) == set(want)
    for tag, points in want.items():
        steps = [s for s, _ in got[tag]]
        assert steps == sorted(set(steps)), (tag, steps)  # strictly increasing: no step twice
        assert steps == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == [float(np.float32(v)) for _, v in points]  # stored as float32, tag
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4, 5, 6]
