"""Instruction tuning: prompt formats, masked-loss batches, special tokens, responses (chapter 07).

Chapter 07 (`07_finetuning`) teaches a pretrained model to follow instructions
by training it on (instruction, input, response) examples:

* prompt formats: `format_prompt(example, "alpaca")` (the Stanford Alpaca
  layout: a preamble, "### Instruction:", optional "### Input:", "### Response:")
  or `"chat"` (turns marked by special tokens `<|user|>`, `<|assistant|>`,
  `<|end|>`, which `add_special_tokens` adds to a BPE tokenizer and `resize_vocab`
  to the model);
* `InstructionDataset` + `instruction_collate`: prompt and response tokens,
  padded per batch, truncated to the context; the targets are the inputs shifted
  by one, with -100 (ignored by the loss) on padding and, with `mask_prompt`, on
  the prompt, so the model learns to write responses, not to repeat prompts;
* `generate_response`: the template's prompt completed greedily by
  `minillm.generate.complete` up to the end-of-response token, and
  `extract_response` for text produced some other way;
* `instruction_splits`: the book's 1,100 instruction examples split with a seed.

The training loop is `minillm.finetune.finetune`, the same as for classification;
`python -m minillm finetune --task instruct` runs it from the command line.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.data import DataLoader, Dataset

from minillm.data import load
from minillm.errors import DataError
from minillm.generate import complete
from minillm.model import GPT
from minillm.tokenizer import BPETokenizer, Tokenizer

IGNORE_INDEX = -100  # targets with this value add nothing to the cross-entropy
TEMPLATES = ("alpaca", "chat")
CHAT_TOKENS = ("<|user|>", "<|assistant|>", "<|end|>")
ENDOFTEXT = "<|endoftext|>"
_PREAMBLE = ("Below is an instruction that describes a task. "
             "Write a response that appropriately completes the request.")  # fmt: skip
_RESPONSE = "\n\n### Response:\n"


def format_prompt(example: dict, template: str = "alpaca") -> str:
    """The prompt text of an example (its `instruction` and optional `input`), ending where the response starts."""
    if template not in TEMPLATES:
        raise DataError(f"template must be one of {TEMPLATES}, got {template!r}")
    if not isinstance(example, dict) or not example.get("instruction"):
        raise DataError("an instruction example is a dict with a non-empty 'instruction' (and optional 'input')")
    extra = example.get("input") or ""
    if template == "alpaca":
        text = f"{_PREAMBLE}\n\n### Instruction:\n{example['instruction']}"
        return text + (f"\n\n### Input:\n{extra}" if extra else "") + _RESPONSE
    user = example["instruction"] + (f"\n\n{extra}" if extra else "")
    return f"<|user|>\n{user}<|end|>\n<|assistant|>\n"


def format_chat(messages: list[dict]) -> str:
    """A conversation in the chat template, ending where the assistant's next turn starts (appendix C).

    `messages`: OpenAI-style `{"role": "system" | "user" | "assistant", "content": str}`
    dicts. The template has no system role: a system message's text opens the
    next user turn. One user message gives exactly `format_prompt({...}, "chat")`.
    """
    if not isinstance(messages, list) or not messages:
        raise DataError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    text, system = "", []
    for i, message in enumerate(messages):
        role, content = (message.get("role"), message.get("content")) if isinstance(message, dict) else (None, None)
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise DataError(f"message {i} must have a role of system, user or assistant and a string content, "
                            f"got {message!r}")  # fmt: skip
        if role == "system":
            system.append(content)
        elif role == "user":
            text += "<|user|>\n" + "\n\n".join([*system, content]) + "<|end|>\n"
            system = []
        else:
            text += "<|assistant|>\n" + content + "<|end|>\n"
    if messages[-1]["role"] != "user":
        raise DataError("the last message must be the user's: the model writes the assistant's answer to it")
    return text + "<|assistant|>\n"


def encode_chat(messages: list[dict], tokenizer: Tokenizer) -> list[int]:
    """Token ids of `format_chat(messages)` in which only the template's markers are special tokens.

    A message's text is encoded as plain text: "<|end|>" typed by a user is
    characters, never the marker (no prompt injection through the template).
    Raises DataError when the tokenizer lacks the chat markers (a base model).
    """
    missing = [t for t in CHAT_TOKENS if t not in tokenizer.special_tokens]
    if missing:
        raise DataError(f"this tokenizer has no chat template (missing {missing}): the model was not "
                        "instruction-tuned with the chat template")  # fmt: skip
    text = format_chat(messages)  # checks the messages
    pieces: list[tuple[bool, str]] = []  # (is a marker, text), rebuilt from the messages, never searched for
    system: list[str] = []
    for message in messages:
        if message["role"] == "system":
            system.append(message["content"])
            continue
        role, content = ("<|user|>", "\n\n".join([*system, message["content"]])) if message["role"] == "user" \
            else ("<|assistant|>", message["content"])
        pieces += [(True, role), (False, "\n" + content), (True, "<|end|>"), (False, "\n")]
        system = [] if message["role"] == "user" else system
    pieces += [(True, "<|assistant|>"), (False, "\n")]
    assert "".join(p for _, p in pieces) == text
    ids: list[int] = []
    for marker, piece in pieces:
        ids += [tokenizer.special_tokens[piece]] if marker else tokenizer.encode_ordinary(piece)
    return ids


def end_token(template: str) -> str:
    """The special token that ends a response: <|endoftext|> (alpaca) or <|end|> (chat)."""
    return ENDOFTEXT if template == "alpaca" else "<|end|>"


def extract_response(text: str, template: str = "alpaca") -> str:
    """The response part of a generated text: after the prompt's response marker, before the end token."""
    marker = _RESPONSE if template == "alpaca" else "<|assistant|>\n"
    start = text.rfind(marker)
    response = text[start + len(marker) :] if start >= 0 else text
    for stop in (end_token(template), "\n### ", "<|user|>"):
        response = response.split(stop, 1)[0]
    return response.strip()


