"""Chapter 06's exercises: ZeRO's bytes per rank, activations under checkpointing, the pipeline bubble.

The checks need no data and no training: the references are `minillm.memory`
(`estimate_memory`, `activation_bytes`) on configurations the reader did not
choose, and for the bubble a GPipe schedule built slot by slot here, whose idle
slots are counted. Each runs in a fraction of a second (parameters are counted
on the meta device).
"""

from __future__ import annotations

import math
import random

from minillm.exercises import ExerciseFailed, as_number, exercise
from minillm.memory import activation_bytes, block_activation_bytes, count_parameters, estimate_memory
from minillm.model import GPTConfig


def _configs(seed: int, count: int) -> list[GPTConfig]:
    """Small GPT configurations of assorted shapes (GELU and SwiGLU, tied or not, grouped-query or not)."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        n_head = rng.choice((2, 4, 8))
        d_model = n_head * rng.choice((8, 16, 24))
        swiglu = i % 2 == 1
        out.append(GPTConfig(vocab_size=rng.randint(50, 700), context_length=rng.choice((32, 64, 96)),
                             d_model=d_model, n_layer=rng.randint(1, 6), n_head=n_head,
                             n_kv_head=n_head // 2 if swiglu else None, mlp="swiglu" if swiglu else "gelu",
                             norm="rmsnorm" if swiglu else "layernorm", bias=not swiglu,
                             tie_embeddings=rng.random() < 0.5))  # fmt: skip
    return out


# ---------------------------------------------------------------------------
# 6.1 Bytes per rank under DDP and the ZeRO stages
# ---------------------------------------------------------------------------

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")


@exercise("6.1", "bytes per rank under DDP and ZeRO")
def grade_states_per_rank(states_per_rank) -> str:
    """states_per_rank(config, strategy, world_size, param_bytes, grad_bytes, optimizer_bytes) against
    `estimate_memory(...).states` (weights + gradients + optimizer state per rank)."""
    byte_layouts = ((4, 4, 8), (2, 2, 12), (2, 2, 4))  # fp32 AdamW; bf16 + fp32 master & moments; bf16 throughout
    cases = 0
    for config, world in zip(_configs(6, 4), (2, 3, 4, 8)):
        for strategy in STRATEGIES:
            for p, g, o in byte_layouts:
                expected = estimate_memory(config, strategy=strategy, world_size=world, param_bytes=p, grad_bytes=g,
                                           optimizer_bytes=o).states  # fmt: skip
                got = as_number(states_per_rank(config, strategy, world, p, g, o),
                                 f"states_per_rank(config, {strategy!r}, {world}, {p}, {g}, {o})")
                cases += 1
                if abs(got - expected) <= 3:  # estimate_memory rounds each of its three terms down to whole bytes
                    continue
                n = count_parameters(config)
                shard = {"params": n * p / world, "grads": n * g / world, "optimizer": n * o / world}
                full = {"params": n * p, "grads": n * g, "optimizer": n * o}
                stage_sums = {k: sum((shard if i < k else full)[part] for i, part in
                                     enumerate(("optimizer", "grads", "params"))) for k in range(4)}  # fmt: skip
                hint = "ZeRO-1 shards the optimizer state, ZeRO-2 also the gradients, ZeRO-3 (= fsdp) also the weights."
                for k, value in stage_sums.items():
                    if abs(got - value) <= 3:
                        hint = (f"Your number is what stage {k} keeps per rank "
                                f"({'no sharding' if k == 0 else 'ZeRO-' + str(k)}). {hint}")
                        break
                else:
                    if abs(got - 16 * n) <= 3:
                        hint = ("Use the byte counts passed in (param_bytes, grad_bytes, optimizer_bytes), not 16. "
                                + hint)
                raise ExerciseFailed(f"states_per_rank(config, {strategy!r}, world_size={world}, param_bytes={p}, "
                                     f"grad_bytes={g}, optimizer_bytes={o}) gave {got:,.0f} bytes; expected "
                                     f"{expected:,} for a model of {n:,} parameters. {hint}")
    return f"{cases} cases (5 strategies, 4 models, 2 to 8 ranks, 3 byte layouts) match estimate_memory."


# ---------------------------------------------------------------------------
# 6.2 Activations with checkpointing
# ---------------------------------------------------------------------------


@exercise("6.2", "activations with checkpointing")
def grade_checkpointed_activations(checkpointed_activations) -> str:
    """checkpointed_activations(config, micro_batch, context) against
    `activation_bytes(config, micro_batch, context, "fp32", activation_checkpointing=True)`."""
    rng = random.Random(62)
    cases = 0
    for config in _configs(62, 6):
        b, t = rng.randint(1, 8), rng.randint(1, config.context_length)
        expected = activation_bytes(config, b, t, "fp32", activation_checkpointing=True)
        got = as_number(checkpointed_activations(config, b, t), f"checkpointed_activations(config, {b}, {t})")
        cases += 1
        if got == expected:
            continue
        tokens, c = b * t, config.d_model
        block = block_activation_bytes(config, b, t)
        head = tokens * (c * 8 + 8 + 4 * config.vocab_size)
        inputs = config.n_layer * tokens * c * 4
        hints = {
            inputs + head: "Backward recomputes one block at a time, and that block's activations "
                           "(block_activation_bytes) are alive at the peak: add one block's worth.",
            inputs + block: "The head is not checkpointed: add its final-norm input and output and the fp32 "
                            "log-softmax over the vocabulary, B*T*(8C + 8 + 4V) bytes.",
            config.n_layer * block + head: "That is without checkpointing: the blocks keep only their fp32 "
                                           "inputs (4*C bytes a token each), plus one block's activations.",
            inputs // 2 + block + head: "The checkpointed inputs are the fp32 residual stream: 4 bytes a value.",
            (config.n_layer - 1) * tokens * c * 4 + block + head: "Every block keeps its input, all n_layer of them.",
        }
        hint = next((h for value, h in hints.items() if got == value),
                    "The peak = n_layer block inputs (fp32, width C) + one block's activations + the head's.")
        raise ExerciseFailed(f"checkpointed_activations(config, micro_batch={b}, context={t}) gave {got:,.0f} bytes; "
                             f"expected {expected:,} (n_layer={config.n_layer}, C={c}, V={config.vocab_size}, "
                             f"mlp={config.mlp!r}). {hint}")
    return f"{cases} configurations (GELU and SwiGLU, random micro-batch and context) match activation_bytes."


# ---------------------------------------------------------------------------
# 6.3 The pipeline bubble
# ---------------------------------------------------------------------------


def gpipe_idle_fraction(p: int, m: int) -> float:
    """Idle share of a GPipe schedule built slot by slot: stage s runs forward k at slot s + k, and after
    all forwards the backwards in reverse stage order; each stage is busy 2m of the 2(m + p - 1) slots."""
    busy: dict[int, set[int]] = {s: set() for s in range(p)}
    for s in range(p):
        for k in range(m):
            busy[s].add(s + k)  # forward of micro-batch k
            busy[s].add(m + p - 1 + (p - 1 - s) + k)  # its backward
    slots = 1 + max(max(b) for b in busy.values())
    return sum(slots - len(b) for b in busy.values()) / (p * slots)


@exercise("6.3", "the pipeline bubble")
def grade_bubble_fraction(bubble_fraction) -> str:
    """bubble_fraction(p, m) against the idle share of a GPipe schedule counted slot by slot."""
    cases = [(1, 1), (1, 7), (2, 1), (4, 1), (4, 4), (4, 6), (8, 3), (8, 32), (16, 64), (3, 100)]
    for p, m in cases:
        expected = gpipe_idle_fraction(p, m)
        got = as_number(bubble_fraction(p, m), f"bubble_fraction({p}, {m})")
        if math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12):
            continue
        hints = {(p - 1) / m: "that is the bubble relative to the busy time; the question is the share of all "
                              "the time, busy or idle",
                 (p - 1) / (m + p): "count the slots: the last stage starts after p - 1 slots, so m + p - 1 in all",
                 1 / p: "the bubble shrinks as micro-batches are added: m must appear",
                 (p - 1) / (p * m): "count the slots of one stage: m busy ones and p - 1 idle ones"}
        hint = next((h for value, h in hints.items() if math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12)),
                    "draw the schedule for a few p and m and count the idle slots of one stage")
        raise ExerciseFailed(f"bubble_fraction(p={p}, m={m}) gave {got:.4f}; the schedule is idle {expected:.4f} "
                             f"of the time: {hint}.")
    return f"{len(cases)} (stages, micro-batches) pairs, from 1 stage to 16, match the counted GPipe schedule."
