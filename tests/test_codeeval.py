"""HumanEval and MBPP scoring (`minillm.codeeval`, appendix D): the tasks, the programs, pass@k, bad input, generation.

The harness is checked on reference solutions (all 164 of HumanEval's pass in
tests/test_cli_code.py; MBPP's here, a tenth of them) and on deliberately broken
ones (each fails, with the right status); the pass@k estimator against the
closed form and against brute-force enumeration of every k-subset of the samples.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import random

import pytest
import torch

import minillm.codeeval as codeeval
from minillm.codeeval import (MBPP_STOPS, CodeTask, evaluate_samples, generate_samples, load_code_task,
                              load_humaneval, load_mbpp, pass_at_k, program, read_samples, truncate_completion,
                              write_results)  # fmt: skip
from minillm.errors import ConfigError, DataError
from minillm.generate import complete
from minillm.model import GPT, GPTConfig
from minillm.sandbox import Limits
from minillm.tokenizer import BPETokenizer

WORKERS = 2


@pytest.fixture(scope="module")
def humaneval() -> list[CodeTask]:
    return load_humaneval()


@pytest.fixture(scope="module")
def mbpp() -> list[CodeTask]:
    return load_mbpp("full")


def references(tasks: list[CodeTask]) -> list[dict]:
    return [{"task_id": t.task_id, "completion": t.reference} for t in tasks]


# ---------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------


def test_pass_at_k_is_the_closed_form():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                expected = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)
    assert pass_at_k(200, 0, 100) == 0.0 and pass_at_k(200, 200, 1) == 1.0
    assert pass_at_k(200, 3, 100) == pytest.approx(1 - math.comb(197, 100) / math.comb(200, 100), rel=1e-9)
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)  # no overflow where C(n, k) is astronomically large


def test_pass_at_k_is_the_share_of_k_subsets_with_a_pass():
    rng = random.Random(0)
    for n in range(1, 9):
        for _ in range(3):
            passed = [rng.random() < 0.4 for _ in range(n)]
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(passed, k))
                share = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, sum(passed), k) == pytest.approx(share, abs=1e-12)


def test_pass_at_k_refuses_impossible_counts():
    with pytest.raises(ConfigError, match=r"pass@5 .*n=3.*k=5"):
        pass_at_k(3, 1, 5)
    for bad in [(0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 0)]:
        with pytest.raises(ConfigError):
            pass_at_k(*bad)
    with pytest.raises(ConfigError, match="integer"):
        pass_at_k(3, 1.0, 1)


# ---------------------------------------------------------------------------
# Tasks and programs
# ---------------------------------------------------------------------------


def test_the_task_files_load_with_the_papers_splits(humaneval, mbpp):
    assert len(humaneval) == 164 and humaneval[0].task_id == "HumanEval/0"
    assert humaneval[0].entry_point == "has_close_elements" and humaneval[0].prompt.endswith('"""\n')
    assert len(mbpp) == 974 and mbpp[0].task_id == "MBPP/1"
    sizes = {split: len(load_mbpp(split)) for split in ("prompt", "test", "validation", "train")}
    assert sizes == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    assert load_mbpp()[0].task_id == "MBPP/11" and load_code_task("mbpp")[-1].task_id == "MBPP/510"
    first = mbpp[0]
    assert first.prompt == ('"""\nWrite a function to find the minimum cost path to reach (m, n) from (0, 0) for the '
                            "given cost matrix cost[][] and a position (m, n) in cost[][].\n"
                            'assert min_cost([[1, 2, 3], [4, 8, 2], [1, 5, 3]], 2, 2) == 8\n"""\n')  # fmt: skip
    assert len(load_code_task("humaneval")) == 164
    with pytest.raises(ConfigError, match="split"):
        load_mbpp("dev")
    with pytest.raises(ConfigError, match="humaneval, mbpp"):
        load_code_task("apps")
    with pytest.raises(ConfigError, match="one split"):
        load_code_task("humaneval", "train")


