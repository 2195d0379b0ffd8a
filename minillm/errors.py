"""The exceptions minillm raises for a user's mistake (all chapters).

A user mistake (a bad setting, a missing or corrupt file, a checkpoint that
does not fit the model, a run folder that another run holds) raises one of
these, with a message that says what was wrong and how to fix it. The command
line (`minillm.cli`) prints them as `error: ...` and exits with status 2;
anything else is a bug and keeps its traceback.

Each one also derives from the built-in exception a Python programmer would
catch for it (`ValueError`, `FileNotFoundError`, ...), so `except ValueError`
keeps working in code written before this family existed.

    MinillmError
    ├── ConfigError(ValueError)            a setting that cannot work
    ├── DataError(ValueError)              text, tokens or a data set that cannot be used
    ├── CheckpointError(ValueError)        a checkpoint that is corrupt or does not match
    │   └── CheckpointNotFoundError(FileNotFoundError)
    ├── RunFolderError(FileExistsError)    a run folder in the way (not empty, or locked)
    ├── StorageError(OSError)              a write that failed (disk full, quota, permissions)
    └── LaunchError(RuntimeError)          a distributed run launched the wrong way
"""

from __future__ import annotations


class MinillmError(Exception):
    """Base class: a mistake the user can fix; the message says how."""


class ConfigError(MinillmError, ValueError):
    """A setting (of a config, a preset or a command) that cannot work."""


class DataError(MinillmError, ValueError):
    """Text, token ids or a data set that cannot be used (empty, too short, wrong format)."""


class CheckpointError(MinillmError, ValueError):
    """A checkpoint or model folder that is corrupt, incomplete, or holds another model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint (or model folder) where one was expected."""


class RunFolderError(MinillmError, FileExistsError):
    """A run folder that cannot be used as asked: not empty, or held by another live run."""


class StorageError(MinillmError, OSError):
    """A file could not be written (disk full, quota, permissions); what was saved before is intact."""


class LaunchError(MinillmError, RuntimeError):
    """A distributed run started the wrong way (e.g. `--strategy ddp` without `torchrun`)."""


__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "DataError",
    "LaunchError",
    "MinillmError",
    "RunFolderError",
    "StorageError",
]
