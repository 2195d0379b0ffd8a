"""Tests of minillm.dedup: stable hashes, MinHash accuracy, LSH recall/false positives, clustering,
exact dedup and decontamination."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from minillm.dedup import (
    Decontaminator,
    MinHasher,
    candidate_probability,
    cluster_signatures,
    dedup_exact,
    dedup_near,
    estimate_jaccard,
    exact_key,
    jaccard,
    lsh_candidates,
    lsh_params,
    ngram_hashes,
    shingle_hashes,
    word_hashes,
    words,
)


def _random_text(rng: np.random.Generator, n_words: int, vocab: int = 5000) -> str:
    return " ".join(f"w{i}" for i in rng.integers(0, vocab, n_words))


def _set_pair(rng: np.random.Generator, size: int, target: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Two sets of random 64-bit values, each of ``size``, whose Jaccard is close to ``target``."""
    common = round(2 * size * target / (1 + target))  # |A∩B| / (2 size - |A∩B|) = target
    values = rng.integers(0, 2**63, size=2 * size, dtype=np.uint64)  # distinct with overwhelming probability
    a = values[:size]
    b = np.concatenate([a[:common], values[size : 2 * size - common]])
    return a, b, common / (2 * size - common)


def test_words_and_ngram_hashes():
    assert words("Hello, World! it's 2024") == ["hello", "world", "it", "s", "2024"]
    h = word_hashes(["a", "b", "c", "a"])
    assert h.dtype == np.uint64 and h[0] == h[3] and len(set(h.tolist())) == 3
    np.testing.assert_array_equal(ngram_hashes(h, 1), h)
    g = ngram_hashes(h, 2)
    assert len(g) == 3 and len(set(g.tolist())) == 3  # (a,b), (b,c), (c,a) differ
    assert ngram_hashes(word_hashes(["b", "a"]), 2)[0] != ngram_hashes(word_hashes(["a", "b"]), 2)[0]
    assert len(ngram_hashes(h, 5)) == 0
    with pytest.raises(ValueError, match="n-gram size"):
        ngram_hashes(h, 0)


def test_shingles_match_a_set_of_word_tuples():
    rng = np.random.default_rng(1)
    text = _random_text(rng, 300, vocab=30)  # small vocabulary: repeated shingles
    toks = text.split()
    expected = {tuple(toks[i : i + 5]) for i in range(len(toks) - 4)}
    assert len(shingle_hashes(text, 5)) == len(expected)
    assert len(shingle_hashes("just three words", 5)) == 1  # shorter than a shingle: one shingle
    assert len(shingle_hashes("", 5)) == 1


def test_hashes_are_stable_across_processes():
    code = ("from minillm.dedup import MinHasher; "
            "print(MinHasher(16, 3, seed=7).signature('the quick brown fox jumps over the lazy dog').tolist())")
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout)
    here = MinHasher(16, 3, seed=7).signature("the quick brown fox jumps over the lazy dog").tolist()
    assert outs == {f"{here}\n"}


def test_jaccard_by_hand():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(2 / 4)
    assert jaccard([], []) == 1.0
    assert jaccard(np.array([1, 2]), np.array([3])) == 0.0


