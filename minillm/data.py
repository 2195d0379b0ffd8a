"""Named data sets: where they come from, how to fetch them safely, how to load them.

Chapter 01 (data) and chapter 02 (tokenization) teach this module; every later
chapter gets its text, fine-tuning data and benchmarks through it.

The registry (``minillm/registry.json``) knows each data set the book uses by
name: description, license, homepage and, per file, the relative path, the
canonical URL and the sha256 of the reference bytes. :func:`download` makes
every file of a set present and verified and returns the set's directory,
looking in this order:

1. the read-only mirror ``$MINILLM_DATA_DIR/<name>/`` (never written to),
2. the cache ``$MINILLM_CACHE_DIR/<name>/`` (default ``~/.cache/minillm``),
3. the network: each file is streamed to a temporary file while its sha256 is
   computed, and moved into the cache only when the hash matches.

Files already present are used without touching the network. :func:`load`
turns a set into Hugging Face ``datasets`` objects with natural split and
column names; :func:`read_text` returns single-text corpora as one string.
``python-stdlib`` is the embedded corpus that needs no download: the source
files of the running Python's standard library.

Token shards and batching live next door in :mod:`minillm.tokens`.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import gzip
import hashlib
import json
import logging
import os
import sysconfig
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

from minillm.errors import DataError
from minillm.fileio import atomic_write, file_mode

MIRROR_ENV = "MINILLM_DATA_DIR"
CACHE_ENV = "MINILLM_CACHE_DIR"
STDLIB = "python-stdlib"
# Folder names left out of the python-stdlib corpus: test suites (large, full of
# deliberately odd code) and third-party packages installed into the stdlib tree.
STDLIB_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
# read_text("python-stdlib") puts this line before each file's source.
STDLIB_FILE_HEADER = "# ==== file: {path} ====\n"


class DownloadError(OSError):
    """A file could not be fetched (offline, HTTP error, broken archive)."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the registry's reference hash."""


class UnverifiedDownloadWarning(UserWarning):
    """A downloaded file was kept although it could not be checked against a hash."""


@dataclass(frozen=True)
class FileSpec:
    """One file of a data set.

    ``path`` is relative to the set's directory. ``url`` is where the bytes come
    from; when ``member`` is set, ``url`` is an archive (.zip, .tar, .tar.gz)
    and the file is that member of it. ``sha256`` is the hash of the reference
    bytes. ``source_differs`` marks a reference file that was rebuilt and is
    not byte-identical to ``url``: a download of it cannot be verified.
    """

    path: str
    url: str
    sha256: str
    member: str | None = None
    source_differs: bool = False
    note: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """A named data set: metadata plus its files."""

    name: str
    description: str
    license: str
    homepage: str
    files: tuple[FileSpec, ...]


def _read_registry() -> dict[str, DatasetSpec]:
    raw = json.loads(resources.files("minillm").joinpath("registry.json").read_text("utf-8"))
    return {
        name: DatasetSpec(
            name=name,
            description=d["description"],
            license=d["license"],
            homepage=d["homepage"],
            files=tuple(FileSpec(**f) for f in d["files"]),
        )
        for name, d in raw["datasets"].items()
    }


REGISTRY: dict[str, DatasetSpec] = _read_registry()
"""Every downloadable data set by name (python-stdlib is separate: it is local)."""


def names() -> list[str]:
    """All data set names :func:`download` accepts, sorted (python-stdlib included)."""
    return sorted([*REGISTRY, STDLIB])


def get_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``; a ValueError lists the known names otherwise."""
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(str(name), names(), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise DataError(f"unknown data set {name!r}.{hint} Known data sets: {', '.join(names())}.")


def mirror_dir() -> Path | None:
    """The read-only mirror ``$MINILLM_DATA_DIR``, or None when the variable is unset."""
    value = os.environ.get(MIRROR_ENV)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """The download cache: ``$MINILLM_CACHE_DIR``, default ``~/.cache/minillm``."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "minillm"


# ---------------------------------------------------------------------------
# Hashing and fetching
# ---------------------------------------------------------------------------

