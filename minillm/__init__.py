"""minillm: build a large language model from scratch, one tested module per concept.

The package behind the minillm book. Each module is taught by a chapter:

- `minillm.scaling`    what training costs (FLOPs, GPU-hours, Chinchilla)     chapter 00
- `minillm.data`       named data sets, verified offline-first downloads      chapters 01-02
- `minillm.tokenizer`  character and byte-level BPE tokenizers (GPT-2 parity) chapter 02
- `minillm.tokens`     token shards on disk, train/val split, batches         chapter 02
- `minillm.fileio`     crash-safe (atomic) file writes
- `minillm.cli`        `python -m minillm ...`
- `minillm.bench`      `python -m minillm.bench ...` benchmarks
"""

from minillm import scaling
from minillm.data import download, load, read_text
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

__version__ = "0.1.0"

__all__ = [
    "BPETokenizer",
    "CharTokenizer",
    "SlidingWindowDataset",
    "TokenShards",
    "download",
    "get_batch",
    "load",
    "load_tokenizer",
    "make_dataloader",
    "prepare_corpus",
    "read_shards",
    "read_text",
    "scaling",
    "split_tokens",
    "write_shards",
]
