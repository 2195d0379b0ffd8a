"""Chapter 06's graded exercises: a right answer passes, typical mistakes fail, the stub is not attempted."""

from __future__ import annotations

import pytest

from minillm.exercises import ExerciseFailed, check
from minillm.memory import block_activation_bytes, count_parameters

# -- 6.1 bytes per rank under DDP and ZeRO -----------------------------------------------


def states_right(config, strategy, world_size, param_bytes=4, grad_bytes=4, optimizer_bytes=8):
    n = count_parameters(config)
    stage = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[strategy]
    return (n * param_bytes / (world_size if stage >= 3 else 1) + n * grad_bytes / (world_size if stage >= 2 else 1)
            + n * optimizer_bytes / (world_size if stage >= 1 else 1))


def states_zero2_keeps_grads(config, strategy, world_size, param_bytes=4, grad_bytes=4, optimizer_bytes=8):
    # ZeRO-2 taken for ZeRO-1: the gradients are never sharded
    if strategy == "zero2":
        strategy = "zero1"
    return states_right(config, strategy, world_size, param_bytes, grad_bytes, optimizer_bytes)


def states_always_16(config, strategy, world_size, param_bytes=4, grad_bytes=4, optimizer_bytes=8):
    # ignores the byte layout passed in: 4 + 4 + 8 always
    return states_right(config, strategy, world_size)


def states_zero3_forgets_params(config, strategy, world_size, param_bytes=4, grad_bytes=4, optimizer_bytes=8):
    # FSDP written as "zero3" only: the alias "fsdp" falls back to no sharding
    if strategy == "fsdp":
        strategy = "ddp"
    return states_right(config, strategy, world_size, param_bytes, grad_bytes, optimizer_bytes)


def test_6_1_right_answer_passes():
    assert check("6.1", states_right) is True


@pytest.mark.parametrize("wrong", [states_zero2_keeps_grads, states_always_16, states_zero3_forgets_params],
                         ids=lambda f: f.__name__)
def test_6_1_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed, match="6.1"):
        check("6.1", wrong)


def test_6_1_hint_names_the_stage():
    with pytest.raises(ExerciseFailed, match="stage 1"):
        check("6.1", states_zero2_keeps_grads)


# -- 6.2 activations with checkpointing --------------------------------------------------


def ckpt_right(config, micro_batch, context):
    tokens, c, v = micro_batch * context, config.d_model, config.vocab_size
    inputs = config.n_layer * tokens * c * 4  # every block's fp32 input
    one_block = block_activation_bytes(config, micro_batch, context)  # the block being recomputed
    head = tokens * (c * 4 + c * 4 + 2 * 4 + v * 4)  # final norm in and out, its statistics, the log-softmax
    return inputs + one_block + head


def ckpt_no_recomputed_block(config, micro_batch, context):
    return ckpt_right(config, micro_batch, context) - block_activation_bytes(config, micro_batch, context)


def ckpt_no_head(config, micro_batch, context):
    t = micro_batch * context
    return ckpt_right(config, micro_batch, context) - t * (8 * config.d_model + 8 + 4 * config.vocab_size)


def ckpt_bf16_inputs(config, micro_batch, context):
    return ckpt_right(config, micro_batch, context) - config.n_layer * micro_batch * context * config.d_model * 2


def test_6_2_right_answer_passes():
    assert check("6.2", ckpt_right) is True


@pytest.mark.parametrize("wrong", [ckpt_no_recomputed_block, ckpt_no_head, ckpt_bf16_inputs], ids=lambda f: f.__name__)
def test_6_2_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed, match="6.2"):
        check("6.2", wrong)


# -- 6.3 the pipeline bubble -------------------------------------------------------------


def bubble_right(p, m):
    return (p - 1) / (m + p - 1)


def test_6_3_right_answer_passes():
    assert check("6.3", bubble_right) is True


WRONG_BUBBLES = {"over_busy_time": lambda p, m: (p - 1) / m, "off_by_one": lambda p, m: (p - 1) / (m + p),
                 "no_m": lambda p, m: 1 / p, "p_not_p_minus_1": lambda p, m: p / (m + p - 1)}


@pytest.mark.parametrize("wrong", WRONG_BUBBLES.values(), ids=WRONG_BUBBLES.keys())
def test_6_3_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed, match="6.3"):
        check("6.3", wrong)


# -- stubs -------------------------------------------------------------------------------


def test_stubs_are_not_attempted(capsys):
    def stub(*args):
        raise NotImplementedError

    for id in ("6.1", "6.2", "6.3"):
        assert check(id, stub) is False
    assert capsys.readouterr().out.count("not attempted yet") == 3
