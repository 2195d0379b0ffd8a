"""Crash-safe file writes, shared by every module that saves something.

A write goes to a temporary file in the destination's folder and is moved over
the destination with ``os.replace`` only once complete, so a crash or Ctrl-C
never leaves a half-written tokenizer, shard, checkpoint or "latest" file.

- ``atomic_write(path, data)`` for bytes or text you already hold;
- ``with atomic_path(path) as tmp: save_file(state, tmp)`` for writers that want
  a file name (safetensors, ``torch.save``, matplotlib's ``savefig``).
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
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` atomically; return the path."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def file_mode() -> int:
    """The permission bits a newly created file normally gets: 0o666 minus the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask
