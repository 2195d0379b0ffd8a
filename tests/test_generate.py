"""Tests of minillm.generate: logits filtering, decoding rules, KV cache, stop tokens, prompt -> text."""

from __future__ import annotations

import math
import re

import pytest
import torch

from minillm.errors import ConfigError, DataError
from minillm.generate import check_sampling, complete, filter_logits, generate, stream, stream_text
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import ENDOFTEXT, BPETokenizer, CharTokenizer


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=53, context_length=20, d_model=32, n_layer=2, n_head=4, n_kv_head=2, positions="rope")
    m = GPT(cfg)
    with torch.no_grad():  # larger output weights: peaky, varied next-token distributions
        m.lm_head.weight.mul_(5)
    return m.eval()


PROBS = torch.tensor([0.5, 0.25, 0.125, 0.125])


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, [0.5, 0.25, 0.125, 0.125]),
        ({"top_k": 2}, [2 / 3, 1 / 3, 0.0, 0]),
        ({"top_p": 0.4}, [1.0, 0, 0, 0]),  # the top token alone already has 0.5 >= 0.4
        ({"top_p": 0.7}, [2 / 3, 1 / 3, 0, 0]),  # 0.5 < 0.7 <= 0.75
        ({"top_p": 0.8}, [4 / 7, 2 / 7, 1 / 7, 0]),  # 0.75 < 0.8 <= 0.875
        ({"top_p": 1.0}, [0.5, 0.25, 0.125, 0.125]),
        ({"temperature": 0.5}, [16 / 22, 4 / 22, 1 / 22, 1 / 22]),  # p^2, renormalized
        ({"temperature": 0.5, "top_k": 2}, [0.8, 0.2, 0, 0]),
        ({"top_k": 3}, [0.5, 0.25, 0.125, 0.125]),  # tokens 2 and 3 tie for 3rd place: both stay
    ],
)
def test_filter_logits_by_hand(kwargs, expected):
    logits = PROBS.log() + 3.0  # a constant shift does not change the distribution
    torch.testing.assert_close(filter_logits(logits, **kwargs), torch.tensor(expected))


