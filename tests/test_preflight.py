"""Issue 16, item 3: a run that cannot fit is refused from shapes; signals during set-up and compiling end the
process at once; a run that never finished a step leaves nothing that blocks the same command again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train import memory
from train.config import PRESETS, apply_overrides, get_preset
from train.rundir import SETUP_MARKER

ROOT = Path(__file__).resolve().parents[1]
# what jax / absl / XLA may print on some machines (none of it printed here): not the run's own output
JAX_NOISE = re.compile(r"^(WARNING:absl|[WI]\d{4} |.*(NVIDIA GPU|Platform '\w+' is experimental|TF_CPP|cuda))")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


# Linux carries a process's peak RSS across exec, and a child forked (or vforked) from pytest starts with
# pytest's own (4.4 GB in one CI run). So a small launcher execs first, forks the command from its own
# small image, and reports the command's ru_maxrss from os.wait4 in a file.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))  # KB on Linux
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_model_that_cannot_fit_is_refused_in_one_line_quickly_and_small(tmp_path):
    """Within 30 s of the imports (which alone take 3 s on an idle 2-core box, 30+ s under a load of 20), with a
    peak RSS under 2 GB: the refused process's own (see LAUNCHER), not pytest's."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import jax, train.loop; jax.devices()"], env=_env(), check=True)
    imports = time.perf_counter() - t0
    cmd = ["-m", "train", "--no-progress", "model.n_layers=100000", f"run_dir={tmp_path}/huge"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(tmp_path / "maxrss"), *cmd],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    code, stderr = proc.returncode, proc.stderr
    peak_mb = int((tmp_path / "maxrss").read_text()) / 1024
    print(f"refused in {seconds:.1f} s (imports alone {imports:.1f} s), peak RSS {peak_mb:.0f} MB")
    assert code == 2, (code, stderr[-2000:])
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "Warning" not in ln]
    assert lines[-1].startswith("error: this run needs about") and "is available" in lines[-1], lines
    assert "train.memory_check=false" in lines[-1] and "Traceback" not in stderr
    assert not (tmp_path / "huge").exists()  # refused before anything was written
    assert seconds - imports < 30, (seconds, imports)
    assert 50 < peak_mb < 2048, peak_mb  # a real measurement (jax alone is more than 50 MB), under 2 GB


def test_the_refusal_names_both_numbers_and_can_be_overridden():
    cfg = apply_overrides(get_preset("induction"), ["model.n_layers=100000"])
    with pytest.raises(memory.MemoryCheckError, match=r"needs about .* GB .* but 1\.5 GB is available"):
        memory.check(cfg, available=1.5e9)
    est = memory.check(cfg.replace(train=cfg.train.replace(memory_check=False)), available=1.5e9)
    assert est.total > 1e12


def test_state_size_from_two_small_models_is_exact():
    """The parameter and optimizer bytes extrapolated from 1 and 2 layers equal those of the real state."""
    import jax
    import numpy as np

    from train.step import state_shapes

    cfg = apply_overrides(get_preset("shakespeare-char-cpu"), ["model.n_layers=5"])
    s = state_shapes(cfg.model, cfg.train, cfg.seq_len)

    def nbytes(t):
        return sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(t))

    assert memory.state_bytes(cfg) == (nbytes(s.params), nbytes(s.opt_state))


def _experiment_configs():
    """The resolved configs of every point of the experiments' full (not smoke) sweeps, one per model and batch."""
    from experiments import heads, masking, mqar, positions, value_map

    sweeps = [masking.make_sweep(False, Path("unused")), mqar.make_sweep(False)]
    sweeps += [positions.make_sweep(False, Path("unused")), value_map.make_sweep(False, Path("unused"))]
    sweeps += [heads.make_sweep(False, Path("unused"), heads.steps_for(w, None), w) for w in heads.WIDTHS]
    seen = {}
    for sw in sweeps:
        for p in sw.points():
            cfg = apply_overrides(get_preset(sw.base), p.overrides(sw))
            seen.setdefault((cfg.model, cfg.train.batch_size, cfg.train.grad_accum, cfg.seq_len), cfg)
    return list(seen.values())


def test_no_preset_or_experiment_config_is_refused():
    """Not on this machine when nothing else runs (the other helpers' runs change MemAvailable by the minute),
    and not on one with 16 GB: shakespeare-char, the largest, needs about 10 GB."""
    total = next(float(x.split()[1]) * 1024 for x in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in x)
    configs = [get_preset(name) for name in PRESETS] + _experiment_configs()
    assert len(configs) > len(PRESETS)
    for cfg in configs:
        memory.check(cfg, available=min(total, 16e9))  # raises if refused


def test_a_run_killed_before_its_first_step_does_not_block_the_same_command(tmp_path):
    """A directory left with the set-up marker (a SIGKILL during compiling) is started afresh, not refused."""
    from train.rundir import prepare

    cfg = apply_overrides(get_preset("induction"), [f"run_dir={tmp_path}/r"])
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(cfg.to_json())
    (run / SETUP_MARKER).write_text("x")
    logs = []
    _, run_dir, _, resuming, _ = prepare(cfg, log=logs.append)  # (cfg, dir, data, resuming, lock)
    assert not resuming and not (run / "config.json").exists() and "starting afresh" in logs[0]
    (run / "config.json").write_text(cfg.to_json())  # without the marker: a run that trained, refused
    with pytest.raises(Exception, match="pass --resume"):
        prepare(cfg, log=logs.append)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_compilation_ends_the_run_within_seconds(tmp_path, sig):
    """A real process compiling a large-ish unrolled model gets the signal during compilation: it exits within
    a few seconds with 143 / 130, leaves no run directory, and the same command then starts."""
    run_dir = tmp_path / "big"
    cmd = [sys.executable, "-m", "train", "--no-progress", "--config", "shakespeare-char-cpu"]
    cmd += ["model.n_layers=48", "model.scan_layers=false", "train.steps=2", f"run_dir={run_dir}"]
    cmd += [f"data.path={tmp_path / 'text.txt'}"]
    (tmp_path / "text.txt").write_text("to be or not to be, that is the question.\n" * 400)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    deadline = time.time() + 300
    while not (run_dir / "vocab.json").exists():  # set-up done: initialising and compiling from here
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    time.sleep(3)  # well into compiling the init / eval / train steps of 48 unrolled blocks
    assert proc.poll() is None, "finished before the signal: make the model larger"
    t0 = time.perf_counter()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    seconds = time.perf_counter() - t0
    print(f"exit {proc.returncode} {seconds:.2f} s after {sig.name}")
    assert proc.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig], err[-2000:]
    assert seconds < 5, seconds
    lines = [ln for ln in err.splitlines() if ln.strip() and not JAX_NOISE.search(ln)]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]  # stderr is the one line, nothing else
    assert lines[0].startswith(f"interrupted ({sig.name}) before the first step: nothing to save"), lines
    assert not run_dir.exists()  # nothing blocks the same command

    # the same command again: it starts (no --resume demanded, no lock in the way) and finishes. With 2 layers:
    # the run directory is under test, not the compiler (48 unrolled layers take 4-6 minutes to compile and
    # evaluate under a load of 9 on 2 cores; the later override wins, every other argument is the same)
    t0 = time.perf_counter()
    rerun = subprocess.run([*cmd, "model.n_layers=2"], capture_output=True, text=True, env=_env(), cwd=tmp_path)
    print(f"the same command (2 layers) then trained its 2 steps in {time.perf_counter() - t0:.1f} s")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (run_dir / "summary.json").is_file() and not (run_dir / SETUP_MARKER).exists()
