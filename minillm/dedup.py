"""Near-duplicate detection with MinHash signatures and LSH banding, from scratch.

Chapter 01 (data) teaches this module; :mod:`minillm.curation` uses it in its
pipeline and for decontamination (the same stable n-gram hashes).

The idea in four steps:

1. **Shingles.** A document becomes the *set* of its word n-grams
   ("shingles", ``shingle_size`` words each, lower-cased). Two documents are
   similar when their sets overlap: the Jaccard similarity
   ``J(A, B) = |A ∩ B| / |A ∪ B|``.
2. **Stable hashes.** Every word is hashed once with ``blake2b`` (8 bytes), and
   a shingle's hash combines its words' hashes polynomially in ``uint64``
   arithmetic, vectorized with numpy. Python's ``hash()`` is salted per process,
   so it is never used: signatures must agree across runs and worker processes.
3. **MinHash.** Apply ``num_perm`` random hash functions
   ``h_i(x) = ((a_i x + b_i) mod 2^64) >> 32`` (multiply-shift universal
   hashing) to every shingle and keep the minimum of each: the signature, shape
   ``(num_perm,)``. For one random function the two minima agree with
   probability ``J(A, B)``, so the fraction of agreeing positions estimates J
   with standard error ``sqrt(J (1 - J) / num_perm)``.
4. **LSH banding.** Cut the signature into ``bands`` bands of ``rows`` rows. Two
   documents become *candidates* when all rows of at least one band agree,
   which happens with probability ``1 - (1 - J^rows)^bands``: an S-curve that
   is steep around the threshold. Only candidates are compared, so the work
   grows with the number of documents, not with its square. Candidates whose
   estimated Jaccard reaches the threshold are merged into clusters
   (union-find), and the first document of each cluster is kept.

Exact duplicates are cheaper: one hash of the normalized text each
(:func:`dedup_exact`). Decontamination is the same overlap question asked
between training documents and evaluation sets, with long n-grams
(:class:`Decontaminator`).
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import regex

from minillm import data
from minillm.errors import DataError

WORD_RE = regex.compile(r"\w+")
_POLY = np.uint64(0x100000001B3)  # odd multiplier for combining word hashes into n-gram hashes
_MASK32 = np.uint64(0xFFFFFFFF)
_EMPTY = np.frombuffer(hashlib.blake2b(b"", digest_size=8).digest(), dtype="<u8").copy()


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+`` runs): what shingles and n-grams are made of."""
    return WORD_RE.findall(text.lower())


def word_hashes(tokens: Sequence[str], memo: dict[str, int] | None = None) -> np.ndarray:
    """Stable 64-bit hashes of words, shape ``(len(tokens),)`` uint64 (blake2b, memoized)."""
    memo = {} if memo is None else memo
    out = np.empty(len(tokens), dtype=np.uint64)
    for i, tok in enumerate(tokens):
        h = memo.get(tok)
        if h is None:
            h = memo[tok] = int.from_bytes(hashlib.blake2b(tok.encode("utf-8"), digest_size=8).digest(), "little")
        out[i] = h
    return out


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """Hashes of all n-grams of a word-hash sequence, shape ``(max(len - n + 1, 0),)`` uint64.

    ``g_i = sum_j hashes[i + j] * POLY^(n-1-j)`` (mod 2^64): order-sensitive and
    computed with ``n`` vectorized multiply-adds.
    """
    if n < 1:
        raise DataError(f"n-gram size must be >= 1, got {n}")
    m = len(hashes) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        g = hashes[:m].copy()
        for j in range(1, n):
            g *= _POLY
            g += hashes[j : j + m]
    return g


def shingle_hashes(text: str, shingle_size: int = 5, memo: dict[str, int] | None = None) -> np.ndarray:
    """The set of a text's word-shingle hashes: sorted unique uint64, never empty.

    A text shorter than ``shingle_size`` words is one shingle of all its words;
    a text without words is the hash of the empty string.
    """
    toks = words(text)
    if not toks:
        return _EMPTY.copy()
    h = word_hashes(toks, memo)
    return np.unique(ngram_hashes(h, min(shingle_size, len(toks))))


