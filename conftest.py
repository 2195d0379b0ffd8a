"""pytest settings for the whole run (unit tests and notebooks alike).

A developer's checkout has the book's offline data mirror beside it
(`../shared/data`): when it is there and nothing else was configured, point
minillm and tiktoken at it, so `pytest` (and the notebook kernels nbval starts,
which inherit this environment) need no network. Elsewhere the data layer
downloads and caches files as it would for any reader.
"""

from __future__ import annotations

import os
from pathlib import Path

_SHARED = Path(__file__).resolve().parent.parent / "shared" / "data"
if _SHARED.is_dir():
    os.environ.setdefault("MINILLM_DATA_DIR", str(_SHARED))
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_SHARED / "tiktoken-cache"))
