"""`finetune`: adapt a pretrained model, the fine-tuning command of `python -m minillm` (chapter 07).

    python -m minillm finetune --task classify --checkpoint runs/base --out runs/spam [--lora-rank 8]
    python -m minillm finetune --task instruct --checkpoint gpt2 --out runs/alpaca --template chat
    python -m minillm finetune --out runs/spam --resume

A thin layer over `minillm.classify` (the SMS spam classifier), `minillm.instruct`
(instruction data, formatting, collation), `minillm.lora` and the loop of
`minillm.finetune`. The run's settings are kept in `--out` (`finetune_args.json`),
so Ctrl-C (a checkpoint, exit status 130) is followed by `--out DIR --resume`.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from minillm.cli.common import add_command, load_model_arg

ARGS_FILE = "finetune_args.json"  # the run's settings, in --out
#: The options that define a run, with their defaults: `--resume` takes them from ARGS_FILE.
SETTINGS: dict[str, Any] = {"task": None, "checkpoint": None, "lora_rank": 0, "lora_alpha": None,
                            "train_blocks": "all", "epochs": 3, "max_steps": 0, "lr": None, "batch_size": 16,
                            "template": "alpaca", "seed": 123}  # fmt: skip


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `finetune` to the subcommands of `python -m minillm`."""
    p = add_command(
        commands, "finetune",
        help="fine-tune a base model: spam classification or instruction following (optionally LoRA)",
        description="Fine-tune a minillm checkpoint (or a Hugging Face GPT-2 folder / hub name) on the SMS "
        "spam classification task or on the instruction data set. Writes the fine-tuned model, metrics.jsonl, "
        "loss.png and results.json into --out (with --lora-rank, also adapter.safetensors), and checkpoints "
        "every --eval-interval steps. Ctrl-C saves a checkpoint and stops; --out DIR --resume continues.",
        usage="%(prog)s (--task TASK --checkpoint PATH | --resume) --out DIR [options]",
    )  # fmt: skip
    p.add_argument("--task", choices=["classify", "instruct"], help="what to fine-tune for (a new run needs it)")
    p.add_argument("--checkpoint", help="minillm run or checkpoint folder, or a GPT-2 folder / name (a new run "
                   "needs it)")  # fmt: skip
    p.add_argument("--out", required=True, help="output directory (empty or missing, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint, "
                   "with its own settings")  # fmt: skip
    p.add_argument("--lora-rank", type=int, default=SETTINGS["lora_rank"],
                   help="train LoRA adapters of this rank (0: full fine-tuning)")  # fmt: skip
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: 2 * rank)")
    p.add_argument("--train-blocks", default=SETTINGS["train_blocks"],
                   help="without LoRA: 'all', 'head' or the number of last blocks to train")  # fmt: skip
    p.add_argument("--epochs", type=int, default=SETTINGS["epochs"], help="passes over the training set")
    p.add_argument("--max-steps", type=int, default=SETTINGS["max_steps"],
                   help="stop after this many steps (0: the epochs decide)")  # fmt: skip
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 5e-4; 2e-3 with LoRA)")
    p.add_argument("--batch-size", type=int, default=SETTINGS["batch_size"], help="examples per step")
    p.add_argument("--template", default=SETTINGS["template"], choices=["alpaca", "chat"],
                   help="instruct: the prompt format")  # fmt: skip
    p.add_argument("--seed", type=int, default=SETTINGS["seed"], help="seed of the data split, shuffling and "
                   "new weights")  # fmt: skip
    p.add_argument("--eval-interval", type=int, default=50, help="steps between validation passes and checkpoints")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--break-lock", action="store_true",
                   help="remove a stale lock of --out left by a run that is no longer alive")  # fmt: skip
    p.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    """`finetune`: build the task's loaders, fine-tune (or resume), save the model and results.json."""
    from minillm import classify
    from minillm.checkpoint import latest_checkpoint, save_model_folder
    from minillm.errors import ConfigError, RunFolderError
    from minillm.fileio import atomic_write
    from minillm.finetune import FinetuneConfig, evaluate_loader, finetune, set_trainable
    from minillm.instruct import (
        add_special_tokens,
        generate_response,
        instruction_loader,
        instruction_splits,
        resize_vocab,
    )
    from minillm.lora import GPT2_TARGETS, LoRAConfig, inject_lora, remove_lora, save_adapter

    out = Path(args.out)
    if args.resume:
        _resume_settings(args, out)
    else:
        if args.task is None or args.checkpoint is None:
            raise ConfigError("a new fine-tuning run needs --task and --checkpoint (or --resume to continue the "
                              "run in --out)")  # fmt: skip
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            again = ", or continue its run with --resume" if (out / ARGS_FILE).is_file() else ""
            raise RunFolderError(f"{out} exists and is not empty; choose another --out{again}")
    if args.lora_rank < 0:
        raise ConfigError(f"--lora-rank must be >= 0, got {args.lora_rank}")
    lora = None
    if args.lora_rank:  # checked against the model's layers by inject_lora, before anything is allocated
        lora = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha or 2.0 * args.lora_rank, targets=GPT2_TARGETS)
    config = FinetuneConfig(epochs=args.epochs, max_steps=args.max_steps, device=args.device, seed=args.seed,
                            eval_interval=args.eval_interval, lr=args.lr or (2e-3 if lora else 5e-4))  # fmt: skip
    config.min_lr = config.lr / 10

    model, tokenizer = _load_base(args.checkpoint)
    ctx = model.config.context_length
    if args.task == "classify":
        model = classify.GPTClassifier(model, 2, classify.SPAM_LABELS)
    elif args.template == "chat":
        tokenizer = add_special_tokens(tokenizer)
        model = resize_vocab(model, tokenizer.vocab_size)
    if lora is not None:
        inject_lora(model, lora)
        if args.task == "classify":
            model.head.requires_grad_(True)  # a new head has nothing to adapt: train it fully
    else:
        blocks = args.train_blocks
        set_trainable(model, int(blocks) if blocks.isdigit() else blocks)
    if args.task == "classify":
        splits = classify.spam_splits(seed=args.seed)
        loaders = {name: classify.classification_loader(rows, tokenizer, ctx, args.batch_size, shuffle=name == "train",
                                                         seed=args.seed) for name, rows in splits.items()}  # fmt: skip
    else:
        splits = instruction_splits(seed=args.seed)
        loaders = {name: instruction_loader(rows, tokenizer, ctx, args.batch_size, args.template,
                                            shuffle=name == "train", seed=args.seed)
                   for name, rows in splits.items()}  # fmt: skip

    resume = args.resume and latest_checkpoint(out) is not None
    if args.resume and not resume:
        print(f"no checkpoint in {out} yet: starting the run from step 0", flush=True)
    if not args.resume:
        settings = {k: getattr(args, k) for k in SETTINGS} | {"checkpoint": _checkpoint_ref(args.checkpoint)}
        atomic_write(out / ARGS_FILE, json.dumps(settings, indent=1) + "\n")
    result = finetune(model, loaders["train"], loaders["val"], config, out, resume=resume,
                      break_lock=args.break_lock)  # fmt: skip
    if result.interrupted:
        print(f"interrupted at step {result.steps}: continue with  python -m minillm finetune --out "
              f"{shlex.quote(str(out))} --resume", flush=True)  # fmt: skip
        return 130
    summary: dict[str, Any] = {"task": args.task, "steps": result.steps, "seconds": round(result.seconds, 1),
                               "test": evaluate_loader(model, loaders["test"])}  # fmt: skip
    if lora is not None:
        save_adapter(model, out / "adapter.safetensors", lora)
        remove_lora(model)  # merged: an ordinary model on disk
    save_model_folder(out / "model", model, tokenizer)  # the checkpoints' commit path; load_model reads it
    if args.task == "instruct":
        summary["samples"] = [{"instruction": ex["instruction"], "input": ex.get("input", ""),
                               "response": generate_response(model, tokenizer, ex, args.template)}
                              for ex in splits["test"][:3]]  # fmt: skip
    atomic_write(out / "results.json", json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["test"]), f"({result.steps} steps, {result.seconds:.0f}s); wrote {out}")
    return 0


