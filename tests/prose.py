"""Numbers in a notebook's markdown that no code cell above prints or asserts (the "every sentence true" check).

A number in prose is supported when it appears, in the same notation, in the
source or the outputs of a code cell above the markdown cell (printed,
asserted or set there), or in the notebook's own allowlist of cited facts and constants (its
metadata `"prose_allowlist": {"175": "GPT-3's parameters in billions, Brown et al. 2020"}`). Small counting
words (0-10), section numbers ("## 3."), years and chapter numbers are not
checked.

    python tests/prose.py chapters/05_pretraining.ipynb   # lists the unsupported numbers
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(%|x\b)?")
SKIP = [
    re.compile(r"^#+ *\d+(\.\d+)*\.?", re.M),  # section numbers in headings
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"`[^`]*`"),  # inline code (names like gpt2-124m, flags); checked by the code itself
    re.compile(r"\b(?:19|20)\d\d[a-z]?\b"),  # years (citations)
    re.compile(r"\b(?:chapter|chapters|section|sections|step|steps|appendix|exercise|figure|table|equation)s? \d+(?:(?:,| and| or|-) ?\d+)*", re.I),
]


def numbers_in(text: str) -> list[str]:
    for pattern in SKIP:
        text = pattern.sub(" ", text)
    out = []
    for m in NUMBER.finditer(text):
        whole, frac, suffix = m.group(1), m.group(2) or "", m.group(3) or ""
        if not frac and not suffix and int(whole.replace(",", "")) <= 10:
            continue
        out.append(whole + frac + suffix)
    return out


def _variants(number: str) -> set[str]:
    """The ways a printed value can show `number`: as is, without thousands commas, without %/x."""
    bare = number.rstrip("%x")
    plain = bare.replace(",", "")
    forms = {number, bare, plain}
    if number.endswith("%"):  # 30% may be printed as 0.30 or 0.3
        try:
            forms |= {f"{float(plain) / 100:.2f}", f"{float(plain) / 100:.3f}".rstrip("0"), f"{float(plain) / 100:g}"}
        except ValueError:
            pass
    return forms


def _cell_text(cell: dict) -> str:
    parts = ["".join(cell.get("source", ""))]
    for out in cell.get("outputs", []):
        parts.append("".join(out.get("text", "")))
        for key, value in out.get("data", {}).items():
            if key.startswith("text/plain"):
                parts.append("".join(value))
    return "\n".join(parts)


def unsupported(path: str | Path) -> list[tuple[int, str]]:
    """(markdown cell index, number) for each number the cells above do not show."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    allowed = nb.get("metadata", {}).get("prose_allowlist", {})
    seen, found = "", []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            seen += "\n" + _cell_text(cell)
            continue
        if cell["cell_type"] != "markdown":
            continue
        for number in numbers_in("".join(cell["source"])):
            if number in allowed:
                continue
            if not any(re.search(rf"(?<![\d.]){re.escape(v)}(?!\d)", seen) for v in _variants(number)):
                found.append((i, number))
    return found


if __name__ == "__main__":
    bad = 0
    for arg in sys.argv[1:]:
        for i, number in unsupported(arg):
            print(f"{arg}: markdown cell {i}: {number}")
            bad += 1
    sys.exit(1 if bad else 0)
