"""`finetune`: adapt a pretrained model, the fine-tuning command of `python -m minillm` (chapter 07).

    python -m minillm finetune --task classify --checkpoint runs/base --out runs/spam [--lora-rank 8]
    python -m minillm finetune --task instruct --checkpoint gpt2 --out runs/alpaca --template chat

A thin layer over `minillm.classify` (the SMS spam classifier), `minillm.instruct`
(instruction data, formatting, collation), `minillm.lora` and the loop of
`minillm.finetune`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from minillm.cli.common import add_command, check_empty_folder, load_model_arg


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `finetune` to the subcommands of `python -m minillm`."""
    p = add_command(
        commands, "finetune",
        help="fine-tune a base model: spam classification or instruction following (optionally LoRA)",
        description="Fine-tune a minillm checkpoint (or a Hugging Face GPT-2 folder / hub name) on the SMS "
        "spam classification task or on the instruction data set. Writes the fine-tuned model, metrics.jsonl, "
        "loss.png and results.json into --out (with --lora-rank, also adapter.safetensors).",
    )  # fmt: skip
    p.add_argument("--task", required=True, choices=["classify", "instruct"], help="what to fine-tune for")
    p.add_argument("--checkpoint", required=True, help="minillm run or checkpoint folder, or a GPT-2 folder / name")
    p.add_argument("--out", required=True, help="output directory (must be empty or missing)")
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (0: full fine-tuning)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: 2 * rank)")
    p.add_argument("--train-blocks", default="all",
                   help="without LoRA: 'all', 'head' or the number of last blocks to train")  # fmt: skip
    p.add_argument("--epochs", type=int, default=3, help="passes over the training set")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: the epochs decide)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 5e-4; 2e-3 with LoRA)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per step")
    p.add_argument("--template", default="alpaca", choices=["alpaca", "chat"], help="instruct: the prompt format")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--seed", type=int, default=123, help="seed of the data split, shuffling and new weights")
    p.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    """`finetune`: build the task's loaders, fine-tune, save the model and results.json."""
    from minillm import classify
    from minillm.errors import ConfigError
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
    from minillm.tokenizer import TOKENIZER_FILE

    out = Path(args.out)
    check_empty_folder(out, overwrite=False)
    if args.lora_rank < 0:
        raise ConfigError(f"--lora-rank must be >= 0, got {args.lora_rank}")
    model, tokenizer = load_model_arg(args.checkpoint, hub_names=True)
    ctx = model.config.context_length
    if args.task == "classify":
        splits = classify.spam_splits(seed=args.seed)
        loaders = {name: classify.classification_loader(rows, tokenizer, ctx, args.batch_size, shuffle=name == "train",
                                                         seed=args.seed) for name, rows in splits.items()}  # fmt: skip
        model = classify.GPTClassifier(model, 2, classify.SPAM_LABELS)
    else:
        if args.template == "chat":
            tokenizer = add_special_tokens(tokenizer)
            model = resize_vocab(model, tokenizer.vocab_size)
        splits = instruction_splits(seed=args.seed)
        loaders = {name: instruction_loader(rows, tokenizer, ctx, args.batch_size, args.template,
                                            shuffle=name == "train", seed=args.seed)
                   for name, rows in splits.items()}  # fmt: skip
    lora = None
    if args.lora_rank:
        lora = LoRAConfig(rank=args.lora_rank, alpha=args.lora_alpha or 2.0 * args.lora_rank, targets=GPT2_TARGETS)
        inject_lora(model, lora)
        if args.task == "classify":
            model.head.requires_grad_(True)  # a new head has nothing to adapt: train it fully
    else:
        blocks = args.train_blocks
        set_trainable(model, int(blocks) if blocks.isdigit() else blocks)
    config = FinetuneConfig(epochs=args.epochs, max_steps=args.max_steps, device=args.device, seed=args.seed,
                            lr=args.lr or (2e-3 if lora else 5e-4))  # fmt: skip
    config.min_lr = config.lr / 10
    result = finetune(model, loaders["train"], loaders["val"], config, out)
    summary: dict[str, Any] = {"task": args.task, "steps": result.steps, "seconds": round(result.seconds, 1),
                               "test": evaluate_loader(model, loaders["test"])}  # fmt: skip
    if lora is not None:
        save_adapter(model, out / "adapter.safetensors", lora)
        remove_lora(model)  # merged: an ordinary model on disk
    model.save(out / "model")  # classify: GPTClassifier.save; instruct: GPT.save (load with load_model)
    tokenizer.save(out / "model" / TOKENIZER_FILE)
    if args.task == "instruct":
        summary["samples"] = [{"instruction": ex["instruction"], "input": ex.get("input", ""),
                               "response": generate_response(model, tokenizer, ex, args.template)}
                              for ex in splits["test"][:3]]  # fmt: skip
    atomic_write(out / "results.json", json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary["test"]), f"({result.steps} steps, {result.seconds:.0f}s); wrote {out}")
    return 0
