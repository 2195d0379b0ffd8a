"""Benchmark of the model (chapters 03-04): `python -m minillm.bench model [options]`.

Three measurements on one device, each against a reference from the same run:

1. training step (forward + backward) tokens/s of a preset (default `gpt2`),
   with model FLOPs utilization when the device's peak is known;
2. attention alone (forward + backward), written out vs
   `torch.nn.functional.scaled_dot_product_attention`, at the preset's shapes;
3. generation tokens/s of greedy decoding with and without the KV cache.

CPU runs fp32; CUDA runs bf16 autocast (and TF32 matmuls).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from minillm.attention import causal_mask, scaled_dot_product_attention
from minillm.bench import environment, median_seconds, sync
from minillm.generate import generate
from minillm.model import GPT, MODEL_SHAPES, GPTConfig

# Dense bf16 peak TFLOP/s (no sparsity) of some GPUs, for MFU.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "4090": 165.0}


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def bench_training(config: GPTConfig, device: torch.device, batch: int, seq_len: int, warmup: int, steps: int):
    """Seconds per forward+backward step and tokens/s of `config` on random tokens."""
    model = GPT(config).to(device).train()
    idx = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device=device)

    def step() -> None:
        with _autocast(device):
            _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        model.zero_grad(set_to_none=True)

    seconds = median_seconds(step, device, steps, warmup)
    return seconds, batch * seq_len / seconds, model.flops_per_token(seq_len)


def bench_attention(config: GPTConfig, device: torch.device, batch: int, seq_len: int, warmup: int, steps: int):
    """Seconds per forward+backward of causal attention: written out, then SDPA."""
    h, d = config.n_head, config.d_model // config.n_head
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(batch, h, seq_len, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = causal_mask(seq_len, device=device)

    def manual() -> None:
        scaled_dot_product_attention(q, k, v, mask).sum().backward()

    def fused() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    return median_seconds(manual, device, steps, warmup), median_seconds(fused, device, steps, warmup)


def bench_generation(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool):
    """Generated tokens and tokens/s of greedy generation of `new_tokens` after `prompt` (1, T)."""
    device = prompt.device
    with _autocast(device):
        generate(model, prompt, 4, temperature=0, use_cache=use_cache)  # warm-up
        sync(device)
        start = time.perf_counter()
        out = generate(model, prompt, new_tokens, temperature=0, use_cache=use_cache)
        sync(device)
    seconds = time.perf_counter() - start
    return out, new_tokens / seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m minillm.bench model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2", choices=sorted(MODEL_SHAPES), help="model for the training step")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the training step (default 1)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default 3)")
    parser.add_argument(
        "--gen-preset", default=None, choices=sorted(MODEL_SHAPES), help="generation model (default: --preset)"
    )
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens to generate (default 256)")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens for generation (default 16)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "attention", "generate"])
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    config = GPTConfig.from_preset(args.preset, context_length=max(1024, args.seq_len))
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    print(environment())
    print(f"device {device}, {precision}, torch threads {torch.get_num_threads()}")
    rows: list[tuple[str, str, str]] = []

    if "train" not in args.skip:
        sec, tps, flops = bench_training(config, device, args.batch, args.seq_len, 1, args.steps)
        mfu = f", MFU {100 * tps * flops / (peak * 1e12):.1f}%" if peak else ""
        rows.append((f"train step {args.preset} B={args.batch} T={args.seq_len}", f"{tps:,.0f} tok/s",
                     f"{sec * 1000:.0f} ms/step, {tps * flops / 1e12:.2f} TFLOP/s{mfu}"))  # fmt: skip
    if "attention" not in args.skip:
        manual, fused = bench_attention(config, device, max(args.batch, 4), args.seq_len, 2, max(args.steps, 5))
        label = f"attention fwd+bwd B={max(args.batch, 4)} H={config.n_head} T={args.seq_len}"
        detail = f"SDPA {fused * 1000:.1f} ms vs written out {manual * 1000:.1f} ms"
        rows.append((label, f"{manual / fused:.2f}x", detail))
    if "generate" not in args.skip:
        gen_config = GPTConfig.from_preset(args.gen_preset or args.preset)
        if args.prompt_len + args.new_tokens > gen_config.context_length:
            parser.error("--prompt-len + --new-tokens must fit in the generation model's context length")
        model = GPT(gen_config).to(device).eval()
        prompt = torch.randint(0, gen_config.vocab_size, (1, args.prompt_len), device=device)
        with_cache, fast = bench_generation(model, prompt, args.new_tokens, use_cache=True)
        without, slow = bench_generation(model, prompt, args.new_tokens, use_cache=False)
        same = "same tokens" if torch.equal(with_cache, without) else "TOKENS DIFFER"
        label = f"generate {args.gen_preset or args.preset} {args.new_tokens} tokens"
        rows.append((label, f"{fast / slow:.2f}x", f"KV cache {fast:.1f} tok/s vs none {slow:.1f} tok/s, {same}"))

    width = max(len(r[0]) for r in rows) if rows else 0
    for name, headline, detail in rows:
        print(f"{name:<{width}}  {headline:>14}  {detail}")
    return 0