# ---------------------------------------------------------------------------
# Special tokens: grow the tokenizer and the model together
# ---------------------------------------------------------------------------


def add_special_tokens(tokenizer: BPETokenizer, names: tuple[str, ...] = CHAT_TOKENS) -> BPETokenizer:
    """A copy of a `BPETokenizer` with `names` appended as special tokens (ids vocab_size, +1, ...).

    Tokens it already has are kept as they are. The model must grow with it: `resize_vocab`.
    """
    if not isinstance(tokenizer, BPETokenizer):
        raise TypeError(f"special tokens need a BPETokenizer (byte-level), got {type(tokenizer).__name__}")
    vocab = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    specials = dict(tokenizer.special_tokens)
    for name in names:
        if name not in specials:
            specials[name] = len(vocab)
            vocab.append(name.encode("utf-8"))
    return BPETokenizer(vocab, tokenizer.merges, specials, pattern=tokenizer.pattern)


@torch.no_grad()
def resize_vocab(model: GPT, vocab_size: int) -> GPT:
    """A copy of `model` with `vocab_size` token rows; new rows start at the mean embedding.

    Starting new tokens at the average embedding (rather than at random) keeps the
    model's predictions for ordinary text almost unchanged at first.
    """
    old = model.config.vocab_size
    if vocab_size < old:
        raise DataError(f"resize_vocab only grows the vocabulary ({old} -> {vocab_size} would drop tokens)")
    config = dataclasses.replace(model.config, vocab_size=vocab_size)
    w = model.tok_emb.weight
    bigger = GPT(config).to(device=w.device, dtype=w.dtype)
    state = model.state_dict()
    for key in ("tok_emb.weight", "lm_head.weight"):
        if key in state:
            rows = bigger.state_dict()[key].clone()
            rows[:old] = state[key][:old]
            rows[old:vocab_size] = state[key][:old].mean(dim=0)
            state[key] = rows
    bigger.load_weights(state, source="resize_vocab")
    return bigger.train(model.training)


# ---------------------------------------------------------------------------
# Data: splits, dataset, collate
# ---------------------------------------------------------------------------


