"""Tests for minillm.tokenizer: parity with tiktoken, hand-checked BPE training,
a naive trainer as reference, special tokens, streaming, save/load and errors."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from minillm import data
from minillm.errors import ConfigError
from minillm.pretokenize import _ASTRAL, _gpt2_pattern_re
from minillm.tokenizer import (
    GPT2_PATTERN,
    TOKENIZER_FILE,
    BPETokenizer,
    CharTokenizer,
    Tokenizer,
    bytes_to_text,
    gpt2_bytes_to_unicode,
    load_tokenizer,
    text_to_bytes,
    tokenizer_path,
)

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    return BPETokenizer.from_gpt2()


@pytest.fixture(scope="module")
def enc() -> tiktoken.Encoding:
    return tiktoken.get_encoding("gpt2")


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return data.read_text("tinyshakespeare")


# --------------------------------------------------------------------------- char
def test_char_tokenizer_hand_checked():
    tok = CharTokenizer.from_text("hello")
    assert tok.vocab_size == 4  # e, h, l, o
    assert tok.encode("hello") == [1, 0, 2, 2, 3]
    assert tok.decode([3, 2, 0]) == "ole"
    assert tok.decode(tok.encode("hole")) == "hole"


def test_char_tokenizer_errors():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="3.*vocab_size 3"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(TypeError):
        CharTokenizer.from_text(b"abc")
    with pytest.raises(TypeError):
        tok.encode(["a"])


# ------------------------------------------------------------------ GPT-2 parity
PARITY_TEXTS = {
    "prose": "The quick brown fox jumps over the lazy dog. It wasn't me, said Tom; \"really?\"",
    "code": 'def f(x: int) -> int:\n\t"""Doc."""\n    return x**2 + 1  # comment\n\nprint(f(3))\n',
    "spaces": "a    b      c  \n\n\n   d\t\t\te \t \n  trailing   ",
    "only_whitespace": " \n\t  \r\n   ",
    "newlines": "\n\n\nline\r\n\r\nnext\n",
    "digits": "0 12 345 6789 3.14159 1,000,000 2024-01-31 007",
    "emoji": "I 💜 emoji 🤖🚀👩‍👩‍👧 and ❤️ flags 🇫🇷",
    "cjk": "我爱自然语言处理。日本語のテキスト、한국어 텍스트",
    "mixed": "Ελληνικά, русский, العربية, עברית, हिन्दी, café naïve Æsir",
    "contractions": "it's don't they're we've I'm you'll he'd IT'S DON'T THEY'RE I'M 'S 'T",
    "punctuation": "!!! ??? ... --- *** (())[]{} <<>> @#$%^&",
    "special_as_text": f"one{EOT}two <|endoftext|> three <|endo",
}


@pytest.mark.parametrize("name", sorted(PARITY_TEXTS))
def test_gpt2_parity_with_tiktoken(gpt2, enc, name):
    text = PARITY_TEXTS[name]
    ids = gpt2.encode(text, disallowed_special=())
    assert ids == enc.encode(text, disallowed_special=())
    assert gpt2.decode(ids) == text
    assert gpt2.encode_ordinary(text) == enc.encode_ordinary(text)


def test_gpt2_parity_allowed_special(gpt2, enc):
    text = f"Hello world{EOT}Goodbye{EOT}{EOT} again"
    for allowed in ("all", {EOT}):
        ids = gpt2.encode(text, allowed_special=allowed)
        assert ids == enc.encode(text, allowed_special=allowed)
        assert ids.count(50256) == 3
        assert gpt2.decode(ids) == text


def test_gpt2_parity_tiny_shakespeare(gpt2, enc, shakespeare):
    ids = gpt2.encode(shakespeare)
    assert ids == enc.encode(shakespeare)
    assert gpt2.decode(ids) == shakespeare


def test_gpt2_parity_stdlib_source(gpt2, enc):
    for rel in ("inspect.py", "email/_header_value_parser.py"):
        source = (data.stdlib_dir() / rel).read_text(encoding="utf-8")
        ids = gpt2.encode(source)
        assert ids == enc.encode(source)
        assert gpt2.decode(ids) == source


def test_gpt2_parity_wikitext2_validation_cold(gpt2, enc):
    """The benchmark's corpus, whole, from an empty chunk cache: every distinct chunk goes through BPE."""
    text = data.read_text("wikitext-2", split="validation")
    gpt2.clear_cache()
    assert gpt2.encode_ordinary(text) == enc.encode_ordinary(text)


_ALPHABET = st.sampled_from(list("aAzZ09 \t\n\r'sStdlmvre.,;!?-_()\"\\") +
                            ["é", "ß", "ø", "中", "文", "😀", "🇫", "\u200d", "\u00a0", "\u3000", "١"])


@settings(max_examples=300, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(_ALPHABET, max_size=60) | st.text(max_size=30))
def test_gpt2_parity_fuzz(gpt2, enc, text):
    ids = gpt2.encode(text, disallowed_special=())
    assert ids == enc.encode(text, disallowed_special=())
    assert gpt2.decode(ids) == text


def test_lone_surrogate_replaced_like_tiktoken(gpt2, enc):
    text = "a\ud800b"
    assert gpt2.encode(text) == enc.encode(text)


def test_decode_random_ids_matches_tiktoken(gpt2, enc):
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(enc.n_vocab) for _ in range(rng.randrange(1, 20))]
        assert gpt2.decode_bytes(ids) == enc.decode_bytes(ids)
        assert gpt2.decode(ids) == enc.decode(ids)  # tiktoken decodes with errors="replace"


