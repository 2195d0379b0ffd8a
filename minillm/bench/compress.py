"""Benchmark of compression (appendix B): `python -m minillm.bench compress [options]`.

The book model (`minillm.pretrained.book_model`, chapter 05's) in every variant of
appendix B, measured in one run on the same held-out tokens and the same prompt:

* fp32, the reference every ratio is taken against;
* weight-only quantization (`minillm.quantize`, absmax) of the blocks' linear layers
  (embeddings, norms, biases and the tied output head stay fp32): int8 with one
  scale per tensor, int8 and int4 with one scale per output row (channel), int4 with
  one scale per group of 128, 64 and 32 inputs (a group size that does not divide
  every layer's input width is skipped, and the table says so). `quantize()` has no
  per-tensor setting for a whole model, so that row is built here: per-tensor codes
  (`quantize_tensor(..., granularity="tensor")`) with their single scale in each
  `QuantizedLinear`;
* fp32 weights with an int8 KV cache (`minillm.quantize_kv.Int8KVCache`): the keys
  and values stored as int8 codes with one fp32 scale per vector, its perplexity from
  windows read through such a cache (every query attends to the rounded keys and values);
* int8 per channel again with the integer kernel (`quantize(..., kernel="int8")`,
  W8A8): the same codes and scales, the activations rounded to int8 per token on
  the fly and multiplied as integers (fbgemm's dynamic int8 linear layer on a CPU,
  `torch._int_mm` on CUDA) instead of dequantized to an fp32 matmul;
* structured pruning (`minillm.prune.prune_structured`): each block keeps the
  --prune-keep most important MLP neurons by `neuron_importance` (Taylor scores on
  batches of *training* tokens), the others are removed; measured as pruned, WITHOUT
  recovery training (which appendix B adds), so its perplexity is the worst case;
* speculative decoding (`minillm.speculative.speculative_generate`): the fp32 model
  is the target, the int4 group-32 copy the draft (the smallest group that fits),
  k = 2, 4, 6 guesses a round, greedy; its output must equal the fp32 model's own
  greedy output token for token (checked: the run fails after printing the table if
  it does not).

Columns, each with its ratio to fp32 from the same run:

* weights in memory: `model_bytes` (a tied head counted once; codes, scales, float
  tensors, and the int8 kernel's packed copy of its weights); on disk: the bytes of the folder `save_quantized` / `save_model_folder`
  writes (weights, JSON, the tokenizer file) in a temporary directory. Speculative
  decoding holds (and ships) both models;
* held-out perplexity (`minillm.evaluate.perplexity`, disjoint windows of the context
  length) on the first --tokens tokens of the curated standard library's validation
  files, each followed by <|endoftext|> (chapter 08's held-out code). Speculative
  decoding's output distribution is the target's: its perplexity is fp32's;
* decode tokens/s at batch 1 with the KV cache: greedy `generate` of --new-tokens
  tokens after a prompt, the first --prompt-len tokens of the first function (a line
  starting `def `) in the held-out files (prefill included), the median
  of --repeats runs after one warm-up, the variants taking turns within each repeat
  (so a change in the machine's load hits every row alike);
* MFU: `GPT.flops_per_token` (forward only, at the mean context length of the
  decode) x tokens/s / peak FLOP/s. Peak: --peak-tflops, else the GPU's fp32 peak
  from `minillm.scaling.DEVICES`; a CPU has no published peak, so there the peak is
  the fp32 matrix multiply throughput measured at the start of the run (2048 x 2048,
  best of 5, same threads), and the table says so;
* greedy = fp32: how many of the new greedy tokens equal the fp32 model's before the
  first difference; KV cache: `kv_cache_bytes` of the caches the decode allocates
  (weight compression leaves it as it is; speculative decoding keeps two);
* speculative only: acceptance rate (draft guesses kept by the target) and new
  tokens per forward pass of the target.

After the table, one linear layer of GPT-2's MLP shape (768 -> 3072, random
weights) timed alone at batch 1 and 16 (`layer_timings`): fp32, int8 per channel
dequantized, int8 kernel; ms per call, the median of --repeats rounds of calls
after a warm-up, the three taking turns (--tiny: a 64 -> 256 layer).

Everything runs in fp32 (also on CUDA, TF32 off): the rows differ only in the
weights (and the int8 kernel row in its arithmetic). `--json PATH` writes the rows.
`--tiny` (for tests) swaps the book model for a tiny random one and the corpus
for random tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minillm.bench import environment, matmul_flops, sync
from minillm.checkpoint import save_model_folder
from minillm.corpus import curated_stdlib, encode_documents, spread_sample
from minillm.device import resolve_device
from minillm.errors import ConfigError
from minillm.evaluate import perplexity
from minillm.fileio import atomic_write
from minillm.generate import generate
from minillm.memory import kv_cache_bytes
from minillm.model import GPT, GPTConfig
from minillm.monitor import device_peak_flops
from minillm.pretrained import book_model
from minillm.prune import neuron_importance, prune_structured
from minillm.quantize import QuantizedLinear, model_bytes, pack_int4, quantize, quantize_tensor, save_quantized
from minillm.quantize_kv import Int8KVCache
from minillm.speculative import speculative_generate
from minillm.tokenizer import CharTokenizer
from minillm.tokens import get_batch


GROUP_SIZES = (128, 64, 32)
SPECULATIVE_K = (2, 4, 6)


# ---------------------------------------------------------------------------
# Building the variants
# ---------------------------------------------------------------------------


def quantized_layers(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> dict[str, nn.Linear]:
    """{name: layer} of the `nn.Linear` layers `quantize(model)` replaces (every one but the head)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in skip}


