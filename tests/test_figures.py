"""The run's figures say what they show: a colour bar, token or position ticks, and a note when a title is cut."""

from __future__ import annotations

import matplotlib.figure
import numpy as np
import pytest

from train.report import excerpt, plot_attention


def test_excerpt_says_when_it_cuts():
    assert excerpt("ROMEO:", 80) == "'ROMEO:'"
    assert excerpt("x" * 100, 10) == "'xxxxxxxxxx'... (the first 10 of 100 characters)"


@pytest.mark.parametrize("t,ticks", [(12, True), (64, True), (12, False)])
def test_attention_figure_has_a_colour_bar_and_labelled_ticks(tmp_path, monkeypatch, t, ticks):
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    patterns = np.tril(np.ones((2, 3, t, t)))
    patterns /= patterns.sum(-1, keepdims=True)
    labels = [chr(ord("a") + i % 26) for i in range(t)]
    plot_attention(patterns, labels, tmp_path / "a.png", "title", ticks=ticks)
    (fig,) = saved
    panels, bars = fig.axes[:6], fig.axes[6:]
    assert len(bars) == 1 and bars[0].get_ylabel() == "attention weight"
    ticklabels = [x.get_text() for x in panels[0].get_xticklabels()]
    if ticks and t <= 48:
        assert ticklabels == labels and panels[3].get_xlabel() == "key token"
    else:  # positions
        assert ticklabels and all(s.lstrip("−-").isdigit() for s in ticklabels if s)
        assert panels[3].get_xlabel() == "key position"


def test_the_progress_bar_says_compiling_until_the_first_step_ends():
    """The ETA counts the steps' own rate, not the compilation's: 1.5 s of compiling, then 5 steps of 10 ms."""
    import io
    import re
    import time

    from train.report import Progress

    out = io.StringIO()
    bar = Progress(1000, 0, disable=False, file=out)
    time.sleep(1.5)  # the first step: compiling (the bar's clock redraws it every second meanwhile)
    compiling = out.getvalue()
    assert "compiling (the first step): 0/1000 steps [00:01]" in compiling
    assert "<" not in compiling and "/s" not in compiling  # no ETA, no rate while it compiles
    bar.compiled()
    for _ in range(5):
        time.sleep(0.01)
        bar.update(1)
    bar.close()
    final = out.getvalue()[len(compiling) :].split("\r")[-1]
    assert re.search(r" 6/1000 \[", final), final
    eta = re.search(r"<(\d+):(\d+),", final)
    # counted from the start, 6 steps in 1.55 s would promise 994 x 0.26 s = 4 min; 10 ms steps take 10 s
    assert eta is not None and 60 * int(eta[1]) + int(eta[2]) < 60, final
    assert "step/s" in final or "s/step" in final
