"""Chapter 08's exercises: bits per byte, a bootstrap error bar, and acc_norm by hand.

Each check builds its own inputs (a small byte-level BPE tokenizer trained on a
few sentences with accented words, a tiny random GPT, random answer sheets), so
it needs nothing from the chapter and runs in well under a second. The
references are `minillm.evaluate`: `perplexity`, `binomial_stderr` and
`score_multiple_choice`.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

import numpy as np
import torch

from minillm import evaluate
from minillm.exercises import ExerciseFailed, as_number, exercise, expect
from minillm.model import GPT, GPTConfig
from minillm.tasks import MCExample
from minillm.tokenizer import BPETokenizer

#: Training text of the checks' tokenizer: English with accents and a dash, so bytes != characters.
TEXT = ("The café on the corner serves crème brûlée and naïve coffee to the committee. "
        "A résumé of the naïve plan — written in haste — was approved on Monday. "
        "def area(width, height):\n    return width * height\n\n"
        "Über den Wolken muß die Freiheit wohl grenzenlos sein. ")
WORDS = ("café", "cafe", "crème", "creme", "brûlée", "the", "a", "plan", "résumé", "resume", "—", "naïve", "coffee",
         "corner", "committee", "Monday", "über", "width", "height", "return", "approved", "written", "haste")


@lru_cache(maxsize=1)
def _tokenizer() -> BPETokenizer:
    return BPETokenizer.train(TEXT * 3, 300)


def _model(seed: int, context_length: int = 32) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=_tokenizer().vocab_size, context_length=context_length, d_model=32, n_layer=2,
                       n_head=2)  # fmt: skip
    return GPT(config).eval()


# ---------------------------------------------------------------------------
# 8.1 Bits per byte
# ---------------------------------------------------------------------------


@exercise("8.1", "bits per byte")
def grade_bits_per_byte(bits_per_byte) -> str:
    """bits_per_byte(model, tokenizer, ids) against evaluate.perplexity: total nats / ln 2 / bytes of ids[1:]."""
    tok = _tokenizer()
    rng = random.Random(8)
    cases = []
    for seed, n_words, context in ((0, 30, 32), (1, 90, 32), (2, 60, 16)):
        text = "The " + " ".join(rng.choice(WORDS) for _ in range(n_words))  # ASCII first token, accents after
        cases.append((_model(seed, context), tok.encode_ordinary(text)))
    for model, ids in cases:
        p = evaluate.perplexity(model, ids)
        n_bytes = len(tok.decode(ids[1:]).encode("utf-8"))  # the scored tokens: all but the first
        expected = p.loss * p.n_tokens / math.log(2) / n_bytes
        got = as_number(bits_per_byte(model, tok, list(ids)), f"bits_per_byte on {len(ids)} tokens")
        if not math.isclose(got, expected, rel_tol=1e-4):
            hints = {p.loss / math.log(2): "that is bits per *token*: multiply by the number of scored tokens "
                                           "and divide by their bytes",
                     p.loss * p.n_tokens / n_bytes: "that is nats per byte: divide by ln 2 to get bits",
                     p.loss * p.n_tokens / math.log(2) / len(tok.decode(ids[1:])):
                         "you divided by characters; count UTF-8 bytes (`text.encode('utf-8')`): 'é' is two",
                     p.loss * p.n_tokens / math.log(2) / len(tok.decode(ids).encode("utf-8")):
                         "the first token is never predicted: count the bytes of ids[1:], the scored tokens"}
            hint = next((h for v, h in hints.items() if math.isclose(got, v, rel_tol=1e-4)),
                        "total loss in nats = loss x n_tokens of `minillm.evaluate.perplexity`; bits = nats / ln 2; "
                        "bytes = UTF-8 bytes of the scored tokens ids[1:]")  # fmt: skip
            raise ExerciseFailed(f"on {len(ids)} tokens (context {model.config.context_length}) you return "
                                 f"{got:.5f} bits per byte, the reference {expected:.5f}: {hint}.")  # fmt: skip
    return f"bits per byte matches minillm.evaluate.perplexity on {len(cases)} texts, two longer than the context."


# ---------------------------------------------------------------------------
# 8.2 Bootstrap standard error
# ---------------------------------------------------------------------------


@exercise("8.2", "a bootstrap standard error")
def grade_bootstrap_se(bootstrap_se) -> str:
    """bootstrap_se(correct, resamples, seed) close to evaluate.binomial_stderr, random, reproducible."""
    rng = np.random.default_rng(2024)
    cases = [(200, 0.3), (57, 0.7), (1000, 0.25), (40, 0.5)]
    for n, p in cases:
        correct = rng.random(n) < p
        acc = float(correct.mean())
        ref = evaluate.binomial_stderr(acc, n)
        got = as_number(bootstrap_se(correct.copy(), resamples=2000, seed=0), f"bootstrap_se on {n} answers")
        if not abs(got / ref - 1) < 0.1:
            hint = ("a standard error of 0 means every resample has the same accuracy: draw n indices WITH "
                    "replacement (`rng.integers(0, n, size=(resamples, n))`)" if got < 1e-12 else
                    "return the standard deviation of the resampled *accuracies* (one mean per resample, each over "
                    "n answers), not of the answers themselves")  # fmt: skip
            raise ExerciseFailed(f"{n} answers, accuracy {acc:.3f}: your bootstrap standard error is {got:.4f}, "
                                 f"the binomial one {ref:.4f} (they should agree within 10%): {hint}.")  # fmt: skip
        again = as_number(bootstrap_se(correct.copy(), resamples=2000, seed=0), "bootstrap_se")
        expect(again == got, f"bootstrap_se gave {got} and then {again} with the same seed: seed your generator "
                             "(`np.random.default_rng(seed)`) so the result is reproducible.")  # fmt: skip
        other = as_number(bootstrap_se(correct.copy(), resamples=2000, seed=1), "bootstrap_se")
        expect(other != got, "seeds 0 and 1 gave exactly the same value: a bootstrap resamples at random, so the "
                             "seed should change the last digits (is it the formula sqrt(p(1-p)/n) in disguise?).")
    all_right = np.ones(30, dtype=bool)
    zero = as_number(bootstrap_se(all_right, resamples=500, seed=0), "bootstrap_se on 30 right answers")
    expect(abs(zero) < 1e-12, f"30 right answers out of 30 resample to accuracy 1 every time, so the standard error "
                              f"is 0; you return {zero}.")  # fmt: skip
    return (f"within 10% of minillm.evaluate.binomial_stderr on {len(cases)} answer sheets, reproducible with a seed, "
            "and 0 when every answer is right.")  # fmt: skip


# ---------------------------------------------------------------------------
# 8.3 acc_norm by hand
# ---------------------------------------------------------------------------


def _mc_examples(seed: int, n: int) -> list[MCExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.choice((2, 3, 4, 5))
        choices = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(k)]
        context = "Question: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\nAnswer:"
        out.append(MCExample(id=f"q{i}", question=context, choices=choices, label=rng.randrange(k), context=context,
                             continuations=[" " + c for c in choices]))  # fmt: skip
    return out


@exercise("8.3", "acc_norm by hand")
def grade_acc_norm(acc_norm_picks) -> str:
    """acc_norm_picks(result) against result.predictions['acc_norm'] of evaluate.score_multiple_choice."""
    tok = _tokenizer()
    total = 0
    for seed in (0, 1):
        result = evaluate.score_multiple_choice(_model(seed), tok, _mc_examples(seed, 40), batch_size=64)
        expected = result.predictions["acc_norm"]
        got = acc_norm_picks(result)
        try:
            got = [int(g) for g in got]
        except (TypeError, ValueError):
            raise ExerciseFailed(f"expected a list of choice indices (ints), got {type(got).__name__}") from None
        expect(len(got) == len(expected), f"{len(expected)} scored examples but {len(got)} picks: one index per "
                                          "example of `result.examples`.")  # fmt: skip
        wrong = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
        if wrong:
            i = wrong[0]
            ex, ll = result.examples[i], result.scores[i]
            per_byte = [v / len(c.encode("utf-8")) for v, c in zip(ll, ex.continuations)]
            if got == result.predictions["acc"]:
                hint = "these are the `acc` picks (summed log-likelihood); divide each by its continuation's bytes"
            elif got == result.predictions["acc_token"]:
                hint = "these are the `acc_token` picks (per token); divide by UTF-8 bytes instead"
            else:
                hint = ("divide each summed log-likelihood by the UTF-8 bytes of its *continuation* "
                        "(`len(c.encode('utf-8'))` for c in `continuations`, the text that was scored, leading space "
                        "included; not `choices`, not characters), then take the argmax")  # fmt: skip
            raise ExerciseFailed(f"{len(wrong)} of {len(expected)} picks differ. Example {i}: continuations "
                                 f"{ex.continuations!r}, log-likelihoods {[round(v, 2) for v in ll]}, per byte "
                                 f"{[round(v, 3) for v in per_byte]}: the reference picks {expected[i]}, you pick "
                                 f"{got[i]}. Hint: {hint}.")  # fmt: skip
        total += len(expected)
    return f"your picks equal minillm.evaluate's acc_norm on {total} questions of two tiny models."
