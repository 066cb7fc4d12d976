"""Run tracking (train/report.py): TensorBoard events read back by TensorBoard's own reader, across resumes and sweeps.

TensorBoard's ``EventAccumulator`` (the Python reader behind ``tensorboard --logdir``) applies the purge
that a resumed run's writer records (``SessionLog.START`` at ``purge_step``: earlier files' events at or
after that step are dropped), so what it returns is what TensorBoard shows. W&B's offline mode is
checked where the optional ``wandb`` package is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.util.tensor_util import make_ndarray

from train.cli import main

TINY = ["train.steps=4", "train.batch_size=4", "train.eval_every=2", "train.eval_batches=1", "train.log_every=1"]
KEEP_ALL = {"scalars": 0, "images": 0}  # 0: keep every event (TensorBoard samples long runs by default)


def shown(logdir: Path) -> EventAccumulator:
    """What TensorBoard shows of one run's event files."""
    acc = EventAccumulator(str(logdir), size_guidance=KEEP_ALL)
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def jsonl_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    want: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k, v in r.items():
            if k not in ("step", "kind") and isinstance(v, int | float) and not isinstance(v, bool):
                want.setdefault(f"{r['kind']}/{k}", []).append((r["step"], v))
    return want


def assert_events_match_the_log(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of metrics.jsonl is shown once per step, at its step, with its value (stored as float32)."""
    got, want = scalars(shown(run / "tensorboard")), jsonl_scalars(run)
    assert set(got) == set(want)
    for tag, points in want.items():
        steps = [s for s, _ in got[tag]]
        assert steps == sorted(set(steps)), (tag, steps)  # strictly increasing: no step shown twice
        assert steps == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == [float(np.float32(v)) for _, v in points], tag
    return got


def test_a_resume_from_a_mid_run_checkpoint_shows_every_step_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "a"
    args = [*TINY, "train.steps=6", "train.checkpoint_every=2", "train.async_checkpoint=false", "run_dir=a"]
    assert main(["--no-progress", *args]) == 0
    first = shown(run / "tensorboard")
    assert [e.step for e in first.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "attention"} <= set(first.Tags()["images"])  # loss.png and attention.png, at the final step
    assert [e.step for e in first.Images("loss")] == [6]
    # What a kill during the saves of steps 4 and 6 leaves: their checkpoints never committed (Orbax drops
    # uncommitted ones), while steps 3..6 were logged. The resume restarts from step 2 and trains 3..6 again.
    for step in (4, 6):
        shutil.rmtree(run / "checkpoints" / str(step))
    assert main(["--no-progress", "--resume", "a"]) == 0
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per process
    got = assert_events_match_the_log(run)
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in got["eval/val_loss"]] == [0, 2, 4, 6]
    again = shown(run / "tensorboard")
    assert [e.step for e in again.Images("loss")] == [6] and [e.step for e in again.Images("attention")] == [6]
    png = again.Images("attention")[0]
    assert png.encoded_image_string.startswith(b"\x89PNG") and png.width > 200 and png.height > 200


@pytest.mark.slow
def test_resuming_a_finished_run_for_more_steps_continues_the_curves(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--no-progress", *TINY, "train.checkpoint_every=2", "run_dir=a"]) == 0
    assert main(["--no-progress", "--resume", "a", "train.steps=6"]) == 0
    got = assert_events_match_the_log(tmp_path / "a")
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow  # two runs
def test_a_sweep_shows_its_runs_side_by_side(tmp_path):
    """``tensorboard --logdir OUT``: one TensorBoard run per sweep point, named by the point's id."""
    from experiments import sweep as sw

    tiny = [*TINY, "train.steps=2", "train.checkpoint_every=2", "train.async_checkpoint=false"]
    s = sw.Sweep.make("tb", "induction", tiny, {"train.seed": [0, 1]})
    out = tmp_path / "sw"
    rows = sw.run_sweep(s, out, runner="inprocess", log=lambda _: None)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    runs = EventMultiplexer(size_guidance={"tensors": 0}).AddRunsFromDirectory(str(out))  # TensorBoard's own
    runs.Reload()
    names = {f"runs/{p.id}/tensorboard" for p in s.points()}
    assert set(runs.Runs()) == names == {"runs/seed=0/tensorboard", "runs/seed=1/tensorboard"}
    curves = {name: [float(make_ndarray(e.tensor_proto)) for e in runs.Tensors(name, "train/loss")] for name in names}
    assert all(len(c) == 2 for c in curves.values())
    assert curves["runs/seed=0/tensorboard"] != curves["runs/seed=1/tensorboard"]  # two runs, not one twice


# ---------------------------------------------------------------------- a real kill -9
def _logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(x)["step"] for x in lines if x.endswith("}")), default=-1)


