"""Benchmark: `python -m minillm.bench scaling`, chapter 06's speed and memory numbers.

On a CPU (default): tokens/s of a small model trained by one process and by
DDP on 2 processes (`torchrun`, gloo, same global batch; the ratio is the
point: CPUs gain little), and the memory estimator's table for GPT-2 sizes and
7B. On a GPU, `--gpu` runs the ablation of the `gpt2-124m` preset on one
device, one row per setting added: fp32, TF32, bf16 autocast, + SDPA/flash
attention, + fused AdamW, + torch.compile, + vocabulary padded to 64; tokens/s
and MFU per row, and peak memory with and without activation checkpointing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from minillm.bench import environment

CPU_SETTINGS = dict(data="tinyshakespeare", max_chars=300_000, n_layer=4, n_head=4, d_model=128, context_length=64,
                    batch_size=12, grad_accum=2, max_steps=30, warmup_steps=5, eval_interval=1000, eval_batches=2,
                    sample_tokens=0, device="cpu", log_interval=1)  # fmt: skip


def _median_tokens_per_s(history: list[dict]) -> float:
    steps = [r["tokens_per_s"] for r in history if "tokens_per_s" in r]
    return statistics.median(steps[5:] if len(steps) > 10 else steps)


def cpu_scaling(steps: int) -> None:
    """Single process vs DDP with 2 processes on this CPU (each process 1 thread, as torchrun would)."""
    from minillm.config import preset_config
    from minillm.train import train

    config = preset_config("shakespeare-char", **{**CPU_SETTINGS, "max_steps": steps})
    torch.set_num_threads(1)
    single = train(config, None, progress=False, verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "ddp.py"
        script.write_text(
            "import dataclasses, json, sys, torch\nfrom minillm.config import TrainConfig\n"
            "from minillm.train import train\ntorch.set_num_threads(1)\n"
            f"config = dataclasses.replace(TrainConfig.from_dict(json.loads({config.to_json()!r})), "
            "strategy='ddp')\nr = train(config, None, progress=False, verbose=False)\n"
            f"import torch.distributed as d\nopen({str(Path(tmp) / 'h.json')!r}, 'w').write(json.dumps(r.history))"
            " if int(__import__('os').environ['RANK']) == 0 else None\n"
        )  # fmt: skip
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", str(script)]  # fmt: skip
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        ddp = json.loads((Path(tmp) / "h.json").read_text())
    a, b = _median_tokens_per_s(single.history), _median_tokens_per_s(ddp)
    print(f"model: {config.model.n_layer} layers, width {config.model.d_model}, context {config.context_length}, "
          f"{config.tokens_per_step:,} tokens/step, {steps} steps")
    print(f"single process (1 thread)   {a:10,.0f} tokens/s")
    print(f"DDP, 2 processes (gloo)     {b:10,.0f} tokens/s   ({b / a:.2f}x single)")


def memory_table() -> None:
    """The estimator for GPT-2 sizes and Llama-2 7B: bf16 autocast, micro-batch 1, full context, 8 ranks."""
    from minillm.memory import count_parameters, estimate_memory
    from minillm.model import GPTConfig

    print(f"{'model':12} {'params':>8} {'DDP':>8} {'ZeRO-1':>8} {'ZeRO-2':>8} {'ZeRO-3':>8} {'act':>7} {'act+ckpt':>8}"
          "   GiB per rank, 8 ranks")  # fmt: skip
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "llama2-7b"):
        c = GPTConfig.from_preset(name)
        est = {s: estimate_memory(c, strategy=s, world_size=8) for s in ("ddp", "zero1", "zero2", "zero3")}
        ckpt = estimate_memory(c, strategy="zero3", world_size=8, activation_checkpointing=True)
        cells = " ".join(f"{e.states / 2**30:8.1f}" for e in est.values())
        print(f"{name:12} {count_parameters(c) / 1e9:7.2f}B {cells} {est['ddp'].activations / 2**30:7.2f} "
              f"{ckpt.activations / 2**30:8.2f}")


def gpu_ablation(steps: int, data_files: str) -> None:
    """gpt2-124m on one GPU, one setting added per row; tokens/s and MFU (median after warm-up)."""
    from minillm.config import apply_overrides, preset_config
    from minillm.train import train

    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device; without one run the CPU part (no --gpu)")
    base = preset_config("gpt2-124m", data="files", data_files=data_files, max_steps=steps, grad_accum=1,
                         eval_interval=10**6, eval_batches=1, sample_tokens=0, log_interval=1, compile=False,
                         vocab_multiple=1, optimizer="minillm", attn_impl="manual")  # fmt: skip
    rows = [
        ("fp32", dict(precision="fp32")),
        ("TF32", dict(precision="tf32")),
        ("bf16 autocast (manual attention)", dict(precision="bf16")),
        ("+ SDPA/flash attention", dict(precision="bf16", attn_impl="sdpa")),
        ("+ fused AdamW", dict(precision="bf16", attn_impl="sdpa", optimizer="torch")),
        ("+ torch.compile", dict(precision="bf16", attn_impl="sdpa", optimizer="torch", compile=True)),
        ("+ vocab padded to 64", dict(precision="bf16", attn_impl="sdpa", optimizer="torch", compile=True,
                                      vocab_multiple=64)),
    ]  # fmt: skip
    print(f"{'setting':36} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}")
    for label, change in rows:
        config = apply_overrides(base, change)
        torch.cuda.reset_peak_memory_stats()
        result = train(config, None, progress=False, verbose=False)
        recs = [r for r in result.history if "tokens_per_s" in r][5:]
        mfu = statistics.median(r.get("mfu", float("nan")) for r in recs)
        print(f"{label:36} {statistics.median(r['tokens_per_s'] for r in recs):10,.0f} {100 * mfu:6.1f}% "
              f"{torch.cuda.max_memory_allocated() / 2**30:9.2f}")
    for ckpt in (False, True):
        torch.cuda.reset_peak_memory_stats()
        train(apply_overrides(base, dict(precision="bf16", optimizer="torch", activation_checkpointing=ckpt,
                                         max_steps=3, attn_impl="sdpa")), None, progress=False, verbose=False)
        print(f"peak memory, activation checkpointing {'on ' if ckpt else 'off'}: "
              f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 (numbers are reported, not enforced)."""
    parser = argparse.ArgumentParser(prog="python -m minillm.bench scaling", description=__doc__.split("\n\n")[1])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per measured run")
    parser.add_argument("--gpu", action="store_true", help="the gpt2-124m ablation on one CUDA GPU")
    parser.add_argument("--data-files", default="text/*.txt", help="--gpu: glob of local UTF-8 text files")
    args = parser.parse_args(argv)
    print(f"# scaling benchmark; {environment()}")
    t0 = time.perf_counter()
    if args.gpu:
        gpu_ablation(args.steps, args.data_files)
    else:
        print("# no --gpu: the CPU part (the GPU ablation table needs a CUDA device: add --gpu)")
        cpu_scaling(args.steps)
    memory_table()
    print(f"# {time.perf_counter() - t0:.0f} s")
    return 0
