"""`python -m train` as a user runs it: bad input gives exit code 2 and one line `error: ...` naming the problem.

Each case is a real subprocess; none of them gets as far as compiling anything.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(args: list[str], tmp_path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, ATTN_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "train", "--no-progress", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def text_file(tmp_path, content: bytes, name: str = "corpus.txt") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize(
    "args, named",
    [
        (["model.n_layer=2"], "model.n_layer"),
        (["train.lr=fast"], "train.lr"),
        (["train.steps=2.5"], "train.steps"),
        (["--config", "nope"], "nope"),
    ],
)
def test_bad_keys_and_values(args, named, tmp_path):
    assert named in one_line_error(run(args, tmp_path))
    assert not (tmp_path / "runs").exists()  # nothing was written


@pytest.mark.parametrize(
    "content, named",
    [
        (None, "no such file"),
        (b"", "is empty"),
        (b"too short for a window of 64 characters", "seq_len"),
        ("caf\u00e9 ".encode("latin-1") * 100, "not valid UTF-8"),
    ],
    ids=["missing", "empty", "too-short", "not-utf8"],
)
def test_bad_data_files(content, named, tmp_path):
    path = str(tmp_path / "missing.txt") if content is None else text_file(tmp_path, content)
    proc = run(["--config", "shakespeare-char-cpu", f"data.path={path}", f"run_dir={tmp_path / 'run'}"], tmp_path)
    message = one_line_error(proc)
    assert named in message
    if content is not None:
        assert path in message or "data.path" in message or "seq_len" in message
    assert not (tmp_path / "run").exists()


def test_existing_run_directory_needs_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("x")
    message = one_line_error(run([f"run_dir={run_dir}"], tmp_path))
    assert "--resume" in message and str(run_dir) in message
    message = one_line_error(run(["--resume", str(tmp_path / "nothing")], tmp_path))
    assert "no such directory" in message and "drop --resume" in message
    assert sorted(p.name for p in run_dir.iterdir()) == ["keep.txt"]


def test_list_and_help(tmp_path):
    listing = run(["--list"], tmp_path)
    assert listing.returncode == 0 and "shakespeare-char-cpu" in listing.stdout and "induction" in listing.stdout
    helptext = run(["--help"], tmp_path)
    assert helptext.returncode == 0 and "model.n_layers=2 train.lr=3e-4" in helptext.stdout
    from train.config import SECTIONS, TOP_LEVEL

    assert {"mesh", "model", "data", "train"} <= set(SECTIONS) and "sharding" in TOP_LEVEL
    for key in [f"{s}.FIELD" for s in SECTIONS] + [f"{t}=" for t in TOP_LEVEL]:
        assert key in helptext.stdout, key  # every override section and top-level key
    assert "mesh.data, mesh.fsdp, mesh.sequence, mesh.tensor" in helptext.stdout
    assert "dp, fsdp, tp, sp, fsdp_tp, fsdp_sp" in helptext.stdout
    assert "train.profile=10:12" in helptext.stdout and "--wandb" in helptext.stdout