def jaccard(a: Iterable, b: Iterable) -> float:
    """Exact Jaccard similarity ``|A ∩ B| / |A ∪ B|`` of two collections taken as sets (1.0 if both empty)."""
    sa, sb = set(np.asarray(a).tolist()) if isinstance(a, np.ndarray) else set(a), \
        set(np.asarray(b).tolist()) if isinstance(b, np.ndarray) else set(b)
    union = len(sa | sb)
    return 1.0 if union == 0 else len(sa & sb) / union


# ---------------------------------------------------------------------------
# Exact deduplication
# ---------------------------------------------------------------------------


def exact_key(text: str) -> str:
    """Hex blake2b hash of the text, case-folded and with whitespace runs collapsed."""
    canonical = " ".join(unicodedata.normalize("NFC", text).casefold().split())
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def dedup_exact(docs: Sequence[str]) -> list[int]:
    """Indices of the first occurrence of every distinct :func:`exact_key` (ascending)."""
    seen: set[str] = set()
    keep = []
    for i, doc in enumerate(docs):
        key = exact_key(doc)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


# ---------------------------------------------------------------------------
# MinHash
# ---------------------------------------------------------------------------


class MinHasher:
    """``num_perm`` multiply-shift hash functions; turns shingle sets into signatures.

    Signatures are ``uint32`` arrays of shape ``(num_perm,)`` (one document) or
    ``(N, num_perm)`` (a batch). The same ``seed`` gives the same functions in
    every process.
    """

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, seed: int = 0):
        if not isinstance(num_perm, int) or num_perm < 1:
            raise DataError(f"num_perm must be a positive int, got {num_perm!r}")
        if not isinstance(shingle_size, int) or shingle_size < 1:
            raise DataError(f"shingle_size must be a positive int, got {shingle_size!r}")
        self.num_perm, self.shingle_size, self.seed = num_perm, shingle_size, seed
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)  # odd
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)

    def _permute(self, x: np.ndarray) -> np.ndarray:
        """``(S,)`` uint64 shingle hashes -> ``(S, num_perm)`` hashed values < 2^32."""
        with np.errstate(over="ignore"):
            v = x[:, None] * self.a[None, :]
            v += self.b
        v >>= np.uint64(32)
        return v

    def signature_of_hashes(self, shingles: np.ndarray) -> np.ndarray:
        """The signature ``(num_perm,)`` uint32 of one non-empty set of shingle hashes."""
        if len(shingles) == 0:
            raise DataError("a MinHash signature needs at least one shingle")
        return self._permute(np.asarray(shingles, dtype=np.uint64)).min(axis=0).astype(np.uint32)

    def signature(self, text: str) -> np.ndarray:
        """The signature ``(num_perm,)`` uint32 of one text."""
        return self.signature_of_hashes(shingle_hashes(text, self.shingle_size))

    def signatures(self, texts: Sequence[str], chunk: int = 1 << 16) -> np.ndarray:
        """Signatures of many texts, shape ``(N, num_perm)`` uint32.

        All shingle hashes are concatenated and processed ``chunk`` at a time;
        ``np.minimum.reduceat`` takes each document's minimum without a Python
        loop over documents.
        """
        memo: dict[str, int] = {}
        sets = [shingle_hashes(t, self.shingle_size, memo) for t in texts]
        out = np.empty((len(sets), self.num_perm), dtype=np.uint32)
        start = 0
        while start < len(sets):
            stop, total = start, 0
            while stop < len(sets) and (total == 0 or total + len(sets[stop]) <= chunk):
                total += len(sets[stop])
                stop += 1
            flat = np.concatenate(sets[start:stop])
            offsets = np.cumsum([0] + [len(s) for s in sets[start : stop - 1]])
            out[start:stop] = np.minimum.reduceat(self._permute(flat), offsets, axis=0)
            start = stop
        return out


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """MinHash estimate of Jaccard similarity: the fraction of equal signature positions."""
    if sig_a.shape != sig_b.shape:
        raise DataError(f"signatures differ in shape: {sig_a.shape} vs {sig_b.shape}")
    return float(np.mean(sig_a == sig_b))


# ---------------------------------------------------------------------------
# LSH banding
# ---------------------------------------------------------------------------


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """Probability that two documents of Jaccard ``similarity`` share a band: ``1 - (1 - s^r)^b``."""
    s = np.asarray(similarity, dtype=np.float64)
    return 1.0 - (1.0 - s**rows) ** bands


