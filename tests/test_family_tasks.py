"""The small tasks of appendix A: number words, batches for each kind of model, and their scores."""

from __future__ import annotations

import pytest
import torch

from minillm import family_tasks as tasks
from minillm.errors import ConfigError
from minillm.family import FamilyConfig
from minillm.model import GPT, GPTConfig
from minillm.seq2seq import Seq2SeqLM


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty-two"), (100, "one hundred"),
    (105, "one hundred five"), (999, "nine hundred ninety-nine"), (1000, "one thousand"),
    (1001, "one thousand one"), (20_000, "twenty thousand"), (342_017, "three hundred forty-two thousand seventeen"),
    (999_999, "nine hundred ninety-nine thousand nine hundred ninety-nine"),
])  # fmt: skip
def test_number_words(n, words):
    assert tasks.number_words(n) == words


def test_number_words_are_distinct_and_bad_numbers_are_refused():
    assert len({tasks.number_words(n) for n in range(0, 1_000_000, 7)}) == len(range(0, 1_000_000, 7))
    for bad in (-1, 1_000_000, 2.5, True, "3"):
        with pytest.raises(ConfigError, match="number_words"):
            tasks.number_words(bad)


def test_number_pairs_are_distinct_seeded_and_respect_the_exclusion():
    train = tasks.number_pairs(300, seed=0, high=1000)
    assert train == tasks.number_pairs(300, seed=0, high=1000)
    seen = {int(d) for _, d in train}
    test = tasks.number_pairs(200, seed=1, high=1000, exclude=seen)
    assert len(seen) == 300 and not seen & {int(d) for _, d in test}
    assert all(tasks.number_words(int(d)) == w for w, d in train + test)
    with pytest.raises(ConfigError, match="cannot draw"):
        tasks.number_pairs(800, seed=2, high=1000, exclude=seen)


def test_mlm_collator_masks_each_batch_anew():
    collate = tasks.MLMCollator(mask_id=1, vocab_size=20, special_ids=(0,))
    windows = [torch.arange(2, 18)] * 8
    torch.manual_seed(0)
    a, b = collate(windows), collate(windows)
    assert a["input_ids"].shape == a["labels"].shape == (8, 16)
    assert not torch.equal(a["labels"], b["labels"])  # a fresh draw per batch
    chosen = a["labels"] != -100
    assert (a["labels"][chosen] == torch.stack(windows)[chosen]).all()


def test_classification_batches_for_an_encoder_and_a_decoder():
    examples = [([5, 6, 7], 1), ([8], 0), ([9, 9], 1)]
    enc = tasks.classification_batches(examples, 2, pad_id=0)
    assert enc[0]["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert enc[0]["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]] and enc[1]["labels"].tolist() == [1]
    dec = tasks.classification_batches(examples, 3, pad_id=0, decoder=True)
    assert dec[0]["lengths"].tolist() == [3, 1, 2] and dec[0]["targets"].tolist() == [1, 0, 1]
    assert sorted(len(b["labels"]) for b in tasks.classification_batches(examples, 2, 0, shuffle_seed=3)) == [1, 2]


def test_seq2seq_and_prefix_lm_batches():
    pairs = [([3, 4, 5], [6]), ([7], [8, 9])]
    s2s = tasks.seq2seq_batches(pairs, 2, pad_id=0, eos_id=1)[0]
    assert s2s["input_ids"].tolist() == [[3, 4, 5], [7, 0, 0]]
    assert s2s["labels"].tolist() == [[6, 1, -100], [8, 9, 1]]
    lm = tasks.prefix_lm_batches(pairs, 2, sep_id=2, eos_id=1)[0]
    # rows "3 4 5 <sep> 6 <eos>" and "7 <sep> 8 9 <eos> <pad>": the loss sees the target and the end token only
    assert lm["idx"].tolist() == [[3, 4, 5, 2, 6], [7, 2, 8, 9, 1]]
    assert lm["targets"].tolist() == [[-100, -100, -100, 6, 1], [-100, 8, 9, 1, -100]]


def test_exact_match_scores_what_the_models_write():
    torch.manual_seed(0)
    config = FamilyConfig(vocab_size=12, context_length=16, d_model=16, n_head=2, d_ff=32, n_layer=1,
                          n_decoder_layer=1, pad_token_id=0, eos_token_id=1)  # fmt: skip
    model = Seq2SeqLM(config).eval()
    sources = [[3, 4], [5, 6, 7]]
    written = model.generate(torch.tensor([[3, 4, 0]]), torch.tensor([[1, 1, 0]]), max_new_tokens=4)[0, 1:].tolist()
    target = written[: written.index(1)] if 1 in written else None
    hits = tasks.exact_match_seq2seq(model, sources, [target or [99], [99]], max_new_tokens=4)
    assert hits == [target is not None, False]
    gpt = GPT(GPTConfig(vocab_size=12, context_length=16, d_model=16, n_layer=1, n_head=2)).eval()
    prompt = torch.tensor([[3, 4, 2]])
    with torch.no_grad():
        out = []
        for _ in range(4):  # greedy without a cache, the reference for the cached, grouped version
            out.append(int(gpt(torch.cat([prompt, torch.tensor([out], dtype=torch.long)], 1))[0][0, -1].argmax()))
    target = out[: out.index(1)] if 1 in out else [99]
    assert tasks.exact_match_decoder(gpt, [[3, 4], [5]], [target, [99]], 2, 1, 4) == [1 in out, False]
