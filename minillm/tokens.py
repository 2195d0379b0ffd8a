"""Token ids on disk and in batches: shards, train/val split, sliding windows.

Chapter 02 (tokenization) teaches this module; chapter 05 (pretraining) feeds
its batches to the model.

A tokenized corpus is stored as flat binary shards, ``<prefix>_000000.bin``,
``<prefix>_000001.bin``, ..., each a little-endian array of ``uint16`` (when
the vocabulary fits, ``vocab_size <= 65536``) or ``uint32``, plus a JSON
sidecar ``<prefix>.json`` that records the format version, dtype, vocabulary
size, tokenizer and the number of tokens in each shard. Shards are read back
with ``np.memmap``: nothing is loaded until it is sliced.

A language model learns to predict token ``t+1`` from tokens ``<= t``, so a
training example is a window ``x = tokens[s : s+T]`` with targets
``y = tokens[s+1 : s+T+1]``, both of shape ``(T,)``; a batch stacks them to
``(B, T)``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from minillm.errors import DataError
from minillm.fileio import atomic_write, file_mode

SHARD_FORMAT = "minillm-token-shards"
SHARD_VERSION = 1


def shard_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids ``0 .. vocab_size-1`` (uint16 or uint32)."""
    if not isinstance(vocab_size, (int, np.integer)) or not 0 < vocab_size <= 2**32:
        raise DataError(f"vocab_size must be an int in 1..2**32, got {vocab_size!r}")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def _chunks(tokens: Any) -> Iterable[np.ndarray]:
    """Yield 1-D int64 arrays from an array, a tensor, ints, or sequences of ints."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 1:
            raise DataError(f"tokens must be 1-D, got shape {tokens.shape}")
        yield tokens.astype(np.int64, copy=False)
        return
    loose: list[int] = []
    for item in tokens:
        if isinstance(item, (int, np.integer)):
            loose.append(int(item))
            if len(loose) >= 1 << 16:
                yield np.asarray(loose, dtype=np.int64)
                loose = []
            continue
        if loose:
            yield np.asarray(loose, dtype=np.int64)
            loose = []
        yield np.asarray(item, dtype=np.int64).reshape(-1)
    if loose:
        yield np.asarray(loose, dtype=np.int64)


def write_shards(
    tokens: Any,
    out_dir: str | os.PathLike,
    vocab_size: int,
    shard_size: int = 100_000_000,
    tokenizer: str = "",
    prefix: str = "train",
) -> Path:
    """Write token ids to ``out_dir/<prefix>_NNNNNN.bin`` shards plus ``<prefix>.json``.

    ``tokens`` is a 1-D array or tensor, an iterable of ints, or an iterable of
    sequences of ints (e.g. the ``ids`` column of :func:`minillm.data.tokenize_dataset`),
    streamed so the corpus never needs to fit in memory. Each shard holds at
    most ``shard_size`` tokens. Every file is written atomically; the sidecar
    last. ``tokenizer`` is a free-text name stored in the sidecar. Returns the
    sidecar's path. Raises ValueError for ids outside ``0 .. vocab_size-1``.
    """
    dtype = shard_dtype(vocab_size)
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    if not prefix or "/" in prefix or os.sep in prefix:
        raise DataError(f"prefix must be a plain file-name stem like 'train', got {prefix!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    current: list[Any] = []  # [open temp file, temp path, tokens written] of the shard being filled

    def close_shard() -> None:
        fh, tmp, count = current
        fh.close()
        os.chmod(tmp, file_mode())
        name = f"{prefix}_{len(shards):06d}.bin"
        os.replace(tmp, out / name)  # a shard appears only once complete
        shards.append({"file": name, "num_tokens": count})
        current.clear()

    try:
        for chunk in _chunks(tokens):
            if chunk.size and (chunk.min() < 0 or chunk.max() >= vocab_size):
                bad = chunk[(chunk < 0) | (chunk >= vocab_size)][0]
                raise DataError(f"token id {bad} is outside 0..{vocab_size - 1}; "
                                 f"pass the tokenizer's vocab_size (it must exceed every id)")
            data, pos = chunk.astype(dtype), 0
            while pos < data.size:
                if not current:
                    fd, tmp = tempfile.mkstemp(prefix=f".{prefix}.", suffix=".part", dir=out)
                    current.extend([os.fdopen(fd, "wb"), tmp, 0])
                take = min(data.size - pos, shard_size - current[2])
                current[0].write(data[pos:pos + take].tobytes())
                current[2] += take
                pos += take
                if current[2] == shard_size:
                    close_shard()
        if current:
            close_shard()
    finally:
        if current:  # an error midway: drop the partial shard
            current[0].close()
            Path(current[1]).unlink(missing_ok=True)
    if not shards:
        raise DataError("no tokens to write: the token source is empty")
    meta = {
        "format": SHARD_FORMAT,
        "version": SHARD_VERSION,
        "dtype": dtype.name,
        "vocab_size": int(vocab_size),
        "tokenizer": tokenizer,
        "num_tokens": sum(s["num_tokens"] for s in shards),
        "shards": shards,
    }
    sidecar = out / f"{prefix}.json"
    atomic_write(sidecar, (json.dumps(meta, indent=1) + "\n").encode())
    return sidecar


class TokenShards:
    """Read-only view of sharded tokens as one 1-D sequence of length ``len(self)``.

    Indexing with an int returns one id; a slice (step 1) returns an ``np.ndarray``
    copied across shard boundaries when needed. ``memmaps`` holds one
    ``np.memmap`` per shard; ``meta`` is the sidecar's content.
    """

    def __init__(self, memmaps: Sequence[np.memmap], meta: dict[str, Any]):
        self.memmaps = list(memmaps)
        self.meta = meta
        self.vocab_size: int = meta["vocab_size"]
        self._starts = np.cumsum([0] + [len(m) for m in self.memmaps])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise DataError("TokenShards supports slices with step 1 only")
            pieces = []
            for i, m in enumerate(self.memmaps):
                lo, hi = max(start, self._starts[i]), min(stop, self._starts[i + 1])
                if lo < hi:
                    pieces.append(m[lo - self._starts[i]:hi - self._starts[i]])
            if len(pieces) == 1:
                return pieces[0]
            return np.concatenate(pieces) if pieces else np.empty(0, self.memmaps[0].dtype)
        i = int(index) + (len(self) if index < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"token index {index} out of range for {len(self)} tokens")
        shard = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.memmaps[shard][i - self._starts[shard]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return np.asarray(whole, dtype=dtype)


def read_shards(directory: str | os.PathLike, prefix: str = "train",
                vocab_size: int | None = None) -> TokenShards:
    """Open the shards written by :func:`write_shards` as a :class:`TokenShards`.

    The sidecar ``<prefix>.json`` is validated: format and version, dtype
    consistent with ``vocab_size``, every shard present with the recorded
    size. Pass ``vocab_size`` to also check it matches your tokenizer.
    """
    directory = Path(directory)
    sidecar = directory / f"{prefix}.json"
    if not sidecar.is_file():
        raise FileNotFoundError(f"no shard sidecar {sidecar}; write the shards with "
                                f"write_shards(..., prefix={prefix!r}) first")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{sidecar} is not valid JSON ({err}); rewrite the shards") from err
    if meta.get("format") != SHARD_FORMAT or meta.get("version") != SHARD_VERSION:
        raise DataError(f"{sidecar} is not a {SHARD_FORMAT} v{SHARD_VERSION} sidecar "
                         f"(format={meta.get('format')!r}, version={meta.get('version')!r})")
    dtype = shard_dtype(meta.get("vocab_size"))
    if meta.get("dtype") != dtype.name:
        raise DataError(f"{sidecar}: dtype {meta.get('dtype')!r} does not match vocab_size "
                         f"{meta['vocab_size']} (expected {dtype.name})")
    if vocab_size is not None and vocab_size != meta["vocab_size"]:
        raise DataError(f"{sidecar} was written for vocab_size {meta['vocab_size']} "
                         f"({meta.get('tokenizer') or 'unnamed tokenizer'}), not {vocab_size}")
    memmaps = []
    for shard in meta["shards"]:
        path = directory / shard["file"]
        expected = shard["num_tokens"] * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            found = path.stat().st_size if path.is_file() else "missing"
            raise DataError(f"shard {path} should have {expected} bytes, found {found}; "
                             f"the shards are incomplete: rewrite them")
        memmaps.append(np.memmap(path, dtype=dtype, mode="r"))
    if not memmaps:
        raise DataError(f"{sidecar} lists no shards (an empty corpus)")
    return TokenShards(memmaps, meta)


# ---------------------------------------------------------------------------
# Splits and batches
# ---------------------------------------------------------------------------


def split_tokens(tokens: Any, val_fraction: float = 0.1) -> tuple[Any, Any]:
    """Split a 1-D token sequence into (train, val): the first and last parts.

    A contiguous split (not a shuffle) keeps validation text unseen in
    training. Both parts are views/slices of ``tokens``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    n_val = int(round(len(tokens) * val_fraction))
    if n_val == 0 or n_val == len(tokens):
        raise DataError(f"{len(tokens)} tokens are too few to split with val_fraction={val_fraction}")
    cut = len(tokens) - n_val
    return tokens[:cut], tokens[cut:]