def instruction_splits(seed: int = 123, fractions: tuple[float, float, float] = (0.85, 0.05, 0.10)) -> dict:
    """The `instruction` data set (1,100 examples) shuffled with `seed` and cut into train/val/test lists."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise DataError(f"fractions must be three non-negative numbers adding up to 1, got {fractions}")
    rows = load("instruction", split="train").to_list()
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    n_train, n_val = round(fractions[0] * len(rows)), round(fractions[1] * len(rows))
    cuts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {name: [rows[i] for i in idx] for name, idx in cuts.items()}


def encode_example(example: dict, tokenizer: Tokenizer, template: str = "alpaca") -> tuple[list[int], int]:
    """(prompt + response + end token ids, number of prompt tokens).

    The example needs a non-empty `instruction` and `output` (else DataError):
    an empty answer would teach the model to stop at once.

    Prompt and response are encoded separately, so the prompt's ids are exactly
    those `generate_response` feeds the model. Special-token text inside the
    data is encoded as plain text; only the template's markers are special.
    """
    end = end_token(template)
    specials = tokenizer.special_tokens
    needed = [end] + (list(CHAT_TOKENS) if template == "chat" else [])
    missing = [t for t in needed if t not in specials]
    if missing:
        raise DataError(f"the tokenizer lacks the special tokens {missing}; add them with "
                         "add_special_tokens(tokenizer, ...) and grow the model with resize_vocab")  # fmt: skip
    prompt = _encode_template(format_prompt(example, template), tokenizer)
    output = example.get("output")
    if not isinstance(output, str) or not output.strip():
        raise DataError(f"an instruction example needs a non-empty 'output' (the response to learn), got "
                        f"{output!r}; drop or fix the example")  # fmt: skip
    response = tokenizer.encode_ordinary(output) + [specials[end]]
    return prompt + response, len(prompt)


def _template_specials(tokenizer: Tokenizer) -> frozenset[str]:
    """The special tokens a formatted prompt may contain: the chat markers the tokenizer has."""
    return frozenset(CHAT_TOKENS) & frozenset(tokenizer.special_tokens)


def _encode_template(text: str, tokenizer: Tokenizer) -> list[int]:
    """Encode a prompt in which only the chat markers are special tokens."""
    allowed = _template_specials(tokenizer)
    if not allowed:
        return tokenizer.encode_ordinary(text)
    return tokenizer.encode(text, allowed_special=allowed, disallowed_special=())


class InstructionDataset(Dataset):
    """Instruction examples, tokenized once; item i is (ids, prompt length) from `encode_example`.

    With `max_length` (the model's context), examples whose prompt alone fills the
    context are dropped (`dropped` counts them): no response token would be left
    to learn from, and a batch of only those would have no loss at all.
    """

    def __init__(self, examples: list[dict], tokenizer: Tokenizer, template: str = "alpaca",
                 max_length: int | None = None) -> None:  # fmt: skip
        items = []
        for i, example in enumerate(examples):
            try:
                items.append(encode_example(example, tokenizer, template))
            except DataError as err:
                raise DataError(f"instruction example {i}: {err}") from None
        self.items = [it for it in items if max_length is None or it[1] < max_length]
        self.dropped = len(items) - len(self.items)
        if not self.items:
            raise DataError(f"all {len(items)} examples have prompts of max_length={max_length} tokens or "
                             "more; use a model with a longer context")  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.items[i]


def instruction_collate(batch: list[tuple[list[int], int]], pad_id: int, max_length: int | None = None,
                        mask_prompt: bool = True) -> dict[str, torch.Tensor]:  # fmt: skip
    """Language-model inputs and targets for a batch of (ids, prompt length) pairs.

    For one example with ids s_0 .. s_n: inputs s_0 .. s_{n-1}, targets s_1 .. s_n
    (the next token at each position), cut to `max_length` positions (the model's
    context), then right-padded to the longest example of the batch. Targets are
    IGNORE_INDEX (-100) at padding and, with `mask_prompt`, wherever the target
    is a prompt token (positions 0 .. prompt_len - 2): the loss then counts only
    the response and its end token. Returns {"idx": (B, T), "targets": (B, T)}.
    """
    if not batch:
        raise DataError("cannot collate an empty batch")
    if max_length is not None and max_length < 1:
        raise DataError(f"max_length must be >= 1, got {max_length}")
    rows = []
    for ids, prompt_len in batch:
        if len(ids) < 2:
            raise DataError("each example needs at least 2 tokens (an input and a target)")
        x, y = list(ids[:-1]), list(ids[1:])
        if mask_prompt:
            y[: prompt_len - 1] = [IGNORE_INDEX] * min(prompt_len - 1, len(y))
        if max_length is not None:
            x, y = x[:max_length], y[:max_length]
        rows.append((x, y))
    longest = max(len(x) for x, _ in rows)
    idx = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        idx[r, : len(x)] = torch.tensor(x, dtype=torch.long)
        targets[r, : len(y)] = torch.tensor(y, dtype=torch.long)
    return {"idx": idx, "targets": targets}


def instruction_loader(examples: list[dict], tokenizer: Tokenizer, max_length: int, batch_size: int = 8,
                       template: str = "alpaca", mask_prompt: bool = True, shuffle: bool = False,
                       seed: int = 0) -> DataLoader:  # fmt: skip
    """A `DataLoader` of `instruction_collate` batches; padding uses the response's end token id."""
    dataset = InstructionDataset(examples, tokenizer, template, max_length)
    pad_id = tokenizer.special_tokens[end_token(template)]
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      collate_fn=lambda b: instruction_collate(b, pad_id, max_length, mask_prompt))  # fmt: skip


def generate_response(model: GPT, tokenizer: Tokenizer, example: dict, template: str = "alpaca",
                      max_new_tokens: int = 64) -> str:  # fmt: skip
    """The model's response to an example: its `template` prompt completed greedily until the end token.

    What this adds to `minillm.generate.complete`: the prompt is the example
    formatted by `format_prompt`, its chat markers are encoded as special tokens
    (as in training), generation stops at the template's end token
    (`end_token`), and the response is stripped of surrounding whitespace.
    """
    end = tokenizer.special_tokens[end_token(template)]
    text = complete(model, tokenizer, format_prompt(example, template), max_new_tokens, temperature=0.0,
                    stop_ids=[end], allowed_special=_template_specials(tokenizer))  # fmt: skip
    return text.strip()