@pytest.mark.parametrize("target", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_minhash_estimates_within_statistical_error(target):
    rng = np.random.default_rng(int(target * 100))
    hasher = MinHasher(num_perm=256, seed=3)
    errors = []
    for _ in range(40):
        a, b, true = _set_pair(rng, 300, target)
        est = estimate_jaccard(hasher.signature_of_hashes(a), hasher.signature_of_hashes(b))
        sd = math.sqrt(true * (1 - true) / hasher.num_perm)
        assert abs(est - true) <= 4.5 * sd  # a 4.5-sigma miss has probability ~1e-5 per pair
        errors.append(est - true)
    # no bias: the mean of 40 estimates is within 4 standard errors of the truth
    assert abs(np.mean(errors)) <= 4 * math.sqrt(target * (1 - target) / 256 / 40)


def test_batched_signatures_equal_one_by_one():
    rng = np.random.default_rng(0)
    texts = [_random_text(rng, int(n)) for n in rng.integers(1, 200, 50)] + ["", "one"]
    hasher = MinHasher(64, 5, seed=1)
    batch = hasher.signatures(texts, chunk=500)  # several chunks
    assert batch.shape == (len(texts), 64) and batch.dtype == np.uint32
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(batch[i], hasher.signature(t))


def test_text_signatures_estimate_true_shingle_jaccard():
    rng = np.random.default_rng(5)
    hasher = MinHasher(128, 5, seed=0)
    for _ in range(10):
        toks = _random_text(rng, 400).split()
        other = list(toks)
        for i in rng.choice(len(other), 20, replace=False):
            other[i] = "zz"
        true = jaccard(shingle_hashes(" ".join(toks)), shingle_hashes(" ".join(other)))
        est = estimate_jaccard(hasher.signature(" ".join(toks)), hasher.signature(" ".join(other)))
        assert abs(est - true) <= 4.5 * math.sqrt(true * (1 - true) / 128)


def test_candidate_probability_and_params():
    assert candidate_probability(0.5, bands=2, rows=2) == pytest.approx(1 - (1 - 0.25) ** 2)
    bands, rows = lsh_params(0.8, 128)
    assert bands * rows <= 128
    assert candidate_probability(0.85, bands, rows) >= 0.95
    assert candidate_probability(0.3, bands, rows) <= 0.05
    with pytest.raises(ValueError, match="threshold"):
        lsh_params(1.5)


def test_lsh_recall_and_false_positives_on_a_generated_benchmark():
    rng = np.random.default_rng(42)
    hasher = MinHasher(128, seed=0)
    bands, rows = lsh_params(0.8, 128)
    sets, kinds = [], []
    for k in range(400):
        target = rng.uniform(0.85, 0.98) if k % 2 == 0 else rng.uniform(0.0, 0.3)
        a, b, true = _set_pair(rng, 200, target)
        sets += [a, b]
        kinds.append(true)
    sig = np.stack([hasher.signature_of_hashes(s) for s in sets])
    found = lsh_candidates(sig, bands, rows)
    high = [i for i, j in enumerate(kinds) if j >= 0.85]
    low = [i for i, j in enumerate(kinds) if j <= 0.3]
    recall = np.mean([(2 * i, 2 * i + 1) in found for i in high])
    false_pos = np.mean([(2 * i, 2 * i + 1) in found for i in low])
    assert len(high) > 150 and len(low) > 150
    assert recall >= 0.95
    assert false_pos <= 0.05


def test_cluster_signatures_keeps_first_of_each_cluster():
    rng = np.random.default_rng(7)
    base = [_random_text(rng, 200) for _ in range(6)]
    docs, expected = [], []
    for i, text in enumerate(base):
        expected.append(len(docs))
        docs.append(text)
        if i % 2 == 0:  # two near-copies: one word changed, one appended sentence
            toks = text.split()
            toks[100] = "changed"
            docs.append(" ".join(toks))
            docs.append(text + " and a short tail")
    result = cluster_signatures(MinHasher().signatures(docs), 0.8)
    assert result.keep == expected
    assert (result.bands, result.rows) == lsh_params(0.8, 128)
    assert all(0.0 <= est <= 1.0 for _, _, est in result.pairs)
    assert dedup_near(docs, 0.8) == expected
    assert dedup_near([]) == []
    with pytest.raises(TypeError, match="list of documents"):
        dedup_near("not a list")
    with pytest.raises(ValueError, match="threshold"):
        dedup_near(["a"], threshold=0)
    with pytest.raises(ValueError, match="both bands and rows"):
        cluster_signatures(np.zeros((2, 8), np.uint32), 0.5, bands=2)


def test_exact_dedup_ignores_case_and_whitespace():
    docs = ["Hello  world", "hello world", "hello\nworld ", "goodbye", "Hello world!"]
    assert dedup_exact(docs) == [0, 3, 4]
    assert exact_key("a b") == exact_key(" A\tB ")
    assert exact_key("a b") != exact_key("ab")


def test_decontaminator_flags_long_overlaps_only():
    question = "which of these planets in our solar system has the largest number of known moons today"
    dec = Decontaminator({"quiz": [question + " saturn"], "empty": []}, n=13)
    leaked = "Forum post. " + question.upper() + "? I think it is Saturn."
    assert dec.matches(leaked) == {"quiz": 4}  # the 16 question words hold 16 - 13 + 1 = 4 13-grams
    near = " ".join(question.split()[:12]) + " unrelated words follow here"
    assert dec.matches(near) == {}
    assert Decontaminator({"quiz": [question]}, n=8).matches(near)["quiz"] == 5  # 12 shared words: 5 8-grams
    with pytest.raises(ValueError, match="n must be"):
        Decontaminator({}, n=0)


def test_decontaminator_from_hellaswag_mirror():
    from minillm import data

    path = data.download("hellaswag") / "hellaswag_val.jsonl"
    with open(path, encoding="utf-8") as fh:
        row = json.loads(fh.readline())
    page = f"My blog. {row['ctx']} {row['endings'][row['label']]} Thanks for reading!"
    dec = Decontaminator.from_benchmarks(["hellaswag"], n=8)
    assert "hellaswag" in dec.matches(page)
    assert dec.matches("A perfectly ordinary sentence about the weather in Lisbon this spring.") == {}
