"""Chapter 07's exercise checks: right answers pass, typical mistakes fail, untouched stubs are not attempted."""

from __future__ import annotations

import pytest
import torch

from minillm.exercises import ExerciseFailed, check

# -- 7.1: read the last real token -------------------------------------------------------


def last_token(h, lengths):
    return torch.stack([h[b, int(n) - 1] for b, n in enumerate(lengths)])


def test_7_1_right_answer_passes():
    assert check("7.1", last_token) is True


@pytest.mark.parametrize("wrong", [
    lambda h, lengths: h[:, -1],                                              # reads padding
    lambda h, lengths: h[torch.arange(h.size(0)), (lengths % h.size(1))],      # off by one (wrapped to stay in range)
    lambda h, lengths: h[torch.arange(h.size(0)), lengths],                    # off by one (out of range)
    lambda h, lengths: h.mean(1),                                              # mean pooling over padding
], ids=["last-position", "off-by-one-wrapped", "off-by-one", "mean"])
def test_7_1_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("7.1", wrong)


# -- 7.2: count LoRA's parameters ----------------------------------------------------------


def lora_count(config, rank):
    d, f = config.d_model, config.ff_width
    per_block = rank * ((d + 3 * d) + (d + d) + (d + f) + (f + d))
    return config.n_layer * per_block


def test_7_2_right_answer_passes():
    assert check("7.2", lora_count) is True


@pytest.mark.parametrize("wrong", [
    lambda c, r: c.n_layer * r * ((c.d_model + 3 * c.d_model) + 2 * c.d_model),              # attention only
    lambda c, r: c.n_layer * r * (4 * c.d_model + 2 * c.d_model + 2 * (c.d_model + 4 * c.d_model)),  # 4 d, not ff_width
    lambda c, r: c.n_layer * r * (2 * c.d_model + 2 * c.d_model + 2 * (c.d_model + c.ff_width)),     # qkv as d -> d
    lambda c, r: r * (4 * c.d_model + 2 * c.d_model + 2 * (c.d_model + c.ff_width)),         # one block only
    lambda c, r: float(lora_count(c, r)),                                                    # not an int
], ids=["attention-only", "4d-mlp", "qkv-square", "one-block", "float"])
def test_7_2_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("7.2", wrong)


# -- 7.3: merge an adapter -----------------------------------------------------------------


def merged_weight(layer):
    with torch.no_grad():
        return layer.base.weight + (layer.alpha / layer.rank) * torch.einsum("or,ri->oi", layer.lora_B, layer.lora_A)


def _merge_in_place(layer):
    layer.merge()
    return layer.base.weight


def test_7_3_right_answer_passes():
    assert check("7.3", merged_weight) is True


@pytest.mark.parametrize("wrong", [
    lambda layer: layer.base.weight + layer.lora_B @ layer.lora_A,                              # no alpha / r
    lambda layer: layer.base.weight + layer.rank / layer.alpha * (layer.lora_B @ layer.lora_A),  # r / alpha
    lambda layer: layer.base.weight + layer.scaling * (layer.lora_A.T @ layer.lora_B.T),         # transposed
    lambda layer: layer.base.weight.clone(),                                                    # forgets the update
    _merge_in_place,                                                                            # changes the layer
], ids=["no-scale", "inverse-scale", "transposed", "no-update", "in-place"])
def test_7_3_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("7.3", wrong)


# -- 7.4: collate an instruction batch -----------------------------------------------------


def collate(batch, pad_id, max_length, prompt_shift=1, target_pad=-100, cut=True):
    rows = []
    for ids, n_prompt in batch:
        x, y = ids[:-1], ids[1:]
        y = [-100 if i < n_prompt - prompt_shift else t for i, t in enumerate(y)]
        if cut:
            x, y = x[:max_length], y[:max_length]
        rows.append((x, y))
    T = max(len(x) for x, _ in rows)
    idx = torch.tensor([x + [pad_id] * (T - len(x)) for x, _ in rows], dtype=torch.long)
    targets = torch.tensor([y + [target_pad] * (T - len(y)) for _, y in rows], dtype=torch.long)
    return {"idx": idx, "targets": targets}


def test_7_4_right_answer_passes():
    assert check("7.4", collate) is True


@pytest.mark.parametrize("wrong", [
    lambda b, p, m: collate(b, p, m, prompt_shift=0),             # masks the first response target too
    lambda b, p, m: collate(b, p, m, target_pad=p),               # pads targets with the pad id: padding is graded
    lambda b, p, m: collate(b, p, m, cut=False),                  # ignores the context
    lambda b, p, m: {k: v.float() for k, v in collate(b, p, m).items()},  # not token ids
], ids=["mask-off-by-one", "pad-targets", "no-cut", "float"])
def test_7_4_wrong_answers_fail(wrong):
    with pytest.raises(ExerciseFailed):
        check("7.4", wrong)


# -- untouched stubs -----------------------------------------------------------------------


@pytest.mark.parametrize("id", ["7.1", "7.2", "7.3", "7.4"])
def test_stubs_are_not_attempted(id, capsys):
    def stub(*args):
        raise NotImplementedError

    assert check(id, stub) is False
    assert "not attempted yet" in capsys.readouterr().out
