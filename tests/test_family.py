"""The transformer family of appendix A: encoder-only (MaskedLM) and encoder-decoder (Seq2SeqLM).

Parity: tiny random `BertForMaskedLM`, `T5ForConditionalGeneration` (ReLU and
gated-GELU, untied head, d_kv != d_model / heads, more decoder than encoder
blocks) and `BartForConditionalGeneration` built and saved locally by
`transformers`; logits to 1e-5 with padding, greedy and beam generation token
for token. T5's relative buckets against transformers' own function. Beam
search against an exhaustive search. Attention's new options (bidirectional,
padding mask, position bias, cross-attention) against
`torch.nn.functional.scaled_dot_product_attention`, and padding against the
same text without it.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from minillm.attention import AttentionConfig, CausalSelfAttention, RelativePositionBias, relative_position_bucket
from minillm.errors import CheckpointError, ConfigError
from minillm.family import FamilyConfig
from minillm.finetune import FinetuneConfig, finetune
from minillm.layers import Block
from minillm.masked_lm import EncoderClassifier, MaskedLM, mask_tokens
from minillm.seq2seq import Seq2SeqLM, shift_right

transformers = pytest.importorskip("transformers")

TINY = FamilyConfig(vocab_size=40, context_length=32, d_model=32, n_head=4, d_ff=48, n_layer=2)


def _save(model, tmp_path, name):
    directory = tmp_path / name
    model.save_pretrained(directory)
    return directory


def _padded_batch(vocab: int, lo: int = 3, shape=(3, 9), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(lo, vocab, shape, generator=g)
    mask = torch.ones_like(ids)
    mask[1, shape[1] - 3 :] = 0
    mask[2, 2:] = 0
    return ids, mask


# ---------------------------------------------------------------------------
# Attention's new options against PyTorch's fused attention
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_bidirectional_padding_bias_and_cross_attention_match_torch(impl):
    torch.manual_seed(0)
    cfg = AttentionConfig(d_model=16, n_head=2, causal=False, attn_impl=impl, d_head=6, scale=0.7)
    attn = CausalSelfAttention(cfg).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    w, b = attn.qkv.weight, attn.qkv.bias
    q = F.linear(x, w[:12], b[:12]).view(2, 5, 2, 6).transpose(1, 2)

    def heads(t, rows):
        return F.linear(t, w[rows], b[rows]).view(2, t.size(1), 2, 6).transpose(1, 2)

    def merge(y):
        return attn.proj(y.transpose(1, 2).reshape(2, 5, 12))

    keep = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    bias = torch.randn(1, 2, 5, 7)
    ref = F.scaled_dot_product_attention(q, heads(ctx, slice(12, 24)), heads(ctx, slice(24, 36)),
                                         attn_mask=bias.masked_fill(~keep[:, None, None], float("-inf")), scale=0.7)
    got = attn(x, mask=keep, position_bias=bias, context=ctx)
    torch.testing.assert_close(got, merge(ref))
    torch.testing.assert_close(attn(x, mask=keep, context=attn.context_kv(ctx)), attn(x, mask=keep, context=ctx))
    k_self, v_self = heads(x, slice(12, 24)), heads(x, slice(24, 36))
    torch.testing.assert_close(attn(x), merge(F.scaled_dot_product_attention(q, k_self, v_self, scale=0.7)))


def test_decoder_only_attention_is_unchanged_by_the_new_arguments():
    torch.manual_seed(0)
    attn = CausalSelfAttention(AttentionConfig(d_model=16, n_head=4)).eval()
    x = torch.randn(2, 6, 16)
    everything = torch.ones(2, 6, dtype=torch.bool)
    torch.testing.assert_close(attn(x, mask=everything), attn(x))
    torch.testing.assert_close(attn(x, position_bias=torch.zeros(1, 4, 6, 6)), attn(x))


def test_padding_never_changes_the_real_tokens():
    """An encoder's vectors of a text are the same whether or not padding follows it."""
    torch.manual_seed(0)
    for config in (TINY, FamilyConfig(**{**TINY.__dict__, "positions": "relative", "norm": "rmsnorm",
                                         "pre_norm": True, "mlp": "geglu", "bias": False})):  # fmt: skip
        model = MaskedLM(config).eval()
        ids = torch.randint(3, 40, (1, 6))
        padded = torch.cat([ids, torch.full((1, 4), 7)], dim=1)
        mask = torch.tensor([[1] * 6 + [0] * 4])
        torch.testing.assert_close(model.encode(padded, mask)[:, :6], model.encode(ids))