_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file, memoized per process by (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def _stream_to_temp(src: Any, dest: Path, desc: str, total: int | None = None) -> tuple[Path, str]:
    """Copy a binary stream into a temp file next to ``dest``; return (temp path, sha256)."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=desc, disable=None, leave=False
        ) as bar:
            for block in iter(lambda: src.read(1 << 20), b""):
                out.write(block)
                h.update(block)
                bar.update(len(block))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.chmod(tmp, file_mode())
    return Path(tmp), h.hexdigest()


def _fetch(url: str, dest: Path) -> tuple[Path, str]:
    """Download ``url`` into a temp file beside ``dest``; return (temp path, sha256)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            length = response.headers.get("Content-Length") if response.headers else None
            return _stream_to_temp(response, dest, dest.name, int(length) if length else None)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DownloadError(
            f"could not download {url} to {dest}: {err}. If this machine is offline, copy the "
            f"file there by hand, or point {MIRROR_ENV} at a directory laid out as "
            f"<dir>/<data set>/<file> (e.g. an offline mirror of the book's data)."
        ) from err


def _install(tmp: Path, dest: Path, f: FileSpec, digest: str, origin: str, unverified: dict) -> None:
    """Move a fetched temp file into place if its hash is right; never leave bad bytes."""
    if digest != f.sha256:
        if not f.source_differs:
            tmp.unlink(missing_ok=True)
            raise ChecksumError(
                f"checksum mismatch for {origin} (destined for {dest}): expected sha256 "
                f"{f.sha256}, got {digest}. Nothing was kept; the source may have changed "
                f"or the transfer was corrupted. Try again, or report the new hash."
            )
        warnings.warn(
            f"{dest.name}: the downloaded bytes from {origin} (sha256 {digest}) cannot be "
            f"verified: the registry's hash {f.sha256} is of a rebuilt reference copy. "
            f"{f.note} Kept as downloaded.",
            UnverifiedDownloadWarning,
            stacklevel=4,
        )
        unverified[f.path] = digest
    os.replace(tmp, dest)


def _open_member(archive: Path, member: str) -> Any:
    """An open binary stream of one archive member (zip or tar, by file name)."""
    if archive.name.endswith(".zip"):
        zf = zipfile.ZipFile(archive)
        return zf.open(member)
    tf = tarfile.open(archive)
    stream = tf.extractfile(member)
    if stream is None:
        raise KeyError(member)
    return stream


def _archive_path(url: str) -> Path:
    stem = hashlib.sha1(url.encode()).hexdigest()[:10]
    return cache_dir() / "_archives" / f"{stem}-{url.rsplit('/', 1)[-1].replace('+', '_')}"


def _fetch_archive(url: str) -> Path:
    """The archive at ``url``, downloaded once into ``<cache>/_archives/`` and kept.

    Archives have no reference hash here (only their extracted members do), so
    what is checked is each member, when it is extracted.
    """
    path = _archive_path(url)
    if not path.is_file():
        tmp, _ = _fetch(url, path)
        os.replace(tmp, path)
    return path


def _unverified_record(root: Path) -> Path:
    return root / ".unverified-sha256.json"


def _cached_ok(path: Path, f: FileSpec, unverified: dict[str, str]) -> bool:
    """Whether a cached file has the reference hash (or its recorded unverified one)."""
    digest = sha256_file(path)
    if digest == f.sha256:
        return True
    if f.source_differs and unverified.get(f.path) == digest:
        warnings.warn(
            f"{path} is an unverified download (sha256 {digest}); {f.note}",
            UnverifiedDownloadWarning,
            stacklevel=3,
        )
        return True
    warnings.warn(f"{path} is corrupt (sha256 {digest}, expected {f.sha256}); fetching it again")
    path.unlink()
    return False


def download(name: str) -> Path:
    """Make every file of data set ``name`` present and verified; return its directory.

    Looks in the mirror ``$MINILLM_DATA_DIR/<name>`` first (read-only; used when
    it holds every file), then in the cache ``$MINILLM_CACHE_DIR/<name>``, and
    downloads only the files missing there. No network access happens when the
    files are present. ``python-stdlib`` returns the standard library's folder.

    Raises:
        ValueError: unknown name (the message lists the known ones).
        ChecksumError: a file's sha256 differs from the registry's.
        DownloadError: a file is missing and could not be fetched.
    """
    if name == STDLIB:
        return stdlib_dir()
    spec = get_spec(name)
    mirror = mirror_dir()
    if mirror is not None and all((mirror / name / f.path).is_file() for f in spec.files):
        for f in spec.files:
            digest = sha256_file(mirror / name / f.path)
            if digest != f.sha256:
                raise ChecksumError(
                    f"{mirror / name / f.path} in the read-only mirror {MIRROR_ENV}={mirror} has "
                    f"sha256 {digest}, expected {f.sha256}. Repair the mirror, or unset "
                    f"{MIRROR_ENV} to download into the cache instead."
                )
        return mirror / name

    root = cache_dir() / name
    record = _unverified_record(root)
    unverified = json.loads(record.read_text()) if record.is_file() else {}
    missing = [
        f for f in spec.files if not ((root / f.path).is_file() and _cached_ok(root / f.path, f, unverified))
    ]
    for f in missing:
        dest = root / f.path
        if f.member is None:
            tmp, digest = _fetch(f.url, dest)
            _install(tmp, dest, f, digest, f.url, unverified)
            continue
        archive = _fetch_archive(f.url)
        origin = f"member {f.member!r} of {f.url}"
        try:
            with _open_member(archive, f.member) as src:
                tmp, digest = _stream_to_temp(src, dest, dest.name)
        except (KeyError, zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
            archive.unlink(missing_ok=True)  # likely truncated: fetch afresh next time
            raise DownloadError(f"could not extract {origin} into {dest}: {err}") from err
        try:
            _install(tmp, dest, f, digest, origin, unverified)
        except ChecksumError:
            archive.unlink(missing_ok=True)
            raise
    if unverified:
        atomic_write(record, json.dumps(unverified, indent=1))
    return root


# ---------------------------------------------------------------------------
# The embedded corpus: the Python standard library
# ---------------------------------------------------------------------------


def data_file(name: str, path: str | os.PathLike | None, relative: str) -> Path:
    """The file a loader reads: `path` if the user gave one (it must exist), else `relative` in `download(name)`."""
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; pass the {name} file laid out as in the data mirror")
        return path
    return download(name) / relative


def jsonl_objects(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-empty line of a JSON Lines file (gzipped when it ends in .gz; a BOM is
    skipped). A line that is not a JSON object raises a DataError naming the file and the line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8-sig") as fh:
            for number, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: line {number}: invalid JSON ({err.msg} at column {err.colno})") from None
                except (ValueError, RecursionError) as err:  # a number of over 4300 digits, arrays nested too deep
                    raise DataError(f"{path}: line {number}: unreadable JSON ({err})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
                yield number, row
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise DataError(f"{path}: not readable as UTF-8 JSON Lines ({err})") from None


def stdlib_dir() -> Path:
    """The running interpreter's standard-library folder (``sysconfig`` "stdlib")."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Sorted relative paths of the stdlib's ``*.py`` files, without test folders.

    Folders named in :data:`STDLIB_EXCLUDED_DIRS` (``test``, ``tests``,
    ``idle_test``, ``site-packages``, ...) are skipped at any depth.
    """
    root = Path(root) if root is not None else stdlib_dir()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS]
        rel = Path(dirpath).relative_to(root)
        found.extend(rel / fn for fn in filenames if fn.endswith(".py"))
    return sorted(found, key=lambda p: p.as_posix())


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not valid UTF-8 ({err}); re-download or fix the file") from err


# ---------------------------------------------------------------------------
# Text corpora and Hugging Face datasets
# ---------------------------------------------------------------------------

_TEXT_FILES = {"tinyshakespeare": "input.txt", "the-verdict": "the-verdict.txt"}
_WIKITEXT_SPLITS = {"validation": "valid.txt", "test": "test.txt"}


def read_text(name: str, split: str | None = None) -> str:
    """A single-text corpus as one string.

    ``tinyshakespeare`` and ``the-verdict`` are one file each; ``wikitext-2``
    needs ``split="validation"`` or ``"test"``; ``python-stdlib`` joins every
    file of :func:`stdlib_files`, each preceded by
    ``STDLIB_FILE_HEADER.format(path=...)`` (``# ==== file: json/__init__.py ====``).
    """
    if name == STDLIB:
        root = stdlib_dir()
        return "".join(
            STDLIB_FILE_HEADER.format(path=rel.as_posix()) + _read_utf8(root / rel)
            for rel in stdlib_files(root)
        )
    if name == "wikitext-2":
        if split not in _WIKITEXT_SPLITS:
            raise DataError(f"read_text('wikitext-2') needs split= one of {sorted(_WIKITEXT_SPLITS)}")
        return _read_utf8(download(name) / _WIKITEXT_SPLITS[split])
    if name not in _TEXT_FILES:
        get_spec(name)  # unknown names get the helpful error
        raise DataError(
            f"{name!r} is not a single-text corpus; use load({name!r}) for its rows. "
            f"read_text knows {sorted([*_TEXT_FILES, 'wikitext-2', STDLIB])}."
        )
    if split is not None:
        raise DataError(f"{name!r} has a single text; drop split={split!r}")
    return _read_utf8(download(name) / _TEXT_FILES[name])


_MMLU_COLUMNS = ["question", "A", "B", "C", "D", "answer"]
MBPP_TASK_IDS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}


def _one(split: str, *files: str) -> Callable[[Path, str | None], dict[str, list[str]]]:
    return lambda root, subset: {split: [str(root / f) for f in files]}


def _choose(subset: str | None, choices: list[str], name: str, default: str | None = None) -> str:
    subset = subset if subset is not None else default
    if subset not in choices:
        raise DataError(f"load({name!r}) needs subset= one of {choices}, got {subset!r}")
    return subset


def _arc(root: Path, subset: str | None) -> dict[str, list[str]]:
    s = _choose(subset, ["ARC-Easy", "ARC-Challenge"], "arc")
    parts = {"train": "Train", "validation": "Dev", "test": "Test"}
    return {split: [str(root / s / f"{s}-{p}.jsonl")] for split, p in parts.items()}


def _mmlu(root: Path, subset: str | None) -> dict[str, list[str]]:
    pattern = "*" if subset is None else subset
    files = {sp: sorted(map(str, (root / d).glob(f"{pattern}_{d}.csv")))
             for sp, d in {"dev": "dev", "validation": "val", "test": "test"}.items()}
    if not files["test"]:
        subjects = sorted(p.name[: -len("_test.csv")] for p in (root / "test").glob("*_test.csv"))
        raise DataError(f"unknown MMLU subject {subset!r}; choose one of {subjects} or None for all")
    return files


def _truthfulqa(root: Path, subset: str | None) -> dict[str, list[str]]:
    s = _choose(subset, ["2021", "v2025-01"], "truthfulqa", default="2021")
    return {"validation": [str(root / ("TruthfulQA.csv" if s == "2021" else f"TruthfulQA_{s}.csv"))]}


# name -> (builder, files-by-split function, builder options)
_RECIPES: dict[str, tuple[str, Callable[[Path, str | None], dict[str, list[str]]], dict[str, Any]]] = {
    "tinyshakespeare": ("text", _one("train", "input.txt"), {}),
    "the-verdict": ("text", _one("train", "the-verdict.txt"), {}),
    "wikitext-2": ("text", lambda r, s: {sp: [str(r / f)] for sp, f in _WIKITEXT_SPLITS.items()}, {}),
    "sms_spam_collection": ("csv", _one("train", "SMSSpamCollection.tsv"),
                            {"delimiter": "\t", "column_names": ["label", "text"], "quoting": csv.QUOTE_NONE}),
    "instruction": ("json", _one("train", "instruction-data.json"), {}),
    "hellaswag": ("json", _one("validation", "hellaswag_val.jsonl"), {}),
    "arc": ("json", _arc, {}),
    "mmlu": ("csv", _mmlu, {"column_names": _MMLU_COLUMNS}),
    "truthfulqa": ("csv", _truthfulqa, {"encoding": "utf-8-sig"}),
    "humaneval": ("json", _one("test", "HumanEval.jsonl.gz"), {}),
    "mbpp": ("json", _one("full", "mbpp.jsonl"), {}),
}


@contextlib.contextmanager
def datasets_progress(enabled: bool) -> Iterator[None]:
    """Show (or hide) ``datasets``' progress bars inside the block; hidden also means its INFO and
    WARNING log messages are. Both settings are put back afterwards."""
    import datasets

    bars, level = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    if not enabled:
        datasets.logging.set_verbosity(max(level, logging.ERROR))
    try:
        yield
    finally:
        (datasets.enable_progress_bars if bars else datasets.disable_progress_bars)()
        datasets.logging.set_verbosity(level)


def load(name: str, split: str | None = None, subset: str | None = None, progress: bool = False,
         **kwargs: Any):
    """Load data set ``name`` as a ``datasets.DatasetDict`` (or one ``Dataset`` with ``split=``).

    Built with ``datasets.load_dataset("text" | "json" | "csv", data_files=...)``
    on the files :func:`download` returns; ``kwargs`` go to ``load_dataset``
    (e.g. ``cache_dir``, ``num_proc``). ``datasets`` builds an Arrow copy of the files
    the first time (a second or so here) and reuses it after; its progress bars and log
    messages for that stay hidden unless ``progress=True``, so a first call prints what
    any later call prints. Splits and columns:

    - ``tinyshakespeare``, ``the-verdict``: ``train``, one row per line, ``text``.
    - ``wikitext-2``: ``validation``, ``test``; ``text`` lines.
    - ``python-stdlib``: ``train``, one row per source file, ``text``.
    - ``sms_spam_collection``: ``train``; ``label`` ("ham"/"spam"), ``text``.
    - ``instruction``: ``train``; ``instruction``, ``input``, ``output``.
    - ``hellaswag``: ``validation``; ``ind, activity_label, ctx, endings, label, split``.
    - ``arc`` (``subset="ARC-Easy"`` or ``"ARC-Challenge"``): ``train``, ``validation``,
      ``test``; ``id``, ``question`` {stem, choices}, ``answerKey``.
    - ``mmlu`` (``subset=`` a subject, default all 57): ``dev``, ``validation``,
      ``test``; ``question, A, B, C, D, answer, subject``.
    - ``truthfulqa`` (``subset="2021"`` default, or ``"v2025-01"``): ``validation``.
    - ``humaneval``: ``test``. ``mbpp``: ``prompt``, ``test``, ``validation``,
      ``train`` by task_id (1-10, 11-510, 511-600, 601-974, as in the MBPP paper).
    """
    import datasets

    if name == STDLIB:
        root = stdlib_dir()
        builder, files, options = "text", {"train": [str(root / p) for p in stdlib_files(root)]}, {
            "sample_by": "document"}
    elif name in _RECIPES:
        builder, files_fn, options = _RECIPES[name]
        if subset is not None and name not in ("arc", "mmlu", "truthfulqa"):
            raise DataError(f"{name!r} has no subsets; drop subset={subset!r}")
        files = files_fn(download(name), subset)
    else:
        get_spec(name)
        raise DataError(f"{name!r} is not a table of examples; use download({name!r}) for its files")
    if builder == "csv":  # text stays text: no "None"/"NA" turned into missing values
        options = {**options, "keep_default_na": False}
        if "column_names" in options:  # keep answers like "1" as strings
            options["features"] = datasets.Features({c: datasets.Value("string") for c in options["column_names"]})
    with datasets_progress(progress):
        ds = datasets.load_dataset(builder, data_files=files, **options, **kwargs)
        if name == "mmlu":
            ds = datasets.DatasetDict({sp: _with_subjects(ds[sp], files[sp]) for sp in ds})
        if name == "mbpp":
            full = ds["full"]
            ds = datasets.DatasetDict({sp: full.filter(lambda r, lo=lo, hi=hi: lo <= r["task_id"] <= hi)
                                       for sp, (lo, hi) in MBPP_TASK_IDS.items()})
    if split is None:
        return ds
    if split not in ds:
        raise DataError(f"{name!r} has splits {list(ds)}, not {split!r}")
    return ds[split]


def _with_subjects(ds, files: list[str]):
    """Add MMLU's ``subject`` column: the file name of each row, by rows per file."""
    subjects: list[str] = []
    for f in files:
        with open(f, newline="", encoding="utf-8") as fh:
            n = sum(1 for _ in csv.reader(fh))
        subjects += [Path(f).name.rsplit("_", 1)[0]] * n
    if len(subjects) != len(ds):
        raise RuntimeError(f"MMLU rows ({len(ds)}) do not match the files' row counts ({len(subjects)})")
    return ds.add_column("subject", subjects)


def tokenize_dataset(ds, tokenizer: Any, column: str = "text", *, num_proc: int | None = None,
                     eot_token: int | None = None):
    """Map ``tokenizer.encode`` over a text column with ``datasets.map``.

    ``tokenizer`` is any object with ``encode(str) -> list[int]`` (a
    ``minillm`` tokenizer, a ``tiktoken`` encoding, ...). Returns the same kind
    of object (``Dataset`` or ``DatasetDict``) with columns ``ids`` (the token
    ids, plus ``eot_token`` at the end when given) and ``num_tokens``; the
    original columns are dropped. ``num_proc`` worker processes share the work.
    """
    import datasets

    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer must have an encode(str) -> list[int] method, got {type(tokenizer)}")
    if isinstance(ds, datasets.DatasetDict):
        return datasets.DatasetDict({k: tokenize_dataset(v, tokenizer, column, num_proc=num_proc,
                                                         eot_token=eot_token) for k, v in ds.items()})
    if column not in ds.column_names:
        raise DataError(f"column {column!r} not in the dataset; its columns are {ds.column_names}")
    tail = [] if eot_token is None else [int(eot_token)]

    def encode(row: dict) -> dict:
        ids = list(tokenizer.encode(row[column])) + tail
        return {"ids": ids, "num_tokens": len(ids)}

    return ds.map(encode, remove_columns=ds.column_names, num_proc=num_proc, desc="tokenize")
