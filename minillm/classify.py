"""Classification with a pretrained GPT: a new output head, labelled text, SMS spam (chapter 07).

Chapter 07 (`07_finetuning`) turns a language model into a spam filter. The
model's last hidden state already summarizes the text it has read, so a linear
layer on top of it, trained with the rest of the model or alone, is enough:

* `GPTClassifier`: the GPT with its vocabulary head replaced by a linear layer
  to `num_classes` scores, read at the *last real token* of each sequence
  (causal attention means only that position has seen the whole text);
* SMS spam data: `spam_splits` (deduplicated, balanced, stratified, seeded
  train/val/test), `ClassificationDataset`, `classification_collate` (per-batch
  right padding) and `classification_loader`;
* `predict` and `confusion_matrix` to read the results.

Training uses the loop shared by every fine-tuning, `minillm.finetune.finetune`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from minillm.data import load
from minillm.errors import DataError
from minillm.fileio import atomic_path, atomic_write
from minillm.lora import lora_layers
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import Tokenizer

SPAM_LABELS = ("ham", "spam")  # class 0, class 1

# ---------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------


class GPTClassifier(nn.Module):
    """A `GPT` whose output head maps the hidden state to `num_classes` scores.

    The vocabulary head (tied to the token embedding in GPT-2) is replaced by a
    new `nn.Linear(d_model, num_classes)`; the embedding itself is kept. The
    class scores are those of the last real token of each sequence:

        idx (B, T) -> gpt -> per-position scores (B, T, K) -> pick position lengths-1 -> (B, K)

    Sequences are padded on the right, so with causal attention the padding
    never changes the scores of the real tokens: no attention mask is needed.
    """

    def __init__(self, gpt: GPT, num_classes: int = 2, labels: tuple[str, ...] | None = None) -> None:
        super().__init__()
        if not isinstance(gpt, GPT):
            raise TypeError(f"GPTClassifier wraps a minillm GPT, got {type(gpt).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise DataError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if labels is not None and len(labels) != num_classes:
            raise DataError(f"got {len(labels)} labels for {num_classes} classes")
        self.gpt = gpt
        self.num_classes = num_classes
        self.labels = tuple(labels) if labels is not None else tuple(str(i) for i in range(num_classes))
        w = gpt.tok_emb.weight
        head = nn.Linear(gpt.config.d_model, num_classes, device=w.device, dtype=w.dtype)
        nn.init.normal_(head.weight, std=gpt.config.init_std)
        nn.init.zeros_(head.bias)
        gpt.lm_head = head  # unties it from tok_emb; GPT.forward's [..., :vocab_size] keeps all K columns

    @property
    def head(self) -> nn.Linear:
        """The classification layer (d_model -> num_classes)."""
        return self.gpt.lm_head

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids (B, T), optional labels (B,) and real lengths (B,) -> (logits (B, K), loss).

        `lengths=None` means no padding: every sequence is T tokens long.
        """
        scores, _ = self.gpt(idx)  # (B, T, K)
        b, t = idx.shape
        if lengths is None:
            pooled = scores[:, -1]
        else:
            lengths = lengths.to(idx.device)
            if lengths.shape != (b,) or int(lengths.min()) < 1 or int(lengths.max()) > t:
                raise DataError(f"lengths must be (B,) = ({b},) values in [1, {t}], got {lengths.tolist()}")
            pooled = scores[torch.arange(b, device=idx.device), lengths - 1]  # (B, K)
        loss = None if targets is None else F.cross_entropy(pooled.float(), targets.to(idx.device))
        return pooled, loss

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `classifier.json` (GPT config, classes) and `model.safetensors` to `directory`, atomically."""
        if lora_layers(self):
            raise DataError("the classifier has LoRA adapters: save them with minillm.lora.save_adapter, or "
                             "fold them in with minillm.lora.remove_lora(model) before saving")  # fmt: skip
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(state, tmp, metadata={"format": "pt"})
        meta = {"format": "minillm-classifier", "labels": list(self.labels),
                "gpt_config": self.gpt.config.to_dict()}  # fmt: skip
        atomic_write(directory / "classifier.json", json.dumps(meta, indent=1) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str | None = None) -> GPTClassifier:
        """Read a classifier written by `save`."""
        directory = Path(directory)
        meta_path = directory / "classifier.json"
        if not meta_path.is_file() or not (directory / "model.safetensors").is_file():
            raise FileNotFoundError(f"{directory} needs classifier.json and model.safetensors "
                                    "(written by GPTClassifier.save)")  # fmt: skip
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "minillm-classifier":
            raise DataError(f"{meta_path} is not a minillm classifier description")
        model = cls(GPT(GPTConfig(**meta["gpt_config"])), len(meta["labels"]), tuple(meta["labels"]))
        model.load_state_dict(load_file(directory / "model.safetensors"))
        return model.to(device) if device is not None else model


# ---------------------------------------------------------------------------
# Labelled text: SMS spam splits, dataset, collate
# ---------------------------------------------------------------------------


def spam_splits(
    seed: int = 123, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), balance: bool = True
) -> dict[str, list[tuple[str, int]]]:
    """The SMS Spam Collection as {"train", "val", "test"} lists of (text, label), label 1 = spam.

    Exact duplicate messages are dropped first (the collection repeats about 400
    texts), so no message sits in two splits. `balance`: keep as many ham messages
    (a seeded random choice) as there are spam messages (653 distinct), so accuracy
    is not flattered by always answering "ham".
    Each class is split by `fractions` on its own (stratified), so every split has
    the same class proportions; each split is then shuffled. Same seed, same splits.
    """
    rows = load("sms_spam_collection", split="train")
    by_class: dict[int, list[str]] = {0: [], 1: []}
    seen: set[str] = set()
    for label, text in zip(rows["label"], rows["text"]):
        if label not in SPAM_LABELS:
            raise DataError(f"unexpected SMS label {label!r}; expected one of {SPAM_LABELS}")
        if text not in seen:
            seen.add(text)
            by_class[SPAM_LABELS.index(label)].append(text)
    return stratified_splits(by_class, seed, fractions, balance)


def stratified_splits(
    by_class: dict[int, list[str]], seed: int, fractions: tuple[float, float, float], balance: bool
) -> dict[str, list[tuple[str, int]]]:
    """Split each class's texts by `fractions` (train, val, test), optionally after undersampling to the
    smallest class; shuffles with `seed`. Returns {"train", "val", "test"} lists of (text, label)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise DataError(f"fractions must be three non-negative numbers adding up to 1, got {fractions}")
    gen = torch.Generator().manual_seed(seed)
    smallest = min(len(texts) for texts in by_class.values())
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for label in sorted(by_class):
        texts = by_class[label]
        order = torch.randperm(len(texts), generator=gen).tolist()
        if balance:
            order = order[:smallest]
        n_train, n_val = round(fractions[0] * len(order)), round(fractions[1] * len(order))
        parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val],
                 "test": order[n_train + n_val :]}  # fmt: skip
        for name, idx in parts.items():
            splits[name] += [(texts[i], label) for i in idx]
    for name, items in splits.items():
        splits[name] = [items[i] for i in torch.randperm(len(items), generator=gen).tolist()]
    return splits


