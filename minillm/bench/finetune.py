"""Benchmark of full fine-tuning vs LoRA (chapter 07): `python -m minillm.bench finetune [options]`.

For one model (default the `gpt2` preset, random weights: speed and memory do
not depend on the values) it trains a few AdamW steps on random tokens, first
updating every weight, then with LoRA adapters of ranks 4, 8 and 16, and prints:

* trainable parameters (and their share of the model);
* gradient + AdamW state, computed: 3 x 4 bytes per trainable fp32 parameter
  (a gradient and two moments), the memory LoRA saves by construction;
* peak memory, measured: on CUDA `torch.cuda.max_memory_allocated` over the
  steps (weights, gradients, optimizer state, activations); on a CPU each mode
  runs in a fresh process and reports its peak resident memory (ru_maxrss)
  minus its resident memory once the model is built, i.e. what training adds
  on top of the weights (allocator caching makes this coarser than on CUDA);
* tokens/s of a whole step (forward, backward, optimizer) and its ratio to full
  fine-tuning, measured in the same run.

CPU runs fp32; CUDA runs bf16 autocast with TF32 matmuls.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch

from minillm.bench import environment, median_seconds
from minillm.model import GPT, MODEL_SHAPES, GPTConfig


def _rss_bytes() -> int:
    """Current resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def measure(preset: str, rank: int, targets: list[str], device: str, batch: int, seq_len: int, steps: int,
            overrides: dict | None = None) -> dict:  # fmt: skip
    """Train `steps` AdamW steps (after one warm-up step) with LoRA of `rank` (0: full); return the figures.

    `overrides`: GPTConfig fields that replace the preset's (e.g. a smaller model for a quick check).
    """
    from minillm.lora import LoRAConfig, count_parameters, inject_lora
    from minillm.optim import make_optimizer

    dev = torch.device(device)
    torch.manual_seed(0)
    config = GPTConfig.from_preset(preset, **{"context_length": max(seq_len, 64), **(overrides or {})})
    model = GPT(config).to(dev).train()
    if rank:
        inject_lora(model, LoRAConfig(rank=rank, alpha=2.0 * rank, targets=tuple(targets)))
    counts = count_parameters(model)
    optimizer = make_optimizer(model, lr=1e-4, weight_decay=0.0)
    idx = torch.randint(0, config.vocab_size, (batch, seq_len + 1), device=dev)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with amp:
            _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    base_rss = _rss_bytes()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seconds = median_seconds(step, dev, repeat=steps, warmup=1)  # the warm-up allocates gradients and Adam's state
    if dev.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(dev), "allocated"
    else:
        import resource

        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss, "RSS added"
    return {"rank": rank, "trainable": counts["trainable"], "total": counts["total"],
            "state_bytes": 12 * counts["trainable"], "peak_bytes": peak, "peak_kind": kind,
            "tokens_per_s": batch * seq_len / seconds}  # fmt: skip


def _measure_in_subprocess(kwargs: dict) -> dict:
    """`measure(**kwargs)` in a fresh Python process, so its peak memory is its own."""
    code = "import json, sys; from minillm.bench.finetune import measure; print(json.dumps(measure(**json.loads(sys.argv[1]))))"
    done = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a table; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m minillm.bench finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2", choices=sorted(MODEL_SHAPES), help="model shapes (default gpt2)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16], help="LoRA ranks (default 4 8 16)")
    parser.add_argument("--targets", nargs="+", default=["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"],
                        help="layers that get adapters (default: every attention and MLP projection)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 2 on CPU, 8 on GPU)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default 3)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    args = parser.parse_args(argv)
    if any(r < 1 for r in args.ranks):
        parser.error("--ranks must be positive integers")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    batch = args.batch or (8 if device.startswith("cuda") else 2)
    print(environment())
    print(f"{args.preset}, device {device}, {'bf16 autocast' if device.startswith('cuda') else 'fp32'}, "
          f"batch {batch} x {args.seq_len} tokens, AdamW, LoRA on {' '.join(args.targets)}")  # fmt: skip
    rows = []
    for rank in [0, *args.ranks]:
        kwargs = {"preset": args.preset, "rank": rank, "targets": args.targets, "device": device,
                  "batch": batch, "seq_len": args.seq_len, "steps": args.steps}
        rows.append(measure(**kwargs) if device.startswith("cuda") else _measure_in_subprocess(kwargs))
    full = rows[0]
    print(f"{'mode':<10} {'trainable':>12} {'share':>7} {'grad+Adam':>10} {'peak mem':>10} {'tok/s':>9} {'speed':>6}")
    for r in rows:
        name = "full" if r["rank"] == 0 else f"LoRA r={r['rank']}"
        print(f"{name:<10} {r['trainable']:>12,} {100 * r['trainable'] / r['total']:>6.2f}% "
              f"{r['state_bytes'] / 2**20:>7.1f} MiB {r['peak_bytes'] / 2**20:>6.0f} MiB "
              f"{r['tokens_per_s']:>9,.0f} {r['tokens_per_s'] / full['tokens_per_s']:>5.2f}x")  # fmt: skip
    print(f"peak mem: {full['peak_kind']} during the steps"
          + (" (weights included)" if full["peak_kind"] == "allocated" else " (weights excluded)"))
    return 0
