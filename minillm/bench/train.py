"""Benchmark: `python -m minillm.bench train`, a whole pretraining run of a preset (chapter 05).

Default: the `shakespeare-char` preset (the baby GPT) on this machine, all
2,000 steps with its periodic evaluations. Reports the wall time of the
training loop (data preparation is timed apart), tokens/s, the final
validation loss of the run (its last evaluation: 20 batches of 12 windows) and,
untimed, the loss over every window of the validation text. Targets on a 2-core
CPU: <= 100 s and val loss <= 1.88 (the nanoGPT reference's baby GPT reaches
about 1.88 with these settings).

On a GPU, e.g. `--preset gpt2-124m --max-steps 60 --set data=files --set
data_files='text/*.txt'`, it reports tokens/s and MFU (median over the logged
steps after the first 10, which include `torch.compile`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from minillm.bench import environment

TARGET_SECONDS = 100.0
TARGET_VAL_LOSS = 1.88


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 (targets are reported, not enforced)."""
    from minillm.device import resolve_device, resolve_precision
    from minillm.config import preset_config
    from minillm.corpus import load_data
    from minillm.train import evaluate, train

    parser = argparse.ArgumentParser(prog="python -m minillm.bench train", description=__doc__.split("\n\n")[1])
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--max-steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    if args.max_steps is not None:
        overrides["max_steps"] = str(args.max_steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = preset_config(args.preset, **overrides)
    device = resolve_device(config.device)
    print(f"# train benchmark: preset {args.preset}, {config.max_steps} steps, batch {config.batch_size}x"
          f"{config.grad_accum}, context {config.context_length}, eval every {config.eval_interval} steps")
    print(f"# {environment()}; {torch.get_num_threads()} torch threads; device {device}, "
          f"precision {resolve_precision(config.precision, device)}")  # fmt: skip

    t0 = time.perf_counter()
    data = load_data(config)
    prep = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = train(config, out, overwrite=True, data=data, progress=not args.no_progress, verbose=False)
        seconds = time.perf_counter() - t0
    steps = [r for r in result.history if "tokens_per_s" in r]
    steady = steps[10:] if len(steps) > 20 else steps
    tok_s = statistics.median(r["tokens_per_s"] for r in steady)
    n_windows = len(data.val) // config.context_length
    full_val = evaluate(result.model, data.val, config.context_length, config.batch_size,
                        max_batches=-(-n_windows // config.batch_size), device=device,
                        precision=resolve_precision(config.precision, device))  # fmt: skip

    print(f"data preparation         {prep:8.1f} s (untimed below)")
    print(f"training loop            {seconds:8.1f} s for {result.step} steps, evaluations included"
          + (f"   (target <= {TARGET_SECONDS:.0f} s)" if args.preset == "shakespeare-char" else ""))
    print(f"tokens/s (median)        {tok_s:10,.0f}")
    if "mfu" in steady[-1]:
        print(f"MFU (median)             {100 * statistics.median(r['mfu'] for r in steady):8.1f} %")
    else:
        print("MFU                      unknown (no peak FLOP/s for this device; pass --set peak_tflops=X)")
    print(f"final val loss           {result.val_loss:8.4f}   ({config.eval_batches} x {config.batch_size} windows)"
          + (f"   (target <= {TARGET_VAL_LOSS})" if args.preset == "shakespeare-char" else ""))
    print(f"val loss, all windows    {full_val:8.4f}   ({n_windows} windows, untimed)")
    if result.samples:
        print(f"sample at step {result.samples[-1][0]}:\n{result.samples[-1][1]}")
    return 0
