"""Benchmark: `python -m minillm.bench gpu`, what each GPU setting buys on one device (chapters 05-06).

One table, measured in one run on synthetic random tokens (nothing is read or downloaded):

1. train: tokens/s, ms per step (forward + backward + AdamW step on a batch (B, T)),
   model FLOPs utilization (MFU: `GPT.flops_per_token` x tokens/s over the device's
   peak for the row's number format, from `minillm.scaling.DEVICES`), the ratio to
   the fp32 row and the peak memory, for GPT-2 124M (`gpt2` shapes, B=8, T=1024) and
   the book model at GPU scale (`book_config("gpu")`, B=32, T=1024), on a cumulative
   ladder: fp32 (written-out attention, `attn_impl="manual"`, and the book's
   written-out AdamW) -> TF32 matmuls -> bf16 autocast -> + torch's fused AdamW ->
   + flash SDPA (`attn_impl="sdpa"`, the flash kernel forced on CUDA) ->
   + torch.compile -> + vocabulary padded to a multiple of 64;
2. memory: GPT-2 124M at the "+ flash SDPA" setting with and without activation
   checkpointing (`minillm.memory.checkpoint_blocks`): peak memory, the bytes saved
   for backward, and what the recomputation costs in tokens/s;
3. generate: greedy decoding of 256 new tokens for B=8 random 256-token prompts with the
   `gpt2` shapes, `stream` with and without the KV cache (strict fp32, so both paths
   must give the same tokens); target >= 5x.

Warm-up steps (and compilation) are not timed; each timed step is bracketed by
`torch.cuda.synchronize`; a row reports the median of its timed steps and stops
timing after --row-seconds. No new row starts after --budget seconds. TF32 and
torch.compile need CUDA: elsewhere those rows say "skipped (needs CUDA)"; bf16
autocast, fused AdamW and SDPA run in their CPU form. `--tiny` shrinks every shape
so that the logic runs on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from minillm.bench import environment, sync
from minillm.device import autocast, resolve_device, resolve_precision, set_matmul_precision
from minillm.errors import ConfigError
from minillm.fileio import atomic_write
from minillm.generate import stream
from minillm.memory import checkpoint_blocks, saved_activation_bytes
from minillm.model import GPT, GPTConfig
from minillm.monitor import device_peak_flops, mfu
from minillm.optim import make_optimizer
from minillm.pretrained import book_config
from minillm.scaling import DEVICES


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training configuration of the ladder."""

    precision: str = "fp32"  # "fp32" | "tf32" (fp32 with TF32 matmuls) | "bf16" (autocast)
    optimizer: str = "minillm"  # `make_optimizer` impl: "minillm" (written out) | "torch" (fused)
    attn_impl: str = "manual"  # "manual" (written out, keeps the T x T scores) | "sdpa"
    compile: bool = False
    vocab_multiple: int = 1
    checkpointing: bool = False

    def describe(self, vocab_size: int, device: torch.device) -> str:
        """What really ran, e.g. "bf16, torch AdamW, sdpa (flash), compiled, vocab 50304"."""
        vocab = self.vocab_multiple * -(-vocab_size // self.vocab_multiple)
        attn = "sdpa (flash)" if self.attn_impl == "sdpa" and device.type == "cuda" else self.attn_impl
        return (f"{resolve_precision(self.precision, device)}, {self.optimizer} AdamW, {attn}, "
                f"{'compiled' if self.compile else 'eager'}, vocab {vocab}"
                + (", checkpointing" if self.checkpointing else ""))  # fmt: skip


#: (row key, label, what changes from the row above); each row keeps the changes of the rows before it.
LADDER = [
    ("fp32", "fp32 (manual attention, minillm AdamW)", {}),
    ("tf32", "+ TF32 matmuls", dict(precision="tf32")),
    ("bf16", "+ bf16 autocast", dict(precision="bf16")),
    ("fused-adamw", "+ fused AdamW (torch)", dict(optimizer="torch")),
    ("flash", "+ flash SDPA (attn manual -> sdpa)", dict(attn_impl="sdpa")),
    ("compile", "+ torch.compile", dict(compile=True)),
    ("vocab64", "+ vocab padded to 64", dict(vocab_multiple=64)),
]
ROWS = [key for key, _, _ in LADDER] + ["checkpointing", "kv-cache"]
MODELS = ("gpt2", "book-gpu")
NEEDS_CUDA = {"tf32", "compile"}  # no CPU form (TF32) or not cheap on a CPU (compile)


def model_shapes(tiny: bool) -> dict[str, tuple[GPTConfig, int, int]]:
    """{model name: (GPTConfig, batch B, sequence length T)} of the models trained."""
    book = book_config("gpu")
    shapes = {"gpt2": (GPTConfig.from_preset("gpt2", dropout=0.0), 8, 1024),
              "book-gpu": (book.model_config(book.vocab_size), book.batch_size, book.context_length)}  # fmt: skip
    if tiny:  # the vocabulary shrinks too, keeping its remainder mod 64 (so gpt2 still needs padding, book-gpu not)
        small = dict(n_layer=2, n_head=2, d_model=64, context_length=64)
        shapes = {name: (dataclasses.replace(c, vocab_size=256 + c.vocab_size % 64, **small), 2, 64)
                  for name, (c, _, _) in shapes.items()}  # fmt: skip
    return shapes


def model_flops(config: GPTConfig, seq_len: int) -> int:
    """Training FLOPs per token of the model itself (`GPT.flops_per_token`; no padded vocabulary rows)."""
    with torch.device("meta"):  # shapes only, no memory
        return GPT(dataclasses.replace(config, vocab_multiple=1)).flops_per_token(seq_len)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(fn: Callable[[], object], device: torch.device, warmup: int, steps: int, seconds: float) -> float:
    """Median seconds per call of `fn` over up to `steps` timed calls (at least 2) after `warmup` untimed ones;
    timing stops once the timed calls add up to `seconds`."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < steps and (len(times) < 2 or sum(times) < seconds):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_row(config: GPTConfig, s: Setting, device: torch.device, batch: int, seq_len: int, flops: float,
              warmup: int, steps: int, seconds: float, activations: bool = False) -> dict:  # fmt: skip
    """Train steps of `config` under setting `s` on random tokens (B, T+1): tokens/s, step ms, MFU, peak memory.

    `activations`: also count the bytes autograd saves for backward in one untimed step (eager models only).
    """
    set_matmul_precision(device, s.precision)
    precision = resolve_precision(s.precision, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(config, attn_impl=s.attn_impl, vocab_multiple=s.vocab_multiple)).to(device)
    if s.checkpointing:
        checkpoint_blocks(model)
    opt = make_optimizer(model, lr=1e-4, impl=s.optimizer)
    run = torch.compile(model) if s.compile else model
    idx = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device=device)
    x, y = idx[:, :-1], idx[:, 1:]  # inputs and next-token targets, (B, T) each
    flash = s.attn_impl == "sdpa" and device.type == "cuda"
    kernels = (lambda: sdpa_kernel([SDPBackend.FLASH_ATTENTION])) if flash else contextlib.nullcontext
    out: dict = {}
    if activations:
        with kernels(), autocast(device, precision), saved_activation_bytes(model) as saved:
            _, loss = model(x, y)
        loss.backward()
        out["activations_gib"] = saved["bytes"] / 2**30

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with kernels(), autocast(device, precision):
            _, loss = run(x, y)
        loss.backward()
        opt.step()

    sec = timed(step, device, warmup, steps, seconds)
    peak = device_peak_flops(device, precision)  # None on CPUs and unknown GPUs
    out.update(tokens_per_s=batch * seq_len / sec, step_ms=1000 * sec, peak_mem_gib=_peak_gib(device),
               mfu=mfu(flops, batch * seq_len / sec, peak) if peak else None)  # fmt: skip
    return out


def generate_rows(config: GPTConfig, device: torch.device, batch: int, prompt_len: int, new_tokens: int):
    """Greedy decoding of `new_tokens` after random prompts (B, prompt_len): [without, with] the KV cache.

    Strict fp32 (no TF32, no autocast), so both paths must pick the same tokens.
    """
    set_matmul_precision(device, "fp32")
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    prompt = torch.randint(0, config.vocab_size, (batch, prompt_len), device=device)
    results, outputs = [], []
    for use_cache in (False, True):
        list(stream(model, prompt, 4, temperature=0, use_cache=use_cache))  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        outputs.append(torch.stack(list(stream(model, prompt, new_tokens, temperature=0, use_cache=use_cache)), 1))
        sync(device)
        sec = time.perf_counter() - start
        results.append(dict(tokens_per_s=batch * new_tokens / sec, step_ms=1000 * sec / new_tokens,
                            peak_mem_gib=_peak_gib(device)))  # fmt: skip
    same = torch.equal(*outputs)  # (B, new_tokens) each
    for r in results:
        r.update(same_tokens=same, note="fp32; " + ("same tokens with and without the cache" if same else
                                                    "TOKENS DIFFER"))  # fmt: skip
    return results


def attempt(fn: Callable[[], object], device: torch.device) -> tuple[object, str]:
    """(fn(), "ok"), or (None, "failed: ...") if it raised (out of memory, a compiler error); frees memory after."""
    try:
        return fn(), "ok"
    except Exception as err:  # one failed row must not lose the table
        return None, f"failed: {type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:100]}"
    finally:
        gc.collect()
        torch.compiler.reset()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def print_table(rows: list[dict]) -> None:
    """The rows as one aligned text table ("-" where nothing was measured)."""

    def num(v: float | None, fmt: str, unit: str = "") -> str:
        return "-" if v is None else format(v, fmt) + unit

    header = ("model", "row", "setting", "tokens/s", "step ms", "MFU", "ratio", "peak GiB", "status / note")
    lines = [header] + [(r["model"], r["row"], r["label"], num(r["tokens_per_s"], ",.0f"), num(r["step_ms"], ".1f"),
                         num(r["mfu"] and 100 * r["mfu"], ".1f", "%"), num(r["ratio"], ".2f", "x"),
                         num(r["peak_mem_gib"], ".2f"), r["note"] if r["status"] == "ok" else r["status"])
                        for r in rows]  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    for line in lines:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        print("  ".join(cells + [line[-1]]))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table (and write it as JSON with --json); returns 0."""
    parser = argparse.ArgumentParser(prog="python -m minillm.bench gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu/mps for a logic check")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, 2 timed steps: the logic on a CPU in seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the table as JSON to PATH")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS, help="run only these rows (default: all)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models of the ladder")
    parser.add_argument("--row-seconds", type=float, default=15.0, help="stop timing a row after this (default 15)")
    parser.add_argument("--budget", type=float, default=420.0, help="start no row after this many seconds (420)")
    parser.add_argument("--gen-batch", type=int, default=8, help="sequences generated at once (default 8)")
    parser.add_argument("--gen-prompt", type=int, default=256, help="prompt tokens before generating (default 256)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here (torch {torch.__version__}); "
                     "run on a machine with an NVIDIA GPU, or check the logic with --device cpu --tiny")  # fmt: skip
    try:
        device = resolve_device(args.device)
    except ConfigError as err:
        parser.error(f"--device {args.device}: {err}")
    shapes = model_shapes(args.tiny)
    warmup, steps = (1, 2) if args.tiny else (3, 10)
    gen_batch, gen_prompt, new_tokens = (2, 8, 16) if args.tiny else (args.gen_batch, args.gen_prompt, 256)
    if gen_batch < 1 or gen_prompt < 1 or gen_prompt + new_tokens > shapes["gpt2"][0].context_length:
        parser.error(f"--gen-batch must be >= 1 and --gen-prompt in [1, {1024 - new_tokens}]")
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    spec = next((d for key, d in DEVICES.items() if key in name), None)
    peaks = ", ".join(f"{k} {v / 1e12:.0f}" for k, v in spec.peak.items()) + " TFLOP/s" if spec else "unknown (no MFU)"
    print(f"# gpu benchmark{' --tiny' if args.tiny else ''}; {environment()}; device {name}; peaks: {peaks}")
    rows: list[dict] = []

    def add(section: str, model: str, key: str, label: str, status: str, ref: dict | str | None, **measured) -> dict:
        """Append a row; `ref` is the row its ratio is over (None: no ratio; "self": it is the reference)."""
        row = dict(section=section, model=model, row=key, label=label, status=status, note="", tokens_per_s=None,
                   step_ms=None, mfu=None, ratio=None, peak_mem_gib=None)  # fmt: skip
        row.update(measured)
        ref = row if ref == "self" else ref
        if ref and ref["tokens_per_s"] and row["tokens_per_s"]:
            row["ratio"] = row["tokens_per_s"] / ref["tokens_per_s"]
        rows.append(row)
        print(f"# {model} {label}: {status} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        return row

    def skip_reason() -> str:
        return f"skipped (time budget of {args.budget:.0f} s spent)" if time.perf_counter() - t0 > args.budget else ""

    saved_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        for model_name in args.models:  # 1. the training ladder
            config, batch, seq_len = shapes[model_name]
            flops = model_flops(config, seq_len)
            s, ref = Setting(), None
            for key, label, change in LADDER:
                s = dataclasses.replace(s, **change)
                if key not in args.rows:
                    continue
                ran = dataclasses.replace(s, compile=s.compile and device.type == "cuda")  # what really runs
                skip = "skipped (needs CUDA)" if key in NEEDS_CUDA and device.type != "cuda" else ""
                if key == "vocab64" and config.vocab_size % 64 == 0:
                    skip = f"skipped (vocab {config.vocab_size} is already a multiple of 64)"
                skip = skip or skip_reason()
                result, status = (None, skip) if skip else attempt(
                    lambda: train_row(config, ran, device, batch, seq_len, flops, warmup, steps, args.row_seconds),
                    device)  # fmt: skip
                row = add("train", model_name, key, label, status, "self" if key == "fp32" else ref,
                          note=ran.describe(config.vocab_size, device), **(result or {}))  # fmt: skip
                ref = row if key == "fp32" else ref
        if "checkpointing" in args.rows:  # 2. memory with and without activation checkpointing
            config, batch, seq_len = shapes["gpt2"]
            flops, ref = model_flops(config, seq_len), None
            for ckpt in (False, True):
                s = Setting(precision="bf16", optimizer="torch", attn_impl="sdpa", checkpointing=ckpt)
                skip = skip_reason()
                result, status = (None, skip) if skip else attempt(lambda: train_row(
                    config, s, device, batch, seq_len, flops, warmup, steps, args.row_seconds, activations=True),
                    device)  # fmt: skip
                note = s.describe(config.vocab_size, device)
                if result:
                    note = f"saved for backward {result['activations_gib']:.3f} GiB; {note}"
                row = add("memory", "gpt2", "checkpointing", f"activation checkpointing {'on' if ckpt else 'off'}",
                          status, ref or "self", **{**(result or {}), "note": note})  # fmt: skip
                ref = ref or row
        if "kv-cache" in args.rows:  # 3. generation with and without the KV cache
            skip = skip_reason()
            results, status = (None, skip) if skip else attempt(
                lambda: generate_rows(shapes["gpt2"][0], device, gen_batch, gen_prompt, new_tokens), device)
            ref = None
            for i, label in enumerate(("no cache", "KV cache (target >= 5x)")):
                row = add("generate", "gpt2", "kv-cache", f"generate {new_tokens} tokens, B={gen_batch}, "
                          f"prompt {gen_prompt}: {label}", status, ref or "self", **(results[i] if results else {}))
                ref = ref or row
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_tf32
    elapsed = time.perf_counter() - t0
    print("# ratio: tokens/s over the section's first row (fp32 / checkpointing off / no cache); MFU counts the "
          "model's FLOPs (no recomputation, no padded vocab rows)")  # fmt: skip
    print_table(rows)
    print(f"# total {elapsed:.0f} s")
    if args.json:
        table = dict(environment=environment(), device=name, peaks=spec.peak if spec else None, tiny=args.tiny,
                     command="python -m minillm.bench gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
                     elapsed_s=elapsed, rows=rows)  # fmt: skip
        atomic_write(args.json, json.dumps(table, indent=1))
    return 0
