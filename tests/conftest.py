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


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny models are faster that way, give the same
    numbers on any machine, and cannot be slowed by an oversubscribed CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
