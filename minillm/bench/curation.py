"""Curation benchmark: `python -m minillm.bench curation` (chapter 01).

Measures, in one run:

* pipeline throughput of :func:`minillm.curation.curate` (normalize, quality
  rules, exact and near dedup, decontamination against HellaSwag/ARC/MMLU,
  PII redaction) in MB of input per second, per step and in total, with
  ``--num-proc`` worker processes and with one process for reference. The
  corpus is the local text sets (Tiny Shakespeare, The Verdict, WikiText-2
  validation+test, the Python standard library) cut into documents of about
  ``--doc-words`` words, repeated to ``--mb`` megabytes with a small edit per
  copy (so dedup has work to do). Building the decontamination index is timed
  separately (it is done once per evaluation suite).
* near-dedup time (:func:`minillm.dedup.dedup_near`, 128 permutations) for
  ``--sizes`` synthetic documents of 100 words (10% near-copies, one word
  changed), to show how
  it scales with the number of documents; the recall of the planted copies
  is printed as a sanity check.

Wall-clock figures are best of ``--repeats``; other processes on a shared
machine slow them down, so read them as lower bounds of what the code can do.
"""

from __future__ import annotations

import argparse
import time


def corpus(megabytes: float, doc_words: int = 200) -> list[str]:
    """Documents of about ``doc_words`` words from the local text sets, ``megabytes`` MB in all."""
    import numpy as np

    from minillm import data

    text = "\n".join([data.read_text("tinyshakespeare"), data.read_text("the-verdict"),
                      data.read_text("wikitext-2", split="validation"), data.read_text("wikitext-2", split="test"),
                      data.read_text("python-stdlib")])
    lines, docs, cur, n = text.split("\n"), [], [], 0
    for line in lines:
        cur.append(line)
        n += len(line.split())
        if n >= doc_words:
            docs.append("\n".join(cur))
            cur, n = [], 0
    base, out, size, rng, k = docs, [], 0, np.random.default_rng(0), 0
    while size < megabytes * 1e6:
        doc = base[k % len(base)]
        if k >= len(base):  # a later copy: change one word, so it is a near (not exact) duplicate
            w = doc.split(" ")
            w[int(rng.integers(len(w)))] = f"edit{k}"
            doc = " ".join(w)
        out.append(doc)
        size += len(doc.encode("utf-8"))
        k += 1
    return out


def synthetic_docs(n: int, words: int = 100, near_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[int]]:
    """``n`` random documents (Zipf-like 20k-word vocabulary) where ``near_fraction`` are
    near-copies (one word in 100 replaced, Jaccard ~0.9) of an earlier one; returns the docs and the planted copies."""
    import numpy as np

    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 20_001)
    ids = rng.choice(20_000, size=(n, words), p=p / p.sum())
    copies = []
    for i in range(1, n):
        if rng.random() < near_fraction:
            ids[i] = ids[rng.integers(i)]
            pos = rng.choice(words, max(1, words // 100), replace=False)
            ids[i, pos] = rng.integers(20_000, 40_000, len(pos))
            copies.append(i)
    return [" ".join(f"w{j}" for j in row) for row in ids], copies


def main(argv: list[str]) -> int:
    """Run the benchmark and print tables; returns the process exit code."""
    import datasets

    from minillm.bench import environment
    from minillm.curation import CurationConfig, curate
    from minillm.dedup import Decontaminator, dedup_near

    parser = argparse.ArgumentParser(prog="python -m minillm.bench curation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=20.0, help="pipeline corpus size in MB (default 20)")
    parser.add_argument("--doc-words", type=int, default=200, help="words per pipeline document (default 200)")
    parser.add_argument("--num-proc", type=int, default=2, help="datasets.map workers (default 2)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000],
                        help="document counts for the near-dedup timing (default 10000 100000)")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs (default 1)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.mb <= 0 or args.num_proc < 1:
        parser.error("--repeats and --num-proc must be >= 1 and --mb > 0")

    datasets.disable_progress_bars()
    print(environment())
    print(f"datasets {datasets.__version__}; best of {args.repeats} run(s)\n")

    start = time.perf_counter()
    decon = Decontaminator.from_benchmarks()
    print(f"decontamination index (HellaSwag+ARC+MMLU 13-grams, "
          f"{sum(len(v) for v in decon.ngrams.values()):,} hashes): {time.perf_counter() - start:.1f} s")
    docs = corpus(args.mb, args.doc_words)
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    print(f"pipeline corpus: {len(docs):,} documents, {mb:.1f} MB\n")

    for num_proc in sorted({1, args.num_proc}):
        best = None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            _, report = curate(docs, CurationConfig(decontaminate=decon, num_proc=None if num_proc == 1 else num_proc))
            total = time.perf_counter() - t0
            if best is None or total < best[0]:
                best = (total, report)
        total, report = best
        print(f"num_proc={num_proc}: {total:.1f} s, {mb / total:.2f} MB/s overall; "
              f"kept {report.steps[-1].docs_out:,} of {len(docs):,} documents")
        print(f"  {'step':<15}{'seconds':>9}{'MB/s':>8}{'docs in':>10}{'docs out':>10}")
        for s in report.steps:
            print(f"  {s.step:<15}{s.seconds:>9.2f}{s.bytes_in / 1e6 / max(s.seconds, 1e-9):>8.2f}"
                  f"{s.docs_in:>10,}{s.docs_out:>10,}")
        print()

    print(f"{'near dedup (dedup_near, 128 perm)':<36}{'seconds':>9}{'docs/s':>10}{'recall':>8}")
    for n in args.sizes:
        texts, copies = synthetic_docs(n)
        best_s, keep = float("inf"), []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            keep = dedup_near(texts, 0.8)
            best_s = min(best_s, time.perf_counter() - t0)
        kept = set(keep)
        recall = sum(c not in kept for c in copies) / max(len(copies), 1)
        print(f"{f'{n:,} documents':<36}{best_s:>9.1f}{n / best_s:>10,.0f}{recall:>8.3f}")
    return 0
