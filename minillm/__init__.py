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
``curation``          the streaming curation pipeline and ``curate`` command       01
``tokenizer``         character and byte-level BPE tokenizers (GPT-2 parity)       02
``tokens``            token shards on disk, train/val split, batches               02
``attention``         attention written out and fused, GQA, positions, KV cache    03
``layers``            norms, MLPs and the transformer block                        04
``model``             GPT-2 and Llama-style models from one config                 04
``generate``          greedy, temperature, top-k, top-p sampling, streaming        04
``optim``             AdamW, weight-decay groups, schedules, clipping              05
``train``             the pretraining loop                                         05
``presets``           named training configurations and their data                 05
``checkpoint``        atomic checkpoints and exact resume                          05
``monitor``           metrics.jsonl, tokens/s, MFU, loss plots                     05
``device``            device and precision choice                                  05-06
``distributed``       DDP, FSDP2, sharded checkpoints, torchrun                    06
``memory``            where the bytes go: the memory estimator                     06
``lora``              LoRA from scratch                                            07
``classify``          classification heads and fine-tuning                         07
``instruct``          instruction tuning: formatting, masking, collation           07
``finetune``          the ``finetune`` command                                     07
``evaluate``          perplexity and multiple-choice scoring                       08
``tasks``             benchmark task loaders (HellaSwag, ARC, MMLU, TruthfulQA)    08
``metrics``           BLEU, ROUGE, LLM-as-judge                                    08
``harness``           running tasks on a checkpoint; the ``evaluate`` command      08
``fileio``            crash-safe (atomic) file writes                              all
``cli``, ``bench``    ``python -m minillm ...``, ``python -m minillm.bench ...``
====================  ===========================================================  ========

The names below are the ones a builder reaches for most; everything else is
one ``import minillm.<module>`` away. Functions named like their module
(``minillm.train.train``, ``minillm.generate.generate``) are not re-exported
here, so ``minillm.train`` always means the module.
"""

from minillm import scaling
from minillm.attention import AttentionConfig, CausalSelfAttention, KVCache
from minillm.checkpoint import load_model
from minillm.data import download, load, read_text
from minillm.model import GPT, GPTConfig
from minillm.optim import AdamW, make_optimizer
from minillm.presets import preset_config
from minillm.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
from minillm.tokens import (
    SlidingWindowDataset,
    TokenShards,
    get_batch,
    make_dataloader,
    prepare_corpus,
    read_shards,
    split_tokens,
    write_shards,
)
from minillm.train import TrainConfig, TrainResult, pretrained_tiny

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "AdamW",
    "AttentionConfig",
    "BPETokenizer",
    "CausalSelfAttention",
    "CharTokenizer",
    "GPTConfig",
    "KVCache",
    "SlidingWindowDataset",
    "TokenShards",
    "TrainConfig",
    "TrainResult",
    "download",
    "get_batch",
    "load",
    "load_model",
    "load_tokenizer",
    "make_dataloader",
    "make_optimizer",
    "prepare_corpus",
    "preset_config",
    "pretrained_tiny",
    "read_shards",
    "read_text",
    "scaling",
    "split_tokens",
    "write_shards",
]