def test_a_malformed_task_file_names_the_line(tmp_path, humaneval):
    path = tmp_path / "HumanEval.jsonl.gz"
    good = {"task_id": "HumanEval/0", "prompt": "def f():\n", "entry_point": "f", "canonical_solution": "  return 1\n",
            "test": "def check(c):\n  assert c() == 1\n"}  # fmt: skip
    with gzip.open(path, "wt") as fh:
        fh.write(json.dumps(good) + "\n\n{not json\n")
    with pytest.raises(DataError, match="line 3: invalid JSON"):
        load_humaneval(path)
    plain = tmp_path / "he.jsonl"
    plain.write_text(json.dumps(good) + "\n" + json.dumps({**good, "entry_point": None}) + "\n")
    with pytest.raises(DataError, match="line 2: 'entry_point' must be a non-empty str"):
        load_humaneval(plain)
    bad = tmp_path / "mbpp.jsonl"
    row = {"task_id": 11, "text": "t", "code": "c", "test_setup_code": "", "test_list": [1]}
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="line 1: 'test_list'"):
        load_mbpp(path=bad)
    with pytest.raises(FileNotFoundError):
        load_humaneval(tmp_path / "nowhere.jsonl")


def test_programs_are_assembled_as_the_reference_harnesses_do(humaneval, mbpp):
    t = humaneval[0]
    assert program(t, "    return True\n") == f"{t.prompt}    return True\n\n{t.test}\ncheck(has_close_elements)\n"
    node = next(m for m in mbpp if m.task_id == "MBPP/367")  # its setup code builds trees of the solution's class
    source = program(node, node.reference)
    assert source.index("class Node") < source.index("root = Node(1)") < source.index("assert ")


def test_truncation_ends_the_code_where_the_next_top_level_statement_starts(humaneval, mbpp):
    body = "    x = 1\n\n    # a comment\n    return x\n"
    assert truncate_completion(body + "\ndef helper():\n    pass\n") == body + "\n"
    assert truncate_completion(body + "# tests\nprint(f())\n") == body
    assert truncate_completion(body) == body and truncate_completion("    return 1") == "    return 1"
    solution = "import re\ndef f(x):\n    if x:\n        return 1\n\ndef g():\n    return f(1)\n"
    for stop in MBPP_STOPS:
        assert truncate_completion(solution + stop.lstrip("\n") + " tail\n", "mbpp") == solution
    assert truncate_completion(solution + "class A:\n    pass\n", "mbpp").endswith("class A:\n    pass\n")
    with pytest.raises(ConfigError):
        truncate_completion("x", "apps")
    # every reference solution survives its suite's rule (generated and reference code are judged alike)
    assert all(truncate_completion(t.reference) == t.reference for t in humaneval)
    assert all(truncate_completion(t.reference, "mbpp") == t.reference for t in mbpp)


# ---------------------------------------------------------------------------
# The sandboxed runs
# ---------------------------------------------------------------------------

BROKEN = {  # a wrong answer, an exception, a syntax error, a body that never ends
    "wrong": "    return None\n",
    "raises": "    raise ValueError('no')\n",
    "syntax": "    return (\n",
    "loops": "    while True:\n        pass\n",
}


def test_broken_solutions_fail_beside_the_references_that_pass(humaneval):
    """All 164 references pass in tests/test_cli_code.py (the command end to end); here each way to fail."""
    tasks = [humaneval[i] for i in (0, 2, 4, 6)]
    broken = [{"task_id": t.task_id, "completion": c} for t, c in zip(tasks, BROKEN.values())]
    report = evaluate_samples(humaneval, references(tasks) + broken, ks=(1, 2), limits=Limits(timeout_s=3.0, cpu_s=3),
                              workers=WORKERS)  # fmt: skip
    ref, bad = report.results[:4], report.results[4:]
    assert all(r.passed for r in ref), [(r.task_id, r.error) for r in ref if not r.passed]
    assert [r.status for r in bad] == ["failed", "failed", "failed", "timed out"]
    assert "AssertionError" in bad[0].error and "ValueError" in bad[1].error and "SyntaxError" in bad[2].error
    assert [r.completion_id for r in ref + bad] == [0] * 4 + [1] * 4
    assert report.counts == {t.task_id: (2, 1) for t in tasks} and len(report.missing) == 160
    assert report.pass_at == {1: (0.5, 0.0), 2: (1.0, 0.0)}