def _committed(run: Path) -> list[int]:
    where = run / "checkpoints"
    return sorted(int(p.name) for p in where.iterdir() if p.name.isdigit()) if where.is_dir() else []


@pytest.mark.slow
def test_a_run_killed_after_logging_past_its_checkpoint_shows_every_step_once(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device
    run = tmp_path / "k"
    overrides = [*TINY, "train.steps=400", "train.checkpoint_every=10", "train.eval_every=5", f"run_dir={run}"]
    cmd = [sys.executable, "-m", "train", "--no-progress", "--config", "induction"]
    proc = subprocess.Popen([*cmd, *overrides], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (_committed(run) and _logged(run) >= max(_committed(run)) + 4):  # events past the newest checkpoint
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at, resumes_from = _logged(run), max(_committed(run))
    assert killed_at > resumes_from  # the purge has steps to hide
    resume = [sys.executable, "-m", "train", "--no-progress", "--resume", str(run), f"train.steps={killed_at + 3}"]
    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"from step {resumes_from}" in done.stdout
    got = assert_events_match_the_log(run)
    assert [s for s, _ in got["train/loss"]] == list(range(1, killed_at + 4))


# ---------------------------------------------------------------------- Weights & Biases, offline
@pytest.mark.slow
def test_wandb_offline_writes_its_run_directory_with_the_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["--no-progress", "--wandb", *TINY, "train.checkpoint_every=4", "run_dir=a"]) == 0
    (offline,) = (tmp_path / "a" / "wandb").glob("offline-run-*")
    run_id = (tmp_path / "a" / "wandb" / "wandb-id").read_text().strip()
    (records,) = offline.glob(f"run-{run_id}.wandb")
    kinds = [record_type(r) for r in wandb_records(records)]
    assert kinds[0] == "header" and kinds[-1] == "exit"  # complete when the run has returned
    history = wandb_history(records)
    want = jsonl_scalars(tmp_path / "a")
    for tag, points in want.items():
        assert [(s, h[tag]) for s, h in sorted(history.items()) if tag in h] == points, tag
    for name in ("loss", "attention"):  # the two figures, as images at the final step
        assert history[4][f"figures/{name}/_type"] == "image-file"
        png = offline / "files" / history[4][f"figures/{name}/path"]
        assert png.read_bytes().startswith(b"\x89PNG")


def wandb_records(path: Path) -> list[bytes]:
    """The records of a .wandb file: LevelDB's log format (32 KiB blocks of chunks with a 7-byte header:
    crc, length, type FULL/FIRST/MIDDLE/LAST) after the 7-byte header ':W&B', 0xBEE1, version 0; wandb
    0.31 has no Python reader of its own (its Go core writes the file)."""
    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", data[:7]
    records, part, i, block = [], b"", 7, 32768
    while i + 7 <= len(data):
        if block - i % block < 7:  # a block's tail too short for a header is padding
            i += block - i % block
            continue
        length, kind = int.from_bytes(data[i + 4 : i + 6], "little"), data[i + 6]
        chunk, i = data[i + 7 : i + 7 + length], i + 7 + length
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            records.append(part)
    return records


def wandb_record(data: bytes):
    from wandb.proto import wandb_internal_pb2

    rec = wandb_internal_pb2.Record()
    rec.ParseFromString(data)
    return rec


def record_type(data: bytes) -> str:
    return wandb_record(data).WhichOneof("record_type")


def wandb_history(path: Path) -> dict[int, dict]:
    """step -> the values logged at it, from an offline run's .wandb file (wandb's own protobuf records)."""
    out: dict[int, dict] = {}
    for data in wandb_records(path):
        rec = wandb_record(data)
        if rec.WhichOneof("record_type") != "history":
            continue
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
        out.setdefault(int(items.pop("_step")), {}).update(items)
    return out


def test_wandb_missing_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as without the extra
    assert main(["--no-progress", "--wandb", *TINY, "run_dir=a"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == "error: --wandb needs the wandb package: pip install -e '.[wandb]' (or drop --wandb)"
    assert not (tmp_path / "a").exists()
