"""The figures are laid out once and drawn once: ``tight_layout`` leaves a placeholder layout
engine on a figure, and ``savefig`` draws a figure that has an engine an extra time before the
real draw (:func:`mpcore.face.plots.tight_layout` removes it), for the same image."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.figure import Figure

from mpcore.face.plots import tight_layout


def figure() -> Figure:
    made = Figure(figsize=(6, 4), dpi=50)
    top, bottom = made.subplots(2, 1)
    top.semilogy([1, 2, 3], [1e-3, 1.0, 1e3], ".-", label="amax")
    top.legend(loc="upper left")
    bottom.plot([1, 2, 3], [3, 1, 2])
    bottom.set_xticks([1, 2, 3], ["conv", "pool", "a_long_layer_name"], rotation=60)
    made.suptitle("a model under mixed_float16")
    return made


def draws_while_saving(made: Figure, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    count = 0
    draw = Figure.draw

    def counted(self: Figure, renderer) -> None:
        nonlocal count
        count += 1
        draw(self, renderer)

    with monkeypatch.context() as patch:
        patch.setattr(Figure, "draw", counted)
        made.savefig(path)
    return count


def test_a_tight_figure_is_drawn_once_and_saved_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = figure()
    before.tight_layout()
    # Twice with matplotlib 3.6 to 3.11 at least (what the helper avoids); once would mean the
    # helper is no longer needed.
    drawn_before = draws_while_saving(before, tmp_path / "before.png", monkeypatch)
    after = figure()
    tight_layout(after)
    assert after.get_layout_engine() is None
    assert draws_while_saving(after, tmp_path / "after.png", monkeypatch) == 1 <= drawn_before
    assert (tmp_path / "after.png").read_bytes() == (tmp_path / "before.png").read_bytes()
