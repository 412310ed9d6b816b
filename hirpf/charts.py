"""Charts of evaluation runs as PNG files: radar charts of factor scores, bars of answer distributions.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global figure state), so
charts can be made from worker threads of the app as well as from the CLI. matplotlib is imported when the
first chart is drawn, not with this module: the app's page imports the evaluation modules before it serves.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_PANELS = 12  # a radar chart of more sets would be unreadable; the CSV has them all


@dataclass
class RadarPanel:
    title: str
    scores: Sequence[float | None]  # one per axis
    reference: Sequence[float | None] | None = None  # e.g. the empty set's scores
    target: Sequence[float | None] | None = None  # where the identity should pull each axis; None = no target


def radar_chart(path: Path, axes: Sequence[str], panels: Sequence[RadarPanel], low: float = 1.0,
                high: float = 5.0, title: str = "") -> Path:
    """One polar panel per identity set: its scores (solid), the reference (dashed) and the target poles
    (markers). Only the first MAX_PANELS panels are drawn."""
    radar_figure(axes, panels, low, high, title).savefig(path, dpi=100)
    return path


def radar_figure(axes: Sequence[str], panels: Sequence[RadarPanel], low: float = 1.0, high: float = 5.0,
                 title: str = "") -> Figure:
    """The figure `radar_chart` saves. The first axis points up and the others go clockwise, so no axis
    label sits straight above or below a panel, where the panel's title or the next row's would be; the
    title stands clear of the top label."""
    panels = list(panels)
    if len(panels) > MAX_PANELS:
        title = f"{title} (first {MAX_PANELS} of {len(panels)} sets)".strip()
        panels = panels[:MAX_PANELS]
    columns = min(4, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure = agg_figure((max(3.2 * columns, 6.4), 3.8 * rows + 0.6))
    angles = [2 * math.pi * i / len(axes) for i in range(len(axes))]
    closed = angles + angles[:1]
    for n, panel in enumerate(panels):
        ax = figure.add_subplot(rows, columns, n + 1, projection="polar")
        ax.set_theta_offset(math.pi / 2)
        ax.set_theta_direction(-1)
        # The centre sits one unit below the scale's low end, so a target at the low end (a _low pole) still
        # shows on its own axis instead of collapsing into the centre.
        ax.set_ylim(low - (high - low) / 4, high)
        ax.set_xticks(angles)
        ax.set_xticklabels(axes, fontsize=8)
        ax.set_yticks([low + (high - low) * f for f in (0, 0.25, 0.5, 0.75)])
        ax.tick_params(axis="y", labelsize=6)
        ax.set_title(panel.title, fontsize=9, pad=26)
        if panel.reference is not None:
            ax.plot(closed, _closed(panel.reference, low), linestyle="--", color="grey", linewidth=1,
                    label="reference")
        ax.plot(closed, _closed(panel.scores, low), color="tab:blue", linewidth=1.5, label="scores")
        ax.fill(closed, _closed(panel.scores, low), color="tab:blue", alpha=0.15)
        if panel.target is not None:
            points = [(a, t) for a, t in zip(angles, panel.target) if t is not None]
            if points:
                ax.scatter([a for a, _ in points], [t for _, t in points], marker="*", s=80, color="tab:red",
                           zorder=3, label="target")
    if panels:
        handles, labels = figure.axes[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.05, 1, 0.97))
    return figure


def _closed(values: Sequence[float | None], fill: float) -> list[float]:
    values = [fill if v is None else v for v in values]
    return values + values[:1]


def distribution_chart(path: Path, rows: Sequence[str], options: Sequence[str],
                       distributions: Sequence[Sequence[float]], title: str = "") -> Path:
    """Horizontal stacked bars: one bar per identity set, the share of each option."""
    height = 1.6 + 0.32 * len(rows) + 0.2 * math.ceil(len(options) / 3)
    figure = agg_figure((8, max(2.5, height)))
    ax = figure.add_subplot(1, 1, 1)
    colours = [figure_colour(i, len(options)) for i in range(len(options))]
    left = [0.0] * len(rows)
    positions = list(range(len(rows)))[::-1]  # first row at the top
    for k, option in enumerate(options):
        widths = [d[k] for d in distributions]
        ax.barh(positions, widths, left=left, color=colours[k], label=option, height=0.7)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(positions)
    ax.set_yticklabels(rows, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of probability", fontsize=8)
    legend_rows = math.ceil(len(options) / 3)
    figure.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="lower center", ncol=3)
    if title:
        ax.set_title(textwrap.fill(title, 100), fontsize=9)
    # Leave room at the bottom for the legend (in inches, whatever the number of rows).
    figure.tight_layout(rect=(0, (0.25 + 0.2 * legend_rows) / figure.get_figheight(), 1, 1))
    figure.savefig(path, dpi=100)
    return path


def agg_figure(size: tuple[float, float]) -> Figure:
    """A figure of `size` inches on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def figure_colour(i: int, n: int):
    """Ordered options get an ordered colour map (a Likert scale reads left to right)."""
    from matplotlib import colormaps

    return colormaps["RdYlBu"](i / max(1, n - 1))


def line_chart(path: Path, x: Sequence[float] | None, panels: Sequence[tuple[str, dict]], x_label: str = "") -> Path:
    """Line charts (a loss curve, a dose-response), panels side by side, each `(title, {series name: values})`:
    values are y values over `x`, or, with `x` None, `(x, y)` points of their own. Missing values (None) leave
    gaps."""
    from matplotlib import colormaps

    figure = agg_figure((6.4 * len(panels), 4.4))
    for k, (title, series) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), k + 1)
        for i, (name, values) in enumerate(series.items()):
            points = list(values) if x is None else list(zip(x, values))
            points = [(a, b) for a, b in points if b is not None]
            if points:  # tab20: 13 identities stay distinguishable; the professions dashed
                ax.plot([a for a, _ in points], [b for _, b in points], marker="o", markersize=3, label=name,
                        color=colormaps["tab20"](i % 20), linestyle="-" if i < 10 else "--")
        if x is not None:
            ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_title(textwrap.fill(title, 60), fontsize=9)
        ax.set_xlabel(x_label, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def interval_chart(path: Path, rows: Sequence[str], values: Sequence[float | None],
                   intervals: Sequence[Sequence[float] | None], reference: float | None = None,
                   x_label: str = "", title: str = "") -> Path:
    """One row per item (a study's conditions): its value as a point with its interval as a bar, and a
    vertical reference line (chance, or 0 for centred scores). Rows without a value are left empty."""
    figure = agg_figure((7, max(2.2, 1.2 + 0.45 * len(rows))))
    ax = figure.add_subplot(1, 1, 1)
    positions = list(range(len(rows)))[::-1]  # first row at the top
    for y, value, interval in zip(positions, values, intervals):
        if value is None:
            continue
        if interval is not None:
            ax.plot(list(interval), [y, y], color="tab:blue", linewidth=2.5, alpha=0.5)
        ax.plot([value], [y], "o", color="tab:blue")
    if reference is not None:
        ax.axvline(reference, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(positions)
    ax.set_yticklabels(rows, fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(x_label, fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    if title:
        ax.set_title(textwrap.fill(title, 80), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