def _checkpoint_ref(checkpoint: str) -> str:
    """`--checkpoint` as the run records it: an absolute path for a folder, a hub name as given."""
    path = Path(checkpoint)
    return str(path.resolve()) if path.exists() else checkpoint


def _resume_settings(args: argparse.Namespace, out: Path) -> None:
    """Fill `args` with the settings of the run in `out`; an option given with another value is an error."""
    from minillm.errors import CheckpointError, CheckpointNotFoundError, ConfigError

    path = out / ARGS_FILE
    if not path.is_file():
        raise CheckpointNotFoundError(f"{out} holds no fine-tuning run to resume (no {ARGS_FILE}); start one "
                                      "with --task and --checkpoint, without --resume")  # fmt: skip
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read ({err}); start the run again in a new --out") from err
    if not isinstance(saved, dict) or set(saved) != set(SETTINGS):
        raise CheckpointError(f"{path} does not hold the settings of a fine-tuning run of this minillm")
    for name, value in saved.items():
        given = getattr(args, name)
        if name == "checkpoint" and given is not None:
            given = _checkpoint_ref(given)
        if given != SETTINGS[name] and given != value:
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"--resume continues the run in {out} with its own settings: {option} was {value!r} "
                              f"there, not {given!r}; drop {option}, or start a new run in another --out")  # fmt: skip
        setattr(args, name, value)


def _load_base(checkpoint: str) -> tuple[Any, Any]:
    """The (model, tokenizer) to fine-tune; a fine-tuning run folder given by mistake is named as such."""
    from minillm.errors import CheckpointNotFoundError

    folder = Path(checkpoint)
    if (folder / ARGS_FILE).is_file():
        hint = f"; its fine-tuned model is {folder / 'model'}" if (folder / "model").is_dir() else ""
        raise CheckpointNotFoundError(f"--checkpoint {folder} is the output folder of a fine-tuning run, not a "
                                      f"model to start from{hint}")  # fmt: skip
    return load_model_arg(checkpoint, hub_names=True)