def _window(tokens: Any, start: int, length: int) -> torch.Tensor:
    piece = tokens[start:start + length]
    if isinstance(piece, torch.Tensor):
        return piece.to(torch.int64)
    return torch.from_numpy(np.asarray(piece).astype(np.int64))


def _check_lengths(tokens: Any, context_length: int) -> None:
    if isinstance(tokens, torch.Tensor) and tokens.dim() != 1:
        raise DataError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    if not isinstance(context_length, int) or context_length < 1:
        raise DataError(f"context_length must be a positive int, got {context_length!r}")
    if len(tokens) < context_length + 1:
        raise DataError(f"context_length {context_length} needs at least {context_length + 1} "
                         f"tokens (inputs plus one target), but there are only {len(tokens)}; "
                         f"use a shorter context or more data")


class SlidingWindowDataset(Dataset):
    """Next-token examples from a 1-D token sequence.

    Item ``i`` is ``(x, y)`` with ``x = tokens[i*stride : i*stride+T]`` and
    ``y = tokens[i*stride+1 : i*stride+T+1]``, int64 tensors of shape ``(T,)``
    where ``T = context_length``. ``stride`` defaults to ``T`` (no overlap);
    a smaller stride overlaps windows. There are
    ``(len(tokens) - T - 1) // stride + 1`` windows. ``tokens`` may be a numpy
    array or memmap, a :class:`TokenShards`, a tensor or a list.
    """

    def __init__(self, tokens: Any, context_length: int, stride: int | None = None):
        if isinstance(tokens, list):
            tokens = np.asarray(tokens, dtype=np.int64)
        _check_lengths(tokens, context_length)
        stride = context_length if stride is None else stride
        if not isinstance(stride, int) or stride < 1:
            raise DataError(f"stride must be a positive int, got {stride!r}")
        self.tokens, self.context_length, self.stride = tokens, context_length, stride

    def __len__(self) -> int:
        return (len(self.tokens) - self.context_length - 1) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        start = (i % len(self)) * self.stride
        xy = _window(self.tokens, start, self.context_length + 1)  # (T+1,)
        return xy[:-1], xy[1:]


