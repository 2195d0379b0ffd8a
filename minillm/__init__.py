"""minillm: build a large language model from scratch, one tested module per concept.

The package behind the minillm book. Each module is taught by a chapter:

- `minillm.scaling`    what training costs (FLOPs, GPU-hours, Chinchilla)   chapter 00
- `minillm.data`       named data sets, offline cache, token shards, batches chapters 01-02
- `minillm.tokenizer`  character and byte-level BPE tokenizers               chapter 02
- `minillm.cli`        `python -m minillm ...`
- `minillm.bench`      `python -m minillm.bench ...` benchmarks
"""

__version__ = "0.1.0"
