"""The book's drawn diagrams: code in the repository, SVG files beside the notebooks.

Every diagram is a function registered with `@diagram("NN_name")` in the module of its
chapter (``minillm.diagrams.ch03`` draws chapter 03's) and drawn with the kit
(`minillm.diagrams.kit`). Its file is ``chapters/figures/NN_name.svg`` (appendix
diagrams, named ``A_...`` to ``E_...``, go to ``appendix/figures/``), embedded in the
notebook's markdown as ``![alt text](figures/NN_name.svg)``.

``python -m minillm.diagrams`` redraws them all; ``--check`` lists the stale ones
(a file that differs from what its code draws now, a missing file, or an SVG
no code draws) and exits 1 if there are any: the test suite runs the same
check, so a changed diagram function fails CI until its figure is redrawn and
committed. ``--png DIR`` also writes PNG previews to look at.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path

from minillm.diagrams.kit import Diagram
from minillm.fileio import atomic_write

NAME = re.compile(r"^(\d\d|[A-E])_[a-z0-9_]+$")
#: The modules that register diagrams, in book order.
CHAPTER_MODULES = tuple(f"ch{n:02d}" for n in range(9)) + ("appa", "appb", "appc", "appd", "appe")

DIAGRAMS: dict[str, Callable[[], Diagram]] = {}


def diagram(name: str) -> Callable[[Callable[[], Diagram]], Callable[[], Diagram]]:
    """Register the decorated function as the code that draws figure `name` (e.g. "03_mha_shapes")."""
    if not NAME.match(name):
        raise ValueError(f"diagram names look like '03_mha_shapes' or 'A_encoder' (chapter first); got {name!r}")

    def register(fn: Callable[[], Diagram]) -> Callable[[], Diagram]:
        if name in DIAGRAMS and DIAGRAMS[name].__qualname__ != fn.__qualname__:
            raise ValueError(f"two functions draw diagram {name!r}")
        DIAGRAMS[name] = fn
        return fn

    return register


def load_all() -> dict[str, Callable[[], Diagram]]:
    """Import every chapter's diagram module (which registers its diagrams); returns the registry."""
    for module in CHAPTER_MODULES:
        try:
            importlib.import_module(f"minillm.diagrams.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"minillm.diagrams.{module}":
                raise
    return DIAGRAMS


def repo_root() -> Path:
    """The checkout this package was installed from (editable install), where chapters/ lives."""
    return Path(__file__).resolve().parents[2]


def path_of(name: str, root: str | Path | None = None) -> Path:
    """Where figure `name`'s SVG lives: chapters/figures/ for chapters, appendix/figures/ for the appendix."""
    root = Path(root) if root is not None else repo_root()
    folder = "chapters" if name[:2].isdigit() else "appendix"
    return root / folder / "figures" / f"{name}.svg"


def render(name: str) -> str:
    """The SVG text that diagram `name`'s code draws now."""
    registry = load_all()
    if name not in registry:
        raise KeyError(f"no diagram named {name!r}; known: {', '.join(sorted(registry))}")
    return registry[name]().svg()


def build(root: str | Path | None = None, names: list[str] | None = None, png_dir: str | Path | None = None
          ) -> list[Path]:
    """Draw `names` (default: all) into their figure folders under `root`; returns the files written."""
    registry = load_all()
    written = []
    for name in names or sorted(registry):
        drawing = registry[name]()
        if png_dir is not None:
            Path(png_dir).mkdir(parents=True, exist_ok=True)
            drawing.png(Path(png_dir) / f"{name}.png")
        path = path_of(name, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, drawing.svg())
        written.append(path)
    return written


def stale(root: str | Path | None = None, names: list[str] | None = None) -> list[str]:
    """Problems with the committed figures under `root`: '<file>: differs|missing|drawn by no code'.

    `names`: redraw and compare only these diagrams (default: all); figures that
    no code draws are always reported.
    """
    registry = load_all()
    root = Path(root) if root is not None else repo_root()
    problems = []
    for name in names or sorted(registry):
        path = path_of(name, root)
        if not path.exists():
            problems.append(f"{path.relative_to(root)}: missing")
        elif path.read_text(encoding="utf-8") != render(name):
            problems.append(f"{path.relative_to(root)}: differs from what its code draws now")
    for folder in ("chapters", "appendix"):
        for path in sorted((root / folder / "figures").glob("*.svg")):
            if path.stem not in registry:
                problems.append(f"{path.relative_to(root)}: drawn by no code (delete it or register its function)")
    return problems