def test_filter_logits_tie_at_k_and_errors():
    probs = filter_logits(torch.tensor([[2.0, 1.0, 1.0, 0.0]]), top_k=2)
    assert (probs > 0).sum() == 3
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(PROBS, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(PROBS, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(PROBS, top_p=1.5)


def test_filter_logits_on_batches():
    logits = torch.tensor([[0.0, 1.0, 2.0], [5.0, 0.0, 0.0]])
    probs = filter_logits(logits, top_p=0.5)
    assert torch.equal(probs > 0, torch.tensor([[False, False, True], [True, False, False]]))


def test_greedy_matches_a_plain_argmax_loop(model):
    idx = torch.randint(0, 53, (2, 4))
    expected = idx
    for _ in range(10):
        logits, _ = model(expected)
        expected = torch.cat([expected, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generate(model, idx, 10, temperature=0), expected)
    assert torch.equal(generate(model, idx, 10, temperature=0, use_cache=False), expected)


def test_seeded_sampling_is_reproducible(model):
    idx = torch.randint(0, 53, (2, 4))
    a = generate(model, idx, 12, seed=7)
    assert torch.equal(a, generate(model, idx, 12, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(a, generate(model, idx, 12, seed=8))
    assert a.shape == (2, 16) and torch.equal(a[:, :4], idx)


@pytest.mark.parametrize("kwargs", [{}, {"top_k": 5}, {"top_p": 0.9, "temperature": 0.8}])
def test_cached_and_uncached_give_the_same_tokens(model, kwargs):
    idx = torch.randint(0, 53, (3, 5))
    n = 30  # 5 + 30 > context length 20: both paths slide the window
    cached = generate(model, idx, n, seed=3, **kwargs)
    uncached = generate(model, idx, n, seed=3, use_cache=False, **kwargs)
    assert cached.shape == (3, 35)
    assert torch.equal(cached, uncached)


def test_top_k_one_is_greedy(model):
    idx = torch.randint(0, 53, (2, 3))
    assert torch.equal(generate(model, idx, 10, top_k=1, seed=0), generate(model, idx, 10, temperature=0))


def test_stop_tokens_in_a_batch(model):
    idx = torch.randint(0, 53, (2, 3))
    free = generate(model, idx, 10, temperature=0)
    stop = int(free[0, 3 + 4])  # row 0's 5th new token (it may also appear earlier)
    # Step at which each row first emits `stop` (10 = never).
    first = [int((row[3:] == stop).nonzero()[0]) if (row[3:] == stop).any() else 10 for row in free]
    out = generate(model, idx, 10, temperature=0, stop_tokens=[stop])
    assert out.shape[1] == 3 + (max(first) + 1 if max(first) < 10 else 10)
    for row, k in enumerate(first):
        n = min(k + 1, out.shape[1] - 3)  # tokens up to and including the stop ...
        assert torch.equal(out[row, : 3 + n], free[row, : 3 + n])
        assert torch.all(out[row, 3 + n :] == stop)  # ... then the stop token repeated


def test_single_sequence_stops_at_stop_token(model):
    idx = torch.randint(0, 53, (1, 3))
    free = generate(model, idx, 8, temperature=0)
    stop = int(free[0, 5])  # the 3rd new token (it may also appear earlier)
    k = int((free[0, 3:] == stop).nonzero()[0])
    out = generate(model, idx, 8, temperature=0, stop_tokens={stop, 10_000})
    assert torch.equal(out, free[:, : 3 + k + 1])


def test_stream_yields_one_token_per_step(model):
    idx = torch.randint(0, 53, (2, 3))
    steps = list(stream(model, idx, 6, seed=1))
    assert len(steps) == 6 and all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.cat([idx, torch.stack(steps, 1)], 1), generate(model, idx, 6, seed=1))


def test_generate_edge_cases_and_training_flag(model):
    idx = torch.randint(0, 53, (1, 4))
    assert torch.equal(generate(model, idx, 0), idx)
    model.train()
    generate(model, idx, 2)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, idx, -1)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        generate(model, idx[0], 3)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, idx, 3, top_p=0.0)
    with pytest.raises(TypeError, match="GPT"):
        generate(torch.nn.Linear(2, 2), idx, 3)


# ---------------------------------------------------------------------------
# Prompt -> text: stream_text and complete
# ---------------------------------------------------------------------------

# Documents with multi-byte characters (2, 3 and 4 UTF-8 bytes), ended by <|endoftext|>.
DOCS = ["Le café est prêt 😀 merci 🎉", "Grüße aus Köln 🙂 bis bald", "日本語のテキスト 🚀 です"]


@pytest.fixture(scope="module")
def byte_tok() -> BPETokenizer:
    """A byte-level tokenizer without merges: every non-ASCII character is 2-4 tokens."""
    return BPETokenizer.train(DOCS, 257, special_tokens=[ENDOFTEXT])


@pytest.fixture(scope="module")
def emoji_model(byte_tok) -> GPT:
    """A tiny model trained (about a second, one thread) to recite DOCS, each followed by <|endoftext|>."""
    torch.manual_seed(0)
    ids = byte_tok.encode(ENDOFTEXT.join(DOCS) + ENDOFTEXT, allowed_special="all")
    data = torch.tensor(ids * 4)
    cfg = GPTConfig(vocab_size=byte_tok.vocab_size, context_length=32, d_model=32, n_layer=1, n_head=4,
                    positions="rope")  # fmt: skip
    m = GPT(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: faster on one thread, and the same numbers on any machine
    try:
        for _ in range(100):
            starts = torch.randint(0, len(ids), (16,), generator=gen)
            x = torch.stack([data[s : s + 32] for s in starts])
            y = torch.stack([data[s + 1 : s + 33] for s in starts])
            _, loss = m(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.5  # it recites: the tests below then see real multi-byte text
    return m.eval()


def greedy_by_hand(model: GPT, ids: list[int], n: int, stop_ids=()) -> list[int]:
    """Greedy decoding written out: a full forward pass over the last context_length tokens per step."""
    seq, new = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq[-model.config.context_length :]]))
            nxt = int(logits[0, -1].argmax())
            if nxt in stop_ids:
                break
            new.append(nxt)
            seq.append(nxt)
    return new


def test_greedy_complete_matches_decoding_by_hand(emoji_model, byte_tok):
    eot = byte_tok.special_tokens[ENDOFTEXT]
    prompt = "Le café"
    new = greedy_by_hand(emoji_model, byte_tok.encode_ordinary(prompt), 60, stop_ids={eot})
    assert 0 < len(new) < 60  # it stopped at <|endoftext|>, which is not part of the text
    text = complete(emoji_model, byte_tok, prompt, 60, temperature=0)
    assert text == byte_tok.decode(new)
    assert "😀" in text and ENDOFTEXT not in text
    # without a stop id it writes on, past the end of the document and past the context length (32)
    free = greedy_by_hand(emoji_model, byte_tok.encode_ordinary(prompt), 60)
    assert len(free) == 60 and free[len(new)] == eot
    assert complete(emoji_model, byte_tok, prompt, 60, temperature=0, stop_ids=()) == byte_tok.decode(free)


def test_prompt_longer_than_the_context_is_cut_on_the_left(emoji_model, byte_tok):
    prompt = " ".join(DOCS)  # far more than 32 byte tokens
    ids = byte_tok.encode_ordinary(prompt)
    assert len(ids) > 32
    new = greedy_by_hand(emoji_model, ids[-32:], 10, stop_ids={byte_tok.special_tokens[ENDOFTEXT]})
    assert complete(emoji_model, byte_tok, prompt, 10, temperature=0) == byte_tok.decode(new)


def test_special_token_text_in_the_prompt_is_plain_text(emoji_model, byte_tok):
    prompt = "bis bald" + ENDOFTEXT  # the characters, not the end-of-text token
    new = greedy_by_hand(emoji_model, byte_tok.encode_ordinary(prompt), 12,
                         stop_ids={byte_tok.special_tokens[ENDOFTEXT]})  # fmt: skip
    assert complete(emoji_model, byte_tok, prompt, 12, temperature=0) == byte_tok.decode(new)
    as_special = byte_tok.encode(prompt, allowed_special="all")
    new = greedy_by_hand(emoji_model, as_special, 12, stop_ids={byte_tok.special_tokens[ENDOFTEXT]})
    assert complete(emoji_model, byte_tok, prompt, 12, temperature=0,
                    allowed_special={ENDOFTEXT}) == byte_tok.decode(new)  # fmt: skip


@pytest.mark.parametrize("kwargs", [{"temperature": 0}, {"temperature": 1.0, "top_k": None, "seed": 3},
                                    {"temperature": 2.0, "top_k": None, "seed": 5}])  # fmt: skip
def test_pieces_never_split_a_character(emoji_model, byte_tok, kwargs):
    prompt = byte_tok.encode_ordinary("Grüße")
    pieces = list(stream_text(emoji_model, byte_tok, "Grüße", 80, stop_ids=(), **kwargs))
    text = complete(emoji_model, byte_tok, "Grüße", 80, stop_ids=(), **kwargs)
    # the same tokens as the token stream with a generator seeded alike, decoded at once
    generator = torch.Generator().manual_seed(kwargs.get("seed", 0))
    steps = stream(emoji_model, torch.tensor([prompt]), 80, kwargs["temperature"], kwargs.get("top_k", 50),
                   generator=generator)  # fmt: skip
    ids = [int(t[0]) for t in steps]
    assert "".join(pieces) == text == byte_tok.decode(ids) and all(pieces)
    assert sum("\ufffd" in byte_tok.decode([i]) for i in ids) > 10  # many tokens are parts of characters
    if kwargs["temperature"] == 0:  # greedy recites valid UTF-8 with 4-byte characters (4 tokens each)
        assert "\ufffd" not in text and any(ord(c) > 0xFFFF for c in text)
    if "\ufffd" not in text:  # byte tokens, valid UTF-8: one piece per character (never half of one) ...
        parts = re.split(f"({re.escape(ENDOFTEXT)})", text)  # ... and one per <|endoftext|> (stop_ids=())
        assert pieces == [p for part in parts for p in ([part] if part == ENDOFTEXT else list(part))]
    # (a hot sample can write bytes that are no character: U+FFFD, as a decode of all tokens at once shows)


def test_stop_strings(emoji_model, byte_tok):
    free = complete(emoji_model, byte_tok, "Le café", 40, temperature=0, stop_ids=())
    stop = "😀 m"  # a stop string of 6 tokens, spanning many steps
    assert stop in free
    expected = free[: free.index(stop)]
    pieces = list(stream_text(emoji_model, byte_tok, "Le café", 40, temperature=0, stop=[stop], stop_ids=()))
    assert "".join(pieces) == expected
    # the earliest of several stop strings wins; a string is one stop string (not its characters)
    assert complete(emoji_model, byte_tok, "Le café", 40, temperature=0, stop=["merci", "prêt"]) == \
        free[: free.index("prêt")]  # fmt: skip
    assert complete(emoji_model, byte_tok, "Le café", 40, temperature=0, stop="merci") == free[: free.index("merci")]
    # a stop string that never appears holds nothing back in the end, even when its start did appear
    for never in (["zzz"], ["merci beaucoup"]):
        pieces = list(stream_text(emoji_model, byte_tok, "Le café", 40, temperature=0, stop=never, stop_ids=()))
        assert "".join(pieces) == free
    held = list(stream_text(emoji_model, byte_tok, "Le café", 40, temperature=0, stop=["merci beaucoup"]))
    assert "merci 🎉" in held  # "merci" was held back until it could no longer become the stop string
    # a stop string at the very start gives no text
    assert complete(emoji_model, byte_tok, "Le café", 40, temperature=0, stop=[free[:3]]) == ""


def test_stop_ids(model):
    tok = CharTokenizer([chr(ord("A") + i) for i in range(26)] + [chr(ord("a") + i) for i in range(26)] + ["."])
    assert tok.vocab_size == 53 and tok.special_tokens == {}
    free = complete(model, tok, "Hello", 15, temperature=0)  # no end-of-text token: never stops early
    assert len(free) == 15
    stop = tok.encode(free[6])[0]
    assert complete(model, tok, "Hello", 15, temperature=0, stop_ids=[stop]) == free[: free.index(free[6])]


def test_seeds_are_reproducible_and_leave_the_global_rng_alone(emoji_model, byte_tok):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = complete(emoji_model, byte_tok, "日本", 40, temperature=1.5, top_k=None, seed=1, stop_ids=())
    assert torch.equal(torch.get_rng_state(), before)
    assert a == complete(emoji_model, byte_tok, "日本", 40, temperature=1.5, top_k=None, seed=1, stop_ids=())
    others = {complete(emoji_model, byte_tok, "日本", 40, temperature=1.5, top_k=None, seed=s, stop_ids=())
              for s in range(2, 6)}  # fmt: skip
    assert others - {a}  # other seeds, other texts
    unseeded = complete(emoji_model, byte_tok, "日本", 5, temperature=1.0, seed=None)
    assert isinstance(unseeded, str) and torch.equal(torch.get_rng_state(), before)


def test_stream_text_is_lazy_and_restores_the_training_flag(emoji_model, byte_tok):
    emoji_model.train()
    try:
        pieces = stream_text(emoji_model, byte_tok, "Le café", 50, temperature=0)
        first = next(pieces)
        assert first and not emoji_model.training  # generating: eval mode
        pieces.close()  # the caller stops early
        assert emoji_model.training
        assert complete(emoji_model, byte_tok, "Le café", 0) == ""
        assert emoji_model.training
    finally:
        emoji_model.eval()


def test_prompt_and_settings_errors(emoji_model, byte_tok):
    with pytest.raises(DataError, match="encodes to no tokens"):
        complete(emoji_model, byte_tok, "")
    with pytest.raises(TypeError, match="prompt must be a str"):
        complete(emoji_model, byte_tok, [1, 2, 3])
    bad = [({"temperature": math.nan}, "temperature"), ({"temperature": -0.5}, "temperature"),
           ({"temperature": math.inf}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_k": 2.5}, "top_k"),
           ({"top_p": 0.0}, "top_p"), ({"top_p": 1.01}, "top_p"), ({"top_p": math.nan}, "top_p"),
           ({"stop": [""]}, "stop"), ({"stop_ids": 5}, "stop_ids")]  # fmt: skip
    for kwargs, name in bad:
        with pytest.raises(ConfigError, match=name):
            stream_text(emoji_model, byte_tok, "Le", 5, **kwargs)  # raised at the call, not at the first piece
    with pytest.raises(ConfigError, match="max_new_tokens"):
        complete(emoji_model, byte_tok, "Le", -1)
    with pytest.raises(ValueError, match="max_new_tokens"):  # ConfigError is a ValueError
        complete(emoji_model, byte_tok, "Le", 2.0)
    with pytest.raises(TypeError, match="GPT"):
        complete(torch.nn.Linear(2, 2), byte_tok, "Le")


def test_check_sampling_and_nan_in_stream(model):
    check_sampling(0.0, 1, 1.0)
    check_sampling(2, None, None)
    idx = torch.randint(0, 53, (1, 3))
    with pytest.raises(ConfigError, match="temperature"):  # was a raw traceback from torch.multinomial
        generate(model, idx, 3, temperature=math.nan)
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, idx, 3, temperature=-1.0)
    with pytest.raises(ConfigError, match="temperature"):
        filter_logits(PROBS, temperature=math.nan)