#: MBPP references run here: every 10th task, and the only two with test setup code. All 974 pass
#: (checked when this was written: about a minute with 2 workers on an idle 2-core machine, too long
#: for every test run; MBPP/123's reference alone needs ~10 s, so a run of all of them needs a timeout above that).
MBPP_CHECKED = {f"MBPP/{i}" for i in range(10, 975, 10)} | {"MBPP/367", "MBPP/927"}


def test_mbpp_references_pass_their_own_tests(mbpp):
    tasks = [t for t in mbpp if t.task_id in MBPP_CHECKED]
    report = evaluate_samples(mbpp, references(tasks), limits=Limits(timeout_s=20.0, cpu_s=20), workers=WORKERS)
    assert [(r.task_id, r.status, r.error) for r in report.results if not r.passed] == []
    assert report.pass_at[1] == (1.0, 0.0) and len(report.counts) == len(MBPP_CHECKED) == 99


def _fake_runs(monkeypatch, verdicts: dict[str, bool] | None = None):
    """Replace the sandbox by a lookup: a completion passes when verdicts[completion] (no processes)."""
    from minillm.sandbox import Outcome

    calls = []

    def run_many(sources, limits=None, workers=None, progress=False):
        calls.append(len(sources))
        return [Outcome("passed" if any(s.find(c) >= 0 and ok for c, ok in (verdicts or {}).items()) else "failed",
                        "", 0.01, "") for s in sources]  # fmt: skip

    monkeypatch.setattr(codeeval, "run_many", run_many)
    return calls


def test_pass_at_k_over_tasks_with_its_standard_error(monkeypatch, humaneval):
    _fake_runs(monkeypatch, {"GOOD": True})
    a, b, c = (t.task_id for t in humaneval[:3])
    samples = ([{"task_id": a, "completion": x} for x in ("GOOD", "GOOD", "bad", "bad")]
               + [{"task_id": b, "completion": x} for x in ("bad", "GOOD", "bad", "bad")]
               + [{"task_id": c, "completion": "bad"}] * 4)  # fmt: skip
    report = evaluate_samples(humaneval[:5], samples, ks=(2, 1))
    assert report.counts == {a: (4, 2), b: (4, 1), c: (4, 0)}
    assert report.missing == [t.task_id for t in humaneval[3:5]]  # reported, not counted as failures
    per_task = {k: [pass_at_k(4, p, k) for p in (2, 1, 0)] for k in (1, 2)}
    for k, values in per_task.items():
        mean = sum(values) / 3
        stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / 2 / 3)
        assert report.pass_at[k] == pytest.approx((mean, stderr))
    assert list(report.pass_at) == [1, 2]
    assert [r.completion_id for r in report.results[:4]] == [0, 1, 2, 3]
    text = str(report)
    assert "2 tasks have no samples and are left out" in text and "pass@1    0.250 ±" in text


def test_bad_samples_are_clear_errors_before_anything_runs(monkeypatch, humaneval):
    calls = _fake_runs(monkeypatch)
    one = [{"task_id": "HumanEval/0", "completion": "x"}]
    with pytest.raises(ConfigError, match=r"pass@10 needs at least 10 samples of every task, but HumanEval/0 has 1"):
        evaluate_samples(humaneval, one, ks=(1, 10))
    with pytest.raises(DataError, match=r"2 of 3 samples name tasks not among the 164 .* 'MBPP/11', 'HumanEval/999'.*'HumanEval/0'"):
        evaluate_samples(humaneval, one + [{"task_id": "MBPP/11", "completion": ""},
                                           {"task_id": "HumanEval/999", "completion": ""}])  # fmt: skip
    with pytest.raises(DataError, match="no samples"):
        evaluate_samples(humaneval, [])
    with pytest.raises(ConfigError, match="positive"):
        evaluate_samples(humaneval, one, ks=(0,))
    with pytest.raises(DataError, match="sample 1 must be a dict"):
        evaluate_samples(humaneval, one + [{"task_id": "HumanEval/0"}])
    assert calls == []