def lsh_params(threshold: float, num_perm: int = 128, fp_weight: float = 0.05) -> tuple[int, int]:
    """Bands and rows (``bands * rows <= num_perm``) whose S-curve best separates at ``threshold``.

    Minimizes ``fp_weight * FP + (1 - fp_weight) * FN``, where FP is the area
    under the candidate probability below the threshold (dissimilar pairs that
    become candidates) and FN the area above it that is missed. Candidates are
    verified afterwards, so a spare candidate costs one comparison while a
    missed pair is a duplicate left in the data: the default weighs misses 19
    times more (``threshold=0.8, num_perm=128`` gives 16 bands of 8 rows).
    """
    if not 0.0 < threshold < 1.0:
        raise DataError(f"threshold must be in (0, 1), got {threshold}")
    if not 0.0 <= fp_weight <= 1.0:
        raise DataError(f"fp_weight must be in [0, 1], got {fp_weight}")
    lo, hi = np.linspace(0, threshold, 201), np.linspace(threshold, 1, 201)
    best, best_cost = (1, num_perm), float("inf")
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        fp = np.trapezoid(candidate_probability(lo, bands, rows), lo)
        fn = np.trapezoid(1.0 - candidate_probability(hi, bands, rows), hi)
        cost = fp_weight * fp + (1 - fp_weight) * fn
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


