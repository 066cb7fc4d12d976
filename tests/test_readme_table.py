"""The README's "From the lecture to the code" table names real code: every file it cites exists and
every name it cites is defined (def, class, assignment, field or a parameter's quoted name) in a file of
its row, or in model/attention.py, where the lecture's pure functions live."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = "model/attention.py"


def table_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From the lecture to the code", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]


def defined(name: str, source: str) -> bool:
    n = re.escape(name)
    pattern = rf"(def|class)\s+{n}\b|^\s*{n}\s*[:=]|[\"']{n}[\"']"
    return re.search(pattern, source, re.MULTILINE) is not None


def test_table_has_rows():
    assert len(table_rows()) >= 10


def test_every_cited_file_and_name_exists():
    missing = []
    for row in table_rows():
        code = row.split("|")[2]
        tokens = re.findall(r"`([^`]+)`", code)
        files = [t for t in tokens if t.endswith(".py")]
        for f in files:
            if not (ROOT / f).is_file():
                missing.append(f)
        sources = [(ROOT / f).read_text() for f in [*files, DEFAULT] if (ROOT / f).is_file()]
        for t in tokens:
            name, _, rest = t.partition(" ")
            if rest and not rest.startswith("["):  # a command or an expression, not a name
                continue  # (`query [D,H,Dh]` names the parameter 'query')
            if name.endswith(".py") or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                continue
            if not any(defined(name, s) for s in sources):
                missing.append(f"{name} (row: {row.split('|')[1].strip()})")
    assert not missing, "the README's lecture table names what does not exist: " + ", ".join(missing)
