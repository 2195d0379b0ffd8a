"""Export a minillm model and its tokenizer as a Hugging Face model folder (chapter 04).

`export_hf(model, directory, tokenizer)` writes a folder that `transformers` reads:

    config.json              GPT2LMHeadModel or LlamaForCausalLM settings
    model.safetensors        the weights under Hugging Face's names
    tokenizer.json           a fast (Rust `tokenizers`) byte-level BPE giving our ids   } with a
    tokenizer_config.json    which tokenizer class, the special tokens, the context    } BPETokenizer
    special_tokens_map.json  the special tokens, the older way                         }
    minillm_tokenizer.json   minillm's own file, so `load_tokenizer(directory)` works  }

`AutoModelForCausalLM.from_pretrained(directory)` then gives minillm's logits,
`AutoTokenizer.from_pretrained(directory)` minillm's ids, and
`minillm.model.GPT.from_pretrained(directory)` reads it back. A GPT-2-style model
(learned positions, LayerNorm, GELU, biases) becomes `GPT2LMHeadModel`, a
Llama-style one (RoPE, RMSNorm, SwiGLU, grouped-query attention) `LlamaForCausalLM`.

The loader in `minillm.model` (`config_from_hf`, `hf_state_dict`: Hugging Face ->
minillm) is the one home of the name mapping; export runs it backwards:

* a config is exportable exactly when the loader reads the `config.json` written
  for it back as the same model (`_hf_config` names every field that differs);
* the weights are placed by feeding the loader "probe" tensors whose entries are
  their own positions (`_hf_weights`), so renames, GPT-2's transposed `Conv1D`
  weights and Llama's separate q/k/v need no second, inverse table.

`transformers` and `tokenizers` are imported only when exporting.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import regex
import torch
from safetensors.torch import save_file

from minillm.errors import ConfigError, RunFolderError
from minillm.fileio import file_mode
from minillm.model import GPT, GPTConfig, config_from_hf, hf_state_dict
from minillm.tokenizer import ENDOFTEXT, GPT4_PATTERN, TOKENIZER_FILE, BPETokenizer, Tokenizer, gpt2_bytes_to_unicode

#: GPTConfig fields a Hugging Face config does not carry: training and speed settings,
#: and the padding of the vocabulary (its rows are never used, so they are not written).
NOT_EXPORTED = ("dropout", "attn_impl", "init_std", "vocab_multiple")


def export_hf(model: GPT, directory: str | os.PathLike, tokenizer: Tokenizer | None = None, *,
              overwrite: bool = False) -> Path:
    """Write `model` (and `tokenizer`) as a Hugging Face model folder; returns the folder.

    The folder is written beside `directory` under a hidden name and renamed into
    place when complete, so a crash never leaves a half-written export. An
    existing non-empty `directory` raises RunFolderError unless `overwrite=True`.

    Weights keep the model's dtype (`torch_dtype` in `config.json`). A vocabulary
    padded to `vocab_multiple` is written without its padding rows, which no id
    reaches: the logits are the same, and `GPT.from_pretrained(directory)` reads
    the model back with `vocab_multiple=1`. If the tokenizer has `<|endoftext|>`,
    it is the config's `bos_token_id` and `eos_token_id`. Only a `BPETokenizer`
    has a Hugging Face equivalent here; a `CharTokenizer` raises ConfigError
    (export without it, and keep its own file from `tokenizer.save`).

    Raises ConfigError for a model Hugging Face cannot express (sinusoidal or no
    positions, post-LN, a mix such as GELU with RMSNorm, GPT-2 without biases...),
    naming the field, and for a tokenizer with more ids than the model.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"export_hf exports a minillm.model.GPT, got {type(model).__name__}")
    if tokenizer is not None and not isinstance(tokenizer, BPETokenizer):
        raise ConfigError(f"export_hf writes Hugging Face tokenizer files for a BPETokenizer only, got "
                          f"{type(tokenizer).__name__}; pass tokenizer=None and save it with tokenizer.save()")
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
                          f"{model.config.vocab_size}; export the model trained with this tokenizer")
    dtype = model.tok_emb.weight.dtype
    config = _hf_config(model.config, tokenizer, str(dtype).removeprefix("torch."))
    with _staged_directory(Path(directory), overwrite) as tmp:
        save_file(_hf_weights(model, config), tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            for name, text in _tokenizer_files(tokenizer, model.config.context_length).items():
                (tmp / name).write_text(text, encoding="utf-8")
            tokenizer.save(tmp / TOKENIZER_FILE)
    return Path(directory)


# ---------------------------------------------------------------------------
# The model: config.json and the weights
# ---------------------------------------------------------------------------


def _hf_config(config: GPTConfig, tokenizer: BPETokenizer | None, dtype: str) -> dict:
    """The `config.json` of `config`; raises ConfigError naming what Hugging Face cannot express."""
    c = config
    if c.positions == "learned":
        if c.n_head * c.head_dim != c.d_model:
            raise ConfigError(f"Hugging Face's GPT-2 has heads of size n_embd / n_head; this model has "
                              f"d_head={c.head_dim} with n_head={c.n_head}, which do not add up to d_model={c.d_model}")
        hf = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": c.context_length,
              "n_embd": c.d_model, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": c.ff_width,
              "activation_function": "gelu" if c.mlp == "gelu_exact" else "gelu_new", "layer_norm_epsilon": c.norm_eps,
              "attn_pdrop": c.dropout, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout}  # fmt: skip
    elif c.positions == "rope":
        hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": c.context_length,
              "hidden_size": c.d_model, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
              "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim, "intermediate_size": c.ff_width,
              "hidden_act": "silu", "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
              "attention_bias": c.bias, "mlp_bias": c.bias, "attention_dropout": c.dropout}  # fmt: skip
    else:
        raise ConfigError(f"positions={c.positions!r} cannot be exported: Hugging Face's GPT-2 learns its "
                          "positions (positions='learned') and Llama rotates them (positions='rope')")
    eot = tokenizer.special_tokens.get(ENDOFTEXT) if tokenizer is not None else None
    hf.update(vocab_size=c.vocab_size, tie_word_embeddings=c.tie_embeddings, bos_token_id=eot, eos_token_id=eot,
              pad_token_id=None, torch_dtype=dtype)  # fmt: skip
    ignore = NOT_EXPORTED + (() if c.positions == "rope" else ("rope_theta",))  # unused without RoPE
    differences = config.differences(config_from_hf(hf), ignore=ignore)
    if differences:
        family = hf["architectures"][0]
        fields = "; ".join(f"{k}={ours!r} where {family} has {k}={theirs!r}"
                           for k, (ours, theirs) in differences.items())  # fmt: skip
        raise ConfigError(f"this model cannot be exported as {family} (chosen by positions={c.positions!r}): "
                          f"{fields}. Exportable models are GPT-2-style or Llama-style, as the presets "
                          "'gpt2' and 'llama-110m' of GPTConfig.from_preset")
    return hf


