"""The book's drawing kit: one visual language for every diagram (chapters and appendix).

A diagram is drawn on a `Diagram`, a matplotlib figure whose coordinates are
inches from the bottom-left corner, and saved as SVG with text kept as text
(crisp at any zoom, small files, searchable). The kit fixes what must look the
same across the book:

- **kinds** of shapes (`STYLE`): a ``tensor`` (blue, square corners, its shape
  written beside it as ``(B, T, C)``), a ``layer`` with learned weights
  (orange, rounded), a fixed ``op`` without weights (grey, rounded: softmax,
  add, mask), ``data`` on disk or text (green, a folded corner), a ``note``
  (no fill) and a ``warn`` box (red) for what goes wrong;
- one font (DejaVu Sans, shipped with matplotlib) no smaller than `MIN_FONT`
  points, and a width no larger than `MAX_WIDTH` inches, so that text stays
  readable at notebook width (7.5 in is 720 px at the browser's 96 px/in);
- deterministic output: the same code writes the same bytes (fixed SVG id
  salt, no date in the metadata). A diagram that draws numbers computed by
  PyTorch rounds them first: their last bits depend on the CPU's vector kernels.

Helpers shared by the diagram modules: `cell` (a square-cornered labelled cell), `pale`
(a colour mixed with white), `text_width` (a string's drawn width) and `text_runs` (one
line in several colours).

Used by the per-chapter diagram modules (``minillm.diagrams.chNN``), drawn by
``python -m minillm.diagrams`` into ``chapters/figures/``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # noqa: E402  (no display needed; must precede pyplot)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import colors, patches  # noqa: E402

MIN_FONT = 9.0  # points: the smallest text a diagram may use
MAX_WIDTH = 7.5  # inches: the widest diagram (a notebook's text column)
FONT = "DejaVu Sans"

INK = "#222222"  # text and outlines of notes
MUTED = "#6b6b6b"  # secondary text: shapes, counts, captions
ACCENT = "#c0392b"  # the one thing a diagram points at (red)

#: kind -> (fill, edge, rounded corners)
STYLE: dict[str, tuple[str, str, bool]] = {
    "tensor": ("#dbe9f7", "#2b6cb0", False),
    "layer": ("#fde3c4", "#c2620a", True),
    "op": ("#ececec", "#5f5f5f", True),
    "data": ("#dcf0dc", "#2f7d32", False),
    "note": ("none", "#5f5f5f", True),
    "warn": ("#f9dcd8", ACCENT, True),
    "accent": ("#fff2b3", "#b58900", True),
}

#: A qualitative palette for series of things (heads, devices, shards, documents).
SERIES = ("#2b6cb0", "#c2620a", "#2f7d32", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#b58900")


@dataclass(frozen=True)
class Box:
    """A drawn rectangle: its lower-left corner (x, y) and size (w, h), in inches; anchors for arrows."""

    x: float
    y: float
    w: float
    h: float

    @property
    def left(self) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.w, self.y + self.h / 2)

    @property
    def top(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y + self.h / 2)


class Diagram:
    """A blank canvas `width` x `height` inches; coordinates are inches from the bottom-left corner.

    >>> d = Diagram(4, 1.5)
    >>> a = d.box(0.2, 0.5, 1.2, 0.5, "x", kind="tensor", shape="(B, T, C)")
    >>> b = d.box(2.4, 0.5, 1.2, 0.5, "Linear", kind="layer")
    >>> d.arrow(a.right, b.left)
    >>> svg = d.svg()
    """

    def __init__(self, width: float, height: float, title: str | None = None) -> None:
        if not 0 < width <= MAX_WIDTH:
            raise ValueError(f"a diagram is at most {MAX_WIDTH} in wide (a notebook's column); got {width}")
        if not 0 < height <= 10:
            raise ValueError(f"a diagram's height must be in (0, 10] inches; got {height}")
        self.width, self.height = float(width), float(height)
        self.fig = plt.figure(figsize=(width, height))
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height)
        self.ax.set_aspect("equal")
        self.ax.axis("off")
        if title:
            self.text(width / 2, height - 0.18, title, size=11, weight="bold")

    # -- text ---------------------------------------------------------------------------

    def text(self, x: float, y: float, s: str, size: float = 10, color: str = INK, ha: str = "center",
             va: str = "center", weight: str = "normal", rotation: float = 0, style: str = "normal") -> None:
        """Write `s` at (x, y); `size` in points, at least `MIN_FONT`."""
        if size < MIN_FONT:
            raise ValueError(f"text smaller than {MIN_FONT} pt is unreadable at notebook width: {s!r} at {size} pt")
        self.ax.text(x, y, s, fontsize=size, color=color, ha=ha, va=va, fontweight=weight, family=FONT,
                     rotation=rotation, fontstyle=style)

    # -- shapes -------------------------------------------------------------------------

    def box(self, x: float, y: float, w: float, h: float, label: str = "", kind: str = "layer",
            shape: str | None = None, size: float = 10, shape_side: str = "below", lw: float = 1.2,
            fill: str | None = None, edge: str | None = None, label_color: str = INK) -> Box:
        """A shape of `kind` (see `STYLE`) with `label` inside; `shape` (e.g. "(B, T, C)") is written beside it."""
        if kind not in STYLE:
            raise ValueError(f"unknown kind {kind!r}; choose one of {sorted(STYLE)}")
        face, line, rounded = STYLE[kind]
        face, line = fill or face, edge or line
        if rounded:
            pad = min(0.08, w / 4, h / 4)
            patch = patches.FancyBboxPatch((x + pad, y + pad), w - 2 * pad, h - 2 * pad,
                                           boxstyle=f"round,pad={pad}", fc=face, ec=line, lw=lw)
        elif kind == "data":
            fold = min(0.14, w / 4, h / 3)
            pts = [(x, y), (x + w, y), (x + w, y + h - fold), (x + w - fold, y + h), (x, y + h)]
            patch = patches.Polygon(pts, closed=True, fc=face, ec=line, lw=lw)
            self.ax.add_patch(patches.Polygon([(x + w - fold, y + h), (x + w - fold, y + h - fold),
                                               (x + w, y + h - fold)], closed=False, fc="none", ec=line, lw=lw))
        else:
            patch = patches.Rectangle((x, y), w, h, fc=face, ec=line, lw=lw,
                                      ls="--" if kind == "note" else "-")
        self.ax.add_patch(patch)
        if label:
            self.text(x + w / 2, y + h / 2, label, size=size, color=label_color)
        if shape:
            positions = {"below": (x + w / 2, y - 0.13, "center", "center"),
                         "above": (x + w / 2, y + h + 0.13, "center", "center"),
                         "right": (x + w + 0.08, y + h / 2, "left", "center"),
                         "left": (x - 0.08, y + h / 2, "right", "center")}
            sx, sy, ha, va = positions[shape_side]
            self.text(sx, sy, shape, size=MIN_FONT, color=MUTED, ha=ha, va=va)
        return Box(x, y, w, h)

    def grid(self, x: float, y: float, values, cell: float = 0.22, cmap: str = "Blues", vmin: float = 0.0,
             vmax: float = 1.0, mask=None, text: bool = False, fmt: str = "{:.2f}", size: float = MIN_FONT) -> Box:
        """A matrix drawn as cells (row 0 at the top); `values` is a list of rows; `mask[i][j]` greys a cell out."""
        colormap = plt.get_cmap(cmap)
        rows = len(values)
        cols = len(values[0]) if rows else 0
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                hidden = mask is not None and mask[i][j]
                face = "#f4f4f4" if hidden else colormap(0.08 + 0.8 * (min(max(v, vmin), vmax) - vmin) / (vmax - vmin))
                cx, cy = x + j * cell, y + (rows - 1 - i) * cell
                self.ax.add_patch(patches.Rectangle((cx, cy), cell, cell, fc=face, ec="white", lw=1))
                if text and not hidden:
                    dark = (v - vmin) / (vmax - vmin) > 0.6
                    self.text(cx + cell / 2, cy + cell / 2, fmt.format(v), size=size, color="white" if dark else INK)
        self.ax.add_patch(patches.Rectangle((x, y), cols * cell, rows * cell, fc="none", ec=MUTED, lw=0.8))
        return Box(x, y, cols * cell, rows * cell)

    def arrow(self, start: tuple[float, float], end: tuple[float, float], label: str | None = None,
              color: str = INK, lw: float = 1.2, style: str = "-|>", curve: float = 0.0, dashed: bool = False,
              label_offset: tuple[float, float] = (0.0, 0.12), size: float = MIN_FONT) -> None:
        """An arrow from `start` to `end` (bent by `curve`), with an optional `label` near its middle."""
        self.ax.add_patch(patches.FancyArrowPatch(
            start, end, arrowstyle=style, mutation_scale=10, color=color, lw=lw, shrinkA=1, shrinkB=1,
            connectionstyle=f"arc3,rad={curve}", linestyle="--" if dashed else "-"))
        if label:
            mx, my = (start[0] + end[0]) / 2 + label_offset[0], (start[1] + end[1]) / 2 + label_offset[1]
            self.text(mx, my, label, size=size, color=MUTED if color == INK else color)

    def line(self, points, color: str = MUTED, lw: float = 1.0, dashed: bool = False) -> None:
        """A polyline through `points` [(x, y), ...]."""
        xs, ys = zip(*points)
        self.ax.plot(xs, ys, color=color, lw=lw, ls="--" if dashed else "-", solid_capstyle="butt")

    def brace(self, x0: float, x1: float, y: float, label: str, below: bool = True, size: float = MIN_FONT,
              color: str = MUTED) -> None:
        """A bracket spanning x0..x1 at height y, with `label` outside it (to group boxes)."""
        tick = -0.07 if below else 0.07
        self.line([(x0, y - tick), (x0, y), (x1, y), (x1, y - tick)], color=color)
        self.text((x0 + x1) / 2, y + (-0.15 if below else 0.15), label, size=size, color=color)

    def circle(self, x: float, y: float, r: float, label: str = "", kind: str = "op", size: float = 10) -> Box:
        """A round op (⊕ for add, × for multiply) centred at (x, y)."""
        face, line, _ = STYLE[kind]
        self.ax.add_patch(patches.Circle((x, y), r, fc=face, ec=line, lw=1.2))
        if label:
            self.text(x, y, label, size=size)
        return Box(x - r, y - r, 2 * r, 2 * r)

    # -- output -------------------------------------------------------------------------

    def svg(self) -> str:
        """The diagram as SVG text (deterministic: same drawing, same bytes); closes the figure."""
        buf = io.StringIO()
        with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "minillm", "svg.id": None}):
            self.fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(self.fig)
        return buf.getvalue()

    def png(self, path: str | Path, dpi: int = 110) -> None:
        """A PNG preview (for looking at it while drawing; the book embeds the SVG). Keeps the figure open."""
        self.fig.savefig(path, format="png", dpi=dpi)


def cell(d: Diagram, x: float, y: float, w: float, h: float, label: str = "", fill: str = "white",
         edge: str = MUTED, color: str = INK, lw: float = 1.0, hatch: str | None = None, size: float = 9) -> None:
    """A square-cornered cell (a token, a slot position, a log-prob, a reward) with `label` in it."""
    d.ax.add_patch(patches.Rectangle((x, y), w, h, fc=fill, ec=edge, lw=lw, hatch=hatch))
    if label:
        d.text(x + w / 2, y + h / 2, label, size=size, color=color)


def pale(color: str, amount: float) -> str:
    """`color` mixed with white: `amount` 0 keeps it, 1 gives white."""
    r, g, b = colors.to_rgb(color)
    return colors.to_hex((r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount))


def text_width(d: Diagram, s: str, size: float = 9, weight: str = "normal") -> float:
    """How wide `s` is drawn at `size` points, in inches (measured by matplotlib's renderer)."""
    t = d.ax.text(0, 0, s, fontsize=size, family="DejaVu Sans", fontweight=weight)
    w = t.get_window_extent(d.fig.canvas.get_renderer()).width / d.fig.dpi
    t.remove()
    return w


def text_runs(d: Diagram, x: float, y: float, runs, size: float = 9) -> float:
    """Text pieces [(text, colour)] written one after another from x (one line in several colours); returns
    where the line ends, which must be inside the figure."""
    for s, color in runs:
        d.text(x, y, s, size=size, color=color, ha="left")
        x += text_width(d, s, size)
    assert x < d.width - 0.05, f"runs out of the figure: {runs}"
    return x
