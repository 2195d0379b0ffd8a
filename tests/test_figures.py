"""The book's drawn diagrams: current (redrawn by their code), referenced, legible, small.

`stale()` compares every committed SVG with what its code draws now; the
staleness tests change a diagram's code in a scratch checkout and check that the
change is caught, then that redrawing clears it. Byte-for-byte comparison
needs the matplotlib that drew the committed files (it writes its version into
each SVG): with another version the comparison is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import pytest

from minillm import diagrams
from minillm.diagrams import kit

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(ROOT.glob("chapters/[0-9][0-9]_*.ipynb")) + sorted(ROOT.glob("appendix/[A-E]_*.ipynb"))
IMAGE = re.compile(r"!\[([^\]]*)\]\((figures/[^)\s]+)\)")
MIN_PER_CHAPTER = 6


def markdown_images(notebook: Path) -> list[tuple[str, str]]:
    """(alt text, relative path) of every image embedded in the notebook's markdown."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    return [m.groups() for c in cells if c["cell_type"] == "markdown" for m in IMAGE.finditer("".join(c["source"]))]


def committed_version(svg: Path) -> str | None:
    found = re.search(r"Matplotlib v([\w.]+)", svg.read_text(encoding="utf-8"))
    return found.group(1) if found else None


def same_matplotlib() -> bool:
    versions = {committed_version(p) for p in ROOT.glob("*/figures/*.svg")}
    return versions == {matplotlib.__version__}


needs_same_matplotlib = pytest.mark.skipif(
    not same_matplotlib(), reason=f"committed figures were drawn by another matplotlib than {matplotlib.__version__}")


@needs_same_matplotlib
def test_committed_figures_are_what_their_code_draws():
    problems = diagrams.stale(ROOT)
    assert not problems, "stale figures (run `python -m minillm.diagrams` and commit):\n" + "\n".join(problems)


@needs_same_matplotlib
def test_figures_do_not_depend_on_the_cpus_vector_kernels():
    """pytest pins PyTorch's AVX2 kernels (conftest.py); a reader's CPU may pick others, whose
    softmax differs in the last bits. A diagram must round what it draws, so it is drawn the same."""
    code = "from minillm import diagrams; print('\\n'.join(diagrams.stale()))"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    env.pop("MKL_CBWR", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", result.stdout


def _scratch_checkout(tmp_path: Path) -> Path:
    for folder in ("chapters", "appendix"):
        if (ROOT / folder / "figures").is_dir():
            shutil.copytree(ROOT / folder / "figures", tmp_path / folder / "figures")
    return tmp_path


@needs_same_matplotlib
def test_a_changed_diagram_is_caught_and_redrawing_fixes_it(tmp_path, monkeypatch):
    root = _scratch_checkout(tmp_path)  # the whole set is compared by test_committed_figures_are_...
    name = sorted(diagrams.load_all())[0]
    assert diagrams.stale(root, [name]) == []
    original = diagrams.DIAGRAMS[name]

    def changed():
        d = original()
        d.text(0.5, 0.3, "an edit", size=10)
        return d

    monkeypatch.setitem(diagrams.DIAGRAMS, name, changed)
    problems = diagrams.stale(root, [name])
    assert problems == [f"{diagrams.path_of(name, root).relative_to(root)}: differs from what its code draws now"]
    diagrams.build(root, [name])
    assert diagrams.stale(root, [name]) == []


def test_missing_and_orphaned_figures_are_reported(tmp_path):
    root = tmp_path
    names = sorted(diagrams.load_all())[:2]
    diagrams.build(root, names)  # two figures, drawn fresh
    diagrams.path_of(names[0], root).unlink()
    (root / "chapters" / "figures" / "99_forgotten.svg").write_text("<svg/>")
    problems = diagrams.stale(root, names)
    assert f"chapters/figures/{names[0]}.svg: missing" in problems
    assert not any(p.startswith(f"chapters/figures/{names[1]}.svg") for p in problems)  # drawn, and the same
    assert any(p.startswith("chapters/figures/99_forgotten.svg: drawn by no code") for p in problems)


def test_the_command_line_checks_and_exits_nonzero_when_stale(tmp_path):
    result = subprocess.run([sys.executable, "-m", "minillm.diagrams", "--check", "--root", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "missing" in result.stdout and "stale figure" in result.stderr


def test_drawing_is_deterministic():
    name = sorted(diagrams.load_all())[0]
    assert diagrams.render(name) == diagrams.render(name)


def test_the_kit_refuses_unreadable_text_and_too_wide_diagrams():
    with pytest.raises(ValueError, match="at most 7.5 in"):
        kit.Diagram(9, 2)
    d = kit.Diagram(2, 1)
    with pytest.raises(ValueError, match="unreadable"):
        d.text(1, 0.5, "tiny", size=6)
    with pytest.raises(ValueError, match="unknown kind"):
        d.box(0, 0, 1, 1, kind="blob")
    d.svg()
    with pytest.raises(ValueError, match="diagram names"):
        diagrams.diagram("mha shapes")


@pytest.mark.parametrize("svg", sorted(ROOT.glob("*/figures/*.svg")), ids=lambda p: p.name)
def test_figures_are_legible_and_small(svg):
    """Text at least 9 pt at the figure's natural size, at most 7.5 in (540 pt) wide, under 100 KB."""
    assert svg.stat().st_size < 100_000, f"{svg.name} is {svg.stat().st_size} bytes"
    root = ET.parse(svg).getroot()
    width = float(root.get("width").removesuffix("pt"))
    assert width <= kit.MAX_WIDTH * 72 + 0.5
    sizes = [float(s) for s in re.findall(r"font-size:\s*([\d.]+)px", svg.read_text(encoding="utf-8"))]
    assert sizes, f"{svg.name} has no text"
    assert min(sizes) >= kit.MIN_FONT, f"{svg.name} has text at {min(sizes)} pt"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_each_chapter_embeds_its_diagrams_with_alt_text(notebook):
    images = markdown_images(notebook)
    svgs = [path for _, path in images if path.endswith(".svg")]
    chapter = notebook.name.split("_")[0]  # "03" or "A"
    drawn = sorted(n for n in diagrams.load_all() if n.startswith(chapter + "_"))
    assert len(drawn) >= MIN_PER_CHAPTER, f"chapter {chapter} has {len(drawn)} diagrams, wants {MIN_PER_CHAPTER}"
    assert sorted(Path(p).stem for p in svgs) == drawn, "every diagram of the chapter is embedded exactly once"
    for alt, path in images:
        assert (notebook.parent / path).exists(), f"{notebook.name} embeds a missing file {path}"
        assert len(alt.split()) >= 4, f"{notebook.name}: {path} needs alt text that says what it shows, got {alt!r}"
