"""The README under test (issue 18, item 2): every fenced shell command runs, every link resolves.

Every command in a fenced ```bash block of README.md is run, in order, in one scratch directory (so
``run_dir=runs/x`` then ``--resume runs/x`` work), on 8 fake CPU devices, shrunk by appended
arguments (:func:`shrink`: 2 training steps, one evaluation batch, 5 sampled tokens ...); a non-zero
exit fails the test. A command that cannot run here carries a trailing marker comment:

    srun ... python -m train ...            # needs: cluster     (SLURM, TPU pods)
    python -m train.data download           # needs: download    (network, pip)

A new README command is therefore run without anyone remembering to add it here; the fast test
checks that every command is either runnable by these rules or marked. Lines ending in ``\\`` are
joined; a command ending in ``&`` runs together with the next one (both must exit 0).
`python -m pytest` is collected (``--co``), not run: the suite cannot run inside itself.

The links: every ``[text](target)`` and ``![alt](image)`` in README.md and docs/**/*.md that is not
a URL must name a file of the repository, and a ``#fragment`` a heading of its page.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKERS = ("cluster", "download")
MARKER_RE = re.compile(r"#\s*needs:\s*(\S+)")
FENCE_RE = re.compile(r"^```(\w*)\s*$")

# appended to every training command: 2 steps, small batches, one evaluation batch, no periodic work
TRAIN_SHRINK = (
    "train.steps=2 train.batch_size=8 train.seq_len=32 train.eval_batches=1 train.eval_every=1000 "
    "train.log_every=1 train.checkpoint_every=1000"
)
SWEEP_SHRINK = " ".join(f"--set {o}" for o in TRAIN_SHRINK.split())


@dataclass(frozen=True)
class Command:
    text: str  # as in the README (continuations joined), comments included
    line: int  # README line number where it starts

    @property
    def needs(self) -> str | None:
        m = MARKER_RE.search(self.text)
        return m.group(1) if m else None


def fenced_commands(text: str) -> list[Command]:
    """The commands of the ```bash blocks: one per line, ``\\`` continuations joined, ``&`` joined to the next."""
    commands: list[Command] = []
    lang, pending, start = None, "", 0
    for no, line in enumerate(text.splitlines(), 1):
        m = FENCE_RE.match(line.strip())
        if m:
            lang = m.group(1) if lang is None else None
            continue
        if lang not in ("bash", "sh", "shell"):
            continue
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if not pending:
            start = no
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        if _code(pending).rstrip().endswith("&") and not _code(pending).rstrip().endswith("&&"):
            pending += "\n"  # the next command runs beside this one
            continue
        commands.append(Command(pending, start))
        pending = ""
    return commands


def _code(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` that starts a word; the README quotes none)."""
    m = re.search(r"(^|\s)#", line)
    return line[: m.start()] if m else line


def shrink(cmd: str) -> str:
    """``cmd`` (one line, comments dropped) with the arguments that make it a seconds-long run."""
    out = []
    for part in cmd.split("\n"):
        code = _code(part).rstrip()
        background = code.endswith("&")
        code = code.removesuffix("&").rstrip()
        if re.search(r"python3? -m train(\s|$)", code) and "--list" not in code:
            code += " " + TRAIN_SHRINK
            if "train.profile=" in code:  # a traced window must lie within the shrunk run's steps
                code += " train.profile=2:2"
        elif "python -m train.sample" in code:
            code += " --max-new-tokens 5"
        elif "python -m experiments.sweep" in code and "--print-commands" not in code and "--slurm" not in code:
            code += " " + SWEEP_SHRINK
        elif re.search(r"python3? -m pytest", code):
            code += f" --co {ROOT}"  # collected, not run, from the scratch directory
        out.append(code + (" &" if background else ""))
    if len(out) == 1:
        return out[0]
    # cmd1 & cmd2: run both, each must exit 0
    first, rest = out[0].removesuffix("&").rstrip(), "\n".join(out[1:])
    return f"{first} & pid=$!\n{rest}\nrc=$?\nwait $pid && exit $rc"


RUNNABLE = re.compile(
    r"^(\w+=\S+\s+)*python3? -m (train|train\.sample|train\.data|experiments\.\w+|model\.\w+|pytest)\b"
)


def test_every_readme_command_is_runnable_or_marked():
    commands = fenced_commands(README.read_text())
    assert len(commands) >= 15, [c.text for c in commands]
    for c in commands:
        if c.needs is not None:
            assert c.needs in MARKERS, f"README line {c.line}: unknown marker 'needs: {c.needs}' (known: {MARKERS})"
            continue
        for part in c.text.split("\n"):
            assert RUNNABLE.match(_code(part).strip()), (
                f"README line {c.line}: {part!r} is neither a command this test runs "
                f"nor marked '# needs: cluster' / '# needs: download'"
            )
    marked = [c for c in commands if c.needs]
    assert {c.needs for c in marked} == set(MARKERS)  # the cluster and pip/download commands are marked


def test_shrink_appends_overrides():
    assert (
        shrink("python -m train --config x run_dir=runs/x   # a note")
        == f"python -m train --config x run_dir=runs/x {TRAIN_SHRINK}"
    )
    assert shrink("python -m train --list    # the presets") == "python -m train --list"
    assert shrink("python -m train.sample runs/x --max-new-tokens 500").endswith("--max-new-tokens 5")
    two = shrink("A=1 python -m train mesh.data=-1 &\nA=2 python -m train mesh.data=-1")
    assert two.count(TRAIN_SHRINK) == 2 and "wait $pid" in two


# ---------------------------------------------------------------------------- links
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces -> '-'."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    heads = re.findall(
        r"^#{1,6}\s+(.*?)\s*#*\s*$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M), re.M
    )
    return {slug(h) for h in heads}


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_link_and_image_resolves():
    broken = []
    for md in markdown_files():
        for target in LINK_RE.findall(_prose(md.read_text())):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, fragment = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists() or not dest.resolve().is_relative_to(ROOT):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no heading #{fragment})")
    assert not broken, "\n".join(broken)


# ---------------------------------------------------------------------------- running them
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 300


@pytest.mark.slow  # a few minutes: about 20 processes, each compiling a model
def test_every_readme_command_runs(tmp_path):
    # the commands run in a copy of the sources, whose data/ holds a stand-in for tiny Shakespeare (the
    # default text path is relative to the project root; the real data/ is left alone)
    src = tmp_path / "src"
    for name in ("model", "train", "experiments"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", src)
    (src / "data").mkdir()
    (src / "data" / "tinyshakespeare.txt").write_text(TEXT)
    (src / "my.txt").write_text(TEXT.upper())
    env = dict(os.environ, PYTHONPATH=str(src), JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["ATTN_CACHE_DIR"] = str(tmp_path / "cache")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` is this venv's
    ran = 0
    for c in fenced_commands(README.read_text()):
        if c.needs:
            continue
        cmd = shrink(c.text)
        print(f"README line {c.line}: {cmd}", flush=True)  # progress, with -s
        r = subprocess.run(["bash", "-c", cmd], cwd=src, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (
            f"README line {c.line}: exit {r.returncode}\n$ {cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        )
        ran += 1
    assert ran >= 12
