"""Shared test settings: offline data, quiet plots, deterministic seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "MINILLM_DATA_DIR" not in os.environ and _SHARED.is_dir():
    # A checkout with the book's offline data mirror beside it (CI, developers).
    os.environ["MINILLM_DATA_DIR"] = str(_SHARED)
if "TIKTOKEN_CACHE_DIR" not in os.environ and _SHARED.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_SHARED / "tiktoken-cache")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty, private download cache for one test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("MINILLM_CACHE_DIR", str(path))
    return path
