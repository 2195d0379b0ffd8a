"""minillm: build a large language model from scratch, one tested module per concept.

The package behind the minillm book. Each module is taught by a chapter:

====================  ===========================================================  ========
module                what it is for                                               chapter
====================  ===========================================================  ========
``scaling``           what training costs: 6ND FLOPs, GPU-hours, Chinchilla        00
``data``              named data sets, verified offline-first downloads            01-02
``quality``           normalization and heuristic quality rules                    01
``dedup``             exact and MinHash/LSH near-dedup, decontamination            01
``pii``               privacy redaction                                            01
``curation``          the streaming curation pipeline                              01
``tokenizer``         the tokenizers' home: the character tokenizer, loading       02
``tokenizer_base``    the Tokenizer protocol and the checks every tokenizer makes  02
``bpe``               the byte-level BPE tokenizer (GPT-2 parity via tiktoken)     02
``pretokenize``       pre-tokenization regexes; token bytes written as text        02
``bpe_merges``        learning and applying BPE merges; tokens that come back      02
``tokens``            token shards on disk, train/val split, batches               02
``corpus``            text -> tokenizer -> token shards, prepared once             02, 05
``attention``         attention written out and fused, GQA, positions, KV cache    03
``layers``            norms, MLPs and the transformer block                        04
``model``             GPT-2 and Llama-style models from one config                 04
``generate``          greedy, temperature, top-k, top-p sampling; prompt -> text   04
``hf``                export to (and parity with) Hugging Face ``transformers``    04
``config``            the run configuration (``TrainConfig``) and named presets    05
``optim``             AdamW, weight-decay groups, schedules, clipping              05
``train``             the pretraining loop                                         05
``strategy``          what differs between one process, DDP and FSDP               05-06
``checkpoint``        atomic checkpoints, exact resume, loading and export         05
``monitor``           metrics.jsonl, tokens/s, MFU, loss plots                     05
``pretrained``        the book model (``book_model``), its chat model, tiny models 05-08, C
``skills``            what a code model can do: functions that parse               05, 07-08
``synthetic``         generated instructions with checkable answers                07-08
``device``            device and precision choice                                  05-06
``distributed``       process groups, DDP and FSDP2 wrapping, torchrun             06
``memory``            where the bytes go: the memory estimator                     06
``lora``              LoRA from scratch                                            07
``classify``          classification heads and fine-tuning                         07
``instruct``          instruction tuning: formatting, masking, collation           07
``finetune``          the fine-tuning loop and which weights train                 07
``evaluate``          perplexity and multiple-choice scoring                       08
``tasks``             benchmark task loaders (HellaSwag, ARC, MMLU, TruthfulQA)    08
``metrics``           BLEU, ROUGE, LLM-as-judge                                    08
``harness``           running benchmark tasks on a model and reporting them        08
``family``            the encoder and decoder stacks of BERT, T5 and BART          A
``masked_lm``         encoder-only: BERT's masked LM, masking, a classifier        A
``seq2seq``           encoder-decoder: T5, BART, greedy and beam search            A
``family_tasks``      appendix A's tasks: masked characters, words to digits       A
``batching``          continuous batching: KV-cache slots, the decoding engine     05, 08, C
``serve``             an OpenAI-compatible HTTP server, ``python -m minillm serve`` C
``align``             alignment's shared pieces: response log-probs, rewards       E
``dpo``               preference tuning: the DPO loss and its training loop        E
``grpo``              RL with verifiable rewards: GRPO's groups, loss and loop     E
``qtensor``           one tensor as codes + scales: absmax, zero-point, int4 pairs B
``quantize``          int8/int4 linear layers and models, model_bytes, save/load   B
``int8_matmul``       int8 x int8 (W8A8): the integer matmul and its kernels       B
``quantize_kv``       the KV cache as int8 codes with per-vector scales            B
``prune``             magnitude pruning, and heads and neurons removed for good    B
``distill``           knowledge distillation: a student taught by a teacher        B
``speculative``       speculative decoding: a draft proposes, the target verifies  B
``codedata``          code-model data: docstring -> code pairs, fill-in-the-middle D
``codeeval``          HumanEval/MBPP by running code: programs, pass@k             D
``sandbox``           running untrusted code: a process, limits, namespaces        D
``errors``            the exceptions a user's mistake raises (``MinillmError``)    all
``fileio``            crash-safe (atomic) file writes                              all
``cli``               ``python -m minillm ...``: every command                     all
``bench``             ``python -m minillm.bench ...``: speed, as ratios            all
``diagrams``          the book's drawn diagrams (SVG), ``python -m minillm.diagrams``  all
``exercises``         the chapters' exercises and their automatic checks          all
``website``           the book as a website, ``python -m minillm book build``      all
====================  ===========================================================  ========

The names below are the ones a builder reaches for most; everything else is
one ``import minillm.<module>`` away. Functions named like their module
(``minillm.train.train``, ``minillm.generate.generate``) are not re-exported
here, so ``minillm.train`` always means the module.

``import minillm`` is cheap: it imports no module of the package (and so no
torch) until a name below is first used; ``minillm.GPT`` then imports
``minillm.model`` (PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Each public name and the module that defines it ("" for a module re-exported as itself).
_EXPORTS: dict[str, str] = {
    # model (chapter 04)
    "GPT": "model",
    "GPTConfig": "model",
    # attention (chapter 03)
    "AttentionConfig": "attention",
    "CausalSelfAttention": "attention",
    "KVCache": "attention",
    # optimizer (chapter 05)
    "AdamW": "optim",
    "make_optimizer": "optim",
    # tokenizers (chapter 02)
    "BPETokenizer": "bpe",
    "CharTokenizer": "tokenizer",
    "Tokenizer": "tokenizer_base",
    "load_tokenizer": "tokenizer",
    # data sets (chapter 01)
    "download": "data",
    "load": "data",
    "read_text": "data",
    # token shards and batches (chapter 02)
    "SlidingWindowDataset": "tokens",
    "TokenShards": "tokens",
    "get_batch": "tokens",
    "make_dataloader": "tokens",
    "read_shards": "tokens",
    "split_tokens": "tokens",
    "write_shards": "tokens",
    # run configuration and corpus (chapter 05)
    "TrainConfig": "config",
    "preset_config": "config",
    "book_scale": "config",
    "prepare_corpus": "corpus",
    "open_corpus": "corpus",
    # training, checkpoints, pretrained models (chapter 05)
    "TrainResult": "train",
    "load_model": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "pretrained_tiny": "pretrained",
    "book_model": "pretrained",
    "book_run": "pretrained",
    "book_config": "pretrained",
    "curated_stdlib": "corpus",
    "list_tasks": "synthetic",
    # text generation and export (chapter 04)
    "complete": "generate",
    "stream_text": "generate",
    "export_hf": "hf",
    # the transformer family (appendix A)
    "FamilyConfig": "family",
    "MaskedLM": "masked_lm",
    "EncoderClassifier": "masked_lm",
    "Seq2SeqLM": "seq2seq",
    # compression and faster decoding (appendix B)
    "QuantizedLinear": "quantize",
    "load_quantized": "quantize",
    "speculative_generate": "speculative",
    # the code model, judged by running its code (appendix D)
    "CodeTask": "codeeval",
    "load_code_task": "codeeval",
    "generate_samples": "codeeval",
    "evaluate_samples": "codeeval",
    "pass_at_k": "codeeval",
    "run_code": "sandbox",
    "function_pairs": "codedata",
    "code_tasks": "synthetic",
    # what training costs (chapter 00)
    "scaling": "",
    # errors (all chapters)
    "MinillmError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "CheckpointError": "errors",
    "CheckpointNotFoundError": "errors",
    "RunFolderError": "errors",
    "StorageError": "errors",
    "LaunchError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the module of public `name` on first use and return the name (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name = _EXPORTS[name]
    if module_name:
        value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    else:
        value = importlib.import_module(f"{__name__}.{name}")
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    """The module's attributes plus every public name, imported or not (for completion)."""
    return sorted(set(globals()) | set(__all__))
