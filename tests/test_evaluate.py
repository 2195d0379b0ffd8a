"""minillm.evaluate and minillm.harness: scores against a tiny transformers GPT-2, by hand, and the
`evaluate` command (`minillm.cli.evaluate`) on a Hugging Face GPT-2 folder and on a minillm checkpoint.
Examples longer than the context: truncated from the left (checked by hand), skipped, all skipped.
(tests/test_harness.py: the command on tiny saved models, its flags, Ctrl-C.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from minillm.evaluate import (
    MCResult,
    Perplexity,
    binomial_stderr,
    encode_pair,
    fit_context,
    letter_ids,
    loglikelihoods,
    perplexity,
    score_letters,
    score_multiple_choice,
    sliding_windows,
    unigram_perplexity,
)
from minillm.cli import build_parser
from minillm.errors import DataError
from minillm.harness import evaluate_tasks, format_table
from minillm.model import GPT, GPTConfig
from minillm.tasks import MCExample, letter_prompt, load_arc, load_hellaswag, load_mmlu
from minillm.tokenizer import TOKENIZER_FILE, BPETokenizer, CharTokenizer


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random Hugging Face GPT-2 with GPT-2's vocabulary, saved with save_pretrained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf(hf_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def model(hf_dir):
    return GPT.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.from_gpt2()


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t >= 1, from the transformers model itself: shape (len(ids) - 1,)."""
    with torch.no_grad():
        logp = hf(torch.tensor([ids[:-1]])).logits[0].double().log_softmax(-1)
    return logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def independent_loglik(hf, tok, context: str, continuation: str) -> float:
    ctx, cont = tok.encode(context), tok.encode(continuation)
    assert tok.encode(context + continuation) == ctx + cont  # so the split is unambiguous
    return float(hf_logprobs(hf, ctx + cont)[-len(cont) :].sum())


@pytest.fixture(scope="module")
def examples():
    return load_hellaswag(limit=6) + load_arc("ARC-Challenge", limit=4)


def test_multiple_choice_matches_transformers(model, hf, tok, examples):
    result = score_multiple_choice(model, tok, examples, batch_size=7)
    assert len(result.scores) == len(examples)
    for ex, scores, acc, norm in zip(examples, result.scores, result.predictions["acc"],
                                     result.predictions["acc_norm"]):  # fmt: skip
        expected = [independent_loglik(hf, tok, ex.context, c) for c in ex.continuations]
        np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)
        assert acc == int(np.argmax(expected))
        per_byte = [v / len(c.encode("utf-8")) for v, c in zip(expected, ex.continuations)]
        assert norm == int(np.argmax(per_byte))
    assert len({len(e.choices) for e in examples}) >= 1
    assert {"acc", "acc_norm", "acc_token"} <= set(result.metrics())


def test_batched_equals_unbatched(model, tok, examples):
    one = score_multiple_choice(model, tok, examples, batch_size=1)
    many = score_multiple_choice(model, tok, examples, batch_size=16)
    np.testing.assert_allclose(np.concatenate(one.scores), np.concatenate(many.scores), atol=1e-5, rtol=0)
    assert one.predictions == many.predictions


def test_context_is_cut_from_the_left(model, hf, tok):
    ctx = list(range(100, 300))  # 200 tokens: more than the context length 128
    cont = [7, 8, 9]
    (got,) = loglikelihoods(model, [(ctx, cont)])
    kept = (ctx + cont)[-129:]  # 128 inputs predict the last 128 tokens
    expected = float(hf_logprobs(hf, kept)[-3:].sum())
    assert got == pytest.approx(expected, abs=1e-4)


def test_fit_context_keeps_the_continuation_and_cuts_the_left():
    assert fit_context([1, 2], [3], 16) == ([1, 2], [3])  # fits whole
    assert fit_context(list(range(20)), [7, 8], 16) == (list(range(5, 20)), [7, 8])  # 15 + 2 = 17 tokens, 16 inputs
    assert fit_context([1, 2, 3], [4] * 16, 16) == ([3], [4] * 16)  # the longest continuation that fits
    assert fit_context([1, 2, 3], [4] * 17, 16) is None  # no room for a context token


def _hand_loglik(model, context_ids: list[int], cont_ids: list[int]) -> float:
    """Summed log p(continuation) after the context cut from the left by hand, from `model(...)` itself."""
    kept = (context_ids + cont_ids)[-(model.config.context_length + 1) :]
    with torch.no_grad():
        logits, _ = model(torch.tensor([kept[:-1]]))
    logp = logits[0].double().log_softmax(-1)  # (T, V): row t predicts kept[t + 1]
    first = len(kept) - 1 - len(cont_ids)  # the row predicting the continuation's first token
    return sum(float(logp[first + j, t]) for j, t in enumerate(cont_ids))