def group_misfit(model: nn.Module, group_size: int) -> str | None:
    """Why `group_size` cannot be used (the first layer whose input width it does not divide), or None."""
    for name, layer in quantized_layers(model).items():
        if layer.in_features % group_size:
            return f"group {group_size} does not divide the input width {layer.in_features} of {name}"
    return None


def quantize_per_tensor(model: GPT, bits: int = 8) -> GPT:
    """`quantize(model, bits)` with one absmax scale per weight matrix instead of one per output row.

    Each `QuantizedLinear` holds the codes of `quantize_tensor(w, granularity="tensor")`
    and a (1, 1) scale, which its dequantization broadcasts over every row. (Such a copy
    is saved by `save_quantized` but not read back by `load_quantized`, which expects
    per-row or per-group scales.)
    """
    q = quantize(model, bits=bits)
    for name, linear in quantized_layers(model).items():
        layer = q.get_submodule(name)
        assert isinstance(layer, QuantizedLinear)
        qt = quantize_tensor(linear.weight, bits, "absmax", "tensor", name=f"layer {name}")
        codes = qt.codes.view(linear.out_features, linear.in_features)
        if bits == 4:
            codes = pack_int4(codes)
        layer.codes, layer.scale = codes.to(layer.codes.device), qt.scale.to(layer.scale.device, layer.scale.dtype)
    q.quantization = {**q.quantization, "granularity": "tensor"}
    return q


def prune_mlp(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]], keep: float) -> GPT:
    """A copy of `model` with the `keep` fraction of most important MLP neurons of each block (no retraining)."""

    scores = neuron_importance(model, batches)
    pruned = prune_structured(model, neurons_to_keep=keep, neuron_scores=scores)
    return pruned.eval()


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


