"""Writes tests/golden/presets.json: every preset's resolved config, and every experiment sweep point's.

Made once before the "One house" redesign (issue 15) so that tests/test_structure.py can prove the
redesign changed no config. Rerun it only when a config change is intended, and say why in the commit:

    python tests/golden/make_presets.py
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def resolved() -> dict:
    from model.config import PRESETS as MODEL_PRESETS
    from train.config import PRESETS, apply_overrides, get_preset

    out = {"model": {n: c.to_dict() for n, c in MODEL_PRESETS.items()}}
    out["train"] = {n: get_preset(n).to_dict() for n in PRESETS}
    out["experiments"] = {}
    for name, sweeps in experiment_sweeps().items():
        for sweep in sweeps:
            for p in sweep.points():
                cfg = apply_overrides(get_preset(sweep.base), p.overrides(sweep)).to_dict()
                cfg.pop("run_dir", None)  # the output folder, not the config
                out["experiments"][f"{name}/{sweep.name}/{p.id}"] = cfg
    return out


def experiment_sweeps() -> dict:
    """Each sweep experiment's full-size sweeps, built exactly as its main() builds them."""
    import importlib
    import inspect

    out = Path("/nonexistent-out")
    sweeps = {}
    for name in ("masking", "mqar", "positions", "value_map"):
        mod = importlib.import_module(f"experiments.{name}")
        kwargs = {"out": out} if "out" in inspect.signature(mod.make_sweep).parameters else {}
        sweeps[name] = [mod.make_sweep(False, **kwargs)]
    heads = importlib.import_module("experiments.heads")
    sweeps["heads"] = [heads.make_sweep(False, out, heads.steps_for(w, None), w) for w in sorted(heads.STEPS)]
    return sweeps


if __name__ == "__main__":
    path = Path(__file__).with_name("presets.json")
    path.write_text(json.dumps(resolved(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