def test_truncated_example_scores_the_left_truncated_text(model, tok):
    long_context = "A man walks his dog along the river every morning before work. " * 20  # ~280 tokens > 128
    conts = [" The dog barks at the ducks.", " He drinks a cup of coffee."]
    examples = [MCExample("long", "q", ["a", "b"], 1, long_context.strip(), conts),
                MCExample("short", "q", ["a", "b"], 0, "The cat sat on the", [" mat.", " roof of the house."])]
    result = score_multiple_choice(model, tok, examples, batch_size=3)
    assert result.truncated == 1 and result.skipped == [] and len(result.examples) == 2
    for ex, scores in zip(examples, result.scores):
        ctx = tok.encode(ex.context)
        expected = []
        for c in ex.continuations:
            cont = tok.encode(c)
            assert tok.encode(ex.context + c) == ctx + cont  # the split is unambiguous
            expected.append(_hand_loglik(model, ctx, cont))
        np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)
    assert len(tok.encode(examples[0].context)) > model.config.context_length  # really truncated
    m = result.metrics()
    assert (m["n"], m["truncated"], m["skipped"]) == (2, 1, 0)
    assert "1 of 2 truncated" in m["note"]


@pytest.fixture(scope="module")
def small(tok):
    """A random GPT with GPT-2's vocabulary and a context of 16 tokens."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=16, d_model=8, n_layer=1, n_head=2)).eval()


def test_examples_whose_answer_does_not_fit_are_skipped_and_counted(small, tok):
    long_answer = " " + " ".join(["word"] * 20)  # 20 tokens > 16
    examples = [MCExample("fits", "q", ["a", "b"], 0, "Q: one\nA:", [" yes", " no"]),
                MCExample("cut", "two " * 30, ["a", "b"], 1, "Q: " + "two " * 30 + "\nA:", [" yes", " no"]),
                MCExample("skip", "q", ["a", "b"], 0, "Q: three\nA:", [" yes", long_answer])]
    result = score_multiple_choice(small, tok, examples, batch_size=4)
    assert [e.id for e in result.examples] == ["fits", "cut"] and [e.id for e in result.skipped] == ["skip"]
    assert result.truncated == 1 and len(result.scores) == 2
    assert all(len(p) == 2 for p in result.predictions.values())
    m = result.metrics()
    assert (m["n"], m["truncated"], m["skipped"]) == (2, 1, 1)
    hits = sum(p == e.label for p, e in zip(result.predictions["acc"], examples[:2]))
    assert m["acc"] == hits / 2 and m["acc_stderr"] == pytest.approx(binomial_stderr(hits / 2, 2))  # over the scored
    assert "1 of 3 skipped" in m["note"] and "over the 2 scored" in m["note"]
    # the scores of the scored examples are those of scoring them alone
    alone = score_multiple_choice(small, tok, examples[:2], batch_size=1)
    np.testing.assert_allclose(np.concatenate(alone.scores), np.concatenate(result.scores), atol=1e-5, rtol=0)
    # letter prompts are cut from the left too (the long question), never skipped
    letters = score_letters(small, tok, examples, batch_size=2)
    assert len(letters.examples) == 3 and letters.skipped == [] and letters.truncated == 1


def test_all_skipped_task_reports_n_0_with_a_note(tok):
    tiny = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=4, d_model=8, n_layer=1, n_head=2)).eval()
    report = evaluate_tasks(tiny, tok, ["hellaswag", "mmlu"], limit=2, progress=False)
    hs = report["hellaswag"]  # every HellaSwag ending is longer than 4 tokens
    assert (hs["n"], hs["skipped"], hs["truncated"]) == (0, 2, 0)
    assert hs["acc"] is None and hs["acc_stderr"] is None and hs["chance"] is None
    assert "all 2 examples skipped" in hs["note"] and "n = 0" in hs["note"]
    mmlu = report["mmlu"]  # some MMLU answers fit in 4 tokens ("True", "2"): those examples are scored
    assert mmlu["n"] + mmlu["skipped"] == 2 * 57 and mmlu["truncated"] == mmlu["n"]
    json.dumps(report, allow_nan=False)  # None, not NaN: valid JSON
    table = format_table(report)
    assert "n/a" in table and "hellaswag: all 2 examples skipped" in table
    result = score_multiple_choice(tiny, tok, load_hellaswag(limit=1))
    with pytest.raises(DataError, match="no example was scored"):
        result.accuracy()


def test_scorers_reject_bad_batch_sizes(small, tok):
    ex = [MCExample("x", "q", ["a", "b"], 0, "Q: one\nA:", [" yes", " no"])]
    for batch_size in (0, -1):
        for scorer in (score_multiple_choice, score_letters):
            with pytest.raises(DataError, match="batch_size must be a positive"):
                scorer(small, tok, ex, batch_size=batch_size)
        with pytest.raises(DataError, match="batch_size"):
            perplexity(small, [1, 2, 3], batch_size=batch_size)


def test_encode_pair_moves_trailing_space(tok):
    assert encode_pair(tok, "The cat ", "sat") == (tok.encode("The cat"), tok.encode(" sat"))
    with pytest.raises(ValueError, match="no tokens"):
        loglikelihoods(GPT(GPTConfig(vocab_size=16, context_length=8, d_model=8, n_layer=1, n_head=2)), [([1], [])])


def test_letters_match_transformers(model, hf, tok):
    examples = load_mmlu(limit_per_subject=1, subjects=["anatomy", "virology", "astronomy"])
    result = score_letters(model, tok, examples, batch_size=2)
    letters = [tok.encode(f" {c}")[0] for c in "ABCD"]
    for ex, scores, pred in zip(examples, result.scores, result.predictions["acc"]):
        ids = tok.encode(letter_prompt(ex))
        with torch.no_grad():
            last = hf(torch.tensor([ids])).logits[0, -1]
        np.testing.assert_allclose(scores, last[letters].numpy(), atol=1e-4, rtol=0)
        assert pred == int(last[letters].argmax())
    assert 0 < result.extra["letter_mass"] < 1


def test_letter_ids_need_single_tokens(tok):
    assert letter_ids(tok, 4) == [tok.encode(" " + c)[0] for c in "ABCD"]
    with pytest.raises(ValueError, match="one token per letter"):
        letter_ids(CharTokenizer.from_text(" ABCD"), 4)


def test_perplexity_full_context_matches_transformers(model, hf, tok):
    ids = tok.encode("The quick brown fox jumps over the lazy dog. " * 12)[:100]
    expected = math.exp(-float(hf_logprobs(hf, ids).mean()))
    for stride in (None, 10, 1):  # one window covers the text: the stride changes nothing
        result = perplexity(model, ids, stride=stride, window=100)
        assert result.n_tokens == 99
        assert result.perplexity == pytest.approx(expected, rel=1e-5)


def test_sliding_windows_hand_checked():
    # 10 tokens, windows of 4 every 2: targets 1-4, then 5-6, 7-8, 9.
    assert sliding_windows(10, 4, 2) == [(0, 4, 0), (2, 6, 4), (4, 8, 6), (6, 9, 8)]
    assert sliding_windows(9, 4, 4) == [(0, 4, 0), (4, 8, 4)]
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(10, 4, 5)


def test_perplexity_with_stride_hand_checked(model, hf):
    ids = [5, 17, 300, 4000, 12, 99, 7, 1000, 42, 8]
    # By hand: each target token and the context the window gives it (window 4, stride 2).
    scored = [(ids[0:1], ids[1]), (ids[0:2], ids[2]), (ids[0:3], ids[3]), (ids[0:4], ids[4]),
              (ids[2:5], ids[5]), (ids[2:6], ids[6]), (ids[4:7], ids[7]), (ids[4:8], ids[8]),
              (ids[6:9], ids[9])]  # fmt: skip
    nll = [-float(hf_logprobs(hf, ctx + [t])[-1]) for ctx, t in scored]
    result = perplexity(model, ids, window=4, stride=2, batch_size=3)
    assert result.n_tokens == 9
    assert result.loss == pytest.approx(sum(nll) / 9, abs=1e-5)
    full_window = perplexity(model, ids, window=4, stride=1)  # every token with up to 4 tokens of context
    nll1 = [-float(hf_logprobs(hf, ids[max(0, t - 4) : t + 1])[-1]) for t in range(1, 10)]
    assert full_window.loss == pytest.approx(sum(nll1) / 9, abs=1e-5)
    with pytest.raises(ValueError, match="context length"):
        perplexity(model, ids, window=1000)


def test_unigram_perplexity_hand_computed():
    # counts 2, 1, 0 plus one each: p = 3/6, 2/6, 1/6; the scored tokens are 0 and 1.
    result = unigram_perplexity([0, 0, 1], [2, 0, 1], vocab_size=3)
    assert result.n_tokens == 2
    assert result.loss == pytest.approx(-(math.log(3 / 6) + math.log(2 / 6)) / 2)
    assert Perplexity(math.log(4.0), 1).perplexity == pytest.approx(4.0)
    with pytest.raises(ValueError, match="smoothing"):
        unigram_perplexity([0], [0, 0], 2, smoothing=0)


def test_binomial_stderr_and_result_aggregates():
    assert binomial_stderr(0.25, 100) == pytest.approx(math.sqrt(0.25 * 0.75 / 100))
    exs = [MCExample(str(i), "q", ["a", "b"], i % 2, "c", [" a", " b"], subject="xy"[i // 3]) for i in range(4)]
    # labels 0 1 0 1, subjects x x x y; predicting 0 always: x 2/3 right, y 0/1
    result = MCResult("t", "loglik", exs, [[0.0, 0.0]] * 4, {"acc": [0, 0, 0, 0]})
    assert result.accuracy() == 0.5
    assert result.by_subject() == {"x": (pytest.approx(2 / 3), 3), "y": (0.0, 1)}
    macro, micro = result.macro_micro()
    assert macro == pytest.approx((2 / 3 + 0) / 2) and micro == 0.5
    m = result.metrics()
    assert m["chance"] == 0.5 and m["n"] == 4 and m["acc_stderr"] == pytest.approx(0.25)
    with pytest.raises(KeyError, match="acc_norm"):
        result.accuracy("acc_norm")


def test_evaluate_tasks_and_table(model, tok):
    report = evaluate_tasks(model, tok, ["hellaswag", "truthfulqa-mc", "mmlu"], limit=1,
                            methods=("loglik", "letter"), batch_size=32, progress=False)  # fmt: skip
    assert set(report) == {"hellaswag", "hellaswag/letter", "truthfulqa-mc", "truthfulqa-mc/letter", "mmlu",
                           "mmlu/letter"}  # fmt: skip
    assert report["hellaswag"]["n"] == 1 and report["mmlu"]["n"] == 57
    assert len(report["mmlu"]["subjects"]) == 57
    table = format_table(report)
    assert "hellaswag" in table and "acc_norm" in table and "±" in table
    with pytest.raises(ValueError, match="methods"):
        evaluate_tasks(model, tok, ["hellaswag"], methods=("guess",))


def _run_cli(argv):
    """Parse and run one command; a user's mistake raises (`minillm.cli.main` would print it)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_cli_writes_json(hf_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    code = _run_cli(["evaluate", "--checkpoint", str(hf_dir), "--tasks", "arc-easy,arc-challenge", "--limit", "3",
                     "--out", str(out), "--no-progress", "--device", "cpu"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "arc-easy" in printed and "arc-challenge" in printed
    results = json.loads(out.read_text())["results"]
    assert results["arc-easy"]["n"] == 3 and 0 <= results["arc-easy"]["acc"] <= 1
    with pytest.raises(ValueError, match="unknown tasks"):
        _run_cli(["evaluate", "--checkpoint", str(hf_dir), "--tasks", "hellaswog"])