def test_samples_files_are_read_with_line_numbers_in_errors(tmp_path):
    path = tmp_path / "samples.jsonl"
    rows = [{"task_id": "HumanEval/0", "completion": "    return 1\n", "extra": 3}]
    path.write_text(json.dumps(rows[0]) + "\n\n")
    assert read_samples(path) == rows
    for text, message in [('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": \n', "line 2: invalid JSON"),
                          ('{"task_id": "HumanEval/0"}\n', "line 1: no 'completion' field"),
                          ('{"task_id": 3, "completion": "x"}\n', "line 1: 'task_id' must be a string, got int"),
                          ('[1, 2]\n', "line 1: expected a JSON object"),
                          ("\n", "holds no samples")]:  # fmt: skip
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            read_samples(path)
    path.write_bytes(b'{"task_id": "\xff"}\n')
    with pytest.raises(DataError, match="UTF-8"):
        read_samples(path)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows[0]).encode() + b"\n")  # a BOM, as Windows editors write
    assert read_samples(path) == rows
    for junk in (b"[" * 100_000 + b"]" * 100_000, b"9" * 5000):  # too deep, too many digits: DataError, not a traceback
        path.write_bytes(b'{"task_id": "HumanEval/0", "completion": "x", "extra": ' + junk + b"}\n")
        with pytest.raises(DataError, match="line 1: unreadable JSON"):
            read_samples(path)
    with pytest.raises(FileNotFoundError):
        read_samples(tmp_path / "none.jsonl")


def test_results_are_written_per_sample_with_a_summary(monkeypatch, tmp_path, humaneval):
    _fake_runs(monkeypatch, {"GOOD": True})
    samples = [{"task_id": "HumanEval/0", "completion": "GOOD"}, {"task_id": "HumanEval/0", "completion": "bad"}]
    report = evaluate_samples(humaneval[:2], samples, ks=(1, 2))
    results, summary = write_results(report, tmp_path / "s_results.jsonl")
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["completion_id"], r["passed"], r["status"]) for r in lines] == [(0, True, "passed"),
                                                                                (1, False, "failed")]
    data = json.loads(summary.read_text())
    assert summary.name == "s_results.summary.json" and data["missing"] == ["HumanEval/1"]
    assert data["pass_at_k"] == {"pass@1": {"value": 0.5, "stderr": None}, "pass@2": {"value": 1.0, "stderr": None}}
    assert data["per_task"] == {"HumanEval/0": {"n": 2, "c": 1}} and data["statuses"] == {"passed": 1, "failed": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_results.jsonl", "s_results.summary.json"]


# ---------------------------------------------------------------------------
# Samples from a minillm model
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(humaneval):
    """A random GPT (context 32) with a small BPE learned from HumanEval's prompts and solutions."""
    torch.manual_seed(0)
    tok = BPETokenizer.train("".join(t.prompt + t.reference for t in humaneval[:40]), vocab_size=300)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=32, d_model=16, n_layer=1, n_head=2)).eval()
    return model, tok