def test_decode_invalid_utf8_gives_replacement_char(gpt2, enc):
    first_byte_of_euro = enc.encode_single_token(b"\xe2")
    assert gpt2.decode_bytes([first_byte_of_euro]) == b"\xe2"
    assert gpt2.decode([first_byte_of_euro]) == "\ufffd"
    assert gpt2.decode(gpt2.encode("€")) == "€"


def test_decode_accepts_tensors_and_arrays(gpt2):
    import numpy as np
    import torch

    ids = gpt2.encode("tensor of ids")
    assert gpt2.decode(torch.tensor(ids)) == "tensor of ids"
    assert gpt2.decode(np.array(ids, dtype=np.uint16)) == "tensor of ids"
    assert gpt2.decode(list(np.array(ids))) == "tensor of ids"  # numpy integer scalars


def test_gpt2_vocab_layout(gpt2, enc):
    assert gpt2.vocab_size == enc.n_vocab == 50257
    assert gpt2.special_tokens == {EOT: 50256}
    # GPT-2 ids are not bytes in byte order: "!" is id 0 and the space byte is id 220.
    assert gpt2.token_bytes(0) == b"!" and gpt2.token_bytes(220) == b" "
    for i in (0, 220, 256, 1000, 50000):
        assert gpt2.token_bytes(i) == enc.decode_single_token_bytes(i)
    assert gpt2.token_bytes(50256) == EOT.encode()


def test_visualize(gpt2, enc):
    text = "Tokenization isn't hard"
    pieces = gpt2.visualize(text)
    assert pieces == [(i, enc.decode_single_token_bytes(i)) for i in enc.encode(text)]
    assert b"".join(b for _, b in pieces) == text.encode()


def test_bytes_to_unicode_map():
    m = gpt2_bytes_to_unicode()
    assert len(set(m.values())) == 256
    assert m[ord("a")] == "a" and m[ord(" ")] == "\u0120" and m[0] == "\u0100"  # "Ġ", "Ā"


# -------------------------------------------------------------- special tokens
def test_disallowed_special_raises_with_help(gpt2, enc):
    text = f"end of doc {EOT} next"
    with pytest.raises(ValueError, match=r"<\|endoftext\|>.*allowed_special"):
        gpt2.encode(text)
    with pytest.raises(ValueError):
        enc.encode(text)  # tiktoken agrees that this is an error
    with pytest.raises(ValueError, match="disallowed"):
        gpt2.encode(text, disallowed_special={EOT})
    with pytest.raises(ValueError, match=r"<\|endoftext\|>"):
        list(gpt2.encode_iterable(["end of doc <|endof", "text|> next"]))


def test_special_argument_errors(gpt2):
    with pytest.raises(ValueError, match="unknown special"):
        gpt2.encode("x", allowed_special={"<|pad|>"})
    with pytest.raises(TypeError, match="set"):
        gpt2.encode("x", allowed_special=EOT)


# ------------------------------------------------------------------- streaming
STREAM_TEXTS = [
    PARITY_TEXTS["spaces"] * 3 + PARITY_TEXTS["code"] * 2,
    PARITY_TEXTS["mixed"] + "\n\n  \n" + PARITY_TEXTS["cjk"] + "  .\n\n\nx y\n",
    "word, word. " * 50 + "end!\r\n\r\n  \t  ok " + "123456789 " * 5,
]


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_encode_iterable_equals_encode(gpt2, pattern, shakespeare):
    tok = gpt2 if pattern == "gpt2" else BPETokenizer.train(shakespeare[:20_000], 400, pattern="gpt4")
    rng = random.Random(1)
    for text in STREAM_TEXTS + [shakespeare[:5000]]:
        for _ in range(20):
            cuts = sorted(rng.sample(range(1, len(text)), rng.randrange(1, 40)))
            pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
            assert list(tok.encode_iterable(pieces)) == tok.encode(text)


def test_encode_iterable_special_tokens_split_across_pieces():
    tok = BPETokenizer.train("spam and eggs " * 20, 256 + 8 + 2, special_tokens=["<| sep |>", EOT])
    text = f"spam <| sep |> eggs{EOT} and  <| sep |>\n spam"
    expected = tok.encode(text, allowed_special="all")
    assert expected.count(tok.special_tokens["<| sep |>"]) == 2
    for size in range(1, 12):
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        assert list(tok.encode_iterable(pieces, allowed_special="all")) == expected


def test_encode_iterable_is_lazy(gpt2, enc):
    endless = itertools.cycle(["To be, or not to be: ", "that is the question.\n"])
    first = list(itertools.islice(gpt2.encode_iterable(endless), 1000))
    text = "To be, or not to be: that is the question.\n" * 100
    assert first == enc.encode(text)[:1000]


# --------------------------------------------------------------------- training
def test_train_classic_example_by_hand():
    # "aaabdaaabac": pair counts aa=4 (overlapping), ab=2, bd=da=ba=ac=1 -> merge aa=256.
    # "Z a b d Z a b a c": Za=2, ab=2 tie -> smaller pair (97, 98) wins -> ab=257.
    # "Z Y d Z Y a c": ZY=2 -> (256, 257)=258. Then every pair occurs once; (100, 256) "dZ"
    # is the smallest of (258,100), (100,258), (258,97), (97,99).
    tok = BPETokenizer.train("aaabdaaabac", 260, special_tokens=())
    assert tok.merges == [(97, 97, 256), (97, 98, 257), (256, 257, 258), (97, 99, 259)]
    assert [tok.token_bytes(i) for i in range(256, 260)] == [b"aa", b"ab", b"aaab", b"ac"]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 259]


def test_train_respects_pretokenization_by_hand():
    # Chunks: "ab" x1, " ab" x2 -> (a, b)=3, (" ", a)=2; after ab=256: (" ", 256)=2 -> 257.
    tok = BPETokenizer.train("ab ab ab", 258, special_tokens=())
    assert tok.merges == [(97, 98, 256), (32, 256, 257)]
    assert tok.encode("ab ab") == [256, 257]


