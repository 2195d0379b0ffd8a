"""Benchmark: `python -m minillm.bench scaling`, chapter 06's speed and memory numbers.

On the CPU: tokens/s of a small model trained by one process and by
DDP on 2 processes (`torchrun`, gloo, same global batch; the ratio is the
point: CPUs gain little), and the memory estimator's table for GPT-2 sizes and
7B. What each GPU setting buys (TF32, bf16, fused AdamW, flash attention,
torch.compile, a padded vocabulary) is `python -m minillm.bench gpu`.
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


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 (numbers are reported, not enforced)."""
    parser = argparse.ArgumentParser(prog="python -m minillm.bench scaling", description=__doc__.split("\n\n")[1])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per measured run")
    args = parser.parse_args(argv)
    print(f"# scaling benchmark; {environment()}")
    t0 = time.perf_counter()
    cpu_scaling(args.steps)
    memory_table()
    print(f"# {time.perf_counter() - t0:.0f} s")
    return 0
