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
