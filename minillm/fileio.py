"""Crash-safe file writes, shared by every module that saves something.

A write goes to a temporary file in the destination's folder and is moved over
the destination with ``os.replace`` only once complete, so a crash or Ctrl-C
never leaves a half-written tokenizer, shard, checkpoint or "latest" file.

- ``atomic_write(path, data)`` for bytes or text you already hold;
- ``with atomic_path(path) as tmp: save_file(state, tmp)`` for writers that want
  a file name (safetensors, ``torch.save``, matplotlib's ``savefig``);
- ``fsync_tree(folder)`` before a whole folder is renamed into place (checkpoints:
  see ``minillm.checkpoint``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path``.

    If the body raises (or is interrupted), the temporary file is removed and
    ``path`` is left as it was. The file gets the usual permissions (0o666
    minus the umask), not the owner-only ones of a bare temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        fsync(tmp)  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        fsync(path.parent)  # and the rename itself survives a power cut
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically; return the path."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def fsync(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to the disk. Folders on systems without that: a no-op."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # e.g. a folder on Windows
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on folders
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """`fsync` every file and folder below `root` (before a folder is renamed into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync(Path(folder) / name)
        fsync(folder)


def file_mode() -> int:
    """The permission bits a newly created file normally gets: 0o666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