def test_train_layout_and_specials():
    tok = BPETokenizer.train("hello world " * 10, 256 + 5 + 2, special_tokens=[EOT, "<|pad|>"])
    assert tok.vocab_size == 263
    assert all(tok.token_bytes(i) == bytes([i]) for i in range(256))
    assert [m[2] for m in tok.merges] == list(range(256, 261))
    assert tok.special_tokens == {EOT: 261, "<|pad|>": 262}
    assert tok.encode("hi<|pad|>", allowed_special="all")[-1] == 262


def test_special_tokens_never_merged():
    docs = ["the cat sat", "the cat ran", "a cat sat on the mat"] * 5
    joined = EOT.join(docs)
    tok = BPETokenizer.train(joined, 256 + 12)
    assert tok.merges == BPETokenizer.train(docs, 256 + 12).merges
    learned = [tok.token_bytes(m[2]) for m in tok.merges]
    assert not any(b"<" in t or b"|" in t or b">" in t for t in learned)
    ids = tok.encode(joined, allowed_special="all")
    assert ids.count(tok.special_tokens[EOT]) == len(docs) - 1
    assert tok.decode(ids) == joined


def test_training_is_deterministic(shakespeare):
    a = BPETokenizer.train(shakespeare[:30_000], 600)
    b = BPETokenizer.train(shakespeare[:30_000], 600)
    assert a.merges == b.merges and a.vocab_size == b.vocab_size == 600


def naive_train(text: str, n_merges: int, pat_str: str) -> list[tuple[int, int, int]]:
    """Reference BPE trainer: recount every pair of the whole corpus for each merge."""
    words = [(list(chunk.encode()), c) for chunk, c in Counter(regex.findall(pat_str, text)).items()]
    merges = []
    for k in range(n_merges):
        counts: Counter = Counter()
        for w, c in words:
            for pair in zip(w, w[1:]):
                counts[pair] += c
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, then smallest pair
        new = 256 + k
        merged_words = []
        for w, c in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged_words.append((out, c))
        words = merged_words
        merges.append((*best, new))
    return merges


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_incremental_trainer_equals_naive_recount(pattern, enc, shakespeare):
    text = shakespeare[:6000] + " aaaa bbbbbb 1234567 ééé 中中中 "
    # The reference pre-tokenizes with tiktoken's GPT-2 pattern; for "gpt4" with ours.
    pat_str = enc._pat_str if pattern == "gpt2" else BPETokenizer([bytes([b]) for b in range(256)], [],
                                                                   pattern="gpt4").pattern
    expected = naive_train(text, 150, pat_str)
    assert BPETokenizer.train(text, 256 + 150, special_tokens=(), pattern=pattern).merges == expected


def test_trained_tokenizer_matches_tiktoken_built_from_its_vocab(shakespeare, enc):
    """A trained vocabulary loaded into tiktoken (token bytes -> rank = our id) encodes
    the same way: tiktoken's algorithm is independent of ours."""
    tok = BPETokenizer.train(shakespeare, 1000)
    ranks = {tok.token_bytes(i): i for i in range(tok.vocab_size - 1)}
    assert len(ranks) == tok.vocab_size - 1  # no two tokens with the same bytes
    ref = tiktoken.Encoding("trained", pat_str=enc._pat_str, mergeable_ranks=ranks,
                            special_tokens=tok.special_tokens)
    source = (data.stdlib_dir() / "inspect.py").read_text(encoding="utf-8")
    for text in (shakespeare[-50_000:], source, PARITY_TEXTS["mixed"]):
        assert tok.encode(text) == ref.encode(text)


# ------------------------------------------------- the merge loop vs the textbook
def textbook_bpe(tok: BPETokenizer, piece: bytes) -> list[int]:
    """Reference encoder of one chunk, as chapter 02 writes it: find the adjacent pair
    with the lowest merge rank, merge every occurrence left to right, repeat. Assumes
    ids 0..255 are the bytes (true of trained vocabularies)."""
    rank: dict[tuple[int, int], int] = {}
    for r, (a, b, _) in enumerate(tok.merges):
        rank.setdefault((a, b), r)  # a pair listed twice merges with its first rank
    ids = list(piece)
    while True:
        found = [rank[pair] for pair in zip(ids, ids[1:]) if pair in rank]
        if not found:
            return ids
        a, b, merged = tok.merges[min(found)]
        out, i = [], 0
        while i < len(ids):
            if ids[i : i + 2] == [a, b]:
                out.append(merged)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        ids = out


def test_merge_order_by_hand():
    """Every occurrence of the lowest-rank pair is merged before any pair that those
    merges create, even one of lower rank; overlapping occurrences merge left to right."""
    vocab = [bytes([b]) for b in range(256)] + [b"ab", b"aba", b"aa"]
    a, b = ord("a"), ord("b")
    tok = BPETokenizer(vocab, [(256, a, 257), (a, b, 256), (a, a, 258)], special_tokens={})
    assert tok.encode("abab") == [256, 256]  # not [257, b]: (ab, a) waits for the next round
    assert tok.encode("aba") == [257]
    assert tok.encode("aaa") == [258, a] and tok.encode("aaaa") == [258, 258]
    for piece in (b"abab", b"aba", b"aaa", b"aaaa", b"ab" * 50):
        assert list(tok._bpe(piece)) == list(tok._bpe_long(piece)) == textbook_bpe(tok, piece)


