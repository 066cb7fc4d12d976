"""The house rules, checked: no import circles, arrows only experiments -> train -> model, short files,
and every preset's resolved config equal to the copy stored before the "One house" redesign.

Anyone can run the import check alone: ``python -m pytest -q tests/test_structure.py``.
"""

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("model", "train", "experiments")  # top to bottom: experiments -> train -> model
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for floor in FLOORS:
        for path in (ROOT / floor).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, at top level or inside a function (lazy imports count)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {n: _imports(p, n, set(mods)) for n, p in mods.items()}
    # importing a.b.c runs a/__init__ and a/b/__init__ first: a package's own __init__ is not an edge back
    return {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_arrows_point_down():
    rank = {f: i for i, f in enumerate(FLOORS)}
    up = [
        f"{n} -> {t}" for n, ts in import_graph().items() for t in ts if rank[t.split(".")[0]] > rank[n.split(".")[0]]
    ]
    assert not up, "imports from a higher floor: " + ", ".join(sorted(up))


def test_files_read_in_one_sitting():
    long = {
        str(p.relative_to(ROOT)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"files over {MAX_LINES} lines: {long}"


GOLDEN = Path(__file__).with_name("golden")


@pytest.mark.parametrize("section", ["model", "train", "experiments"])
def test_presets_unchanged(section):
    import sys

    sys.path.insert(0, str(GOLDEN))
    try:
        from make_presets import resolved
    finally:
        sys.path.remove(str(GOLDEN))
    stored = json.loads((GOLDEN / "presets.json").read_text())[section]
    now = json.loads(json.dumps(resolved()[section], sort_keys=True))
    assert now.keys() == stored.keys()
    for key in stored:
        assert now[key] == stored[key], f"{section} preset {key} changed"
