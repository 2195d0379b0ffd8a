"""Tests for minillm.data (registry, download, load) and minillm.tokens (shards, batches)."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from minillm import data, tokens
from minillm.data import ChecksumError, DatasetSpec, DownloadError, FileSpec, UnverifiedDownloadWarning

MIRROR = Path(os.environ.get("MINILLM_DATA_DIR", "")) if os.environ.get("MINILLM_DATA_DIR") else None
needs_mirror = pytest.mark.skipif(
    MIRROR is None or not (MIRROR / "SHA256SUMS").is_file(), reason="needs the offline data mirror"
)


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def offline(monkeypatch):
    """Make every network call fail loudly; returns the list of attempted URLs."""
    calls = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network disabled in this test")

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    return calls


@pytest.fixture
def counting(monkeypatch):
    """Let urlopen work (for file:// URLs) but record every call."""
    calls = []
    real = urllib.request.urlopen

    def wrapped(url, *args, **kwargs):
        calls.append(url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", wrapped)
    return calls


@pytest.fixture
def no_mirror(tmp_path, monkeypatch):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    monkeypatch.setenv("MINILLM_DATA_DIR", str(empty))
    return empty


def toy_spec(monkeypatch, files: list[FileSpec], name: str = "toy") -> str:
    spec = DatasetSpec(name=name, description="toy", license="none", homepage="-", files=tuple(files))
    monkeypatch.setitem(data.REGISTRY, name, spec)
    return name


# --- registry ---------------------------------------------------------------


@needs_mirror
def test_registry_matches_sha256sums_exactly():
    reference = {}
    for line in (MIRROR / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        path = path.strip().removeprefix("./")
        # tiktoken-cache/ holds the gpt2 files again under tiktoken's cache names
        # (sha1 of the URL): a cache for tiktoken, not a data set of the book.
        if not path.startswith("tiktoken-cache/"):
            reference[path] = digest
    ours = {f"{name}/{f.path}": f.sha256 for name, spec in data.REGISTRY.items() for f in spec.files}
    assert ours == reference
    for spec in data.REGISTRY.values():
        assert spec.description and spec.license and spec.homepage.startswith("https://")
        for f in spec.files:
            assert f.url.startswith("https://")


@needs_mirror
def test_tiktoken_cache_files_are_copies_of_gpt2_files():
    gpt2 = {f.sha256 for f in data.REGISTRY["gpt2"].files}
    cached = [sha((p).read_bytes()) for p in (MIRROR / "tiktoken-cache").iterdir()]
    assert len(cached) == 3 and set(cached) == gpt2


def test_archive_members_are_named_for_the_known_archives():
    sms = {f.path: f.member for f in data.REGISTRY["sms_spam_collection"].files}
    assert sms["SMSSpamCollection.tsv"] == "SMSSpamCollection"
    arc = {f.path: f for f in data.REGISTRY["arc"].files}
    assert arc["ARC-Easy/ARC-Easy-Test.jsonl"].member == "ARC-V1-Feb2018-2/ARC-Easy/ARC-Easy-Test.jsonl"
    mmlu = {f.path: f for f in data.REGISTRY["mmlu"].files}
    assert mmlu["test/anatomy_test.csv"].url == "https://people.eecs.berkeley.edu/~hendrycks/data.tar"
    assert mmlu["test/anatomy_test.csv"].member == "data/test/anatomy_test.csv"
    (hella,) = data.REGISTRY["hellaswag"].files
    assert hella.source_differs and "rebuilt" in hella.note


def test_unknown_name_lists_names_and_suggests():
    with pytest.raises(ValueError) as err:
        data.download("tinyshakespear")
    msg = str(err.value)
    assert "'tinyshakespeare'" in msg and "mmlu" in msg and "python-stdlib" in msg
    assert "python-stdlib" in data.names() and "gpt2" in data.names()


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("MINILLM_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / ".cache" / "minillm"
    monkeypatch.setenv("MINILLM_CACHE_DIR", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"


def test_sha256_file_matches_hashlib(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert data.sha256_file(p) == hashlib.sha256(b"abc" * 1000).hexdigest()
    p.write_bytes(b"changed, and longer than before")  # new size: memo must not return the old hash
    assert data.sha256_file(p) == hashlib.sha256(b"changed, and longer than before").hexdigest()


# --- download ---------------------------------------------------------------


@needs_mirror
def test_download_from_mirror_makes_no_network_call(offline, cache_dir):
    for name in data.REGISTRY:
        assert data.download(name) == MIRROR / name
    assert offline == []
    assert not cache_dir.exists()  # nothing copied


def test_download_into_empty_cache_then_reuses_it(tmp_path, cache_dir, no_mirror, counting, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello\n")
    (src / "b.txt").write_bytes(b"world\n")
    name = toy_spec(monkeypatch, [
        FileSpec("a.txt", (src / "a.txt").as_uri(), sha(b"hello\n")),
        FileSpec("sub/b.txt", (src / "b.txt").as_uri(), sha(b"world\n")),
    ])
    root = data.download(name)
    assert root == cache_dir / name
    assert (root / "a.txt").read_bytes() == b"hello\n" and (root / "sub/b.txt").read_bytes() == b"world\n"
    assert len(counting) == 2
    assert data.download(name) == root
    assert len(counting) == 2  # second call: no network


def test_corrupt_cache_file_is_fetched_again(tmp_path, cache_dir, no_mirror, counting, monkeypatch):
    (tmp_path / "a.txt").write_bytes(b"good")
    name = toy_spec(monkeypatch, [FileSpec("a.txt", (tmp_path / "a.txt").as_uri(), sha(b"good"))])
    root = data.download(name)
    (root / "a.txt").write_bytes(b"bad!")
    with pytest.warns(UserWarning, match="corrupt"):
        data.download(name)
    assert (root / "a.txt").read_bytes() == b"good" and len(counting) == 2


def test_checksum_mismatch_names_both_hashes_and_keeps_nothing(tmp_path, cache_dir, no_mirror, monkeypatch):
    (tmp_path / "a.txt").write_bytes(b"tampered")
    expected = sha(b"original")
    name = toy_spec(monkeypatch, [FileSpec("a.txt", (tmp_path / "a.txt").as_uri(), expected)])
    with pytest.raises(ChecksumError) as err:
        data.download(name)
    assert expected in str(err.value) and sha(b"tampered") in str(err.value)
    leftovers = [p for p in cache_dir.rglob("*") if p.is_file()] if cache_dir.exists() else []
    assert leftovers == []


def test_missing_and_offline_names_url_and_path(cache_dir, no_mirror, offline):
    with pytest.raises(DownloadError) as err:
        data.download("tinyshakespeare")
    msg = str(err.value)
    assert "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt" in msg
    assert str(cache_dir / "tinyshakespeare" / "input.txt") in msg and "MINILLM_DATA_DIR" in msg
    assert [p for p in cache_dir.rglob("*") if p.is_file()] == []


def test_corrupt_mirror_file_is_an_error(tmp_path, cache_dir, offline, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "toy").mkdir(parents=True)
    (mirror / "toy" / "a.txt").write_bytes(b"not what the registry says")
    monkeypatch.setenv("MINILLM_DATA_DIR", str(mirror))
    toy_spec(monkeypatch, [FileSpec("a.txt", "https://example.invalid/a.txt", sha(b"x"))])
    with pytest.raises(ChecksumError, match=sha(b"x")):
        data.download("toy")
    assert offline == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_members_are_extracted_and_verified(tmp_path, cache_dir, no_mirror, counting, monkeypatch, kind):
    members = {"pkg-1/x/data.csv": b"a,b\n1,2\n", "pkg-1/readme": b"read me\n"}
    archive = tmp_path / f"bundle.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for m, b in members.items():
                zf.writestr(m, b)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for m, b in members.items():
                info = tarfile.TarInfo(m)
                info.size = len(b)
                tf.addfile(info, io.BytesIO(b))
    url = archive.as_uri()
    name = toy_spec(monkeypatch, [
        FileSpec("x/data.csv", url, sha(members["pkg-1/x/data.csv"]), member="pkg-1/x/data.csv"),
        FileSpec("README", url, sha(members["pkg-1/readme"]), member="pkg-1/readme"),
    ])
    root = data.download(name)
    assert (root / "x/data.csv").read_bytes() == members["pkg-1/x/data.csv"]
    assert (root / "README").read_bytes() == members["pkg-1/readme"]
    assert counting == [url]  # the archive is fetched once for both members
    data.download(name)
    assert counting == [url]


def test_archive_member_with_wrong_hash_is_rejected(tmp_path, cache_dir, no_mirror, monkeypatch):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("m.txt", b"changed upstream")
    name = toy_spec(monkeypatch, [FileSpec("m.txt", archive.as_uri(), sha(b"old"), member="m.txt")])
    with pytest.raises(ChecksumError, match=sha(b"changed upstream")):
        data.download(name)
    assert not (cache_dir / name / "m.txt").exists()


def test_source_that_differs_from_reference_is_kept_with_a_warning(tmp_path, cache_dir, no_mirror, monkeypatch):
    (tmp_path / "raw.jsonl").write_bytes(b'{"raw": 1}\n')
    name = toy_spec(monkeypatch, [FileSpec("v.jsonl", (tmp_path / "raw.jsonl").as_uri(), sha(b"rebuilt"),
                                           source_differs=True, note="rebuilt copy")])
    with pytest.warns(UnverifiedDownloadWarning, match=sha(b'{"raw": 1}\n')):
        root = data.download(name)
    assert (root / "v.jsonl").read_bytes() == b'{"raw": 1}\n'
    with pytest.warns(UnverifiedDownloadWarning):  # still flagged on every later use
        data.download(name)


# --- load / read_text --------------------------------------------------------


@needs_mirror
def test_load_row_counts_from_mirror(offline, tmp_path):
    hf = {"cache_dir": str(tmp_path / "hf")}
    sms = data.load("sms_spam_collection", split="train", **hf)
    assert sms.column_names == ["label", "text"] and len(sms) == 5574
    assert collections.Counter(sms["label"]) == {"ham": 4827, "spam": 747}
    assert len(data.load("instruction", split="train", **hf)) == 1100
    assert len(data.load("hellaswag", split="validation", **hf)) == 10042
    assert len(data.load("arc", subset="ARC-Easy", split="test", **hf)) == 2376
    assert len(data.load("arc", subset="ARC-Challenge", split="test", **hf)) == 1172
    mmlu = data.load("mmlu", **hf)
    assert {k: len(v) for k, v in mmlu.items()} == {"dev": 285, "validation": 1531, "test": 14042}
    assert mmlu["test"].column_names == ["question", "A", "B", "C", "D", "answer", "subject"]
    assert len(set(mmlu["test"]["subject"])) == 57 and set(mmlu["test"]["answer"]) == set("ABCD")
    assert collections.Counter(mmlu["dev"]["subject"])["anatomy"] == 5
    anatomy = data.load("mmlu", subset="anatomy", split="test", **hf)
    assert set(anatomy["subject"]) == {"anatomy"}
    assert anatomy["question"] == [q for q, s in zip(mmlu["test"]["question"], mmlu["test"]["subject"])
                                   if s == "anatomy"]
    assert len(data.load("truthfulqa", split="validation", **hf)) == 817
    assert len(data.load("truthfulqa", subset="v2025-01", split="validation", **hf)) == 790
    assert len(data.load("humaneval", split="test", **hf)) == 164
    mbpp = data.load("mbpp", **hf)
    assert {k: len(v) for k, v in mbpp.items()} == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    assert offline == []


@needs_mirror
def test_first_load_prints_what_a_cached_one_prints(tmp_path, capfd):
    # A notebook's output must not depend on whether `datasets` already built its Arrow copy:
    # a fresh CI machine built it inside a notebook cell, printed progress bars on stderr, and
    # the cell's output no longer matched the committed one.
    import datasets

    bars = datasets.is_progress_bar_enabled()
    for _ in range(2):  # a cold cache, then a warm one
        data.load("mbpp", cache_dir=str(tmp_path / "hf"))  # a build and a filter: both show bars
        assert capfd.readouterr() == ("", "")
    assert datasets.is_progress_bar_enabled() == bars  # the caller's setting is put back
    data.load("sms_spam_collection", cache_dir=str(tmp_path / "hf2"), progress=True)
    assert "Generating train split" in capfd.readouterr().err


@needs_mirror
def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="ARC-Easy"):
        data.load("arc")
    with pytest.raises(ValueError, match="anatomy"):
        data.load("mmlu", subset="anatomyy")
    with pytest.raises(ValueError, match="splits"):
        data.load("hellaswag", split="train", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="download"):
        data.load("gpt2")


@needs_mirror
def test_read_text():
    text = data.read_text("tinyshakespeare")
    assert len(text) == 1115394 and text.startswith("First Citizen:")
    assert len(data.read_text("the-verdict")) == 20479
    assert " @-@ " in data.read_text("wikitext-2", split="test")
    with pytest.raises(ValueError, match="split"):
        data.read_text("wikitext-2")
    with pytest.raises(ValueError, match="load"):
        data.read_text("mmlu")


def test_python_stdlib_corpus():
    import json as json_module

    files = {p.as_posix() for p in data.stdlib_files()}
    assert "os.py" in files and "json/__init__.py" in files
    assert Path(os.__file__).resolve() == (data.download("python-stdlib") / "os.py").resolve()
    assert Path(json_module.__file__).resolve() == (data.stdlib_dir() / "json/__init__.py").resolve()
    for f in files:
        assert not {"test", "tests", "idle_test", "site-packages"} & set(f.split("/")[:-1]), f
    text = data.read_text("python-stdlib")
    assert text.count("# ==== file: ") >= len(files)
    assert "# ==== file: json/__init__.py ====\n" + Path(json_module.__file__).read_text("utf-8") in text


def test_tokenize_dataset_with_tiktoken_and_num_proc(tmp_path):
    import datasets
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    texts = ["Hello world", "The Verdict", "ünïcödé ok", "tokens, tokens"]
    ds = datasets.Dataset.from_dict({"text": texts, "other": [1, 2, 3, 4]})
    out = data.tokenize_dataset(ds, enc, num_proc=2, eot_token=enc.eot_token)
    assert out.column_names == ["ids", "num_tokens"]
    assert out["ids"] == [enc.encode(t) + [50256] for t in texts]
    with pytest.raises(ValueError, match="other"):
        data.tokenize_dataset(ds, enc, column="body")
    with pytest.raises(TypeError):
        data.tokenize_dataset(ds, object())


# --- shards -------------------------------------------------------------------


@pytest.mark.parametrize("vocab_size,raw_dtype", [(50257, "<u2"), (65536, "<u2"), (100_000, "<u4")])
def test_shards_round_trip(tmp_path, vocab_size, raw_dtype):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab_size, size=1000)
    ids[:2] = [0, vocab_size - 1]
    sidecar = tokens.write_shards(ids, tmp_path, vocab_size, shard_size=300, tokenizer="toy")
    meta = json.loads(sidecar.read_text())
    assert [s["num_tokens"] for s in meta["shards"]] == [300, 300, 300, 100]
    assert meta["vocab_size"] == vocab_size and meta["tokenizer"] == "toy"
    raw = np.concatenate([np.fromfile(tmp_path / s["file"], dtype=raw_dtype) for s in meta["shards"]])
    np.testing.assert_array_equal(raw, ids)  # independent read of the bytes on disk
    back = tokens.read_shards(tmp_path, vocab_size=vocab_size)
    assert len(back) == 1000 and back[299] == ids[299] and back[-1] == ids[-1]
    np.testing.assert_array_equal(back[290:610], ids[290:610])  # crosses two shard boundaries
    np.testing.assert_array_equal(np.asarray(back), ids)


def test_write_shards_accepts_streams_of_sequences(tmp_path):
    stream = ([1, 2, 3], np.array([4, 5]), torch.tensor([6]), 7, 8)
    tokens.write_shards(iter(stream), tmp_path, vocab_size=10, shard_size=4, prefix="val")
    np.testing.assert_array_equal(np.asarray(tokens.read_shards(tmp_path, "val")), np.arange(1, 9))


def test_shard_errors(tmp_path):
    with pytest.raises(ValueError, match="outside"):
        tokens.write_shards(np.array([1, 2, 10]), tmp_path / "a", vocab_size=10)
    assert not any((tmp_path / "a").glob("*.bin"))
    with pytest.raises(ValueError, match="outside"):
        tokens.write_shards([[1], [-1]], tmp_path / "a", vocab_size=10)
    with pytest.raises(FileNotFoundError, match="write_shards"):
        tokens.read_shards(tmp_path / "a")
    tokens.write_shards(np.arange(10), tmp_path, vocab_size=10, shard_size=4)
    with pytest.raises(ValueError, match="vocab_size"):
        tokens.read_shards(tmp_path, vocab_size=50257)
    sidecar = tmp_path / "train.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "dtype": "uint32"}))
    with pytest.raises(ValueError, match="dtype"):
        tokens.read_shards(tmp_path)
    sidecar.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ValueError, match="version"):
        tokens.read_shards(tmp_path)
    sidecar.write_text(json.dumps(meta))
    (tmp_path / "train_000001.bin").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="incomplete"):
        tokens.read_shards(tmp_path)
    assert tokens.shard_dtype(65536) == np.uint16 and tokens.shard_dtype(65537) == np.uint32
    with pytest.raises(ValueError):
        tokens.shard_dtype(0)


# --- splits and batches -----------------------------------------------------------


def test_split_tokens():
    train, val = tokens.split_tokens(np.arange(100), val_fraction=0.1)
    np.testing.assert_array_equal(train, np.arange(90))
    np.testing.assert_array_equal(val, np.arange(90, 100))
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError):
            tokens.split_tokens(np.arange(100), bad)
    with pytest.raises(ValueError, match="too few"):
        tokens.split_tokens(np.arange(3), 0.1)


def test_sliding_windows_exact_contents():
    ds = tokens.SlidingWindowDataset(np.arange(10), context_length=4)  # stride defaults to 4
    assert len(ds) == 2
    x, y = ds[0]
    assert x.tolist() == [0, 1, 2, 3] and y.tolist() == [1, 2, 3, 4] and x.dtype == torch.int64
    x, y = ds[1]
    assert x.tolist() == [4, 5, 6, 7] and y.tolist() == [5, 6, 7, 8]
    ds = tokens.SlidingWindowDataset(list(range(10)), context_length=4, stride=1)
    assert len(ds) == 6
    assert ds[5][0].tolist() == [5, 6, 7, 8] and ds[5][1].tolist() == [6, 7, 8, 9]
    ds = tokens.SlidingWindowDataset(torch.arange(10), context_length=3, stride=3)
    assert len(ds) == 3 and ds[2][0].tolist() == [6, 7, 8] and ds[2][1].tolist() == [7, 8, 9]
    with pytest.raises(IndexError):
        ds[3]


def test_sliding_window_errors():
    with pytest.raises(ValueError, match="at least 11"):
        tokens.SlidingWindowDataset(np.arange(10), context_length=10)
    with pytest.raises(ValueError, match="stride"):
        tokens.SlidingWindowDataset(np.arange(10), context_length=4, stride=0)
    with pytest.raises(ValueError, match="context_length"):
        tokens.SlidingWindowDataset(np.arange(10), context_length=0)


def test_make_dataloader(tmp_path):
    dl = tokens.make_dataloader(np.arange(101), batch_size=4, context_length=5, shuffle=False)
    x, y = next(iter(dl))
    assert x.shape == (4, 5) and x[:, 0].tolist() == [0, 5, 10, 15]
    assert torch.equal(y, x + 1) and len(dl) == 5  # 20 windows / 4
    order = lambda seed: [b[0][:, 0].tolist() for b in tokens.make_dataloader(
        np.arange(101), 4, 5, shuffle=True, seed=seed)]
    assert order(1) == order(1) and order(1) != order(2)
    with pytest.raises(ValueError, match="drop_last"):
        tokens.make_dataloader(np.arange(12), batch_size=4, context_length=5)


def test_get_batch(tmp_path):
    data_ = np.arange(1000) % 997
    tokens.write_shards(data_, tmp_path, vocab_size=1000, shard_size=128)
    shards = tokens.read_shards(tmp_path)
    for source in (data_, shards, torch.from_numpy(data_)):
        x, y = tokens.get_batch(source, 8, 16, generator=torch.Generator().manual_seed(0))
        assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64 and x.device.type == "cpu"
        assert torch.equal(x[:, 1:], y[:, :-1])
        starts = x[:, 0].numpy()
        for row, s in zip(x.numpy(), starts):  # each row is a contiguous window of the data
            (pos,) = np.nonzero(data_[:-16] == s)
            assert any(np.array_equal(data_[p:p + 16], row) for p in pos)
    a = tokens.get_batch(shards, 4, 8, generator=torch.Generator().manual_seed(3))
    b = tokens.get_batch(shards, 4, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="at least"):
        tokens.get_batch(np.arange(5), 2, 5)


def test_csv_text_that_looks_missing_stays_text():
    from minillm.data import load

    answers = [r[c] for r in load("mmlu", split="test") for c in "ABCD"]
    assert None not in answers and answers.count("None") >= 10
