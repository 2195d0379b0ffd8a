"""Atomic writes: complete files or nothing, never a torn file."""

from __future__ import annotations

import os
import stat

import pytest

from minillm.fileio import atomic_path, atomic_write


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "latest.json"
    atomic_write(target, "old")
    atomic_write(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["latest.json"]  # no temp files left


def test_interrupted_write_keeps_the_old_file_and_no_debris(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"good checkpoint")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a checkp")
            raise KeyboardInterrupt  # Ctrl-C in the middle of a save
    assert target.read_bytes() == b"good checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