def test_cli_evaluates_a_minillm_checkpoint(tmp_path, tok):
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=64, d_model=16, n_layer=1, n_head=2)).eval()
    folder = tmp_path / "model"
    model.save(folder)
    tok.save(folder / TOKENIZER_FILE)
    out = tmp_path / "results.json"
    assert _run_cli(["evaluate", "--checkpoint", str(folder), "--tasks", "arc-easy", "--limit", "3", "--method",
                     "both", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0  # fmt: skip
    results = json.loads(out.read_text())["results"]
    expected = evaluate_tasks(model, tok, ["arc-easy"], limit=3, methods=("loglik", "letter"), progress=False)
    assert results.keys() == expected.keys() == {"arc-easy", "arc-easy/letter"}
    for task in expected:  # the same weights: the same accuracies, and the same letter_mass (a probability)
        assert results[task] == pytest.approx(expected[task], rel=1e-5)
    assert 0 < results["arc-easy/letter"]["letter_mass"] < 1
    with pytest.raises(FileNotFoundError, match="not a directory"):
        _run_cli(["evaluate", "--checkpoint", str(tmp_path / "missing"), "--tasks", "arc-easy"])


def test_benchmark_runs(capsys):
    from minillm.bench.evaluate import main

    assert main(["--limit", "2", "--batch-size", "4", "--device", "cpu", "--n-layer", "1", "--d-model", "64"]) == 0
    out = capsys.readouterr().out
    assert "examples/s" in out and "same answers" in out


def test_perplexity_puts_the_training_flag_back_even_when_the_model_fails():
    model = GPT(GPTConfig(vocab_size=20, context_length=8, d_model=16, n_layer=1, n_head=2)).train()
    calls = []

    def fail_on_the_second_batch(module, args):
        calls.append(module.training)
        if len(calls) == 2:
            raise RuntimeError("out of memory")

    model.register_forward_pre_hook(fail_on_the_second_batch)
    with pytest.raises(RuntimeError, match="out of memory"):
        perplexity(model, torch.randint(0, 20, (64,)), batch_size=2)
    assert calls == [False, False] and model.training  # evaluated in eval mode, and put back
