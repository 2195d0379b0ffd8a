"""`train`, `generate` and `quickstart`: the pretraining commands of `python -m minillm` (chapters 04-06).

    python -m minillm train --preset shakespeare-char --out runs/shakespeare [--max-steps 500] [--lr 3e-4]
    python -m minillm train --preset shakespeare-char --data data/shakespeare-char --out runs/s  # prepared
    python -m minillm train --out runs/shakespeare --resume
    python -m minillm generate --checkpoint runs/shakespeare --prompt "ROMEO:"
    python -m minillm quickstart
    torchrun --nproc_per_node=2 -m minillm train --preset shakespeare-char --out runs/ddp --strategy ddp \\
        --grad-accum 2 [--precision bf16|fp16|fp32] [--activation-checkpointing] [--compile]

Every setting of `minillm.config.settings()` (the `TrainConfig` fields and,
flat, the model's `GPTConfig` fields) is a `--key value` option of `train`;
`--n_layer` works as well as `--n-layer`; a true/false setting alone
(`--compile`) means true. The values stay text here and are converted, and
checked, by `minillm.config.apply_overrides`. Those options, and their help
with each preset's default, come from `minillm.config`, which imports torch:
they are added only when `train` is parsed or its help shown (`Parser(fill=...)`).
Under `torchrun` every process runs the command and only rank 0 prints.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from minillm.cli.common import Parser, add_command, integer, number, print0

QUICKSTART_PROMPTS = ("def fibonacci(n):\n", "class Stack:\n    def __init__(self):\n", "import os\n\n\ndef ")
SETTING_PREFIX = "set_"  # argparse dest of a setting: set_<name>

#: What each setting means, as `train --help` says it.
SETTING_HELP = {
    # data
    "data": "a data set name (see `python -m minillm datasets`), 'files', 'fineweb-edu', or a folder written "
            "by `prepare` (its data settings then come from the folder)",
    "data_files": "with data 'files': glob(s) of UTF-8 text files, separated by commas",
    "max_chars": "use only this many characters of the corpus (0: all)",
    "exclude_files": "python-stdlib: comma-separated globs of files to leave out, e.g. 'encodings/*'",
    "tokenizer": "character vocabulary, byte-level BPE learned on the corpus, or GPT-2's BPE",
    "vocab_size": "bpe: vocabulary size to learn (the model's comes from the tokenizer)",
    "tokenizer_chars": "bpe: characters, spread over the corpus, to learn it from (0: all)",
    "val_fraction": "the corpus' last fraction held out for validation",
    # optimization
    "batch_size": "sequences per micro-batch",
    "grad_accum": "micro-batches per optimizer step (all processes together)",
    "max_steps": "optimizer steps; the learning-rate schedule ends here",
    "lr": "peak learning rate",
    "min_lr": "learning rate at the end of the schedule",
    "warmup_steps": "steps of linear warmup (capped at max_steps)",
    "schedule": "learning-rate schedule after warmup",
    "decay_fraction": "wsd: the last fraction of steps that decays",
    "weight_decay": "AdamW weight decay of matrices (not of biases, norms)",
    "beta1": "AdamW beta1 (momentum)",
    "beta2": "AdamW beta2 (second moment)",
    "grad_clip": "maximum global gradient norm (0: no clipping)",
    "optimizer": "PyTorch's fused/foreach AdamW, or minillm's written-out one",
    # evaluation, logging, checkpoints
    "eval_interval": "evaluate, checkpoint and sample every this many steps (and at the end)",
    "eval_batches": "validation batches of batch_size windows each",
    "log_interval": "write a metrics.jsonl record every this many steps",
    "keep_checkpoints": "newest checkpoints kept on disk",
    "sample_prompt": "prompt of the samples written at each evaluation ('\\n' is a newline)",
    "sample_tokens": "tokens sampled at each evaluation (0: none)",
    # system
    "device": "auto, cpu, cuda, cuda:1 or mps",
    "precision": "auto: bf16 on CUDA, else fp32",
    "compile": "torch.compile the model",
    "strategy": "auto: ddp under torchrun, else single (one process); ddp or fsdp need torchrun",
    "seed": "seed of the weights and of the batches",
    "peak_tflops": "your device's peak TFLOP/s, for MFU where minillm.scaling does not know it (0: unknown)",
    "activation_checkpointing": "recompute each block's activations in backward (less memory, more time)",
    "reshard_after_forward": "fsdp: free gathered weights after forward (ZeRO-3); false: ZeRO-2-like",
    # the model (GPTConfig)
    "context_length": "longest sequence the model reads (T)",
    "d_model": "width of the residual stream (C)",
    "n_layer": "number of transformer blocks",
    "n_head": "attention heads per block",
    "n_kv_head": "key/value heads: none = n_head; fewer = grouped-query attention; 1 = multi-query",
    "d_ff": "MLP width (none: 4*d_model for gelu, 8/3*d_model rounded up to 256 for swiglu)",
    "d_head": "size of each attention head (none: d_model / n_head; a model whose heads were pruned keeps theirs)",
    "norm": "normalization layer",
    "norm_eps": "epsilon of the normalization",
    "mlp": "MLP of each block (gelu: GPT-2's tanh GELU; gelu_exact: the erf GELU; swiglu: Llama's)",
    "positions": "position encoding",
    "rope_theta": "rope: base of the rotation frequencies",
    "bias": "biases in linear layers and LayerNorms",
    "dropout": "dropout probability",
    "tie_embeddings": "the output head shares the token embedding matrix",
    "pre_norm": "normalize before each sublayer (pre-LN); false: post-LN (the original transformer)",
    "attn_impl": "PyTorch's fused attention kernel, or attention written out",
    "vocab_multiple": "pad the embedding rows to a multiple of this (64 helps GPUs)",
    "init_std": "standard deviation of the initial weights",
}  # fmt: skip


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `train`, `generate` and `quickstart` to the subcommands of `python -m minillm`."""
    p = add_command(
        commands, "train",
        help="pretrain a GPT from a preset (checkpoints, metrics.jsonl, loss plot)",
        description="Train a GPT as a preset says, with any setting overridden by --key value. Writes "
        "checkpoints/, metrics.jsonl, samples.txt and loss.png into --out. Ctrl-C saves a checkpoint and stops; "
        "--resume continues exactly where it stopped. Under torchrun, --strategy ddp or fsdp.",
        usage="%(prog)s (--preset NAME | --resume) --out DIR [--SETTING VALUE ...]",
        fill=_train_options, option_noun="setting",
    )  # fmt: skip
    p.set_defaults(func=run_train)

    p = add_command(
        commands, "generate",
        help="continue a prompt with a trained checkpoint",
        description="Load a run folder (its latest checkpoint), a checkpoint or an exported model, with the "
        "tokenizer saved inside it, and print a continuation of --prompt as it is generated.",
    )  # fmt: skip
    p.add_argument("--checkpoint", required=True, help="run folder (--out of train), checkpoint or model folder")
    p.add_argument("--prompt", default="\n", help="text to continue; '\\n' is a newline (default: a newline)")
    p.add_argument("--max-new-tokens", type=integer(0), default=200, help="most tokens to generate")
    p.add_argument("--temperature", type=number(0, note=" (0: greedy)"), default=0.8,
                   help="sampling temperature; 0: greedy")  # fmt: skip
    p.add_argument("--top-k", type=integer(0, note=" (0: all tokens)"), default=50,
                   help="sample among the k most likely tokens (0: all)")  # fmt: skip
    p.add_argument("--top-p", type=number(0, 1, low_open=True), default=None,
                   help="nucleus sampling threshold in (0, 1] (default: off)")  # fmt: skip
    p.add_argument("--num-samples", type=integer(1), default=1, help="continuations to print")
    p.add_argument("--seed", type=integer(0, 2**32 - 1), default=0,
                   help="seed of the first sample (the next ones: seed + i)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.set_defaults(func=run_generate)

    p = add_command(
        commands, "quickstart",
        help="train a small Python code model on this machine's standard library (CPU, minutes, no download)",
        description="Learn a BPE tokenizer from the Python standard library's source, pretrain the quickstart "
        "preset on it, print code completions, and write the checkpoint, metrics.jsonl and loss.png to --out.",
    )  # fmt: skip
    p.add_argument("--out", default="runs/quickstart", help="run directory")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier quickstart run in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue the quickstart run in --out from its latest checkpoint (e.g. after Ctrl-C)")
    p.add_argument("--max-steps", type=integer(1), default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_quickstart)


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------


def _train_options(p: Parser) -> None:
    """Add the options of `train`: the run's own, then one per setting with each preset's default."""
    from minillm.config import PRESETS, preset_config, settings

    p.add_argument("--preset", help=f"one of {', '.join(PRESETS)} (with --resume: the run's own settings)")
    p.add_argument("--out", required=True, help="run directory (new or empty, unless --resume or --overwrite)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete the run files in --out and start over")
    p.add_argument("--break-lock", action="store_true",
                   help="delete the lock file of --out first (only when no run is alive there, e.g. on a network "
                   "file system without locks)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    presets = {name: preset_config(name) for name in PRESETS}
    groups = {
        "run": p.add_argument_group("run settings (TrainConfig fields; --key value overrides the preset)"),
        "model": p.add_argument_group("model settings (GPTConfig fields: --n-layer sets model.n_layer)"),
    }
    for setting in settings().values():
        kind = setting.type_name
        extra: dict[str, Any] = {"choices": setting.choices} if setting.choices else {"metavar": kind.upper()}
        if kind == "bool":
            extra.update(nargs="?", const="true")  # --compile alone means --compile true
        meaning = SETTING_HELP.get(setting.name, f"a {setting.owner} setting")
        groups[setting.owner].add_argument(
            f"--{setting.name.replace('_', '-')}", dest=SETTING_PREFIX + setting.name, default=None,
            help=f"{meaning}. {preset_defaults(setting, presets)}".replace("%", "%%"), **extra,
        )  # fmt: skip


def preset_defaults(setting: Any, presets: dict[str, Any]) -> str:
    """'n_layer: default 4 (shakespeare-char, quickstart), 12 (gpt2-124m)': a setting's value in each preset."""
    values: dict[str, list[str]] = {}
    for name, config in presets.items():
        value = getattr(config.model if setting.owner == "model" else config, setting.name)
        values.setdefault(_shown(value), []).append(name)
    if len(values) == 1:
        return f"{setting.name}: default {next(iter(values))} (every preset)"
    return f"{setting.name}: default " + ", ".join(f"{v} ({', '.join(names)})" for v, names in values.items())


def _shown(value: Any) -> str:
    """A value as it is typed on the command line (strings quoted, so that '' and '\\n' show)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "none"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def run_train(args: argparse.Namespace) -> int:
    """`train`: a new run from --preset, or --resume of the run in --out."""
    from minillm.config import apply_overrides, preset_config  # only this, so that a bad setting fails fast
    from minillm.errors import CheckpointNotFoundError, ConfigError

    overrides = {k[len(SETTING_PREFIX) :]: v for k, v in vars(args).items()
                 if k.startswith(SETTING_PREFIX) and v is not None}  # fmt: skip
    if args.preset is not None:
        config = preset_config(args.preset, **overrides)
    elif args.resume:
        from minillm.checkpoint import latest_checkpoint, read_config

        checkpoint = latest_checkpoint(args.out)
        if checkpoint is None:
            raise CheckpointNotFoundError(f"no checkpoint in {args.out} to resume from; start a run with --preset")
        config = apply_overrides(read_config(checkpoint), overrides)
    else:
        raise ConfigError("give --preset NAME for a new run (or --resume to continue the run in --out)")
    return _run(config, Path(args.out), resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                break_lock=args.break_lock)  # fmt: skip


def _run(config: Any, out: Path, *, resume: bool, overwrite: bool, progress: bool, break_lock: bool = False,
         hint: str = "") -> int:  # fmt: skip
    """Train `config` into `out`, printing a line before and after (rank 0); the exit status.

    Before anything is allocated or written: the data settings are checked, a
    resume of a finished run stops here (exit status 0, nothing touched), and a
    run whose estimated memory exceeds what the device has free is refused.
    `hint`: the command that continues the run, printed after Ctrl-C.
    """
    from minillm.corpus import check_data_settings

    hint = hint or f"python -m minillm train --out {out} --resume"
    check_data_settings(config)
    checkpoint, done = _latest(out) if resume else (None, 0)
    if checkpoint is not None and not overwrite and done >= config.max_steps and _same_run(checkpoint, config):
        print0(f"the run in {out} is already finished: step {done:,} of max_steps {config.max_steps:,}. To "
               f"train further, resume with a larger --max-steps, e.g.  {hint} --max-steps {2 * done}  "
               "(the learning-rate schedule then spans the new max_steps)", flush=True)  # fmt: skip
        return 0
    check_memory(config, checkpoint)

    from minillm.device import resolve_device  # the training stack, imported once the checks have passed
    from minillm.train import NonFiniteLossError, train

    model = config.model
    print0(f"run {out}: {model.n_layer} layers, width {model.d_model}, context {model.context_length}, "
           f"{config.tokens_per_step:,} tokens/step, {config.max_steps:,} steps on {resolve_device(config.device)}"
           + (f", strategy {config.strategy}" if config.strategy not in ("single", "auto") else "")
           + (" (resuming)" if resume else ""), flush=True)  # fmt: skip
    try:
        result = train(config, out, resume=resume, overwrite=overwrite, progress=progress, break_lock=break_lock)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print0(f"{_val_summary(result)} in {result.seconds:.0f} s; checkpoint, metrics.jsonl and loss.png in {out}",
           flush=True)  # fmt: skip
    if result.interrupted:
        print0(f"interrupted: continue with  {hint}", flush=True)
        return 130
    return 0


def _latest(out: Path) -> tuple[Path | None, int]:
    """The latest checkpoint of the run in `out` and its step; (None, 0) without one (train() says so)."""
    from minillm.checkpoint import checkpoint_steps, latest_checkpoint

    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        return None, 0
    return checkpoint, {path.name: n for n, path in checkpoint_steps(checkpoint.parent)}.get(checkpoint.name, 0)


def _same_run(checkpoint: Path, config: Any) -> bool:
    """Whether `config` may resume `checkpoint` (else train() says which settings differ)."""
    from minillm.checkpoint import RESUMABLE, read_config

    return not read_config(checkpoint).differences(config, ignore=RESUMABLE)


def check_memory(config: Any, checkpoint: Path | None = None) -> Any:
    """`minillm.memory.check_fits` for one step of `config` on its device (this process' GPU under torchrun):
    `ConfigError` with the estimate and the free memory when it cannot fit. `checkpoint`: the checkpoint a
    resumed run starts from (its tokenizer gives the vocabulary size). Returns the `MemoryEstimate`."""
    from minillm.corpus import is_prepared, read_corpus_summary
    from minillm.device import resolve_device, resolve_precision
    from minillm.distributed import resolve_strategy
    from minillm.memory import check_fits
    from minillm.tokenizer import load_tokenizer

    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = resolve_device(f"cuda:{int(os.environ['LOCAL_RANK'])}")
    if checkpoint is not None:
        vocab = load_tokenizer(checkpoint).vocab_size
    elif is_prepared(config.data):
        vocab = read_corpus_summary(config.data)["vocab_size"]
    else:  # a character vocabulary is known only once the text is read: the model's size stands in
        vocab = {"gpt2": 50257, "bpe": config.vocab_size}.get(config.tokenizer, config.model.vocab_size)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    strategy = resolve_strategy(config.strategy)
    layout = ("fsdp" if config.reshard_after_forward else "zero2") if strategy == "fsdp" else "ddp"
    return check_fits(config.model_config(vocab), micro_batch=config.batch_size,
                      precision=resolve_precision(config.precision, device), device=device, strategy=layout,
                      world_size=world, activation_checkpointing=config.activation_checkpointing,
                      processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1)


def _val_summary(result: Any) -> str:
    """'step N: val loss L (perplexity P)', saying at which step the last validation loss was measured
    when that is not the last step (a run stopped by Ctrl-C between evaluations)."""
    evaluated = [r for r in result.history if "val_loss" in r]
    if not evaluated:
        return f"step {result.step}: no validation loss measured since the run resumed"
    last = evaluated[-1]
    loss = f"val loss {last['val_loss']:.4f} (perplexity {math.exp(min(last['val_loss'], 50.0)):.2f})"
    if last["step"] == result.step:
        return f"step {result.step}: {loss}"
    return f"step {result.step}: last {loss} measured at step {last['step']}"


# ---------------------------------------------------------------------------
# generate, quickstart
# ---------------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> int:
    """`generate`: print --num-samples continuations of --prompt as they are sampled."""
    from minillm.checkpoint import load_model
    from minillm.config import unescape
    from minillm.device import resolve_device
    from minillm.generate import check_sampling

    top_k = args.top_k or None
    check_sampling(args.temperature, top_k, args.top_p)  # before the (slow) load
    prompt = unescape(args.prompt)  # '\n' -> newline, like --sample-prompt
    model, tokenizer = load_model(args.checkpoint, device=resolve_device(args.device))
    for i in range(args.num_samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print_completion(model, tokenizer, prompt, args.max_new_tokens, temperature=args.temperature, top_k=top_k,
                         top_p=args.top_p, seed=args.seed + i)  # fmt: skip
    return 0


def print_completion(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, **sampling: Any) -> str:
    """Print `prompt`, then its continuation piece by piece as `minillm.generate.stream_text` writes it;
    return the continuation."""
    from minillm.generate import stream_text

    pieces = stream_text(model, tokenizer, prompt, max_new_tokens, **sampling)  # checks the settings first
    print(prompt, end="", flush=True)
    text = []
    for piece in pieces:
        print(piece, end="", flush=True)
        text.append(piece)
    print(flush=True)
    return "".join(text)


def run_quickstart(args: argparse.Namespace) -> int:
    """`quickstart`: train the quickstart preset on this Python's standard library, then complete code."""
    from minillm.checkpoint import latest_checkpoint, load_model, read_config
    from minillm.config import apply_overrides, preset_config
    from minillm.errors import CheckpointNotFoundError

    overrides: dict[str, Any] = {"device": args.device}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    out = Path(args.out)
    if args.resume and not args.overwrite:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise CheckpointNotFoundError(f"no checkpoint in {out} to resume from; run quickstart without --resume")
        config = apply_overrides(read_config(checkpoint), overrides)
    else:
        config = preset_config("quickstart", **overrides)
    t0 = time.perf_counter()
    print("quickstart: a small GPT learns Python from this machine's standard library (no download).")
    print(f"Continuing the run in {out}" if args.resume else "Learning a BPE tokenizer, then training",
          "; samples appear at each evaluation.", sep="", flush=True)  # fmt: skip
    code = _run(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                hint=f"python -m minillm quickstart --out {out} --resume")  # fmt: skip
    if code != 0:
        return code
    model, tokenizer = load_model(out)
    print("\nCompletions of the trained model (temperature 0.6, top-k 20):")
    for i, prompt in enumerate(QUICKSTART_PROMPTS):
        print(f"\n--- completion {i + 1} ---")
        print_completion(model, tokenizer, prompt, 80, temperature=0.6, top_k=20, seed=i)
    print(f"\nDone in {time.perf_counter() - t0:.0f} s. Checkpoint, metrics.jsonl and loss.png are in {out}.")
    print(f'Try:  python -m minillm generate --checkpoint {out} --prompt "def parse_args(argv):\\n"')
    return 0
