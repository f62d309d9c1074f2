"""Line plots for the benchmark report (TFLOP/s against sequence length), drawn with matplotlib.

matplotlib is optional (``pip install 'jax-cer[bench]'``): it is imported when a plot is drawn, and
:func:`available` tells the report whether to draw or to leave the plots out with a note. Plots are
written as PNG (embedded in the markdown) and SVG (linked beside it), both without a date stamp, so
the same results give the same files.
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

INSTALL_HINT = "pip install 'jax-cer[bench]' (matplotlib)"
Point = tuple[float, float] | tuple[float, float, bool]
"""``(x, y)`` or ``(x, y, quick)``: ``quick`` draws the point hollow (it comes from a quick run)."""


class PlotsUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def available() -> bool:
    """Whether matplotlib is installed (plots can be drawn)."""
    return importlib.util.find_spec("matplotlib") is not None


def _figure(series: Mapping[str, Sequence[Point]], title: str, xlabel: str, ylabel: str):
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415 - optional: matplotlib draws the report's plots
        from matplotlib.lines import Line2D  # noqa: PLC0415 - optional: matplotlib draws the report's plots
    except ImportError as e:
        raise PlotsUnavailableError(f"plots need matplotlib: {INSTALL_HINT}") from e
    lines = list(dict.fromkeys(name.split(" ", 1)[0] for name in series))
    variants = list(dict.fromkeys(name.partition(" ")[2] for name in series))
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    dashes = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D")
    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    xs = sorted({p[0] for pts in series.values() for p in pts})
    any_quick = False
    for name in series:
        pts = sorted(series[name])
        line, _, variant = name.partition(" ")
        color = colors[lines.index(line) % len(colors)]
        dash, marker = dashes[variants.index(variant) % len(dashes)], markers[variants.index(variant) % len(markers)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], dash, color=color, marker=marker, label=name, lw=1.8)
        hollow = [p for p in pts if len(p) > 2 and p[2]]
        if hollow:
            any_quick = True
            ax.plot([p[0] for p in hollow], [p[1] for p in hollow], marker, color=color, mfc="white", ms=7)
    ax.set_xscale("log", base=2)
    if xs:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        pad = 2 ** (0.15 * max(math.log2(xs[-1] / xs[0]), 1))
        ax.set_xlim(xs[0] / pad, xs[-1] * pad)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.grid(True, color="#dddddd", lw=0.6)
    handles, labels = ax.get_legend_handles_labels()
    if any_quick:
        handles.append(Line2D([], [], ls="", marker="o", color="gray", mfc="white"))
        labels.append("hollow: quick run")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return fig


def _save(fig, target, fmt: str) -> None:
    from matplotlib import rc_context  # noqa: PLC0415 - optional: matplotlib draws the report's plots

    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with rc_context({"svg.hashsalt": "jax-cer", "svg.fonttype": "none"}):
        fig.savefig(target, format=fmt, dpi=110, metadata=metadata)


def write_line_plot(
    series: Mapping[str, Sequence[Point]], title: str, xlabel: str, ylabel: str, stem: Path
) -> tuple[Path, Path]:
    """Draws one line per series (x on a log2 axis, labelled at the data's x values; y from 0) and
    writes ``<stem>.png`` and ``<stem>.svg``; returns both paths. A series named ``"<line> <variant>"``
    takes its colour from ``<line>`` and its dash and marker from ``<variant>`` (in the order they first
    appear in ``series``, which is also the legend's order). Raises
    :class:`PlotsUnavailableError` when matplotlib is not installed."""
    fig = _figure(series, title, xlabel, ylabel)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")
    _save(fig, png, "png")
    _save(fig, svg, "svg")
    return png, svg


def line_plot(series: Mapping[str, Sequence[Point]], title: str, xlabel: str, ylabel: str) -> str:
    """The plot of :func:`write_line_plot` as SVG text."""
    buf = io.StringIO()
    _save(_figure(series, title, xlabel, ylabel), buf, "svg")
    return buf.getvalue()