@pytest.mark.parametrize("seed", range(10))
def test_bpe_equals_textbook_on_random_vocabularies(seed, monkeypatch):
    """Random small vocabularies trained on random words, as trained and with their merge
    priorities shuffled (merges then create pairs of lower rank than their own) plus a
    pair listed twice; random byte strings through both merge loops (lists and heap)."""
    import minillm.bpe as bpe

    rng = random.Random(seed)
    letters = rng.sample("abcdefgh", rng.randint(2, 4))
    words = ["".join(rng.choices(letters, k=rng.randint(1, 10))) for _ in range(300)]
    trained = BPETokenizer.train(" ".join(words), 256 + rng.randint(10, 60), special_tokens=())
    vocab = [trained.token_bytes(i) for i in range(trained.vocab_size)]
    shuffled = rng.sample(trained.merges, len(trained.merges))
    a, b, m = rng.choice(trained.merges)
    shuffled.insert(rng.randrange(len(shuffled) + 1), (a, b, len(vocab)))  # same pair, another id
    variants = [trained, BPETokenizer(vocab + [vocab[m]], shuffled, special_tokens={})]
    alphabet = [ord(c) for c in letters] + [ord(" "), ord("z")]
    pieces = [bytes(rng.choices(alphabet, k=rng.choice([0, 1, 2, 3, 5, 8, 13, 30, 64, 65, 150])))
              for _ in range(150)]
    for tok in variants:
        for piece in pieces:
            expected = textbook_bpe(tok, piece)
            assert list(tok._bpe(piece)) == expected, piece
            assert list(tok._bpe_long(piece)) == expected, piece
    monkeypatch.setattr(bpe, "_LONG_PIECE", 10**9)  # the list loop on long pieces too
    for tok in variants:
        for piece in pieces:
            assert list(tok._bpe(piece)) == textbook_bpe(tok, piece), piece


# --------------------------------- fast paths: whole tokens and the re pre-tokenizer
def comes_back(tok: BPETokenizer) -> set[int]:
    """The ids whose bytes the merge loop turns back into themselves (run on every token)
    and that can be a chunk (valid UTF-8): what the whole-token table must hold."""
    specials = set(tok.special_tokens.values())
    return {t for t in range(tok.vocab_size) if t not in specials and utf8(tok.token_bytes(t))
            and tok._bpe(tok.token_bytes(t)) == (t,)}


def utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def table_ids(tok: BPETokenizer) -> set[int]:
    assert all(tok.token_bytes(t) == text.encode("utf-8") for text, (t,) in tok._whole.items())
    return {t for (t,) in tok._whole.values()}


@pytest.mark.parametrize("which", ["gpt2", "shakespeare", "shakespeare-gpt4"])
def test_every_learned_token_comes_back(which, gpt2, shakespeare_bpe, shakespeare):
    """In a learned vocabulary every token is its own encoding, so the table holds every
    ordinary token of valid UTF-8 and the shortcut changes no id."""
    tok = {"gpt2": gpt2, "shakespeare": shakespeare_bpe,
           "shakespeare-gpt4": BPETokenizer.train(shakespeare[:100_000], 1500, pattern="gpt4")}[which]
    specials = set(tok.special_tokens.values())
    ordinary = {t for t in range(tok.vocab_size) if t not in specials and utf8(tok.token_bytes(t))}
    assert table_ids(tok) == comes_back(tok) == ordinary


def test_whole_token_check_by_hand():
    """The docstring's example: after "b c" and "a b", "abc" comes back as "a" + "bc", so
    it is not in the table; an overlap "a" + "aa" does not come back either. Merges
    ranked before the merges of their parts (test_merge_order_by_hand): no table at all."""
    a, b, c = ord("a"), ord("b"), ord("c")
    byte_vocab = [bytes([i]) for i in range(256)]
    tok = BPETokenizer(byte_vocab + [b"bc", b"ab", b"abc"], [(b, c, 256), (a, b, 257), (257, c, 258)], {})
    assert tok._bpe(b"abc") == (a, 256) and tok.encode("abc") == [a, 256]
    assert "abc" not in tok._whole and {"ab", "bc", "a"} <= tok._whole.keys()
    tok = BPETokenizer(byte_vocab + [b"aa", b"aaa", b"aaa"], [(a, a, 256), (a, 256, 257), (256, a, 258)], {})
    assert tok.encode("aaa") == [258] and table_ids(tok) == comes_back(tok) and 257 not in table_ids(tok)
    tok = BPETokenizer(byte_vocab + [b"ab", b"aba"], [(256, a, 257), (a, b, 256)], {})
    assert tok._whole == {} and tok.encode("aba") == [257]


def reorder_keeping_parts_first(merges: list, rng: random.Random) -> list:
    """The merges in a random order in which each merge still comes after those making its parts."""
    made, rest, order = set(range(256)), list(merges), []
    while rest:
        m = rng.choice([m for m in rest if m[0] in made and m[1] in made])
        order.append(m)
        rest.remove(m)
        made.add(m[2])
    return order


def random_reordered_vocabulary(seed: int):
    """(rng, letters, a BPE trained on random words of 2-4 letters, its vocabulary, the same
    vocabulary with its merges reordered, parts still made first)."""
    rng = random.Random(seed)
    letters = rng.sample("abcdefgh", rng.randint(2, 4))
    words = ["".join(rng.choices(letters, k=rng.randint(1, 10))) for _ in range(300)]
    trained = BPETokenizer.train(" ".join(words), 256 + rng.randint(10, 60), special_tokens=())
    vocab = [trained.token_bytes(i) for i in range(trained.vocab_size)]
    reordered = BPETokenizer(vocab, reorder_keeping_parts_first(trained.merges, rng), {})
    return rng, letters, trained, vocab, reordered