def _hf_weights(model: GPT, config: dict) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face's names and layouts, for `config` (a `config.json`).

    The layouts differ: GPT-2's `Conv1D` weights are (in, out), our `nn.Linear`'s
    (out, in); Llama keeps q (n_head*hd, C), k and v (kv_heads*hd, C) apart where
    we fuse them into one qkv ((n_head + 2*kv_heads)*hd, C), hd = C // n_head.
    `hf_state_dict` maps Hugging Face weights to ours. Give it probe tensors with
    Hugging Face's names and shapes whose entries are their own positions 0, 1, 2...
    in one flat buffer of all weights: what it returns under each of our names is,
    entry by entry, where that weight's values go in the buffer. The probes come
    from the model built on the meta device (shapes, no memory); positions cost 8 to
    16 bytes per parameter while exporting.
    """
    import transformers

    settings = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **settings)
    with torch.device("meta"):
        hf_model = getattr(transformers, config["architectures"][0])(hf_config)
    shapes = {name: p.shape for name, p in hf_model.named_parameters()}  # a tied head is left out
    sizes = [shape.numel() for shape in shapes.values()]
    positions = torch.arange(sum(sizes)).split(sizes)
    probes = {name: pos.view(shape) for (name, shape), pos in zip(shapes.items(), positions)}
    where = hf_state_dict(probes, model.config, config["model_type"])

    vocab = model.config.vocab_size
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name in ("tok_emb.weight", "lm_head.weight"):
        ours[name] = ours[name][:vocab]  # drop the padded rows (vocab_multiple)
    flat = torch.empty(sum(sizes), dtype=ours["tok_emb.weight"].dtype)
    filled = torch.zeros(sum(sizes), dtype=torch.bool)
    for name, index in where.items():
        if name not in ours or ours[name].shape != index.shape:
            raise RuntimeError(f"bug: the Hugging Face mapping gives {name} {tuple(index.shape)}, the model "
                               f"has {tuple(ours[name].shape) if name in ours else 'no such weight'}")
        flat[index.reshape(-1)] = ours[name].reshape(-1)
        filled[index.reshape(-1)] = True
    unused = set(ours) - set(where) - ({"lm_head.weight"} if model.config.tie_embeddings else set())
    if unused or not bool(filled.all()):
        raise RuntimeError(f"bug: the Hugging Face mapping leaves out {sorted(unused)[:4]} or some of its weights")
    return {name: part.view(shape).clone() for (name, shape), part in zip(shapes.items(), flat.split(sizes))}


# ---------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------

# Oniguruma, the regex engine of Hugging Face `tokenizers`, reads `X{m,n}+` as "X{m,n},
# one or more times", not as a possessive repetition. In GPT-4's pattern `\p{N}{1,3}+`
# ends a top-level alternative, where nothing can backtrack into it, so greedy matches
# the same; other patterns with a possessive counted repetition are refused.
_ONIGURUMA = {GPT4_PATTERN: GPT4_PATTERN.replace(r"\p{N}{1,3}+|", r"\p{N}{1,3}|")}
_COUNTED_POSSESSIVE = regex.compile(r"(?<!\\)\{\d+(?:,\d*)?\}\+")


def _tokenizer_files(tokenizer: BPETokenizer, context_length: int) -> dict[str, str]:
    """`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` for `tokenizer`.

    `tokenizer.json` is a byte-level BPE of the `tokenizers` library: our regex splits
    the text into chunks (Split), each chunk's bytes are spelled as characters with
    GPT-2's byte alphabet (ByteLevel), then the merges apply in our order. Ids are
    ours: the vocabulary maps each spelled token to its id, and the special tokens
    are added tokens at their ids (Hugging Face always encodes them as their id, like
    our `encode(text, allowed_special="all")`).
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as FastTokenizer

    pattern = _ONIGURUMA.get(tokenizer.pattern, tokenizer.pattern)
    if _COUNTED_POSSESSIVE.search(pattern):
        raise ConfigError(f"the tokenizer's pattern {pattern!r} has a possessive counted repetition "
                          "('{m,n}+'), which Hugging Face's regex engine reads differently; write it without")
    alphabet = gpt2_bytes_to_unicode()
    spelled = {i: "".join(alphabet[b] for b in token) for token, i in tokenizer.mergeable_ranks().items()}
    vocab = {text: i for i, text in spelled.items()}
    for name, i in tokenizer.special_tokens.items():
        if name in vocab:
            raise ConfigError(f"special token {name!r} reads like ordinary token {vocab[name]} in Hugging "
                              "Face's byte-level spelling; give it a name with a character like '<' or '|'")
        vocab[name] = i
    merges = [(spelled[a], spelled[b]) for a, b, _ in tokenizer.merges]
    fast = FastTokenizer(models.BPE(vocab=vocab, merges=merges))
    fast.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    fast.decoder = decoders.ByteLevel()
    fast.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in tokenizer.special_tokens])

    specials = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT} if ENDOFTEXT in tokenizer.special_tokens else {}
    others = [name for name in tokenizer.special_tokens if name != ENDOFTEXT]
    if others:
        specials["additional_special_tokens"] = others
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
              "clean_up_tokenization_spaces": False, **specials}  # fmt: skip
    return {"tokenizer.json": fast.to_str(pretty=True) + "\n",
            "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
            "special_tokens_map.json": json.dumps(specials, indent=2, ensure_ascii=False) + "\n"}  # fmt: skip


# ---------------------------------------------------------------------------
# Writing the folder
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _staged_directory(directory: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a new, empty folder beside `directory`; when the body succeeds it takes `directory`'s place.

    If the body fails, the staged folder is removed and `directory` is untouched.
    Replacing an existing folder is two renames (old one aside, new one in), then the
    old one is deleted: a crash between the renames leaves it as `.NAME.*.old`.
    """
    directory = Path(os.path.abspath(directory))  # "." has a name and a parent too
    if directory.exists() and not directory.is_dir():
        raise RunFolderError(f"{directory} is a file; export_hf needs a folder path")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise RunFolderError(f"{directory} exists and is not empty; pass overwrite=True to replace it, "
                             "or choose another folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    stem = directory.parent / f".{directory.name}.{secrets.token_hex(4)}"
    staged, old = stem.with_name(stem.name + ".part"), stem.with_name(stem.name + ".old")
    staged.mkdir()
    try:
        yield staged
        for path in staged.iterdir():
            os.chmod(path, file_mode())  # some writers (safetensors) make owner-only files
        if directory.exists():
            os.replace(directory, old)
        os.replace(staged, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