def make_dataloader(tokens: Any, batch_size: int, context_length: int, stride: int | None = None,
                    shuffle: bool = True, drop_last: bool = True, seed: int = 0,
                    num_workers: int = 0) -> DataLoader:
    """A ``DataLoader`` over :class:`SlidingWindowDataset` yielding ``(x, y)`` of shape ``(B, T)``.

    Shuffling is reproducible: the order comes from a generator seeded with ``seed``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
    dataset = SlidingWindowDataset(tokens, context_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise DataError(f"only {len(dataset)} windows for batch_size {batch_size} with drop_last=True: "
                         f"every batch would be dropped; use a smaller batch or stride")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=generator, num_workers=num_workers)


def get_batch(tokens: Any, batch_size: int, context_length: int, device: str | torch.device = "cpu",
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch ``(x, y)``, each ``(B, T)`` int64 on ``device``; ``y`` is ``x`` shifted by one.

    Window starts are drawn uniformly from ``0 .. len(tokens)-T-1`` with
    ``generator`` (pass a seeded one for reproducible batches). On CUDA the
    batch goes through pinned memory with a non-blocking copy.
    """
    if isinstance(tokens, list):
        tokens = np.asarray(tokens, dtype=np.int64)
    _check_lengths(tokens, context_length)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
    starts = torch.randint(len(tokens) - context_length, (batch_size,), generator=generator)
    xy = torch.stack([_window(tokens, int(s), context_length + 1) for s in starts])  # (B, T+1)
    x, y = xy[:, :-1], xy[:, 1:]
    device = torch.device(device)
    if device.type == "cuda":
        return (x.pin_memory().to(device, non_blocking=True),
                y.pin_memory().to(device, non_blocking=True))
    return x.to(device), y.to(device)