def test_block_with_cross_attention_needs_memory():
    block = Block(AttentionConfig(d_model=8, n_head=2), 16, cross=True)
    with pytest.raises(ConfigError, match="memory"):
        block(torch.randn(1, 3, 8))
    with pytest.raises(ConfigError, match="memory"):
        Block(AttentionConfig(d_model=8, n_head=2), 16)(torch.randn(1, 3, 8), memory=torch.randn(1, 2, 8))


def test_relative_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-300, 301)[None, :]
    for bidirectional, buckets, distance in itertools.product((True, False), (8, 32), (20, 128)):
        theirs = T5Attention._relative_position_bucket(rel, bidirectional, buckets, distance)
        torch.testing.assert_close(relative_position_bucket(rel, bidirectional, buckets, distance), theirs)
    bias = RelativePositionBias(n_head=3, num_buckets=8, max_distance=20, bidirectional=False)
    full = bias(5, 5)
    torch.testing.assert_close(bias(2, 5, start=3), full[:, :, 3:])  # cached queries see the same bias
    with pytest.raises(ConfigError, match="num_buckets"):
        RelativePositionBias(2, num_buckets=8, max_distance=3)


# ---------------------------------------------------------------------------
# BERT
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=24)  # fmt: skip
    return _save(transformers.BertForMaskedLM(config).eval(), tmp_path_factory.mktemp("bert"), "bert")


