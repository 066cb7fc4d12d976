"""The sweep's specification: a base preset, fixed overrides and axes; its points; sweep.json; where a point lives in OUT."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.files import write_atomic

SPEC_FILE = "sweep.json"
RANGE_RE = re.compile(r"^(log|uniform|int):([-+0-9.eE]+):([-+0-9.eE]+)$")


class SweepError(ValueError):
    """A bad sweep specification or invocation; the message is one line naming the fix."""


# ---------------------------------------------------------------------------- the specification
def value_text(v: Any) -> str:
    """An override's text for a Python value: true/false, none, numbers and strings as written."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@dataclass(frozen=True)
class Sweep:
    """A base preset, fixed overrides and axes; ``random`` > 0 draws that many points instead of the grid."""

    name: str  # shown in tables and the SLURM job name
    base: str  # a preset of train/config.py (python -m train --list)
    fixed: tuple[str, ...] = ()  # KEY=VALUE overrides applied to every point
    axes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (KEY, values); a value may be a range for random search
    random: int = 0  # 0: the full grid; N > 0: N points drawn at random
    seed: int = 0  # the random search's seed

    @classmethod
    def make(cls, name: str, base: str, fixed: Sequence[str] = (), axes: dict[str, Sequence[Any]] | None = None, **kw):
        """Build from Python values (``axes={"model.n_heads": [1, 4]}``); values become override text."""
        axes_t = tuple((k, tuple(value_text(v) for v in vs)) for k, vs in (axes or {}).items())
        return cls(name=name, base=base, fixed=tuple(fixed), axes=axes_t, **kw)

    def __post_init__(self):
        from train.config import PRESETS

        if self.base not in PRESETS:
            raise SweepError(f"unknown config {self.base!r}; choose one of {', '.join(PRESETS)}")
        keys = [k for k, _ in self.axes]
        for item in list(self.fixed) + [f"{k}=x" for k in keys]:
            key = item.partition("=")[0].strip()
            if "=" not in item or not key:
                raise SweepError(f"override {item!r}: write it as KEY=VALUE, e.g. train.lr=3e-4")
            if key == "run_dir":
                raise SweepError("run_dir is set by the sweep (OUT/runs/<point id>): remove it from the overrides")
        if len(set(keys)) != len(keys):
            raise SweepError(f"an axis is given twice among {keys}: give each key one --grid")
        fixed_keys = {item.partition("=")[0].strip() for item in self.fixed}
        both = fixed_keys & set(keys)
        if both:
            raise SweepError(f"{sorted(both)[0]} is both a fixed override and an axis: keep one")
        for k, vs in self.axes:
            if not vs:
                raise SweepError(f"axis {k} has no values: write --grid {k}=V1,V2")
            for v in vs:
                if RANGE_RE.match(v) and not self.random:
                    raise SweepError(f"axis {k}: the range {v!r} needs random search (--random N)")
        if self.random < 0:
            raise SweepError(f"random={self.random}: must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "fixed": list(self.fixed),
            "axes": {k: list(vs) for k, vs in self.axes},
            "random": self.random,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sweep:
        return cls(
            name=d["name"],
            base=d["base"],
            fixed=tuple(d.get("fixed", ())),
            axes=tuple((k, tuple(vs)) for k, vs in d.get("axes", {}).items()),
            random=int(d.get("random", 0)),
            seed=int(d.get("seed", 0)),
        )

    def check(self) -> None:
        """Resolve every point's config (no training): the first bad key or value raises SweepError."""
        for pid, err in config_errors(self, self.points()).items():
            raise SweepError(f"point {pid}: {err}")

    def points(self) -> list[Point]:
        """The points in a fixed order (the grid's, or the random draws')."""
        keys = [k for k, _ in self.axes]
        if self.random:
            import numpy as np

            rng = np.random.default_rng(self.seed)
            combos = [tuple(_draw(v, rng) for _, v in self.axes) for _ in range(self.random)]
        else:
            combos = list(itertools.product(*[vs for _, vs in self.axes]))
        short = short_names(keys)
        pts = []
        for i, combo in enumerate(combos):
            slug = ",".join(f"{short[k]}={v}" for k, v in zip(keys, combo, strict=True)) or "base"
            slug = re.sub(r"[^A-Za-z0-9_=.,+-]", "-", slug)
            pid = f"{i:03d}-{slug}" if self.random else slug
            pts.append(Point(index=i, id=pid, values=dict(zip(keys, combo, strict=True))))
        return pts


@dataclass(frozen=True)
class Point:
    """One configuration of a sweep: its position, a stable id (its directory name) and the axis values."""

    index: int
    id: str
    values: dict[str, str] = field(default_factory=dict)

    def overrides(self, sweep: Sweep) -> list[str]:
        return list(sweep.fixed) + [f"{k}={v}" for k, v in self.values.items()]


def config_errors(sweep: Sweep, points: Sequence[Point]) -> dict[str, str]:
    """Point id -> the one-line reason, for the points whose overrides make no valid RunConfig (no training)."""
    from train.config import ConfigError, apply_overrides, get_preset

    errors = {}
    for p in points:
        try:
            apply_overrides(get_preset(sweep.base), p.overrides(sweep))
        except ConfigError as e:
            errors[p.id] = str(e)
    return errors


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """'model.n_heads' -> 'n_heads' unless two axes share the field name (then the full key)."""
    fields_ = [k.rpartition(".")[2] for k in keys]
    return {k: (f if fields_.count(f) == 1 else k) for k, f in zip(keys, fields_, strict=True)}


def _draw(spec: tuple[str, ...], rng) -> str:
    """One random value of an axis: a list entry, or a draw from its single range spec."""
    if len(spec) == 1 and (m := RANGE_RE.match(spec[0])):
        kind, lo, hi = m.group(1), float(m.group(2)), float(m.group(3))
        if kind == "int":
            return str(int(rng.integers(int(lo), int(hi) + 1)))
        if kind == "log":
            if lo <= 0 or hi <= 0:
                raise SweepError(f"range {spec[0]!r}: log ranges need positive bounds")
            return f"{math.exp(rng.uniform(math.log(lo), math.log(hi))):.4g}"
        return f"{rng.uniform(lo, hi):.4g}"
    return spec[int(rng.integers(len(spec)))]


def parse_axis(text: str) -> tuple[str, tuple[str, ...]]:
    """'model.n_heads=1,2,4' -> ('model.n_heads', ('1', '2', '4'))."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise SweepError(f"--grid {text!r}: write it as KEY=V1,V2,... (e.g. model.n_heads=1,2,4)")
    return key.strip(), tuple(v.strip() for v in values.split(",") if v.strip())


def write_spec(sweep: Sweep, out: Path) -> Path:
    """OUT/sweep.json, written atomically and only when it changes (array tasks may start side by side)."""
    path = out / SPEC_FILE
    text = json.dumps(sweep.to_dict(), indent=1) + "\n"
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, text)
    return path


def load_spec(path: str | Path) -> Sweep:
    path = Path(path)
    if path.is_dir():
        path = path / SPEC_FILE
    if not path.is_file():
        raise SweepError(f"{path} not found: pass the sweep.json a sweep wrote (or its output directory)")
    try:
        return Sweep.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError) as e:
        raise SweepError(f"{path} is not a sweep spec ({e}): rewrite it or start the sweep again") from None


# ---------------------------------------------------------------------------- where a point lives in OUT
def run_dir_of(out: Path, point: Point) -> Path:
    return out / "runs" / point.id


def status_path(out: Path, point: Point) -> Path:
    return out / "logs" / f"{point.id}.json"


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file()