class ThroughInt8Cache(nn.Module):
    """`model` reading each input through a new `Int8KVCache`: its attention sees rounded keys and values.

    For `perplexity`, which calls model(idx) on (B, T) windows: the logits of a prefill
    through the int8 cache (every query attends to the cached codes, dequantized).
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(idx, targets, kv_cache=Int8KVCache.for_model(self.model, idx.size(0), idx.size(1)))


def folder_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def disk_bytes(model: GPT, tokenizer: Any) -> int:
    """Bytes of the folder a model is saved as (`save_quantized` or `save_model_folder`), tokenizer included."""

    with tempfile.TemporaryDirectory(prefix="minillm-compress-") as tmp:
        if getattr(model, "quantization", None):
            folder = save_quantized(Path(tmp) / "model", model, tokenizer)
        else:
            folder = save_model_folder(Path(tmp) / "model", model, tokenizer)
        return folder_bytes(folder)


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading entries of two 1-D tensors are equal."""
    n = min(a.numel(), b.numel())
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if differ.numel() else n


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def measure(model: GPT, tokenizer: Any, held_out: torch.Tensor, prompt: torch.Tensor,
            importance_batches: list[tuple[torch.Tensor, torch.Tensor]], *, new_tokens: int = 64,
            repeats: int = 3, peak: float | None = None, group_sizes: tuple[int, ...] = GROUP_SIZES,
            ks: tuple[int, ...] = SPECULATIVE_K, prune_keep: float = 0.5,
            log: Callable[[str], None] = print) -> list[dict]:  # fmt: skip
    """Every variant of `model` (fp32 GPT in eval mode) measured on `held_out` (1-D token ids) and `prompt` (1, T).

    Returns one dict per row (see the module docstring; `status` is "ok" or
    "skipped (why)"). The fp32 row comes first; ratios are against it.
    """

    device = prompt.device
    ctx = model.config.context_length
    if prompt.size(1) + new_tokens > ctx:
        raise ValueError(f"prompt ({prompt.size(1)}) + new tokens ({new_tokens}) exceed the context length {ctx}")
    mean_context = prompt.size(1) + new_tokens // 2  # attention FLOPs of a decode step grow with the position
    fp32_flops = model.flops_per_token(mean_context, training=False)

    # one dict per row: variant, kind, model (None: skipped), note. A quantized copy does the fp32 model's
    # matmuls, so it gets fp32's FLOPs (its own flops_per_token would miss the codes, which are buffers)
    variants: list[dict] = [dict(variant="fp32", kind="reference", model=model, note="")]
    log("building the variants ...")
    variants.append(dict(variant="int8 per tensor", kind="quantized", model=quantize_per_tensor(model, 8),
                         note="one absmax scale per weight matrix"))  # fmt: skip
    variants.append(dict(variant="int8 per channel", kind="quantized", model=quantize(model, 8),
                         note="one scale per output row"))  # fmt: skip
    variants.append(dict(variant="int8 per channel, int8 kernel (W8A8)", kind="quantized",
                         model=quantize(model, 8, kernel="int8"),
                         note="the same codes; activations int8 per token, an integer matmul"))  # fmt: skip
    variants.append(dict(variant="int4 per channel", kind="quantized", model=quantize(model, 4),
                         note="one scale per output row, two codes a byte"))  # fmt: skip
    for g in group_sizes:
        misfit = group_misfit(model, g)
        variants.append(dict(variant=f"int4 group {g}", kind="quantized", group_size=g,
                             model=None if misfit else quantize(model, 4, group_size=g),
                             note=f"skipped ({misfit})" if misfit else f"one scale per {g} inputs"))  # fmt: skip
    variants.append(dict(variant="fp32, int8 KV cache", kind="kv int8", model=model,
                         note="fp32 weights; keys and values as int8 codes, one scale per vector"))  # fmt: skip
    fitting = [v for v in variants if v.get("group_size") and v["model"] is not None]  # int4 groups that fit
    draft_row = (min(fitting, key=lambda v: v["group_size"]) if fitting
                 else next(v for v in variants if v["variant"] == "int4 per channel"))  # fmt: skip
    start = time.perf_counter()
    pruned = prune_mlp(model, importance_batches, prune_keep)
    width, kept = model.config.ff_width, pruned.config.ff_width
    variants.append(dict(variant=f"pruned to {kept} of {width} MLP neurons, not retrained", kind="pruned",
                         model=pruned, note=f"the {width - kept} least important neurons of each block removed "
                                            f"(scores and pruning {time.perf_counter() - start:.1f} s)"))  # fmt: skip
    for k in ks:
        variants.append(dict(variant=f"speculative k={k}, draft {draft_row['variant']}", kind="speculative",
                             model=None, draft=draft_row["model"], k=k,
                             note=f"fp32 target, greedy, {k} guesses a round"))  # fmt: skip

    # sizes and perplexity, each variant once (both deterministic)
    for v in variants:
        m = v["model"]
        if v["kind"] == "speculative":
            v["memory_bytes"] = model_bytes(model)["total"] + model_bytes(v["draft"])["total"]
            v["kv_cache_bytes"] = 2 * kv_cache_bytes(model.config, 1, prompt.size(1) + new_tokens - 1)
            v["flops_per_token"] = fp32_flops
            continue
        if m is None:
            continue
        log(f"perplexity and size: {v['variant']} ...")
        kv_int8 = v["kind"] == "kv int8"  # the fp32 model itself: its sizes are the reference's
        v["perplexity"] = perplexity(ThroughInt8Cache(m) if kv_int8 else m, held_out).perplexity
        # after a forward pass, so that an int8 kernel's packed copy of the weights is made and counted
        v["memory_bytes"] = variants[0]["memory_bytes"] if kv_int8 else model_bytes(m)["total"]
        v["disk_bytes"] = variants[0]["disk_bytes"] if kv_int8 else disk_bytes(m, tokenizer)
        v["kv_cache_bytes"] = kv_cache_bytes(m.config, 1, prompt.size(1) + new_tokens, "int8" if kv_int8 else "fp32")
        v["flops_per_token"] = m.flops_per_token(mean_context, training=False) if v["kind"] == "pruned" else fp32_flops
    reference = variants[0]
    for v in variants:
        if v["kind"] == "speculative":
            v["disk_bytes"] = reference["disk_bytes"] + draft_row["disk_bytes"]
            v["perplexity"] = reference["perplexity"]

    # decoding: one warm-up each, then `repeats` rounds in which the variants take turns
    live = [v for v in variants if v["model"] is not None or v["kind"] == "speculative"]

    def decode(v: dict) -> Any:
        if v["kind"] == "speculative":
            return speculative_generate(model, v["draft"], prompt, new_tokens, k=v["k"], temperature=0)
        return generate(v["model"], prompt, new_tokens, temperature=0, kv_cache=_cache(v, prompt.size(1) + new_tokens))

    log("warm-up ...")
    for v in live:
        if v["kind"] == "speculative":
            speculative_generate(model, v["draft"], prompt, min(new_tokens, 2 * v["k"] + 2), k=v["k"], temperature=0)
        else:
            generate(v["model"], prompt, min(new_tokens, 4), temperature=0,
                     kv_cache=_cache(v, prompt.size(1) + min(new_tokens, 4)))  # fmt: skip
    for v in live:
        v["seconds"] = []
    for r in range(repeats):
        log(f"decoding, repeat {r + 1} of {repeats} ...")
        for v in live:
            out, seconds = _timed(lambda v=v: decode(v), device)
            v["seconds"].append(seconds)
            v["output"] = out
    fp32_tokens = reference["output"][0, prompt.size(1) :]
    rows = []
    for v in variants:
        row: dict[str, Any] = dict(variant=v["variant"], kind=v["kind"], note=v["note"], status="ok")
        if v["model"] is None and v["kind"] != "speculative":
            row.update(status=v["note"], note="")
            rows.append(row)
            continue
        times = sorted(v["seconds"])
        tokens_per_s = new_tokens / times[len(times) // 2]
        out = v["output"]
        if v["kind"] == "speculative":
            row.update(acceptance_rate=out.acceptance_rate, tokens_per_target_call=out.tokens_per_target_call,
                       target_calls=out.target_calls, draft_calls=out.draft_calls, proposed=out.proposed,
                       accepted=out.accepted)  # fmt: skip
            out = out.tokens
        new = out[0, prompt.size(1) :]
        row.update(memory_bytes=v["memory_bytes"], disk_bytes=v["disk_bytes"], perplexity=v["perplexity"],
                   tokens_per_s=tokens_per_s, seconds=v["seconds"], kv_cache_bytes=v["kv_cache_bytes"],
                   flops_per_token=v["flops_per_token"], greedy_same_prefix=common_prefix(new, fp32_tokens),
                   new_tokens=new.numel())  # fmt: skip
        row["same_as_fp32"] = row["greedy_same_prefix"] == new_tokens == fp32_tokens.numel()
        row["mfu"] = v["flops_per_token"] * tokens_per_s / peak if peak else None
        rows.append(row)
    ref = rows[0]
    for row in rows:
        if row["status"] == "ok":
            row["memory_ratio"] = row["memory_bytes"] / ref["memory_bytes"]
            row["disk_ratio"] = row["disk_bytes"] / ref["disk_bytes"]
            row["perplexity_ratio"] = row["perplexity"] / ref["perplexity"]
            row["speed_ratio"] = row["tokens_per_s"] / ref["tokens_per_s"]
    return rows


def _cache(v: dict, length: int) -> Int8KVCache | None:
    """A new int8 KV cache for the "kv int8" row (None: `generate` makes its float one)."""
    return Int8KVCache.for_model(v["model"], 1, length) if v["kind"] == "kv int8" else None


LAYER_SHAPE = (768, 3072)  # GPT-2 small's MLP up-projection: in, out
LAYER_BATCHES = (1, 16)


def layer_timings(in_features: int = LAYER_SHAPE[0], out_features: int = LAYER_SHAPE[1],
                  batches: tuple[int, ...] = LAYER_BATCHES, calls: int = 20, repeats: int = 5,
                  device: torch.device | str = "cpu", seed: int = 0) -> list[dict]:  # fmt: skip
    """ms per call of one linear layer (random weights, x (batch, in_features)) as fp32, int8 per channel
    dequantized and int8 kernel: for each batch size the median over `repeats` rounds of `calls` calls, after
    a warm-up, the three taking turns within each round. One dict per (batch, variant)."""

    device = torch.device(device)
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features).to(device).eval()
    layers = {"fp32": linear, "int8 per channel, dequantize": QuantizedLinear.from_linear(linear),
              "int8 per channel, int8 kernel (W8A8)": QuantizedLinear.from_linear(linear, kernel="int8")}  # fmt: skip
    rows = []
    with torch.no_grad():
        for batch in batches:
            x = torch.randn(batch, in_features, device=device)
            seconds: dict[str, list[float]] = {name: [] for name in layers}
            for layer in layers.values():
                for _ in range(3):
                    layer(x)
            for _ in range(repeats):
                for name, layer in layers.items():
                    def run(layer: nn.Module = layer) -> None:
                        for _ in range(calls):
                            layer(x)

                    seconds[name].append(_timed(run, device)[1] / calls)
            fp32_ms = 1e3 * float(np.median(seconds["fp32"]))
            for name, times in seconds.items():
                ms = 1e3 * float(np.median(times))
                rows.append(dict(variant=name, in_features=in_features, out_features=out_features, batch=batch,
                                 ms_per_call=ms, speed_ratio=fp32_ms / ms))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def table(rows: list[dict]) -> str:
    """The rows as a markdown table (a skipped row says why)."""
    lines = ["| variant | weights in memory | on disk | held-out perplexity | decode tokens/s | MFU | "
             "greedy = fp32 | KV cache | acceptance | tokens / target call |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | {r['status']} |" + " |" * 8)
            continue
        spec = r["kind"] == "speculative"
        ppl = "= fp32 (exact)" if spec else f"{r['perplexity']:.3f} ({r['perplexity_ratio']:.3f}x)"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.3f}%"
        same = f"{r['greedy_same_prefix']}/{r['new_tokens']}"
        cells = [r["variant"], f"{_size(r['memory_bytes'])} ({r['memory_ratio']:.2f}x)",
                 f"{_size(r['disk_bytes'])} ({r['disk_ratio']:.2f}x)", ppl,
                 f"{r['tokens_per_s']:.1f} ({r['speed_ratio']:.2f}x)", mfu, same, _size(r["kv_cache_bytes"]),
                 f"{r['acceptance_rate']:.2f}" if spec else "-",
                 f"{r['tokens_per_target_call']:.2f}" if spec else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_table(rows: list[dict]) -> str:
    """`layer_timings`' rows as a markdown table: ms per call and speed against fp32, one column per batch size."""
    batches = sorted({r["batch"] for r in rows})
    lines = ["| one layer " + "".join(f"| batch {b}, ms per call " for b in batches) + "|",
             "|---" * (1 + len(batches)) + "|"]  # fmt: skip
    for name in dict.fromkeys(r["variant"] for r in rows):
        cells = [name] + [f"{r['ms_per_call']:.3f} ({r['speed_ratio']:.2f}x)" for b in batches for r in rows
                          if r["variant"] == name and r["batch"] == b]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Inputs: the book model and held-out code, or a tiny random stand-in
# ---------------------------------------------------------------------------


def book_inputs(device: torch.device, seed: int = 0):
    """The book model on `device` (eval mode), its tokenizer, held-out ids (n,), the prompt's source ids and
    importance batches (x, y) of training tokens.

    Held-out ids: chapter 08's, every validation file of the curated standard library
    followed by <|endoftext|>. The prompt's source: the tokens from the first `def` at
    the start of a line in those files (so the decode writes code, not a license header).
    """

    model, tok = book_model()
    model = model.to(device).eval()
    corpus = curated_stdlib()
    held_out = encode_documents(tok, corpus.validation).astype(np.int64)
    doc = next(d for d in corpus.validation if "\ndef " in d)
    source = np.asarray(tok.encode_ordinary(doc[doc.index("\ndef ") + 1 :][:4000]), dtype=np.int64)
    train = encode_documents(tok, spread_sample(corpus.train, 400_000)).astype(np.int64)
    g = torch.Generator().manual_seed(seed)
    batches = [get_batch(train, 16, model.config.context_length, device, generator=g) for _ in range(8)]
    return model, tok, held_out, source, batches


def tiny_inputs(device: torch.device, seed: int = 0):
    """`book_inputs`' five, tiny: a random GPT (2 layers, width 64, MLP 256, context 64), a character
    tokenizer, random tokens (held out and the prompt's source alike) and two random batches."""

    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,:;()[]=+-*/_\n0123456789")
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=tok.vocab_size, context_length=64, d_model=64, n_layer=2, n_head=2)
    model = GPT(config).to(device).eval()
    g = torch.Generator().manual_seed(seed)
    held_out = torch.randint(0, tok.vocab_size, (4096,), generator=g).numpy()
    batches = []
    for _ in range(2):
        xy = torch.randint(0, tok.vocab_size, (4, 65), generator=g)
        batches.append((xy[:, :-1].to(device), xy[:, 1:].to(device)))
    return model, tok, held_out, held_out, batches


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table (and write it as JSON with --json); returns 0."""
    parser = argparse.ArgumentParser(prog="python -m minillm.bench compress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=16384, help="held-out tokens for perplexity (default 16384)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens each decode generates (default 64)")
    parser.add_argument("--prompt-len", type=int, default=32,
                        help="prompt: the first N tokens of the first held-out function (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per variant, median (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument("--prune-keep", type=float, default=0.5, help="share of MLP neurons kept (default 0.5)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak FLOP/s for MFU (default: the GPU's fp32 peak; on a CPU a measured matmul)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: a tiny random model
    args = parser.parse_args(argv)

    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        parser.error(f"--device {args.device}: {err}")
    if args.tokens < 2 or args.new_tokens < 1 or args.prompt_len < 1 or args.repeats < 1:
        parser.error("--tokens must be >= 2, --new-tokens, --prompt-len and --repeats >= 1")
    if not 0 < args.prune_keep < 1:
        parser.error("--prune-keep must be in (0, 1)")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 everywhere: the rows differ only in their weights
    t0 = time.perf_counter()
    if args.tiny:
        model, tok, held_out, source, batches = tiny_inputs(device)
    else:
        model, tok, held_out, source, batches = book_inputs(device)
    ctx = model.config.context_length
    if args.prompt_len + args.new_tokens > ctx:
        parser.error(f"--prompt-len + --new-tokens must fit in the model's context length {ctx}")
    if len(held_out) < args.tokens:
        parser.error(f"--tokens {args.tokens}: the held-out set has only {len(held_out)} tokens")
    if len(source) < args.prompt_len:
        parser.error(f"--prompt-len {args.prompt_len}: the prompt's source has only {len(source)} tokens")
    prompt = torch.as_tensor(source[: args.prompt_len], dtype=torch.long, device=device)[None]
    tokens = torch.as_tensor(held_out[: args.tokens], dtype=torch.long)

    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, "--peak-tflops"
    elif device.type == "cuda":
        peak, peak_source = device_peak_flops(device, "fp32"), "the GPU's fp32 peak (minillm.scaling.DEVICES)"
    else:
        n = 512 if args.tiny else 2048
        peak = matmul_flops(n)
        peak_source = f"measured fp32 matmul ({n} x {n}, best of 5; a CPU has no published peak)"
    c = model.config
    print(f"# {environment()}")
    print(f"# device {device}, fp32, torch threads {torch.get_num_threads()}; "
          f"{'TINY RANDOM model' if args.tiny else 'the book model'}: {model.num_parameters() / 1e6:.2f} M "
          f"parameters, {c.n_layer} layers, width {c.d_model}, MLP {c.ff_width}, context {ctx}")  # fmt: skip
    print(f"# perplexity on {args.tokens:,} held-out tokens; decode: {args.new_tokens} greedy tokens after a "
          f"{args.prompt_len}-token held-out prompt, batch 1, KV cache, median of {args.repeats}: "
          f"{tok.decode(prompt[0].tolist())[:70]!r}")  # fmt: skip
    if peak:
        print(f"# MFU against {peak / 1e9:,.1f} GFLOP/s: {peak_source}")
    rows = measure(model, tok, tokens, prompt, batches, new_tokens=args.new_tokens, repeats=args.repeats,
                   peak=peak, prune_keep=args.prune_keep,
                   log=lambda s: print(f"  {s}", file=sys.stderr, flush=True))  # fmt: skip
    shape = (64, 256) if args.tiny else LAYER_SHAPE
    print(f"  one {shape[0]} -> {shape[1]} linear layer ...", file=sys.stderr, flush=True)
    layer_rows = layer_timings(*shape, repeats=args.repeats, calls=3 if args.tiny else 20, device=device)
    elapsed = time.perf_counter() - t0
    print(table(rows))
    for r in rows:
        if r["status"] == "ok" and r["kind"] == "pruned":
            print(f"# {r['variant']}: {r['note']}")
    print("# speculative: the fp32 model verifies, the draft proposes k tokens a round; memory and disk count both "
          "models, KV cache both caches; acceptance = guesses kept / proposed")  # fmt: skip
    print(f"# one linear layer {shape[0]} -> {shape[1]} (random weights), ms per call (x fp32's speed), median "
          f"of {args.repeats} rounds of {3 if args.tiny else 20} calls:")  # fmt: skip
    print(layer_table(layer_rows))
    print(f"# total {elapsed:.0f} s")
    if args.json:
        doc = dict(environment=environment(), device=str(device), threads=torch.get_num_threads(), tiny=args.tiny,
                   command="python -m minillm.bench compress " + " ".join(argv if argv is not None else sys.argv[1:]),
                   settings=dict(tokens=args.tokens, new_tokens=args.new_tokens, prompt_len=args.prompt_len,
                                 repeats=args.repeats, prune_keep=args.prune_keep),
                   peak_flops=peak, peak_source=peak_source, elapsed_s=elapsed, rows=rows,
                   layer_rows=layer_rows)  # fmt: skip
        atomic_write(args.json, json.dumps(doc, indent=1) + "\n")
    wrong = [r["variant"] for r in rows if r["kind"] == "speculative" and r["status"] == "ok" and not r["same_as_fp32"]]
    if wrong:
        raise AssertionError(f"greedy speculative decoding must give the fp32 model's greedy tokens; {wrong} did not")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
