"""Config files: ``python -m train --config FILE`` with FILE a JSON or TOML file of the RunConfig's sections.

    # runs/x.toml                              # runs/x.json
    preset = "shakespeare-char-cpu"            {"preset": "shakespeare-char-cpu",
    run_dir = "runs/x"                          "run_dir": "runs/x",
    [model]                                     "model": {"n_layers": 2},
    n_layers = 2                                "train": {"lr": 0.0003}}
    [train]
    lr = 3e-4

The file holds what the presets and overrides hold: the sections ``model``, ``data``, ``train``, ``mesh``
(tables of FIELD = value) and the top-level fields (``name``, ``run_dir``, ``goal``, ``sharding``,
``init_from``). What it leaves out comes from its base: the preset ``preset = NAME`` names, else the
preset of the file's ``name`` when there is one, else the main job's preset. A run's own
``config.json`` is such a file with every field given, so

    python -m train --config runs/x/config.json run_dir=runs/y

trains the run of runs/x again (bit for bit on CPU). Overrides on the command line apply after the file.
Values are checked by the same code as overrides (``model/config_base.py``): an unknown key, a wrong
type or a file that does not parse is one line naming the file and the key.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from train.config import DEFAULT_PRESET, PRESETS, SECTIONS, RunConfig, get_preset
from train.errors import ConfigError

SUFFIXES = (".json", ".toml")
TOP_FIELDS = ("name", "run_dir", "goal", "sharding", "init_from")


def is_config_file(name: str) -> bool:
    """Whether ``--config name`` names a file (a path ending .json/.toml) rather than a preset."""
    return name not in PRESETS and (name.endswith(SUFFIXES) or Path(name).is_file())


def read_mapping(path: str) -> dict[str, Any]:
    """The file's contents as a dict; ConfigError (one line) when it is missing, unreadable or does not parse."""
    p = Path(path)
    if p.suffix not in SUFFIXES:
        raise ConfigError(f"--config {path}: a config file ends in .json or .toml (or give a preset name)")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file (or give a preset name; --list shows them)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: cannot read it ({type(e).__name__}): check the file") from None
    try:
        d = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): fix it") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e}): fix it") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: the file must hold a table of sections, not a {type(d).__name__}")
    return d


def apply_mapping(cfg: RunConfig, d: dict[str, Any], where: str) -> RunConfig:
    """``cfg`` with the sections and top-level fields of ``d`` set (checked as overrides are)."""
    known = ("preset", *TOP_FIELDS, *SECTIONS)
    for key, value in d.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(known)}")
        if key in SECTIONS and not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a table of FIELD = value, got {type(value).__name__}")
    try:
        sections = {s: getattr(cfg, s).replace(**d[s]) for s in SECTIONS if s in d}
        return cfg.replace(**sections, **{k: d[k] for k in TOP_FIELDS if k in d})
    except ValueError as e:  # the sections' own checks: one line naming Class.field (ConfigError is one too)
        raise ConfigError(f"{where}: {e}") from None


def load_config_file(path: str) -> RunConfig:
    """The RunConfig a JSON or TOML file describes (see the module docstring)."""
    d = read_mapping(path)
    base = d.get("preset")
    if base is not None and base not in PRESETS:
        raise ConfigError(f"{path}: preset {base!r} is unknown; choose one of {', '.join(PRESETS)}")
    if base is None:
        base = d["name"] if d.get("name") in PRESETS else DEFAULT_PRESET
    return apply_mapping(get_preset(base), d, path)