@pytest.mark.parametrize("seed", range(20))
def test_whole_token_check_equals_running_the_merges(seed):
    """Random vocabularies with their merges reordered (parts still made first): many tokens
    no longer come back, and the table holds exactly those that do. Merges in any order,
    with a pair listed twice: the table holds none that does not. Encoding with the
    table gives the same ids as without it."""
    rng, letters, trained, vocab, reordered = random_reordered_vocabulary(seed)
    assert table_ids(reordered) == comes_back(reordered)
    shuffled = rng.sample(trained.merges, len(trained.merges))
    a, b, m = rng.choice(trained.merges)
    shuffled.insert(rng.randrange(len(shuffled) + 1), (a, b, len(vocab)))  # same pair, another id
    anyhow = BPETokenizer(vocab + [vocab[m]], shuffled, {})
    assert table_ids(anyhow) <= comes_back(anyhow)
    texts = [" ".join("".join(rng.choices(letters, k=rng.randint(1, 12))) for _ in range(50)) for _ in range(5)]
    for tok in (trained, reordered, anyhow):
        plain = BPETokenizer(vocab + [vocab[m]] if tok is anyhow else vocab, tok.merges, {}, cache_size=0)
        plain._whole = {}
        assert [tok.encode(t) for t in texts] == [plain.encode(t) for t in texts]


def test_some_reordered_vocabularies_lose_tokens():
    """So that the test above checks both answers of the whole-token check."""
    lost = 0
    for seed in range(20):
        _, _, _, vocab, reordered = random_reordered_vocabulary(seed)
        lost += len(set(range(128)) | set(range(256, len(vocab)))) > len(table_ids(reordered))
    assert lost >= 10


_BMP = st.characters(max_codepoint=0xFFFF, exclude_categories=())  # surrogates included
_SPACES_AND_CO = st.sampled_from(list(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f"
                                      "\u205f\u3000\u200b\ufeff'sdmtlvreSD aZ09\u0660\u00b2\u2167\u00aa.!é中"))


@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.text(_BMP, max_size=80) | st.text(_SPACES_AND_CO, max_size=40))
def test_re_pre_tokenizer_equals_regex_on_bmp_text(text):
    """The built-in re version of GPT-2's pattern finds the regex module's chunks."""
    assert _gpt2_pattern_re().findall(text) == regex.compile(GPT2_PATTERN).findall(text)


@settings(max_examples=300, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(exclude_categories=()), max_size=60) | st.text(_SPACES_AND_CO, max_size=40))
def test_pre_tokenize_equals_regex_on_any_text(gpt2, text):
    """Beyond U+FFFF too (there pre_tokenize hands the text to regex)."""
    assert gpt2.pre_tokenize(text) == gpt2._pat.findall(text)
    assert gpt2.pre_tokenize(text + "😀") == gpt2._pat.findall(text + "😀")


def test_re_pre_tokenizer_on_every_bmp_character():
    """Each character of U+0000..U+FFFF after and before a letter, digit, space, apostrophe
    and newline, and runs of it: the character classes are the regex module's."""
    pattern = regex.compile(GPT2_PATTERN)
    for start in range(0, 0x10000, 0x2000):
        chars = [chr(c) for c in range(start, start + 0x2000)]
        text = "".join(f"a{c}1{c} {c}{c}'{c}\n{c}  " for c in chars)
        assert _gpt2_pattern_re().findall(text) == pattern.findall(text), hex(start)


@pytest.mark.parametrize("name", ["tinyshakespeare", "the-verdict", "wikitext-2/validation", "wikitext-2/test",
                                  "python-stdlib"])
def test_re_pre_tokenizer_on_corpora(name, gpt2):
    """The corpora of data.read_text (of the standard library's 12 MB, the first 2 million
    characters), less any character beyond U+FFFF: pre_tokenize then uses re."""
    corpus, _, split = name.partition("/")
    text = _ASTRAL.sub("", data.read_text(corpus, split=split or None)[:2_000_000])
    assert gpt2.pre_tokenize(text) == gpt2._pat.findall(text)


@pytest.mark.parametrize("name", ["tinyshakespeare", "wikitext-2/validation"])
def test_fast_paths_give_tiktokens_ids_on_corpora(name, gpt2, enc):
    """The benchmark's corpora take both fast paths, from a cold cache, with tiktoken's ids;
    without them (regex and the merge loop for every chunk) the ids are the same."""
    corpus, _, split = name.partition("/")
    text = data.read_text(corpus, split=split or None)
    assert not _ASTRAL.search(text)  # so pre_tokenize uses re
    chunks = gpt2.pre_tokenize(text)
    assert sum(chunk in gpt2._whole for chunk in chunks) > 0.9 * len(chunks)
    gpt2.clear_cache()
    ids = gpt2.encode(text)
    assert ids == enc.encode(text)
    plain = BPETokenizer([gpt2.token_bytes(i) for i in range(gpt2.vocab_size)], gpt2.merges, gpt2.special_tokens)
    plain._whole, plain._re = {}, None
    assert plain.encode(text) == ids


def test_gpt4_pattern_splits_by_hand():
    tok = BPETokenizer.train("x", 256, special_tokens=(), pattern="gpt4")
    text = "I'M 1234567 hello\n\n  world!\n"
    chunks = [tok.decode([i]) for i in tok.encode(text)]  # no merges: one token per byte
    assert "".join(chunks) == text
    assert tok._pat.findall(text) == ["I", "'M", " ", "123", "456", "7", " hello", "\n\n",
                                      " ", " world", "!\n"]
    gpt2 = BPETokenizer.train("x", 256, special_tokens=())
    # GPT-2: "'M" is no contraction (lower case only), digits stay together, and the
    # whitespace run "\n\n  " leaves only its last space to " world".
    assert gpt2._pat.findall(text) == ["I", "'", "M", " 1234567", " hello", "\n\n ",
                                       " world", "!", "\n"]


