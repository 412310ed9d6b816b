"""The evaluation charts as drawn: no text of one panel runs into another's."""
from __future__ import annotations

import itertools

import pytest

from hirpf.charts import RadarPanel, radar_figure
from hirpf.identities import TRAIT_POLES

FACTORS = ["AGR", "CON", "EXT", "NEU", "OPE"]
GAP_PX = 6  # texts closer than this read as one (a title run into the label beside it)


def text_boxes(figure) -> list[tuple[str, object]]:
    """(text, box on the canvas) of every panel title and axis label drawn."""
    renderer = figure.canvas.get_renderer()
    boxes = []
    for ax in figure.axes:
        for text in [ax.title, *ax.get_xticklabels()]:
            if text.get_text():
                boxes.append((text.get_text(), text.get_window_extent(renderer)))
    return boxes


@pytest.mark.parametrize("sets", [1, 11])
def test_radar_titles_and_axis_labels_stand_apart(sets):
    names = [*TRAIT_POLES, "(none)"][:sets]
    panels = [RadarPanel(name, [3.1, 2.9, 3.2, 3.0, 2.8], [3.0] * 5, [5.0, None, None, None, None])
              for name in names]
    figure = radar_figure(FACTORS, panels, title="Personality bank: scores, empty set, targets")
    figure.canvas.draw()
    clashes = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(text_boxes(figure), 2)
               if box_a.padded(GAP_PX / 2).overlaps(box_b.padded(GAP_PX / 2))]
    assert not clashes, f"texts drawn into each other: {clashes[:5]}"
