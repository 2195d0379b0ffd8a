"""Benchmark: `python -m minillm.bench train`, a whole pretraining run of a preset (chapter 05).

Default: the `shakespeare-char` preset (the baby GPT) on this machine, all
2,000 steps with its periodic evaluations. Reports the wall time of the
training loop (data preparation is timed apart), tokens/s, the fraction of the
measured fp32 matmul peak, where a step's time goes, the final validation loss
of the run (its last evaluation: 20 batches of 12 windows) and, untimed, the
loss over every window of the validation text. Target: val loss <= 1.88 (the
nanoGPT reference's baby GPT reaches about 1.88 with these settings). A machine's
speed drifts from day to day, so compare wall times only within one run.

How it measures:
* peak: an (n, n) fp32 matrix multiply timed first (`minillm.bench.matmul_flops`,
  n = 2048); the run's model FLOP/s (`GPT.flops_per_token` x median tokens/s) is
  reported as a fraction of it. A published peak (`--set peak_tflops=X`) gives MFU;
* breakdown: after the run, a copy of the trained model goes through
  `--breakdown-steps` more steps with each part of the loop timed on its own
  (batch, forward, backward, clipping, optimizer, zero_grad), then one evaluation,
  one sample, one checkpoint and one plot of the loss are timed; each part's
  seconds in the run are its time per call x its calls in the run. What the sum
  leaves of the measured wall time is the loop's own cost (logging, the progress
  bar, Python) plus the machine's noise. The copy runs eager in one process: a
  compiled or distributed run's parts are timed as the eager model's.

On a GPU, e.g. `--preset gpt2-124m --max-steps 60 --set data=files --set
data_files='text/*.txt'`, it reports tokens/s and MFU (median over the logged
steps after the first 10, which include `torch.compile`).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minillm.bench import environment, matmul_flops, median_seconds, sync

TARGET_VAL_LOSS = 1.88


def step_breakdown(result, data, device: torch.device, precision: str, steps: int = 50) -> dict[str, float]:
    """Median ms per call of each part of a training step, measured on a copy of the run's model.

    The parts are those of `minillm.train`'s loop, called the same way: a batch
    (`get_batch`), forward and backward of each micro-batch (under the run's
    autocast), `clip_grad_norm`, the optimizer's step and `zero_grad`. Returns
    {"batch", "forward", "backward", "clip", "optimizer", "zero_grad": ms per
    step, "eval", "sample", "checkpoint", "plot": ms per call}.
    """
    from minillm import checkpoint as ckpt
    from minillm.device import autocast
    from minillm.monitor import plot_metrics
    from minillm.optim import clip_grad_norm, make_optimizer
    from minillm.tokens import get_batch
    from minillm.train import evaluate, sample

    config = result.config
    model = copy.deepcopy(result.model).to(device).train()
    optimizer = make_optimizer(model, config.lr, config.weight_decay, (config.beta1, config.beta2),
                               impl=config.optimizer)  # fmt: skip
    rng = torch.Generator().manual_seed(config.seed)
    parts = {name: [] for name in ("batch", "forward", "backward", "clip", "optimizer", "zero_grad")}
    k = config.grad_accum
    for i in range(steps + 5):  # the first 5 warm up
        times = dict.fromkeys(parts, 0.0)
        for _ in range(k):
            sync(device)
            t0 = time.perf_counter()
            x, y = get_batch(data.train, config.batch_size, config.context_length, "cpu", generator=rng)
            x, y = x.to(device), y.to(device)
            sync(device)
            t1 = time.perf_counter()
            with autocast(device, precision):
                _, loss = model(x, y)
            sync(device)
            t2 = time.perf_counter()
            (loss / k).backward()
            sync(device)
            t3 = time.perf_counter()
            times["batch"] += t1 - t0
            times["forward"] += t2 - t1
            times["backward"] += t3 - t2
        t0 = time.perf_counter()
        if config.grad_clip > 0:
            clip_grad_norm(model.parameters(), config.grad_clip)
        sync(device)
        t1 = time.perf_counter()
        optimizer.step()
        sync(device)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        times.update(clip=t1 - t0, optimizer=t2 - t1, zero_grad=t3 - t2)
        if i >= 5:
            for name, seconds in times.items():
                parts[name].append(seconds)
    out = {name: 1e3 * statistics.median(values) for name, values in parts.items()}
    model.eval()

    def ms(fn) -> float:  # median of 3 calls
        return 1e3 * median_seconds(fn, device, repeat=3)

    out["eval"] = ms(lambda: evaluate(model, data.val, config.context_length, config.batch_size, config.eval_batches,
                                      device, precision))  # fmt: skip
    out["sample"] = ms(lambda: sample(model, result.tokenizer, config)) if config.sample_tokens else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        out["checkpoint"] = ms(lambda: ckpt.save(tmp, 1, model, optimizer, rng, config, result.tokenizer))
        out["plot"] = ms(lambda: plot_metrics(result.history, Path(tmp) / "loss.png"))
    return out


def breakdown_table(parts: dict[str, float], steps: int, evaluations: int, wall: float) -> list[tuple]:
    """Rows (part, ms per call, calls in the run, seconds in the run, share of `wall`), then the rest and the total.

    `evaluations` counts the step-0 one. As `minillm.train` does: every evaluation
    evaluates and samples; each one after step 0 saves a checkpoint and redraws the
    loss plot, which is drawn once more at the end.
    """
    calls = {"batch": steps, "forward": steps, "backward": steps, "clip": steps, "optimizer": steps,
             "zero_grad": steps, "eval": evaluations, "sample": evaluations, "checkpoint": max(evaluations - 1, 0),
             "plot": evaluations}  # fmt: skip
    rows = [(name, parts[name], calls[name], parts[name] * calls[name] / 1e3) for name in calls if parts.get(name)]
    accounted = sum(row[3] for row in rows)
    rows = [(*row, row[3] / wall) for row in rows]
    rows.append(("loop, logging, noise", None, None, wall - accounted, (wall - accounted) / wall))
    rows.append(("measured wall time", None, None, wall, 1.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 (targets are reported, not enforced)."""
    from minillm.config import preset_config
    from minillm.corpus import load_data
    from minillm.device import resolve_device, resolve_precision
    from minillm.errors import ConfigError
    from minillm.train import evaluate, train

    parser = argparse.ArgumentParser(prog="python -m minillm.bench train", description=__doc__.split("\n\n")[1])
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--max-steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    parser.add_argument("--breakdown-steps", type=int, default=50, help="steps timed part by part (0: none)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n matmul of the measured peak")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.breakdown_steps < 0:
        parser.error(f"--breakdown-steps must be >= 0, got {args.breakdown_steps}")
    if args.matmul_size < 16:
        parser.error(f"--matmul-size must be >= 16, got {args.matmul_size}")
    if any("=" not in item for item in args.set):
        parser.error(f"--set takes KEY=VALUE, got {[item for item in args.set if '=' not in item]}")
    overrides = dict(item.split("=", 1) for item in args.set)
    if args.max_steps is not None:
        overrides["max_steps"] = str(args.max_steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = preset_config(args.preset, **overrides)
    except ConfigError as err:
        parser.error(str(err))
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    print(f"# train benchmark: preset {args.preset}, {config.max_steps} steps, batch {config.batch_size}x"
          f"{config.grad_accum}, context {config.context_length}, eval every {config.eval_interval} steps")
    print(f"# {environment()}; {torch.get_num_threads()} torch threads; device {device}, precision {precision}")
    peak = matmul_flops(args.matmul_size, device=str(device))
    print(f"measured fp32 matmul     {peak / 1e9:8.1f} GFLOP/s   ({args.matmul_size} x {args.matmul_size}, best of 5)")

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
                        precision=precision)  # fmt: skip
    model_flops = result.model.flops_per_token(config.context_length) * tok_s

    print(f"data preparation         {prep:8.1f} s (untimed below)")
    print(f"training loop            {seconds:8.1f} s for {result.step} steps, evaluations included")
    print(f"tokens/s (median)        {tok_s:10,.0f}")
    print(f"model FLOP/s             {model_flops / 1e9:8.1f} GFLOP/s = {100 * model_flops / peak:.1f} % of the "
          "measured fp32 matmul")  # fmt: skip
    if "mfu" in steady[-1]:
        print(f"MFU (median)             {100 * statistics.median(r['mfu'] for r in steady):8.1f} %")
    else:
        print("MFU                      no published peak for this device (pass --set peak_tflops=X)")
    print(f"final val loss           {result.val_loss:8.4f}   ({config.eval_batches} x {config.batch_size} windows)"
          + (f"   (target <= {TARGET_VAL_LOSS})" if args.preset == "shakespeare-char" and not overrides else ""))
    print(f"val loss, all windows    {full_val:8.4f}   ({n_windows} windows, untimed)")

    if args.breakdown_steps > 0:
        parts = step_breakdown(result, data, device, precision, args.breakdown_steps)
        evaluations = sum(1 for r in result.history if "val_loss" in r)
        print(f"\nwhere the run's time goes (each part timed alone after the run, median of "
              f"{args.breakdown_steps} steps; x its calls in the run):")  # fmt: skip
        print(f"{'part':22s} {'ms/call':>9s} {'calls':>6s} {'seconds':>8s} {'share':>6s}")
        for name, ms, calls, secs, share in breakdown_table(parts, result.step, evaluations, seconds):
            ms_text = f"{ms:9.2f}" if ms is not None else " " * 9
            calls_text = f"{calls:6d}" if calls is not None else " " * 6
            print(f"{name:22s} {ms_text} {calls_text} {secs:8.1f} {100 * share:5.1f}%")
    if result.samples:
        print(f"\nsample at step {result.samples[-1][0]}:\n{result.samples[-1][1]}")
    return 0
