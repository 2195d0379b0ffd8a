"""minillm.metrics: BLEU against sacrebleu, ROUGE against rouge-score, the judge's parser by hand."""

from __future__ import annotations

import math

import pytest
import torch

from minillm.metrics import (
    bleu,
    judge,
    judge_prompt,
    lcs_length,
    model_judge,
    parse_score,
    rouge,
    rouge_corpus,
    rouge_tokens,
    tokenize_13a,
)
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import CharTokenizer

PAIRS = [
    ("The cat sat on the mat.", "The cat is sitting on the mat."),
    ("It costs $3.50, or 1,000 yen in total!", "The price is $3.50 (1,000 yen) in total."),
    ("A quick brown fox jumps over the lazy dog", "The quick brown fox jumped over the lazy dog."),
    ("He said: \"we'll be there at 10-11 am\".", "He said they would arrive between 10-11 am."),
    ("Rain is expected tomorrow in the north-west.", "Tomorrow, rain is expected in the north-west."),
    ("Completely unrelated words here", "The committee approved the annual budget."),
    ("the the the the the the", "The cat ate the fish and the bird."),
    ("Paris is the capital of France.", "Paris is the capital of France."),
    ("Short.", "A much longer reference sentence that the short hypothesis does not cover at all."),
    ("Models trained on more data, for longer, tend to generalize better [1].",
     "Models trained longer on more data generalize better (see [1])."),
]  # fmt: skip


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps, refs = [h for h, _ in PAIRS], [r for _, r in PAIRS]
    expected = sacrebleu.corpus_bleu(hyps, [refs])
    ours = bleu(hyps, refs)
    assert ours.score == pytest.approx(expected.score, abs=0.01)
    assert ours.brevity_penalty == pytest.approx(expected.bp, abs=1e-9)
    assert (ours.hyp_len, ours.ref_len) == (expected.sys_len, expected.ref_len)
    for i in range(len(PAIRS)):  # single sentences: smoothing and brevity matter more
        one = sacrebleu.corpus_bleu([hyps[i]], [[refs[i]]])
        assert bleu([hyps[i]], [refs[i]]).score == pytest.approx(one.score, abs=0.01)
    # several references per hypothesis
    refs2 = [r.lower() for r in refs]
    multi = sacrebleu.corpus_bleu(hyps, [refs, refs2])
    assert bleu(hyps, list(zip(refs, refs2))).score == pytest.approx(multi.score, abs=0.01)


def test_bleu_hand_checked():
    assert tokenize_13a("It's 3.5 km, isn't it?") == ["It's", "3.5", "km", ",", "isn't", "it", "?"]
    assert bleu(["a b c d"], ["a b c d"]).score == pytest.approx(100.0)
    # hypothesis of 2 words vs reference of 4: bp = exp(1 - 4/2); no bigram matches at all without smoothing
    short = bleu(["a b"], ["a b c d"], max_n=1)
    assert short.brevity_penalty == pytest.approx(math.exp(-1)) and short.score == pytest.approx(100 * math.exp(-1))
    assert bleu(["a x"], ["a b"], max_n=2, smooth="none").score == 0.0
    with pytest.raises(ValueError, match="references"):
        bleu(["a"], ["a", "b"])


def test_rouge_matches_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for hyp, ref in PAIRS:
        expected = scorer.score(ref, hyp)  # rouge-score takes (target, prediction)
        ours = rouge(hyp, ref)
        for key in ("rouge1", "rouge2", "rougeL"):
            for part in ("precision", "recall", "fmeasure"):
                assert getattr(ours[key], part) == pytest.approx(getattr(expected[key], part), abs=1e-3), (hyp, key)


def test_rouge_hand_checked():
    assert rouge_tokens("The cat's 2 hats!") == ["the", "cat", "s", "2", "hats"]
    assert lcs_length(["a", "b", "c", "d", "e"], ["a", "c", "e", "x"]) == 3
    r = rouge("the cat sat", "the cat sat on the mat")
    assert r["rouge1"].precision == 1.0 and r["rouge1"].recall == pytest.approx(3 / 6)
    assert r["rouge2"].recall == pytest.approx(2 / 5)
    assert r["rougeL"].fmeasure == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert rouge_corpus(["a b", "x"], ["a b", "y"])["rouge1"] == pytest.approx(0.5)


@pytest.mark.parametrize("reply, expected", [
    ("Score: 7", 7), ("**8**/10 - a good answer", 8), ("I'd rate it 6 out of 10.", 6),
    ("score - seven", 7), ("Rating: 7.5", 7.5), ("The answer mentions 1999. Score: 9", 9),
    ("10/10!", 10), ("Score: 42", None), ("no idea, sorry", None), ("", None),
    ("3 reasons: ... overall score 4", 4),
])  # fmt: skip
def test_parse_score(reply, expected):
    assert parse_score(reply) == expected


def test_judge_aggregates_with_any_callable():
    replies = iter(["Score: 8", "Score: 6", "garbage", "I give it 10/10"])
    result = judge(lambda prompt: next(replies), ["q1", "q2", "q3", "q4"], ["a1", "a2", "a3", "a4"])
    assert result.scores == [8, 6, None, 10]
    assert result.mean == pytest.approx(8.0)
    assert result.stderr == pytest.approx(math.sqrt(((8 - 8) ** 2 + (6 - 8) ** 2 + (10 - 8) ** 2) / 2 / 3))
    assert result.unparsed == pytest.approx(0.25)
    prompt = judge_prompt("What is 2+2?", "4", reference="four")
    assert "Question: What is 2+2?" in prompt and "reference answer: four" in prompt and prompt.endswith("Score:")
    with pytest.raises(ValueError, match="same length"):
        judge(str, ["q"], [])


def test_model_judge_runs_a_minillm_model():
    tok = CharTokenizer.from_text(judge_prompt("q?", "a", "r") + "0123456789 ")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, context_length=64, d_model=16, n_layer=1, n_head=2)).eval()
    reply_fn = model_judge(model, tok, max_new_tokens=5)
    prompt = judge_prompt("q?", "a", "r")
    reply = reply_fn(prompt)
    assert isinstance(reply, str) and len(reply) == 5
    # greedy decoding by hand: the prompt cut on the left to the context (64), a full window each step
    seq = tok.encode_ordinary(prompt)
    with torch.no_grad():
        for _ in range(5):
            seq.append(int(model(torch.tensor([seq[-64:]]))[0][0, -1].argmax()))
    assert reply == tok.decode(seq[-5:])
