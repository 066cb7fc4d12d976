"""Files the lab writes and reads back: JSON written atomically, JSON lines read past a torn tail.

    write_atomic(path, text)              # tmp file in the same directory + os.replace: never half-written
    write_json(path, obj)                 # the same, as indented JSON
    read_jsonl(path, warn=print)          # the complete records; a torn (cut mid-record) line is dropped
    read_json(path, warn=print)           # the object, or None (one warning line) if the file is torn

A process killed while appending to a JSON-lines file (metrics.jsonl, a sweep's results.jsonl) leaves
its last line cut mid-record. Readers keep every complete record, say in one line what they dropped
and go on; a file rewritten whole is written atomically, so it is either the old or the new version.
``experiments/`` reads its files through these too (``train/`` never imports ``experiments/``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a tmp file in the same directory and os.replace (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, **kw: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=indent, **kw) + "\n")


def parse_jsonl(text: str, path: str | os.PathLike, warn: Callable[[str], None] | None = _warn) -> list[Any]:
    """The records of JSON-lines ``text``; lines that are not valid JSON are dropped with one ``warn`` line.

    Only a torn last line is expected (a writer killed mid-line); a bad line elsewhere is dropped the same way.
    """
    records, bad = [], []
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(i)
    if bad and warn is not None:
        where = "its last line" if bad == [len(lines)] else f"line(s) {', '.join(map(str, bad[:5]))}"
        shown = lines[bad[-1] - 1]
        warn(
            f"{path}: dropped {len(bad)} incomplete record(s) ({where}, e.g. {shown[:60]!r}: cut by a killed "
            f"writer); kept the {len(records)} complete one(s)"
        )
    return records


def read_jsonl(path: str | os.PathLike, warn: Callable[[str], None] | None = _warn) -> list[Any]:
    """The complete records of a JSON-lines file ([] if it does not exist); see :func:`parse_jsonl`."""
    path = Path(path)
    if not path.exists():
        return []
    return parse_jsonl(path.read_text(errors="replace"), path, warn)


def read_json(path: str | os.PathLike, warn: Callable[[str], None] | None = _warn) -> Any | None:
    """The JSON object in ``path``, or None if it does not exist or is torn / not JSON (then one ``warn`` line)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(errors="replace"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        if warn is not None:
            warn(f"{path} is not valid JSON ({e.msg}: torn or edited); ignored")
        return None