def test_bert_logits_match_transformers(bert_dir):
    hf = transformers.BertForMaskedLM.from_pretrained(bert_dir).eval()
    model = MaskedLM.from_pretrained(bert_dir).eval()
    ids, mask = _padded_batch(99)
    types = torch.randint(0, 2, ids.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        ours, loss = model(ids, mask, types)
        assert loss is None
        real = mask.bool()
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(ids)[0], hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    labels = torch.full_like(ids, -100)
    labels[0, 2] = 5
    hf_loss = hf(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(model(ids, labels=labels)[1], hf_loss, atol=1e-5, rtol=1e-5)


def test_masked_lm_bad_input_is_explained(bert_dir, tmp_path):
    model = MaskedLM.from_pretrained(bert_dir)
    ids = torch.randint(0, 99, (2, 5))
    with pytest.raises(ConfigError, match=r"attention_mask must have the shape"):
        model(ids, torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="only 0"):
        model(ids, torch.full((2, 5), 2))
    with pytest.raises(ConfigError, match="longer than the model's maximum 24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        model(ids.float())
    with pytest.raises(ConfigError, match=r"in \[0, 99\)"):
        model(ids + 99)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ConfigError, match="model_type 'bert'.*'gpt2'.*GPT.from_pretrained"):
        MaskedLM.from_pretrained(_save(gpt2, tmp_path, "gpt2"))
    with pytest.raises(ConfigError, match="T5 and BART.*'bert'.*MaskedLM.from_pretrained"):
        Seq2SeqLM.from_pretrained(bert_dir)
    with pytest.raises(ConfigError, match="at least one sequence of one token"):
        model(torch.zeros(1, 0, dtype=torch.long))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "model.safetensors"):
        (broken / name).write_bytes((bert_dir / name).read_bytes())
    config = json.loads((bert_dir / "config.json").read_text())
    del config["hidden_size"]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="lacks or mistypes a field"):
        MaskedLM.from_pretrained(broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Seq2SeqLM.from_pretrained(broken)
    (broken / "model.safetensors").write_bytes(b"truncated")
    (broken / "config.json").write_text((bert_dir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        MaskedLM.from_pretrained(broken)
    with pytest.raises(ConfigError, match="encoder-only"):
        MaskedLM(FamilyConfig(**{**TINY.__dict__, "n_decoder_layer": 1}))
    with pytest.raises(ConfigError, match="needs a decoder"):
        Seq2SeqLM(TINY)


def test_mask_tokens_follows_the_80_10_10_recipe():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 1000, (64, 512), generator=g)
    ids[:, 0] = 1  # a special token ([CLS]) is never chosen
    inputs, labels = mask_tokens(ids, mask_token_id=3, vocab_size=1000, p=0.15, special_ids=(0, 1, 2), generator=g)
    chosen = labels != -100
    n = chosen.sum().item()
    assert not chosen[:, 0].any() and (labels[chosen] == ids[chosen]).all()
    assert abs(n / ids[:, 1:].numel() - 0.15) < 0.005
    masked = (inputs == 3) & chosen
    kept = (inputs == ids) & chosen
    random = chosen & ~masked & ~kept
    for part, share in ((masked, 0.8), (kept, 0.1), (random, 0.1)):
        assert abs(part.sum().item() / n - share) < 0.01
    assert (inputs[~chosen] == ids[~chosen]).all()
    assert not torch.isin(inputs[random], torch.tensor([0, 1, 2, 3])).any()
    with pytest.raises(ConfigError, match="p must be"):
        mask_tokens(ids, 3, 1000, p=0.0)


def test_encoder_classifier_trains_with_the_finetune_loop():
    torch.manual_seed(0)
    model = EncoderClassifier(MaskedLM(TINY), num_classes=2)
    ids = torch.randint(3, 40, (32, 6))
    labels = (ids[:, 3] > 20).long()  # the class depends on a token in the middle
    batches = [{"input_ids": ids[i : i + 8], "attention_mask": torch.ones(8, 6, dtype=torch.long),
                "labels": labels[i : i + 8]} for i in range(0, 32, 8)]  # fmt: skip
    result = finetune(model, batches, batches, FinetuneConfig(epochs=15, lr=3e-3, eval_interval=60), progress=False)
    assert result.history[-1]["val_accuracy"] == 1.0
    with pytest.raises(TypeError, match="MaskedLM"):
        EncoderClassifier(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------
# T5 and BART
# ---------------------------------------------------------------------------

T5_SHAPES = {
    "t5-relu": dict(d_model=32, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=3, num_heads=4),
    "t5-gated-gelu": dict(d_model=32, d_kv=8, d_ff=40, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                          tie_word_embeddings=False),
}  # fmt: skip


def _t5(name: str, seed: int = 0, vocab: int = 50):
    torch.manual_seed(seed)
    config = transformers.T5Config(vocab_size=vocab, relative_attention_num_buckets=8, dropout_rate=0.0,
                                   relative_attention_max_distance=20, decoder_start_token_id=0,
                                   initializer_factor=8.0, **T5_SHAPES[name])  # fmt: skip
    return transformers.T5ForConditionalGeneration(config).eval()


def _bart(seed: int = 0, vocab: int = 50):
    torch.manual_seed(seed)
    config = transformers.BartConfig(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
                                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=40,
                                     decoder_ffn_dim=40, max_position_embeddings=24, dropout=0.0,
                                     init_std=0.3)  # fmt: skip
    return transformers.BartForConditionalGeneration(config).eval()


def _hf_greedy(hf, ids, mask, n, beams=1):
    # larger initial weights than usual: the outputs of a tiny random model vary instead of repeating
    # use_cache=False: transformers' T5 cache breaks with more decoder than encoder blocks; the tokens are the same
    return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, num_beams=beams,
                       min_length=0, forced_bos_token_id=None, forced_eos_token_id=None, no_repeat_ngram_size=0,
                       early_stopping=False, length_penalty=1.0, use_cache=False)  # fmt: skip


@pytest.mark.parametrize("name", ["t5-relu", "t5-gated-gelu", "bart"])
def test_seq2seq_logits_and_greedy_tokens_match_transformers(name, tmp_path):
    hf = _bart() if name == "bart" else _t5(name)
    model = Seq2SeqLM.from_pretrained(_save(hf, tmp_path, name)).eval()
    # transformers 5 always ties T5's head; tie_word_embeddings=False only turns off the output scaling
    assert model.config.scale_logits == (name == "t5-relu")
    ids, mask = _padded_batch(50)
    dec = torch.randint(3, 50, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        torch.testing.assert_close(model(ids, dec, mask)[0], theirs, atol=1e-5, rtol=1e-5)
        labels = torch.randint(3, 50, (3, 5), generator=torch.Generator().manual_seed(3))
        labels[0, 3:] = -100
        ours = model(ids, attention_mask=mask, labels=labels)[1]
        torch.testing.assert_close(ours, hf(input_ids=ids, attention_mask=mask, labels=labels).loss,
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
    lengths = []
    for seed in range(3):  # several random models, so that some outputs end early and some do not
        hf = _bart(seed) if name == "bart" else _t5(name, seed)
        model = Seq2SeqLM.from_pretrained(_save(hf, tmp_path, f"{name}-{seed}")).eval()
        with torch.no_grad():
            theirs = _hf_greedy(hf, ids, mask, 12)
        ours = model.generate(ids, mask, max_new_tokens=12)
        assert ours.tolist() == theirs.tolist()
        lengths.append(ours.size(1))
    assert max(lengths) > 5


def _until_eos(rows: torch.Tensor, eos: int) -> list[list[int]]:
    """Each row up to and including its first end token (what follows is filler)."""
    out = []
    for row in rows.tolist():
        out.append(row[: row.index(eos, 1) + 1] if eos in row[1:] else row)
    return out


def test_beam_search_matches_transformers(tmp_path):
    ended = 0
    for seed in range(3):
        hf = _t5("t5-relu", seed, vocab=20)
        model = Seq2SeqLM.from_pretrained(_save(hf, tmp_path, f"t5-{seed}")).eval()
        ids, mask = _padded_batch(20, seed=seed)
        with torch.no_grad():
            theirs = _hf_greedy(hf, ids, mask, 8, beams=3)
        ours = model.generate(ids, mask, max_new_tokens=8, num_beams=3)
        # transformers fills a finished beam with the end token, its greedy search with padding; we pad both
        assert _until_eos(ours, 1) == _until_eos(theirs, 1)
        ended += sum(1 in row[1:] for row in ours.tolist())
    assert ended > 0  # some outputs ended before the limit


def test_beam_search_finds_the_most_likely_output_and_one_beam_is_greedy():
    """With as many beams as partial outputs, beam search is an exhaustive search."""
    torch.manual_seed(0)
    config = FamilyConfig(vocab_size=4, context_length=8, d_model=16, n_head=2, d_ff=16, n_layer=1,
                          n_decoder_layer=1, eos_token_id=1, pad_token_id=0, decoder_start_token_id=0)  # fmt: skip
    model = Seq2SeqLM(config).eval()
    with torch.no_grad():
        model.tok_emb.weight.mul_(8)  # sharper, more varied distributions
    ids = torch.tensor([[2, 3, 2, 2]])
    n = 4
    with torch.no_grad():
        memory = model.encode(ids)
        best, best_seq = -math.inf, None
        for length in range(1, n + 1):  # outputs that end with eos at `length`, or run to n tokens
            for body in itertools.product([0, 2, 3], repeat=length - 1):
                for last in ([1] if length < n else [0, 1, 2, 3]):
                    seq = [0, *body, last]
                    logp = model.decode(torch.tensor([seq[:-1]]), memory)[0].log_softmax(-1)
                    score = sum(logp[i, t].item() for i, t in enumerate(seq[1:])) / length
                    if score > best:
                        best, best_seq = score, seq
    assert model.generate(ids, max_new_tokens=n, num_beams=4**n).tolist()[0] == best_seq
    assert model.generate(ids, max_new_tokens=n, num_beams=1).tolist() == model.generate(ids, max_new_tokens=n).tolist()


def test_the_kv_cache_decodes_like_teacher_forcing():
    torch.manual_seed(0)
    for positions in ("learned", "relative", "sinusoidal"):
        config = FamilyConfig(**{**TINY.__dict__, "n_decoder_layer": 2, "positions": positions})
        model = Seq2SeqLM(config).eval()
        ids, mask = _padded_batch(40)
        out = model.generate(ids, mask, max_new_tokens=6)
        with torch.no_grad():
            memory = model.encode(ids, mask)
            full = model.decode(out[:, :-1], memory, mask.bool())
        steps = full.argmax(-1)
        alive = torch.cat([torch.ones(3, 1, dtype=torch.bool), (out[:, 1:-1] != 1).cumprod(1).bool()], dim=1)
        assert (steps[alive] == out[:, 1:][alive]).all()


def test_seq2seq_bad_input_is_explained():
    model = Seq2SeqLM(FamilyConfig(**{**TINY.__dict__, "n_decoder_layer": 1}))
    ids = torch.randint(3, 40, (2, 5))
    with pytest.raises(ConfigError, match="longer than the model's maximum 32"):
        model(ids, torch.zeros(2, 33, dtype=torch.long))
    with pytest.raises(ConfigError, match="decoder_attention_mask must have the shape"):
        model(ids, ids, decoder_attention_mask=torch.ones(2, 6))
    with pytest.raises(ConfigError, match="pass decoder_input_ids, or labels"):
        model(ids)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        model.generate(ids, max_new_tokens=40)
    with pytest.raises(ConfigError, match="num_beams"):
        model.generate(ids, num_beams=0)
    with pytest.raises(ConfigError, match="labels must have the shape"):
        model(ids, ids, labels=ids[:, :3])


def test_shift_right_starts_with_the_start_token():
    labels = torch.tensor([[5, 6, 7], [8, -100, -100]])
    assert shift_right(labels, start_id=0, pad_id=1).tolist() == [[0, 5, 6], [0, 8, 1]]