def test_generated_samples_are_each_tasks_samples_one_by_one(tiny, humaneval, mbpp):
    """Batched sampling gives what one-at-a-time sampling (`complete`, seed seed + i*n + j) gives, cut alike."""
    model, tok = tiny
    tasks = [humaneval[0], mbpp[10]]
    samples = generate_samples(model, tok, tasks, n=2, temperature=1.0, max_new_tokens=24, batch=3, seed=5)
    assert [s["task_id"] for s in samples] == ["HumanEval/0", "HumanEval/0", "MBPP/11", "MBPP/11"]
    for s, (i, j) in zip(samples, [(0, 0), (0, 1), (1, 0), (1, 1)]):
        task = tasks[i]
        head = task.prompt.rstrip()
        alone = complete(model, tok, head, 24, temperature=1.0, top_k=None, seed=5 + i * 2 + j)
        written = head + alone
        completion = written[len(task.prompt):] if written.startswith(task.prompt) else alone
        assert s["completion"] == truncate_completion(completion, task.suite)
        assert s["prompt_tokens"] == len(tok.encode_ordinary(head))
        assert s["prompt_tokens_dropped"] == max(0, s["prompt_tokens"] - 32)
    assert samples[0]["prompt_tokens_dropped"] > 0  # HumanEval/0's prompt is longer than the context: kept its end
    assert samples == generate_samples(model, tok, tasks, n=2, temperature=1.0, max_new_tokens=24, batch=3, seed=5)
    with pytest.raises(ConfigError, match="n must be"):
        generate_samples(model, tok, tasks, n=0)


class Pieces:
    """A toy tokenizer whose token i is the text `pieces[i]` (every prompt is token 0)."""

    special_tokens: dict[str, int] = {}

    def __init__(self, pieces: list[str]) -> None:
        self.pieces, self.vocab_size = pieces, len(pieces)

    def encode_ordinary(self, text: str) -> list[int]:
        return [0]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


class Scripted(GPT):
    """A GPT (for its cache and shapes) whose next token is `successor[last token]`, with certainty."""

    def __init__(self, successor: list[int]) -> None:
        super().__init__(GPTConfig(vocab_size=len(successor), context_length=16, d_model=8, n_layer=1, n_head=2))
        self.successor = torch.tensor(successor)

    def forward(self, idx, targets=None, kv_cache=None, only_last=False):
        logits, _ = super().forward(idx, kv_cache=kv_cache, only_last=only_last)
        last = idx[:, -logits.size(1) :]
        return torch.nn.functional.one_hot(self.successor[last], logits.size(-1)).float() * 100 - 50, None


@pytest.mark.parametrize("suite", ["humaneval", "mbpp"])
def test_generation_stops_where_the_code_ends_and_the_sample_passes(monkeypatch, suite, humaneval, mbpp):
    if suite == "humaneval":  # HumanEval/53 is add(x, y); the model writes its body, then a top-level print
        task, pieces = humaneval[53], ["<prompt>", "\n    return x + y", "\nprint('done')"]
    else:  # MBPP/11 removes the first and last occurrence of a character
        task = next(t for t in mbpp if t.task_id == "MBPP/11")
        pieces = ["<prompt>", "\ndef remove_Occ(s, ch):\n    i, j = s.find(ch), s.rfind(ch)\n"
                  "    return s if i < 0 else (s[:i] + s[i + 1 : j] + s[j + 1 :] if i < j else s[:i] + s[i + 1 :])",
                  "\nassert remove_Occ('a', 'a') == ''"]  # fmt: skip
    model, tok = Scripted([1, 2, 1]).eval(), Pieces(pieces)
    lengths = []
    decode = codeeval.decode_together
    monkeypatch.setattr(codeeval, "decode_together",
                        lambda *a, **kw: lengths.append([len(x) for x in decode(*a, **kw)]))  # new tokens per sample
    samples = generate_samples(model, tok, [task], n=2, temperature=0.0, max_new_tokens=12)
    # HumanEval ends when the line at column 0 is complete (the next token starts a new line); MBPP at the stop
    assert lengths == ([[3, 3]] if suite == "humaneval" else [[2, 2]])
    assert samples[0]["completion"] == samples[1]["completion"] == pieces[1][1:] + "\n"
    report = evaluate_samples([task], samples, ks=(1, 2), workers=WORKERS)
    assert report.counts == {task.task_id: (2, 2)} and report.pass_at[2][0] == 1.0
