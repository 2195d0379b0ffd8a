"""Tests for minillm.hf: an exported folder loads in `transformers` with minillm's
logits (1e-5) and token ids, reads back into minillm unchanged, and exports that
Hugging Face cannot express fail with the field named."""

from __future__ import annotations

import ast
import inspect
import json
import random

import pytest
import tiktoken
import torch
import transformers
from safetensors.torch import load_file

import minillm.hf
from minillm import data
from minillm.errors import ConfigError, RunFolderError
from minillm.fileio import file_mode
from minillm.hf import export_hf
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import ENDOFTEXT, TOKENIZER_FILE, BPETokenizer, CharTokenizer, load_tokenizer

EOT = ENDOFTEXT
LLAMA = dict(positions="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, d_ff=96, rope_theta=500.0)
TEXTS = {
    "prose": "The quick brown fox jumps over the lazy dog. It wasn't me, said Tom; \"really?\"",
    "code": 'def f(x: int) -> int:\n\t"""Doc."""\n    return {"k": x**2 + 1}  # comment\n\nprint(f(3))\n',
    "emoji": "I 💜 emoji 🤖🚀👩‍👩‍👧 and ❤️ flags 🇫🇷",
    "cjk": "我爱自然语言处理。日本語のテキスト、한국어 텍스트 1234567",
    "whitespace": "a    b      c  \n\n\n   d\t\t\te \t \n  trailing   \r\n\u00a0\u3000x",
    "special": f"first doc{EOT}second doc {EOT}{EOT}\n <|im start|>third",
}


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return data.read_text("tinyshakespeare")[:20_000]


@pytest.fixture(scope="module")
def bpe(shakespeare) -> BPETokenizer:
    """The tiny models' tokenizer: vocab 300, two special tokens."""
    return BPETokenizer.train(shakespeare, 300, special_tokens=[EOT, "<|im start|>"])


def tiny(**overrides) -> GPT:
    """A small random model in eval mode; large weights and random norms, so that a
    misplaced weight shows in the logits."""
    fields = dict(vocab_size=300, context_length=32, d_model=64, n_layer=2, n_head=4, init_std=0.1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**fields, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norm weights around 1, biases around 0
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
    return model


# ------------------------------------------------------------------------ models
MODELS = {
    "gpt2": {},
    "gpt2-exact-gelu": dict(mlp="gelu_exact"),  # activation_function "gelu" (erf), as nanoGPT's nn.GELU()
    "gpt2-untied-padded": dict(tie_embeddings=False, vocab_multiple=64, d_ff=96),
    "llama-gqa-untied": dict(LLAMA, tie_embeddings=False),
    "llama-gqa-tied": dict(LLAMA, tie_embeddings=True),
    "llama-mha-bias": dict(LLAMA, n_kv_head=None, bias=True),
    "llama-pruned-heads": dict(LLAMA, n_head=2, n_kv_head=None, d_head=16),  # 2 heads of 16 in width 64
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_match_transformers_and_round_trip(name, bpe, tmp_path):
    model = tiny(**MODELS[name])
    directory = export_hf(model, tmp_path / name, bpe)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    assert type(hf).__name__ == ("GPT2LMHeadModel" if name.startswith("gpt2") else "LlamaForCausalLM")
    back = GPT.from_pretrained(directory).eval()
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        ours, theirs, again = model(idx)[0], hf(idx).logits, back(idx)[0]
    assert ours.abs().max() > 1  # logits far from zero: the comparison means something
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    if model.config.vocab_multiple == 1:  # minillm -> HF folder -> minillm: the same computation
        assert torch.equal(again, ours)
    else:  # the head has fewer (padding) rows now: a matmul of another shape may round differently
        torch.testing.assert_close(again, ours, atol=1e-6, rtol=0)
    ignore = ("vocab_multiple", "init_std") + (("rope_theta",) if name.startswith("gpt2") else ())
    assert back.config.differences(model.config, ignore=ignore) == {}


def test_config_json_and_files(bpe, tmp_path):
    directory = export_hf(tiny(), tmp_path / "gpt2", bpe)
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json", TOKENIZER_FILE, "model.safetensors", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json"]  # fmt: skip
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"] and config["model_type"] == "gpt2"
    assert config["torch_dtype"] == "float32" and config["n_inner"] == 256
    assert config["bos_token_id"] == config["eos_token_id"] == bpe.special_tokens[EOT] == 298
    assert (directory / "model.safetensors").stat().st_mode & 0o777 == file_mode()
    again = load_tokenizer(directory)  # minillm's own file, not Hugging Face's tokenizer.json
    assert again.encode(TEXTS["special"], allowed_special="all") == bpe.encode(TEXTS["special"], allowed_special="all")

    plain = export_hf(tiny(**LLAMA).to(torch.bfloat16), tmp_path / "plain")  # no tokenizer
    assert sorted(p.name for p in plain.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((plain / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2
    assert config["torch_dtype"] == "bfloat16" and config["bos_token_id"] is None
    assert {t.dtype for t in load_file(plain / "model.safetensors").values()} == {torch.bfloat16}


# --------------------------------------------------------------------- tokenizer
_ALPHABET = [*"aAzZ09 \t\n\r'sStdlmvre.,;!?-_()\"\\<|>", *"éß中文😀🇫\u200d\u00a0\u3000\u2028١²",
             EOT, "<|im start|>"]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizers(bpe, shakespeare) -> dict[str, BPETokenizer]:
    gpt4 = BPETokenizer.train(shakespeare + " I'M 1234567", 400, special_tokens=[EOT, "<|im start|>"],
                              pattern="gpt4")  # fmt: skip
    return {"trained": bpe, "trained-gpt4": gpt4, "gpt2": BPETokenizer.from_gpt2()}


@pytest.mark.parametrize("which", ["trained", "trained-gpt4", "gpt2"])
def test_autotokenizer_gives_minillm_ids(which, tokenizers, tmp_path):
    tok = tokenizers[which]
    model = tiny(vocab_size=tok.vocab_size, d_model=16, n_head=2, n_layer=1, context_length=256)
    directory = export_hf(model, tmp_path / which, tok)
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    reference = tiktoken.get_encoding("gpt2") if which == "gpt2" else tok.to_tiktoken()
    rng = random.Random(0)
    fuzz = ["".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(40))) for _ in range(300)]
    for text in [*TEXTS.values(), *fuzz]:
        if "<|im start|>" not in tok.special_tokens:
            text = text.replace("<|im start|>", "<im start>")
        ids = tok.encode(text, allowed_special="all")
        assert hf(text)["input_ids"] == ids, text
        assert reference.encode(text, allowed_special="all") == ids, text
        assert hf.decode(ids) == text
    assert hf.eos_token == hf.bos_token == EOT and hf.eos_token_id == tok.special_tokens[EOT]
    assert hf.model_max_length == 256


# ------------------------------------------------------------------------ errors
@pytest.mark.parametrize("overrides, field", [
    (dict(positions="sinusoidal"), "positions"),
    (dict(positions="none"), "positions"),
    (dict(pre_norm=False), "pre_norm"),
    (dict(norm="rmsnorm"), "norm"),  # GELU with RMSNorm
    (dict(bias=False), "bias"),
    (dict(n_kv_head=2), "n_kv_head"),  # GPT-2 has no grouped-query attention
    (dict(n_head=2, d_head=16), "d_head"),  # nor heads narrower than n_embd / n_head
    (dict(LLAMA, mlp="gelu"), "mlp"),
    (dict(LLAMA, mlp="gelu_exact"), "mlp"),
    (dict(LLAMA, norm="layernorm"), "norm"),
    (dict(LLAMA, pre_norm=False), "pre_norm"),
])  # fmt: skip
def test_unexportable_configs_name_the_field(overrides, field, tmp_path):
    with pytest.raises(ConfigError, match=rf"\b{field}="):
        export_hf(tiny(**overrides), tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_tokenizer_errors(shakespeare, tmp_path):
    byte_vocab = [bytes([b]) for b in range(256)]
    with pytest.raises(ConfigError, match="BPETokenizer only"):
        export_hf(tiny(), tmp_path / "a", CharTokenizer.from_text("abc"))
    with pytest.raises(ConfigError, match="400 ids.*vocab_size is 300"):
        export_hf(tiny(), tmp_path / "b", BPETokenizer.train(shakespeare, 400))
    possessive = BPETokenizer(byte_vocab, [], pattern=r"\p{N}{1,3}+\p{L}|\s|.")
    with pytest.raises(ConfigError, match="possessive"):
        export_hf(tiny(vocab_size=256), tmp_path / "c", possessive)
    clash = BPETokenizer(byte_vocab + [b"ab", b"ab"], [(97, 98, 256)], {"ab": 257})
    with pytest.raises(ConfigError, match="'ab' reads like ordinary token 256"):
        export_hf(tiny(vocab_size=258), tmp_path / "d", clash)
    with pytest.raises(TypeError, match="GPT"):
        export_hf(torch.nn.Linear(2, 2), tmp_path / "e")
    assert not list(tmp_path.iterdir())


def test_folder_is_never_half_written(tmp_path, monkeypatch):
    target = tmp_path / "export"
    target.mkdir()
    export_hf(tiny(), target)  # an empty folder is fine
    first = (target / "model.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="overwrite=True"):
        export_hf(tiny(init_std=0.5), target)
    assert (target / "model.safetensors").read_bytes() == first
    export_hf(tiny(**LLAMA), target, overwrite=True)
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(minillm.hf, "save_file", disk_full)
    with pytest.raises(OSError, match="disk full"):
        export_hf(tiny(), target, overwrite=True)
    assert json.loads((target / "config.json").read_text())["model_type"] == "llama"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no staged folder left behind
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RunFolderError, match="is a file"):
        export_hf(tiny(), tmp_path / "file")


def test_imports_follow_the_layering():
    """`transformers` and `tokenizers` only inside functions (importing minillm.hf stays
    light); minillm modules only at module top, and only the ones below it."""
    tree = ast.parse(inspect.getsource(minillm.hf))
    top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    nested = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in top]

    def names(nodes):
        return {node.module if isinstance(node, ast.ImportFrom) else alias.name
                for node in nodes for alias in node.names}  # fmt: skip

    assert {"transformers", "tokenizers"} & {n.split(".")[0] for n in names(top)} == set()
    assert {n for n in names(top) if n.startswith("minillm")} <= {
        "minillm.model", "minillm.tokenizer", "minillm.fileio", "minillm.errors"}
    assert {n.split(".")[0] for n in names(nested)} <= {"transformers", "tokenizers"}
