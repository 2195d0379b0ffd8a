"""The small tasks appendix A trains the transformer family on, and how it scores them.

`A_transformer_family` compares the three kinds of transformer at the same
size on tasks a 2-core CPU trains in seconds, at the character level:

* filling in masked characters of WikiText-2 (`MLMCollator` masks each batch
  anew with BERT's recipe, `masked_accuracy` scores it against the unigram
  baseline), then SMS spam classification (`classification_batches`: a [CLS]
  character first for the encoder, the last real one read by the decoder);
* writing a number given in English words as digits (`number_words`,
  `number_pairs`): an encoder-decoder (`seq2seq_batches`) against a
  decoder-only model trained on "words = digits" (`prefix_lm_batches`), scored
  by exact match on numbers neither saw (`exact_match_seq2seq`,
  `exact_match_decoder`).

Every batch is a dict of the model's keyword arguments, so the fine-tuning
loop of chapter 07 (`minillm.finetune.finetune`) trains all of them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from minillm.errors import ConfigError
from minillm.family import check_ids
from minillm.masked_lm import MaskedLM, mask_tokens
from minillm.model import GPT
from minillm.seq2seq import Seq2SeqLM

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen").split()  # fmt: skip
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """An integer 0 <= n < 1,000,000 in English words: 342017 -> "three hundred forty-two thousand seventeen"."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 1_000_000:
        raise ConfigError(f"number_words takes an integer in [0, 1000000), got {n!r}")

    def below_thousand(k: int) -> list[str]:
        words = [ONES[k // 100], "hundred"] if k >= 100 else []
        k %= 100
        if k >= 20:
            words.append(TENS[k // 10] + (f"-{ONES[k % 10]}" if k % 10 else ""))
        elif k or not words:
            words.append(ONES[k])
        return words

    if n < 1000:
        return " ".join(below_thousand(n))
    thousands, rest = divmod(n, 1000)
    return " ".join(below_thousand(thousands) + ["thousand"] + (below_thousand(rest) if rest else []))


def number_pairs(count: int, seed: int, high: int = 1_000_000, exclude: set[int] | None = None
                 ) -> list[tuple[str, str]]:  # fmt: skip
    """`count` distinct (words, digits) pairs of numbers drawn uniformly from [0, high), none in `exclude`."""
    rng = random.Random(seed)
    taken = set(exclude or ())
    if count > high - len(taken):
        raise ConfigError(f"cannot draw {count} distinct numbers below {high} with {len(taken)} excluded")
    pairs = []
    while len(pairs) < count:
        n = rng.randrange(high)
        if n not in taken:
            taken.add(n)
            pairs.append((number_words(n), str(n)))
    return pairs


# ---------------------------------------------------------------------------
# Batches (dicts of the models' keyword arguments)
# ---------------------------------------------------------------------------


class MLMCollator:
    """Stack equal-length windows (T,) and mask them anew with BERT's recipe: a batch for `MaskedLM`."""

    def __init__(self, mask_id: int, vocab_size: int, special_ids: tuple[int, ...] = (), p: float = 0.15) -> None:
        self.mask_id, self.vocab_size, self.special_ids, self.p = mask_id, vocab_size, special_ids, p

    def __call__(self, windows: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """windows: B tensors (T,) -> {"input_ids", "labels"} (B, T); uses torch's global RNG."""
        ids = torch.stack(list(windows))
        inputs, labels = mask_tokens(ids, self.mask_id, self.vocab_size, self.p, self.special_ids)
        return {"input_ids": inputs, "labels": labels}


def _pad(rows: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad lists of ids to (B, T) and a 1/0 mask (B, T), on the right (or left)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row, dtype=torch.long), 1
    return ids, mask


def classification_batches(examples: Sequence[tuple[list[int], int]], batch_size: int, pad_id: int,
                           decoder: bool = False, shuffle_seed: int | None = None) -> list[dict]:  # fmt: skip
    """(ids, label) examples -> padded batches for `EncoderClassifier` or, `decoder=True`, `GPTClassifier`.

    Encoder batches: {"input_ids", "attention_mask", "labels"} (the caller puts
    a [CLS] id first). Decoder batches: {"idx", "targets", "lengths"} (the
    classifier reads the last real token; causal attention makes the right
    padding invisible).
    """
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [examples[i] for i in order[start : start + batch_size]]
        ids, mask = _pad([list(x) for x, _ in chunk], pad_id)
        labels = torch.tensor([y for _, y in chunk])
        if decoder:
            batches.append({"idx": ids, "targets": labels, "lengths": mask.sum(1)})
        else:
            batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def seq2seq_batches(pairs: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
                    eos_id: int) -> list[dict]:  # fmt: skip
    """(source ids, target ids) -> {"input_ids", "attention_mask", "labels"} for `Seq2SeqLM` (labels end in eos).

    The model shifts the labels right itself (teacher forcing); padded label
    positions are -100, so the loss ignores them.
    """
    batches = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        ids, mask = _pad([list(s) for s, _ in chunk], pad_id)
        labels, label_mask = _pad([list(t) + [eos_id] for _, t in chunk], pad_id)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels.masked_fill(label_mask == 0, -100)})
    return batches


def prefix_lm_batches(pairs: Sequence[tuple[list[int], list[int]]], batch_size: int, sep_id: int,
                      eos_id: int) -> list[dict]:  # fmt: skip
    """(source, target) -> {"idx", "targets"} for a decoder-only `GPT` reading "source <sep> target <eos>".

    The loss is on the target and its end token only (the source is given,
    not predicted): targets are -100 elsewhere, as in instruction tuning.
    """
    batches = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        rows = [list(s) + [sep_id] + list(t) + [eos_id] for s, t in chunk]
        ids, mask = _pad(rows, eos_id)
        targets = torch.full_like(ids, -100)
        for i, (s, t) in enumerate(chunk):
            first = len(s)  # the position of <sep>, whose next token is the target's first
            targets[i, first : first + len(t) + 1] = ids[i, first + 1 : first + len(t) + 2]
        batches.append({"idx": ids[:, :-1].contiguous(), "targets": targets[:, :-1].contiguous()})
    return batches


# ---------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------


@torch.no_grad()
def masked_accuracy(model: MaskedLM, batches: Sequence[dict]) -> tuple[int, int]:
    """(correct, total) predictions of the original token at the masked positions (labels != -100)."""
    model.eval()
    correct = total = 0
    for batch in batches:
        logits, _ = model(batch["input_ids"], batch.get("attention_mask"))
        chosen = batch["labels"] != -100
        correct += int((logits.argmax(-1)[chosen] == batch["labels"][chosen]).sum())
        total += int(chosen.sum())
    return correct, total


@torch.no_grad()
def exact_match_seq2seq(model: Seq2SeqLM, sources: Sequence[list[int]], targets: Sequence[list[int]],
                        max_new_tokens: int, batch_size: int = 256) -> list[bool]:  # fmt: skip
    """Greedy outputs equal to the targets (up to the end token), one bool per pair."""
    c = model.config
    hits = []
    for start in range(0, len(sources), batch_size):
        ids, mask = _pad([list(s) for s in sources[start : start + batch_size]], c.pad_token_id)
        out = model.generate(ids, mask, max_new_tokens=max_new_tokens).tolist()
        for row, target in zip(out, targets[start : start + batch_size]):
            body = row[1:]
            hits.append(body[: body.index(c.eos_token_id)] == list(target) if c.eos_token_id in body else False)
    return hits


@torch.no_grad()
def exact_match_decoder(model: GPT, sources: Sequence[list[int]], targets: Sequence[list[int]], sep_id: int,
                        eos_id: int, max_new_tokens: int, batch_size: int = 256) -> list[bool]:  # fmt: skip
    """Greedy continuations of "source <sep>" equal to the targets (up to the end token), one bool per pair.

    The prompts are grouped by length, so a batch needs no padding (a model
    trained on unpadded prompts would be confused by it); each batch then
    grows by one token per step with a KV cache.
    """
    model.eval()
    hits = [False] * len(sources)
    by_length: dict[int, list[int]] = {}
    for i, s in enumerate(sources):
        by_length.setdefault(len(s), []).append(i)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            rows = group[start : start + batch_size]
            prompt = torch.tensor([list(sources[i]) + [sep_id] for i in rows], dtype=torch.long)
            check_ids(prompt, model.config.vocab_size)
            cache = model.new_kv_cache(len(rows), prompt.size(1) + max_new_tokens)
            logits, _ = model(prompt, kv_cache=cache, only_last=True)
            out = []
            for _ in range(max_new_tokens):
                token = logits[:, -1].argmax(-1)
                out.append(token)
                logits, _ = model(token[:, None], kv_cache=cache)
            written = torch.stack(out, dim=1).tolist()
            for i, row in zip(rows, written):
                hits[i] = row[: row.index(eos_id)] == list(targets[i]) if eos_id in row else False
    return hits
