"""Shared test fixtures: quiet plots, deterministic seeds, private caches."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


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