class ClassificationDataset(Dataset):
    """(text, label) pairs, tokenized once; item i is (token ids, label).

    Texts are plain text (`tokenizer.encode_ordinary`: "<|endoftext|>" in an SMS
    is just characters). Texts longer than `max_length` tokens keep their first
    `max_length` tokens (pass the model's context length). Empty texts are an error.
    """

    def __init__(self, examples: list[tuple[str, int]], tokenizer: Tokenizer, max_length: int) -> None:
        if max_length < 1:
            raise DataError(f"max_length must be >= 1, got {max_length}")
        self.examples = examples
        self.ids = [tokenizer.encode_ordinary(text)[:max_length] for text, _ in examples]
        empty = [i for i, ids in enumerate(self.ids) if not ids]
        if empty:
            raise DataError(f"example {empty[0]} encodes to no tokens; drop empty texts first")
        self.labels = [int(label) for _, label in examples]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], self.labels[i]


def classification_collate(batch: list[tuple[list[int], int]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a batch on the right to its longest sequence.

    Returns {"idx": (B, T) ids, "targets": (B,) labels, "lengths": (B,) real lengths}: the
    keyword arguments of `GPTClassifier.forward`. Padding positions hold `pad_id`;
    they come after the real tokens, so causal attention never lets them matter.
    """
    if not batch:
        raise DataError("cannot collate an empty batch")
    longest = max(len(ids) for ids, _ in batch)
    idx = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    for row, (ids, _) in enumerate(batch):
        idx[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    lengths = torch.tensor([len(ids) for ids, _ in batch], dtype=torch.long)
    targets = torch.tensor([label for _, label in batch], dtype=torch.long)
    return {"idx": idx, "targets": targets, "lengths": lengths}


def classification_loader(examples: list[tuple[str, int]], tokenizer: Tokenizer, max_length: int, batch_size: int = 16,
                          shuffle: bool = False, seed: int = 0, pad_id: int = 0) -> DataLoader:  # fmt: skip
    """A `DataLoader` of padded classification batches (seeded shuffling when `shuffle`)."""
    dataset = ClassificationDataset(examples, tokenizer, max_length)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      collate_fn=lambda b: classification_collate(b, pad_id))  # fmt: skip


@torch.no_grad()
def predict(model: GPTClassifier, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted classes (N,), true labels (N,)) over a classification loader."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds, labels = [], []
    for batch in loader:
        logits, _ = model(batch["idx"].to(device), lengths=batch["lengths"].to(device))
        preds.append(logits.argmax(-1).cpu())
        labels.append(batch["targets"])
    model.train(was_training)
    return torch.cat(preds), torch.cat(labels)


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    if preds.shape != labels.shape:
        raise DataError(f"preds {tuple(preds.shape)} and labels {tuple(labels.shape)} differ in shape")
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
