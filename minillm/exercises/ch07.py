"""Chapter 07's exercises: the classifier's pooling, LoRA's size and merge, the instruction batch.

Each check compares the reader's function with the package (`GPTClassifier`,
`inject_lora` + `count_parameters`, `LoRALinear.merge`, `instruction_collate`)
on inputs the reader did not choose: random shapes and seeds, and the edge
cases where the usual mistakes show (a sequence with no padding, a length of
one, a prompt longer than the context).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import torch

from minillm.classify import GPTClassifier, classification_collate
from minillm.exercises import ExerciseFailed, assert_close, call_answer, exercise, expect
from minillm.instruct import instruction_collate
from minillm.lora import GPT2_TARGETS, LoRAConfig, LoRALinear, count_parameters, inject_lora
from minillm.model import GPT, GPTConfig
from minillm.pretrained import book_config


def _tiny_config(rng: random.Random, **fields: Any):
    """A small random GPT-2-style `GPTConfig` (fast to build)."""
    n_head = rng.choice([1, 2, 4])
    return GPTConfig(vocab_size=rng.randint(20, 60), context_length=rng.choice([16, 24, 32]),
                     d_model=n_head * rng.choice([4, 8, 12]), n_layer=rng.randint(1, 3), n_head=n_head,
                     **fields)  # fmt: skip


# -- 7.1 -------------------------------------------------------------------------------

POOL_HINT = ("Row b has lengths[b] real tokens at positions 0 .. lengths[b] - 1, then padding; "
             "index with h[torch.arange(B), lengths - 1].")  # fmt: skip


@exercise("7.1", "read the last real token")
def grade_last_token(last_token: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> str:
    """`last_token(h, lengths)`: (B, T, C) and (B,) -> (B, C), the state at each row's last real token."""
    gen = torch.Generator().manual_seed(7)
    cases = 0
    for b, t, c in ((3, 5, 4), (4, 9, 6), (1, 1, 3), (5, 7, 2)):
        h = torch.randn(b, t, c, generator=gen)
        lengths = torch.randint(1, t + 1, (b,), generator=gen)
        lengths[0] = t  # one row without padding, and (when b > 1) one of a single token
        if b > 1:
            lengths[-1] = 1
        expected = h[torch.arange(b), lengths - 1]
        got = call_answer(last_token, h.clone(), lengths.clone(), what=f"last_token(h {tuple(h.shape)}, "
                    f"lengths={lengths.tolist()})", hint=POOL_HINT)  # fmt: skip
        assert_close(got, expected, f"last_token(h {tuple(h.shape)}, lengths={lengths.tolist()})", hint=POOL_HINT)
        cases += 1
    # against the package: a classifier's scores, read by the reader's pooling, are GPTClassifier's logits

    rng = random.Random(7)
    torch.manual_seed(7)
    clf = GPTClassifier(GPT(_tiny_config(rng)), num_classes=3).eval()
    V, T = clf.gpt.config.vocab_size, clf.gpt.config.context_length
    rows = [([rng.randrange(V) for _ in range(n)], 0) for n in (T // 2, 3, T // 3 + 1, 1)]
    batch = classification_collate(rows, pad_id=0)
    with torch.no_grad():
        scores, _ = clf.gpt(batch["idx"])  # (B, T, K): the head at every position
        expected, _ = clf(batch["idx"], lengths=batch["lengths"])
    got = call_answer(last_token, scores, batch["lengths"], what="last_token on a GPTClassifier's scores", hint=POOL_HINT)
    assert_close(got, expected, "last_token(scores, lengths) against GPTClassifier's logits", hint=POOL_HINT)
    return (f"matches h[arange(B), lengths - 1] on {cases} random padded batches (rows without padding, rows of "
            "one token) and GPTClassifier's logits on a padded batch.")


# -- 7.2 -------------------------------------------------------------------------------

COUNT_HINT = ("Per block, GPT2_TARGETS adapts attn.qkv (d_model -> 3 d_model), attn.proj (d_model -> d_model), "
              "mlp.fc (d_model -> ff_width) and mlp.proj (ff_width -> d_model); an adapter on d_in -> d_out has "
              "r (d_in + d_out) numbers. Use config.ff_width, not 4 * d_model: d_ff may be set.")  # fmt: skip


def _lora_truth(config, rank: int) -> int:

    model = GPT(config)
    inject_lora(model, LoRAConfig(rank=rank, alpha=2 * rank, targets=GPT2_TARGETS))
    return int(count_parameters(model)["trainable"])


@exercise("7.2", "count LoRA's parameters")
def grade_lora_count(lora_count: Callable[[Any, int], int]) -> str:
    """`lora_count(config, rank)`: trainable parameters `inject_lora` leaves on GPT2_TARGETS of a GPT(config)."""
    run = book_config("cpu")
    rng = random.Random(72)
    cases = [(run.model_config(run.vocab_size), r) for r in (1, 4, 16)]
    cases += [(_tiny_config(rng), rng.choice([1, 2, 3])), (_tiny_config(rng, d_ff=rng.choice([20, 36])), 2),
              (_tiny_config(rng, bias=False), 1)]
    for config, rank in cases:
        truth = _lora_truth(config, rank)
        what = (f"lora_count(config with d_model={config.d_model}, n_layer={config.n_layer}, "
                f"ff_width={config.ff_width}, rank={rank})")  # fmt: skip
        got = call_answer(lora_count, config, rank, what=what, hint=COUNT_HINT)
        expect(isinstance(got, int) and not isinstance(got, bool),
               f"{what} returned {type(got).__name__} {got!r}; return an int. {COUNT_HINT}")
        expect(got == truth, f"{what} = {got:,}, but count_parameters after inject_lora says {truth:,} "
                             f"({'too many' if got > truth else 'too few'}). {COUNT_HINT}")  # fmt: skip
    return (f"equals count_parameters after inject_lora on {len(cases)} configurations: the book model at ranks "
            "1, 4 and 16, and small GPTs with other widths, depths, MLP widths and no biases.")


# -- 7.3 -------------------------------------------------------------------------------

MERGE_HINT = ("W has shape (out, in) like base.weight; lora_A is (r, in) and lora_B (out, r), so the update is "
              "lora_B @ lora_A, scaled by alpha / r (layer.scaling). Do not change the layer.")  # fmt: skip


@exercise("7.3", "merge an adapter into its weight")
def grade_merge(merged_weight: Callable[[Any], torch.Tensor]) -> str:
    """`merged_weight(layer)`: the weight W + (alpha / r) B A that replaces a `LoRALinear` by a plain linear layer."""
    torch.manual_seed(73)
    cases = 0
    for d_in, d_out, rank, alpha in ((6, 10, 2, 4.0), (12, 5, 3, 1.0), (8, 8, 8, 32.0), (16, 4, 1, 3.0)):
        layer = LoRALinear(torch.nn.Linear(d_in, d_out), rank=rank, alpha=alpha)
        with torch.no_grad():
            layer.lora_B.normal_()  # a trained adapter: B is no longer zero
        reference = copy.deepcopy(layer)
        reference.merge()
        expected = reference.base.weight.detach().clone()
        before = layer.base.weight.detach().clone()
        what = f"merged_weight(LoRALinear({d_in} -> {d_out}, rank={rank}, alpha={alpha:g}))"
        got = call_answer(merged_weight, layer, what=what, hint=MERGE_HINT)
        if isinstance(got, torch.Tensor):
            got = got.detach()
        assert_close(got, expected, what, hint=MERGE_HINT)
        assert_close(layer.base.weight.detach(), before, f"{what}: the layer's own weight afterwards",
                     hint="Compute a new tensor; leave layer.base.weight as it was (merging is merge_lora's job).")
        x = torch.randn(3, d_in)
        with torch.no_grad():
            assert_close(torch.nn.functional.linear(x, got, layer.base.bias), layer(x),
                         f"{what}: a plain linear layer with that weight, against the adapted layer", hint=MERGE_HINT)
        cases += 1
    return (f"equals LoRALinear.merge's weight on {cases} layers (ranks 1 to 8, several alphas), leaves the layer "
            "unchanged, and a plain linear layer with it computes what the adapted layer computes.")


# -- 7.4 -------------------------------------------------------------------------------

COLLATE_HINT = ("For ids s_0 .. s_n: inputs s_0 .. s_{n-1}, targets s_1 .. s_n; the first prompt_len - 1 targets "
                "are prompt tokens (-100); cut both to max_length; pad idx with pad_id and targets with -100 to the "
                "longest row of the batch.")  # fmt: skip


@exercise("7.4", "collate an instruction batch")
def grade_collate(collate: Callable[[list, int, int], dict]) -> str:
    """`collate(batch, pad_id, max_length)`: {"idx", "targets"} (B, T) as `instruction_collate` with the prompt mask."""
    rng = random.Random(74)
    cases = 0
    for n_rows, max_length in ((3, 64), (4, 12), (1, 64), (5, 7)):
        batch = []
        for _ in range(n_rows):
            n = rng.randint(3, 14)
            batch.append(([rng.randint(1, 99) for _ in range(n)], rng.randint(1, n - 1)))
        if n_rows > 1:  # a prompt that fills the context: every target of that row is -100
            ids = [rng.randint(1, 99) for _ in range(max_length + 3)]
            batch[1] = (ids, max_length + 1)
        pad_id = rng.randint(100, 200)
        expected = instruction_collate(copy.deepcopy(batch), pad_id=pad_id, max_length=max_length, mask_prompt=True)
        what = f"collate(a batch of {n_rows} with lengths {[len(i) for i, _ in batch]}, " \
               f"prompt lengths {[p for _, p in batch]}, pad_id={pad_id}, max_length={max_length})"
        got = call_answer(collate, copy.deepcopy(batch), pad_id, max_length, what=what, hint=COLLATE_HINT)
        expect(isinstance(got, dict) and {"idx", "targets"} <= set(got),
               f"{what} returned {type(got).__name__}; return a dict with 'idx' and 'targets'. {COLLATE_HINT}")
        for key in ("idx", "targets"):
            value = got[key]
            expect(isinstance(value, torch.Tensor) and value.dtype == torch.long,
                   f"{what}['{key}'] must be a torch.long tensor, got "
                   f"{getattr(value, 'dtype', type(value).__name__)}")  # fmt: skip
            expect(value.shape == expected[key].shape,
                   f"{what}['{key}'] has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)} "
                   f"(B rows, padded to the longest input after the cut). {COLLATE_HINT}")  # fmt: skip
            assert_close(value, expected[key], f"{what}['{key}']", hint=COLLATE_HINT)
        cases += 1
    return (f"equals instruction_collate(mask_prompt=True) on {cases} random batches, including a single row, rows "
            "cut to max_length and a prompt that fills the whole context.")