def test_training_stops_early_with_warning():
    with pytest.warns(UserWarning, match="stopped after 1 of 10"):
        tok = BPETokenizer.train("ab", 256 + 10, special_tokens=())
    assert tok.vocab_size == 257


# ------------------------------------------------------------------- save/load
def test_save_load_round_trip(tmp_path, shakespeare):
    tok = BPETokenizer.train([shakespeare[:20_000], "naïve café 😀\\x41 \\\\"], 500,
                             special_tokens=[EOT, "<|im_start|>"], pattern="gpt4")
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
    assert loaded.pattern == tok.pattern
    assert [loaded.token_bytes(i) for i in range(500)] == [tok.token_bytes(i) for i in range(500)]
    text = "naïve café 😀 " + shakespeare[-2000:] + "<|im_start|>"
    assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    state = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, readable tokens
    assert state["tokens"][ord("a")] == "a" and state["tokens"][0x80] == "\\x80"
    assert state["tokens"][ord("\\")] == "\\\\"
    assert not list(tmp_path.glob("*.tmp"))


def test_save_load_gpt2(tmp_path, gpt2, enc):
    path = tmp_path / "gpt2.json"
    gpt2.save(path)
    loaded = BPETokenizer.load(path)
    text = PARITY_TEXTS["prose"] + PARITY_TEXTS["emoji"] + EOT
    assert loaded.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")