def lsh_candidates(signatures: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """Pairs ``(i, j)``, ``i < j``, whose signatures agree on every row of some band.

    Each band of the ``(N, num_perm)`` signature matrix is hashed to one
    ``uint64`` key per document (vectorized); documents are grouped by key
    (a band-hash dict), and every group of two or more yields its pairs.
    """
    sig = np.asarray(signatures)
    if sig.ndim != 2:
        raise DataError(f"signatures must have shape (N, num_perm), got {sig.shape}")
    if bands * rows > sig.shape[1]:
        raise DataError(f"bands * rows = {bands * rows} exceeds the signature length {sig.shape[1]}")
    pairs: set[tuple[int, int]] = set()
    for band in range(bands):
        block = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
        key = np.full(len(sig), band, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for r in range(rows):
                key = key * _POLY + block[:, r]
        buckets: dict[int, list[int]] = {}  # band hash -> documents, in index order
        for doc, k in enumerate(key.tolist()):
            buckets.setdefault(k, []).append(doc)
        for members in buckets.values():
            for x, i in enumerate(members):
                for j in members[x + 1 :]:
                    pairs.add((i, j))
    return pairs


@dataclass
class NearDuplicates:
    """The outcome of near-duplicate detection.

    ``keep``: indices of the documents kept (the first of each cluster), ascending.
    ``cluster``: ``(N,)`` index of each document's cluster representative.
    ``pairs``: candidate pairs ``(i, j, estimated_jaccard)`` that LSH proposed.
    """

    keep: list[int]
    cluster: np.ndarray
    pairs: list[tuple[int, int, float]] = field(default_factory=list)
    bands: int = 0
    rows: int = 0


def cluster_signatures(signatures: np.ndarray, threshold: float = 0.8, bands: int | None = None,
                       rows: int | None = None) -> NearDuplicates:
    """Cluster documents by signature: LSH candidates, verified by estimated Jaccard >= threshold.

    ``bands``/``rows`` default to :func:`lsh_params` for the threshold. Clusters
    are connected components of the verified pairs (union-find whose root is
    always the smallest index), so the earliest document of a cluster is kept.
    """
    sig = np.asarray(signatures)
    if sig.ndim != 2:
        raise DataError(f"signatures must have shape (N, num_perm), got {sig.shape}")
    if (bands is None) != (rows is None):
        raise DataError("give both bands and rows, or neither (then they follow from the threshold)")
    if bands is None:
        bands, rows = lsh_params(threshold, sig.shape[1])
    parent = list(range(len(sig)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = []
    for i, j in sorted(lsh_candidates(sig, bands, rows)):
        est = float(np.mean(sig[i] == sig[j]))
        pairs.append((i, j, est))
        if est >= threshold:
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    cluster = np.array([find(i) for i in range(len(sig))], dtype=np.int64)
    keep = np.flatnonzero(cluster == np.arange(len(sig))).tolist()
    return NearDuplicates(keep=keep, cluster=cluster, pairs=pairs, bands=bands, rows=rows)


def dedup_near(docs: list[str], threshold: float = 0.8, *, num_perm: int = 128, shingle_size: int = 5,
               seed: int = 0) -> list[int]:
    """Indices of the documents to keep after near-duplicate removal (first of each cluster).

    Two documents are near-duplicates when the MinHash estimate of the Jaccard
    similarity of their word ``shingle_size``-gram sets is at least
    ``threshold``; LSH bands and rows follow from the threshold.

    >>> dedup_near(["the cat sat on the mat today", "the cat sat on the mat today", "a dog"])
    [0, 2]
    """
    if isinstance(docs, str):
        raise TypeError("dedup_near expects a list of documents, not a single string")
    if not 0.0 < threshold < 1.0:
        raise DataError(f"threshold must be in (0, 1), got {threshold}")
    if not docs:
        return []
    sig = MinHasher(num_perm, shingle_size, seed).signatures(docs)
    return cluster_signatures(sig, threshold).keep


# ---------------------------------------------------------------------------
# Decontamination: n-gram overlap with evaluation sets
# ---------------------------------------------------------------------------


def benchmark_texts(name: str) -> list[str]:
    """The texts of an evaluation set whose leakage into training data matters.

    ``hellaswag``: context + correct ending (validation); ``arc``: question +
    correct answer (Easy and Challenge, validation and test); ``mmlu``:
    question + correct answer (dev, validation, test); ``humaneval``: prompt +
    canonical solution; ``mbpp``: task text + reference code (every split).
    """
    if name == "hellaswag":
        return [f"{r['ctx']} {r['endings'][int(r['label'])]}" for r in data.load("hellaswag", split="validation")]
    if name == "arc":
        out = []
        for subset in ("ARC-Easy", "ARC-Challenge"):
            for split in ("validation", "test"):
                for r in data.load("arc", subset=subset, split=split):
                    q = r["question"]
                    answer = {c["label"]: c["text"] for c in q["choices"]}.get(r["answerKey"], "")
                    out.append(f"{q['stem']} {answer}")
        return out
    if name == "mmlu":
        ds = data.load("mmlu")
        return [f"{r['question']} {r[r['answer']]}" for split in ds for r in ds[split]]
    if name == "humaneval":
        return [r["prompt"] + r["canonical_solution"] for r in data.load("humaneval", split="test")]
    if name == "mbpp":
        ds = data.load("mbpp")
        return [f"{r['text']}\n{r['code']}" for split in ds for r in ds[split]]
    raise DataError(f"no evaluation texts for {name!r}; choose 'hellaswag', 'arc', 'mmlu', 'humaneval' or 'mbpp'")


class Decontaminator:
    """Finds training documents that share word n-grams with evaluation sets.

    The n-gram hashes of every evaluation text are computed once and kept as a
    sorted ``uint64`` array per set; a training document is hashed the same way
    and looked up by binary search (``np.searchsorted``). Texts shorter than ``n`` words contribute no
    n-grams (pick a smaller ``n`` for short benchmarks).
    """

    def __init__(self, eval_texts: dict[str, Sequence[str]], n: int = 13):
        if n < 1:
            raise DataError(f"n must be >= 1, got {n}")
        self.n = n
        memo: dict[str, int] = {}
        self.ngrams = {name: np.unique(np.concatenate(
            [ngram_hashes(word_hashes(words(t), memo), n) for t in texts] or [np.empty(0, np.uint64)]))
            for name, texts in eval_texts.items()}

    @classmethod
    def from_benchmarks(cls, names: Sequence[str] = ("hellaswag", "arc", "mmlu"), n: int = 13) -> "Decontaminator":
        """A decontaminator for evaluation sets of the data layer (see :func:`benchmark_texts`)."""
        return cls({name: benchmark_texts(name) for name in names}, n)

    def matches(self, text: str) -> dict[str, int]:
        """Number of the text's distinct n-grams found in each evaluation set (sets with none left out)."""
        grams = np.unique(ngram_hashes(word_hashes(words(text)), self.n))
        found = {}
        for name, ref in self.ngrams.items():  # ref is sorted: binary search for each n-gram
            pos = np.minimum(np.searchsorted(ref, grams), max(len(ref) - 1, 0))
            found[name] = int((ref[pos] == grams).sum()) if len(ref) else 0
        return {name: k for name, k in found.items() if k}
