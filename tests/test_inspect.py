"""experiments/inspect.py on the gpt2-tiny checkpoint: the head table, the report, and bad input."""

from __future__ import annotations

from pathlib import Path

from experiments import inspect

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gpt2-tiny"


def test_inspect_checkpoint_writes_report(tmp_path, capsys):
    rc = inspect.main([str(FIXTURE), "--prompt", "5 6 7 8 5 6 7 8", "--ablate", "1.2", "--out", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| 2.3 |" in printed and "prefix_matching" in printed and "ablating" in printed
    for name in ("report.md", "heads.png", "patterns.png", "ablation.png"):
        assert (tmp_path / name).is_file(), name
    assert "## Ablating 1.2" in (tmp_path / "report.md").read_text()


def test_inspect_bad_input_is_one_line(capsys):
    assert inspect.main([str(FIXTURE), "--prompt", "not ids"]) == 2
    assert inspect.main([str(FIXTURE), "--prompt", "1 2", "--ablate", "7.0"]) == 2
    err = capsys.readouterr().err
    assert "token ids" in err and "layers 0..2" in err