def test_token_text_escaping_round_trip():
    rng = random.Random(0)
    samples = [bytes([b]) for b in range(256)] + [b"\\x41", b"\\\\", b"caf\xc3\xa9\xff\\"]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(12))) for _ in range(300)]
    for b in samples:
        assert text_to_bytes(bytes_to_text(b)) == b
    assert bytes_to_text(b"caf\xc3\xa9\xff") == "café\\xff"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        BPETokenizer.load(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a tokenizer"):
        BPETokenizer.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        BPETokenizer.from_gpt2(tmp_path)


# ------------------------------------------------------------------------ errors
def test_training_input_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer.train("hello", 256)  # 256 bytes + 1 special do not fit
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer.train("", 300)
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer.train(EOT * 3, 300)
    with pytest.raises(TypeError):
        BPETokenizer.train(b"bytes are not text", 300)
    with pytest.raises(TypeError):
        BPETokenizer.train(["ok", 3], 300)
    with pytest.raises(TypeError):
        BPETokenizer.train(42, 300)
    with pytest.raises(ValueError, match="special_tokens"):
        BPETokenizer.train("hello", 300, special_tokens=["", "x"])
    with pytest.raises(ValueError, match="pattern"):
        BPETokenizer.train("hello", 300, pattern="(unclosed")
    with pytest.raises(ValueError, match="capturing"):
        BPETokenizer.train("hello", 300, pattern=r"(\w+)")
    with pytest.raises(TypeError, match="list of strings"):
        BPETokenizer.train("hello", 300, special_tokens=EOT)


def test_constructor_checks_vocabulary():
    vocab = [bytes([b]) for b in range(256)]
    with pytest.raises(ValueError, match="256 single bytes"):
        BPETokenizer(vocab[:-1], [])
    with pytest.raises(ValueError, match="merge #0"):
        BPETokenizer(vocab + [b"ab"], [(97, 99, 256)])
    with pytest.raises(ValueError, match="special token"):
        BPETokenizer(vocab + [b"<x>"], [], special_tokens={"<y>": 256})
    with pytest.raises(ValueError, match="cache_size"):
        BPETokenizer(vocab, [], cache_size=-1)


def test_encode_decode_errors(gpt2):
    with pytest.raises(TypeError, match="str"):
        gpt2.encode(b"bytes")
    with pytest.raises(ValueError, match="50257.*vocab_size 50257"):
        gpt2.decode([1, 50257])
    with pytest.raises(ValueError, match="-3"):
        gpt2.decode([-3])
    with pytest.raises(TypeError, match="integers"):
        gpt2.decode([1.5])
    with pytest.raises(TypeError):
        gpt2.decode(5)


def test_bounded_encode_cache():
    tok = BPETokenizer.train("abc abd abe " * 5, 262)
    vocab = [tok.token_bytes(i) for i in range(tok.vocab_size)]
    small = BPETokenizer(vocab, tok.merges, tok.special_tokens, cache_size=10)
    words = " ".join(f"w{i}" for i in range(200))
    assert small.encode(words) == tok.encode(words)
    assert 0 < len(small._cache) <= 10
    small.clear_cache()
    assert not small._cache
    uncached = BPETokenizer(vocab, tok.merges, tok.special_tokens, cache_size=0)
    assert uncached.encode(words) == tok.encode(words) and not uncached._cache


# -------------------------------------------------------------------- benchmark
def test_best_of_times_every_call():
    from minillm.bench.tokenizer import best_of

    calls, setups = [], []
    seconds, result = best_of(3, lambda: calls.append(1) or len(calls), lambda: setups.append(1))
    assert (len(calls), len(setups), result) == (3, 3, 3) and seconds >= 0


def test_benchmark_runs(capsys):
    from minillm.bench.tokenizer import main

    assert main(["--corpus", "the-verdict", "--vocab-size", "300", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "train BPE, vocab 300" in out and "minillm encode, warm cache" in out
    assert "minillm encode vs tiktoken on the-verdict: cold cache" in out and "identical ids" in out
    with pytest.raises(SystemExit):
        main(["--repeats", "0"])


def test_char_tokenizer_save_load_and_load_tokenizer_dispatch(tmp_path):
    text = "To be, or not to be: that is the question. Ünïcödé ✓"
    char = CharTokenizer.from_text(text)
    char.save(tmp_path / "char.json")
    again = CharTokenizer.load(tmp_path / "char.json")
    assert again.chars == sorted(set(text)) and again.encode(text) == char.encode(text)
    assert isinstance(load_tokenizer(tmp_path / "char.json"), CharTokenizer)

    bpe = BPETokenizer.train(text * 3, 270)
    bpe.save(tmp_path / "bpe.json")
    loaded = load_tokenizer(tmp_path / "bpe.json")
    assert isinstance(loaded, BPETokenizer) and loaded.encode(text) == bpe.encode(text)

    with pytest.raises(ValueError, match="CharTokenizer.save"):
        CharTokenizer.load(tmp_path / "bpe.json")
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(ValueError, match="not a JSON tokenizer"):
        load_tokenizer(tmp_path / "junk.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")


# ------------------------------------------------------------- Tokenizer protocol
PLAIN_TEXTS = ["To be, or not to be: that is the question.", "  spaces\tand\nnewlines  \n", "naïve café ✓"]


@pytest.fixture(scope="module")
def both_kinds(shakespeare) -> dict[str, Tokenizer]:
    sample = shakespeare[:5000] + "".join(PLAIN_TEXTS) + EOT
    return {"char": CharTokenizer.from_text(sample), "bpe": BPETokenizer.train(sample, 300)}


def test_both_tokenizers_satisfy_the_protocol(both_kinds, gpt2):
    for tok in [*both_kinds.values(), gpt2]:
        assert isinstance(tok, Tokenizer)
    assert not isinstance("not a tokenizer", Tokenizer)
    assert both_kinds["char"].special_tokens == {}
    assert both_kinds["bpe"].special_tokens == {EOT: 299}


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_protocol_behaves_the_same_on_plain_text(both_kinds, kind):
    tok = both_kinds[kind]
    for text in PLAIN_TEXTS:
        ids = tok.encode_ordinary(text)
        assert ids == tok.encode(text) == tok.encode(text, allowed_special="all", disallowed_special=())
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    # special-token text through encode_ordinary is ordinary text, for both kinds
    ids = tok.encode_ordinary(f"a{EOT}b")
    assert tok.decode(ids) == f"a{EOT}b" and len(ids) > 3


def test_char_tokenizer_checks_special_keywords_like_bpe(both_kinds):
    char, bpe = both_kinds["char"], both_kinds["bpe"]
    assert char.encode("ab", allowed_special=set(), disallowed_special="all") == char.encode("ab")
    for tok in (char, bpe):
        with pytest.raises(TypeError, match="set"):
            tok.encode("x", allowed_special=EOT)
        with pytest.raises(ConfigError, match="unknown special"):
            tok.encode("x", disallowed_special={"<|pad|>"})
    with pytest.raises(ConfigError, match="no special tokens"):
        char.encode("x", allowed_special={EOT})


# ------------------------------------------------------ tokenizer files in folders
def test_tokenizer_path_new_name_and_legacy_name(tmp_path):
    bpe = BPETokenizer.train("hello world " * 20, 264)
    bpe.save(tmp_path / TOKENIZER_FILE)
    assert TOKENIZER_FILE == "minillm_tokenizer.json"
    assert tokenizer_path(tmp_path) == tmp_path / TOKENIZER_FILE
    assert load_tokenizer(tmp_path).encode("hello world") == bpe.encode("hello world")

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    CharTokenizer.from_text("abc").save(legacy / "tokenizer.json")  # what minillm wrote before
    assert tokenizer_path(legacy) == legacy / "tokenizer.json"
    assert isinstance(load_tokenizer(legacy), CharTokenizer)


def test_hugging_face_tokenizer_json_is_not_ours(tmp_path):
    hf_like = {"version": "1.0", "added_tokens": [], "pre_tokenizer": {"type": "ByteLevel"},
               "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(hf_like))
    assert tokenizer_path(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no minillm tokenizer"):
        load_tokenizer(tmp_path)
    # with ours beside it (what minillm.hf.export_hf writes), ours is found
    CharTokenizer.from_text("xyz").save(tmp_path / TOKENIZER_FILE)
    assert tokenizer_path(tmp_path) == tmp_path / TOKENIZER_FILE
    assert load_tokenizer(tmp_path).encode("zyx") == [2, 1, 0]
    other = tmp_path / "broken"
    other.mkdir()
    (other / "tokenizer.json").write_text("[1, 2")  # not JSON at all
    assert tokenizer_path(other) is None


# ------------------------------------------------------------------ to_tiktoken
TIKTOKEN_TEXTS = {
    "prose": PARITY_TEXTS["prose"] + " " + PARITY_TEXTS["contractions"],
    "code": PARITY_TEXTS["code"] + "class A(B):\n    def __init__(self):\n        self.x = {'a': [1, 2]}\n",
    "emoji": PARITY_TEXTS["emoji"],
    "cjk": PARITY_TEXTS["cjk"] + PARITY_TEXTS["mixed"],
    "whitespace": PARITY_TEXTS["spaces"] + PARITY_TEXTS["only_whitespace"] + PARITY_TEXTS["newlines"],
    "special": f"first doc{EOT}second doc {EOT}{EOT}\n third",
}


@pytest.fixture(scope="module")
def shakespeare_bpe(shakespeare) -> BPETokenizer:
    return BPETokenizer.train(shakespeare[:200_000], 1024)


@pytest.mark.parametrize("which", ["shakespeare", "gpt2"])
def test_to_tiktoken_gives_the_same_ids(which, shakespeare_bpe, gpt2, shakespeare):
    tok = shakespeare_bpe if which == "shakespeare" else gpt2
    enc = tok.to_tiktoken()
    assert isinstance(enc, tiktoken.Encoding) and enc.name == "minillm"
    assert enc.n_vocab == tok.vocab_size and enc._special_tokens == tok.special_tokens
    for name, text in [*TIKTOKEN_TEXTS.items(), ("held out", shakespeare[-20_000:])]:
        ids = tok.encode(text, allowed_special="all")
        assert enc.encode(text, allowed_special="all") == ids, name
        assert enc.encode_ordinary(text) == tok.encode_ordinary(text), name
        assert enc.decode(ids) == text
    with pytest.raises(ValueError):
        enc.encode(TIKTOKEN_TEXTS["special"])  # disallowed by default in both


def test_gpt2_mergeable_ranks_are_tiktokens(gpt2, enc):
    assert gpt2.mergeable_ranks() == enc._mergeable_ranks
    assert gpt2.to_tiktoken("gpt2-again").name == "gpt2-again"


def test_gpt4_pattern_to_tiktoken(shakespeare):
    tok = BPETokenizer.train(shakespeare[:20_000] + " 1234567 I'M", 400, pattern="gpt4")
    enc = tok.to_tiktoken()
    for text in TIKTOKEN_TEXTS.values():
        assert enc.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_to_tiktoken_refuses_what_it_cannot_express():
    byte_vocab = [bytes([b]) for b in range(256)]
    with pytest.raises(ConfigError, match="same bytes"):  # two merges make b"ab"
        BPETokenizer(byte_vocab + [b"ab", b"ab"], [(97, 98, 256), (97, 98, 257)]).to_tiktoken()
    with pytest.raises(ConfigError, match="neither a byte nor made by a merge"):
        BPETokenizer(byte_vocab + [b"xyz"], []).to_tiktoken()
    with pytest.raises(ConfigError, match="merge #1.*not greater"):  # b"abc" (256) made from b"ab" (257)
        BPETokenizer(byte_vocab + [b"abc", b"ab"], [(97, 98, 257), (257, 99, 256)]).to_tiktoken()
    with pytest.raises(ConfigError, match="made by 2 merges"):
        BPETokenizer(byte_vocab + [b"ab"], [(97, 98, 256), (97, 98, 256)]).to_tiktoken()
    with pytest.raises(ConfigError, match="pattern"):  # fine for `regex`, unknown to tiktoken
        BPETokenizer(byte_vocab, [], pattern=r"(?r)\w+|\s").to_tiktoken()


def test_to_tiktoken_refuses_a_token_that_does_not_come_back():
    """With "b c", then "a b", then "ab c", our encoder turns "abc" into "a" + "bc" (no merge
    joins them), tiktoken into "abc" (its bytes are a token). A token made from a special
    token is never made by our encoder: there the merge loop runs on each token's bytes."""
    a, b, c = ord("a"), ord("b"), ord("c")
    byte_vocab = [bytes([i]) for i in range(256)]
    tok = BPETokenizer(byte_vocab + [b"bc", b"ab", b"abc"], [(b, c, 256), (a, b, 257), (257, c, 258)], {})
    with pytest.raises(ConfigError, match=r"token 258 \(b'abc'\) does not come back: .* \[97, 256\], tiktoken"):
        tok.to_tiktoken()
    tok = BPETokenizer(byte_vocab + [b"<|x|>", b"<|x|>a"], [(256, a, 257)], {"<|x|>": 256})
    assert tok._back is None  # the special token is a part: not known without the merge loop
    with pytest.raises(ConfigError, match=r"token 257 \(b'<\|x\|>a'\) does not come back"):
        tok.to_tiktoken()


@st.composite
def hand_made_merges(draw) -> tuple[str, list[bytes], list[tuple[int, int, int]]]:
    """(letters, vocabulary, merges): up to 10 merges, each of two tokens made so far (bytes
    of the letters or earlier merges) into new bytes, with ids 256, 257, ... in merge order.
    The constructor and to_tiktoken's other conditions accept them; many have tokens that
    do not come back."""
    letters = draw(st.sampled_from(["ab", "abc", "ab ", "abc "]))
    vocab, tokens, merges = [bytes([i]) for i in range(256)], [ord(ch) for ch in letters], []
    for i, j in draw(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 15)), min_size=1, max_size=10)):
        x, y = tokens[i % len(tokens)], tokens[j % len(tokens)]
        if vocab[x] + vocab[y] not in vocab[256:]:  # ordinary tokens need distinct bytes
            merges.append((x, y, len(vocab)))
            tokens.append(len(vocab))
            vocab.append(vocab[x] + vocab[y])
    return letters, vocab, merges


@settings(max_examples=150, derandomize=True, deadline=None)
@given(hand_made_merges(), st.data())
def test_to_tiktoken_gives_our_ids_whenever_it_accepts(made, more):
    """Random hand-made merges: where to_tiktoken accepts, tiktoken's ids are ours on random
    texts of the letters (and on each token's text); it refuses exactly where a token does
    not come back (the merge loop run on each token's bytes), naming the first such token."""
    letters, vocab, merges = made
    tok = BPETokenizer(vocab, merges, {})
    lost = [t for t in range(256, len(vocab)) if tok._bpe(vocab[t]) != (t,)]
    try:
        enc = tok.to_tiktoken()
    except ConfigError as err:
        event("refused")
        assert lost and f"token {lost[0]} (" in str(err)
        return
    event("accepted")
    texts = more.draw(st.lists(st.text(letters, max_size=40), max_size=5))
    for text in texts + [vocab[t].decode() for t in range(256, len(vocab))]:
        assert enc.encode_ordinary(text) == tok.encode_ordinary(text), (merges, text)
    assert not lost
