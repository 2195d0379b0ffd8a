"""Tests of minillm.prune: magnitude masks (global and per layer), keeping zeros, head/neuron importance,
structured pruning (removing = masking in the original), saving and loading the pruned model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from minillm.checkpoint import load_model, save_model_folder
from minillm.errors import ConfigError, DataError
from minillm.model import GPT, GPTConfig
from minillm.prune import (
    apply_masks,
    head_importance,
    hold_masks,
    keep_most_important,
    magnitude_masks,
    neuron_importance,
    prunable_weights,
    prune_heads,
    prune_neurons,
    prune_structured,
    pruned_config,
    sparsity,
)
from minillm.tokenizer import CharTokenizer

BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


def tiny(**kw) -> GPT:
    config = GPTConfig(**{"vocab_size": 64, "context_length": 32, "d_model": 32, "n_layer": 2, "n_head": 4, **kw})
    return GPT(config).eval()


def batches(n: int = 3, b: int = 4, t: int = 16, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        xy = torch.randint(0, 64, (b, t + 1), generator=g)
        out.append((xy[:, :-1], xy[:, 1:]))
    return out


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


# ---------------------------------------------------------------------------
# Unstructured
# ---------------------------------------------------------------------------


def test_prunable_weights_are_the_block_linear_weights_only():
    model = tiny()
    names = set(prunable_weights(model))
    assert names == {f"blocks.{i}.{m}.weight" for i in range(2) for m in BLOCK_LINEARS}
    swiglu = tiny(mlp="swiglu", norm="rmsnorm", bias=False)
    assert {n.split(".", 2)[2] for n in prunable_weights(swiglu)} == {
        "attn.qkv.weight", "attn.proj.weight", "mlp.gate.weight", "mlp.up.weight", "mlp.down.weight"}  # fmt: skip


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.9])
def test_global_masks_reach_the_exact_sparsity_at_the_kth_smallest_magnitude(s):
    model = tiny()
    original = {n: w.detach().abs().clone() for n, w in prunable_weights(model).items()}
    everything = torch.cat([w.flatten() for w in original.values()])
    masks = magnitude_masks(model, s, scope="global")
    k = round(s * everything.numel())
    assert sum(int((~m).sum()) for m in masks.values()) == k
    apply_masks(model, masks)
    assert sparsity(model) == k / everything.numel()
    if k:
        threshold = torch.kthvalue(everything, k).values  # computed independently
        pruned = torch.cat([original[n][~m] for n, m in masks.items()])
        kept = torch.cat([original[n][m] for n, m in masks.items()])
        assert pruned.max() <= threshold < kept.min()
        # one threshold, not one fraction each: the matrices lose different fractions
        fractions = [float((~m).float().mean()) for m in masks.values()]
        assert max(fractions) - min(fractions) > 0.05


def test_global_threshold_against_an_independent_kthvalue():
    torch.manual_seed(3)
    model = tiny()
    original = {n: w.detach().clone() for n, w in prunable_weights(model).items()}
    everything = torch.cat([w.abs().flatten() for w in original.values()])
    k = round(0.4 * everything.numel())
    threshold = torch.kthvalue(everything, k).values
    masks = magnitude_masks(model, 0.4)
    for name, w in original.items():
        assert torch.equal(masks[name], w.abs() > threshold)  # no ties among random floats


@pytest.mark.parametrize("s", [0.25, 0.6])
def test_layer_scope_prunes_the_same_fraction_of_every_matrix(s):
    model = tiny()
    original = {n: w.detach().clone() for n, w in prunable_weights(model).items()}
    masks = magnitude_masks(model, s, scope="layer")
    apply_masks(model, masks)
    for name, w in prunable_weights(model).items():
        k = round(s * w.numel())
        assert int((w == 0).sum()) == k
        threshold = torch.kthvalue(original[name].abs().flatten(), k).values
        assert torch.equal(masks[name], original[name].abs() > threshold)


def test_apply_masks_zeroes_only_the_masked_weights_and_leaves_the_rest():
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    masks = magnitude_masks(model, 0.5)
    apply_masks(model, masks)
    after = model.state_dict()
    for name, value in before.items():
        if name in masks:
            assert torch.equal(after[name], torch.where(masks[name], value, torch.zeros_like(value)))
        else:
            assert torch.equal(after[name], value), name  # embeddings, norms, biases untouched


def test_hold_masks_keeps_zeros_through_optimizer_steps_and_a_control_does_not():
    from minillm.optim import make_optimizer

    def train(model, hold: bool) -> None:
        masks = magnitude_masks(model, 0.5)
        apply_masks(model, masks)
        opt = make_optimizer(model, lr=1e-2)
        handle = hold_masks(opt, model, masks) if hold else None
        model.train()
        for x, y in batches():
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert sparsity(model) == pytest.approx(0.5, abs=1e-3) if hold else sparsity(model) < 0.01
        if handle is not None:
            handle.remove()
            _, loss = model(*batches()[0])
            loss.backward()
            opt.step()
            assert sparsity(model) < 0.01  # removed: the weights move again

    train(tiny(), hold=True)
    train(tiny(), hold=False)


def test_bad_unstructured_inputs():
    model = tiny()
    for bad in (-0.1, 1.0, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ConfigError, match="sparsity"):
            magnitude_masks(model, bad)
    with pytest.raises(ConfigError, match="scope"):
        magnitude_masks(model, 0.5, scope="row")
    masks = magnitude_masks(model, 0.5)
    with pytest.raises(ConfigError, match="not a prunable weight"):
        apply_masks(model, {"tok_emb.weight": torch.ones(64, 32, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="bool of shape"):
        apply_masks(model, {k: v.float() for k, v in masks.items()})


# ---------------------------------------------------------------------------
# Importance
# ---------------------------------------------------------------------------


def test_head_importance_is_the_gate_gradient_of_michel_et_al():
    model = tiny()
    data = batches(2)
    scores = head_importance(model, data)
    assert scores.shape == (2, 4) and (scores >= 0).all()
    assert all(p.grad is None for p in model.parameters())
    # independent reference: scale head h of layer l by a scalar gate per sequence and differentiate
    d = 32 // 4
    expected = torch.zeros(2, 4)
    for layer in range(2):
        for h in range(4):
            for x, y in data:
                for b in range(x.size(0)):
                    gate = torch.ones((), requires_grad=True)

                    def hook(module, args, gate=gate, h=h):
                        z = args[0]
                        return (torch.cat([z[..., : h * d], z[..., h * d : (h + 1) * d] * gate,
                                           z[..., (h + 1) * d :]], dim=-1),)  # fmt: skip

                    handle = model.blocks[layer].attn.proj.register_forward_pre_hook(hook)
                    _, loss = model(x[b : b + 1], y[b : b + 1])
                    handle.remove()
                    (g,) = torch.autograd.grad(loss, gate)
                    expected[layer, h] += g.abs() / 8
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)


def test_neuron_importance_is_activation_times_gradient_per_sequence():
    model = tiny(mlp="swiglu", norm="rmsnorm", bias=False, d_ff=48)
    data = batches(2)
    scores = neuron_importance(model, data)
    assert scores.shape == (2, 48)
    acts: dict[int, torch.Tensor] = {}
    handles = [b.mlp.down.register_forward_pre_hook(lambda m, a, i=i: acts.__setitem__(i, a[0]))
               for i, b in enumerate(model.blocks)]  # fmt: skip
    expected = torch.zeros(2, 48)
    for x, y in data:
        for b in range(x.size(0)):
            _, loss = model(x[b : b + 1], y[b : b + 1])
            grads = torch.autograd.grad(loss, [acts[0], acts[1]])
            for layer in range(2):
                expected[layer] += (acts[layer] * grads[layer]).sum((0, 1)).abs().detach() / 8
    for h in handles:
        h.remove()
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)


def test_keep_most_important_and_empty_batches():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [4.0, 3.0, 2.0, 1.0]])
    assert keep_most_important(scores, 0.5) == {0: [1, 2], 1: [0, 1]}
    assert keep_most_important(scores, 1.0) == {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]}
    for bad in (0.0, 0.1, 1.5, -1):
        with pytest.raises(ConfigError):
            keep_most_important(scores, bad)
    with pytest.raises(DataError, match="no batches"):
        head_importance(tiny(), [])


# ---------------------------------------------------------------------------
# Structured
# ---------------------------------------------------------------------------


def masked_heads(model: GPT, keep: dict[int, list[int]]) -> GPT:
    """The original model with the removed heads' outputs zeroed: their columns of attn.proj set to 0."""
    out = copy.deepcopy(model)
    d = model.config.d_model // model.config.n_head
    with torch.no_grad():
        for layer, block in enumerate(out.blocks):
            for h in range(model.config.n_head):
                if h not in keep[layer]:
                    block.attn.proj.weight[:, h * d : (h + 1) * d] = 0
    return out


def masked_neurons(model: GPT, keep: dict[int, list[int]]) -> GPT:
    """The original model with the removed neurons zeroed: their columns of the MLP's output layer set to 0."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer, block in enumerate(out.blocks):
            last = block.mlp.proj if hasattr(block.mlp, "proj") else block.mlp.down
            drop = [j for j in range(last.in_features) if j not in keep[layer]]
            last.weight[:, drop] = 0
    return out


def logits(model: GPT, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[0]


X = torch.randint(0, 64, (3, 20), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("kw", [{}, {"mlp": "swiglu", "norm": "rmsnorm", "bias": False, "positions": "rope"}])
def test_nothing_removed_gives_identical_logits(kw):
    model = tiny(**kw)
    pruned = prune_structured(model)
    assert torch.equal(logits(pruned, X), logits(model, X))
    everything = {0: [0, 1, 2, 3], 1: [3, 2, 1, 0]}
    pruned = prune_structured(model, heads_to_keep=everything, neurons_to_keep=1.0,
                              neuron_scores=torch.rand(2, model.config.ff_width))  # fmt: skip
    assert torch.equal(logits(pruned, X), logits(model, X))
    assert pruned.config == dataclasses.replace(model.config, d_ff=model.config.ff_width)


@pytest.mark.parametrize("kw", [{}, {"mlp": "swiglu", "norm": "rmsnorm", "bias": False, "positions": "rope"}])
def test_removing_neurons_equals_masking_them_and_shrinks_the_model(kw):
    model = tiny(**kw)
    f = model.config.ff_width
    keep = {0: list(range(0, f, 2)), 1: list(range(f // 2))}
    pruned = prune_structured(model, neurons_to_keep=keep)
    torch.testing.assert_close(logits(pruned, X), logits(masked_neurons(model, keep), X), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(pruned, X), logits(model, X), atol=1e-4)  # something was removed
    assert pruned.config.ff_width == f // 2
    linears = ("fc", "proj") if kw == {} else ("gate", "up", "down")
    removed = sum(getattr(model.blocks[0].mlp, n).weight.numel() for n in linears) // 2 * 2  # both layers
    assert model.num_parameters() - pruned.num_parameters() == removed + (2 * f // 2 if kw == {} else 0)
    for block in pruned.blocks:
        for name, layer in block.mlp.named_children():
            if isinstance(layer, torch.nn.Linear):
                assert f // 2 in (layer.in_features, layer.out_features) and f // 2 in layer.weight.shape
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in pruned.parameters())


def test_prune_heads_on_one_attention_module_equals_masking_the_heads():
    model = tiny()
    attn = model.blocks[0].attn
    x = torch.randn(2, 10, 32)
    pruned = prune_heads(attn, [1, 3])
    assert pruned.qkv.weight.shape == (3 * 2 * 8, 32) and pruned.proj.weight.shape == (32, 2 * 8)
    assert pruned.n_head == 2 and pruned.head_dim == 8
    reference = masked_heads(model, {0: [1, 3], 1: [0, 1, 2, 3]}).blocks[0].attn
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), reference(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(prune_heads(attn, [0, 1, 2, 3])(x), attn(x), atol=0, rtol=0)
    mlp = prune_neurons(model.blocks[0].mlp, [5, 0, 7])
    assert mlp.fc.weight.shape == (3, 32) and mlp.proj.weight.shape == (32, 3) and mlp.fc.out_features == 3


@pytest.mark.parametrize("kw", [{}, {"mlp": "swiglu", "norm": "rmsnorm", "bias": False, "positions": "rope"}])
def test_removing_heads_equals_masking_them_and_the_pruned_model_saves_and_loads(kw, tmp_path):
    model = tiny(**kw)
    heads = {0: [0, 2], 1: [3, 1]}
    f = model.config.ff_width
    neurons = {0: list(range(f // 4)), 1: list(range(f - f // 4, f))}
    pruned = prune_structured(model, heads_to_keep=heads, neurons_to_keep=neurons)
    reference = masked_neurons(masked_heads(model, {0: [0, 2], 1: [1, 3]}), neurons)
    torch.testing.assert_close(logits(pruned, X), logits(reference, X), atol=1e-5, rtol=0)
    c = pruned.config
    assert (c.n_head, c.d_ff, c.attention().head_dim) == (2, f // 4, 8)
    for block in pruned.blocks:
        assert block.attn.qkv.weight.shape == (3 * 2 * 8, 32) and block.attn.proj.weight.shape == (32, 16)
    assert pruned.num_parameters() < model.num_parameters()
    assert GPT(c).num_parameters() == pruned.num_parameters()  # a standard GPT of that config
    # the KV cache (generation) works with fewer heads
    cache = pruned.new_kv_cache(3)
    with torch.no_grad():
        step = torch.cat([pruned(X[:, :12], kv_cache=cache)[0], pruned(X[:, 12:], kv_cache=cache)[0]], dim=1)
    torch.testing.assert_close(step, logits(pruned, X), atol=1e-5, rtol=0)
    tokenizer = CharTokenizer([chr(ord("0") + i) for i in range(64)])
    save_model_folder(tmp_path / "pruned", pruned, tokenizer)
    loaded, _ = load_model(tmp_path / "pruned")
    assert torch.equal(logits(loaded, X), logits(pruned, X))
    assert loaded.config == c


def test_fractions_keep_the_most_important_heads_and_neurons():
    model = tiny()
    data = batches(2)
    hs, ns = head_importance(model, data), neuron_importance(model, data)
    pruned = prune_structured(model, 0.5, 0.25, head_scores=hs, neuron_scores=ns)
    assert pruned.config.n_head == 2 and pruned.config.d_ff == 32
    heads = {layer: sorted(hs[layer].topk(2).indices.tolist()) for layer in range(2)}
    neurons = {layer: sorted(ns[layer].topk(32).indices.tolist()) for layer in range(2)}
    torch.testing.assert_close(logits(pruned, X), logits(masked_neurons(masked_heads(model, heads), neurons), X),
                               atol=1e-5, rtol=0)  # fmt: skip


def test_neuron_pruned_model_saves_and_loads_as_a_standard_gpt(tmp_path):
    model = tiny()
    pruned = prune_structured(model, neurons_to_keep=0.5, neuron_scores=neuron_importance(model, batches(1)))
    tokenizer = CharTokenizer([chr(ord("0") + i) for i in range(64)])
    save_model_folder(tmp_path / "pruned", pruned, tokenizer)
    loaded, _ = load_model(tmp_path / "pruned")
    assert type(loaded) is GPT and loaded.config == pruned.config and loaded.config.d_ff == 64
    assert torch.equal(logits(loaded, X), logits(pruned, X))
    assert loaded.num_parameters() < model.num_parameters()


def test_model_is_not_changed_and_random_state_is_not_consumed():
    model = tiny()
    before = copy.deepcopy(model.state_dict())
    state = torch.random.get_rng_state()
    prune_structured(model, neurons_to_keep={0: [1, 2], 1: [3, 4]})
    prune_heads(model.blocks[0].attn, [0])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_bad_structured_inputs():
    model = tiny()
    with pytest.raises(ConfigError, match="cannot keep 0 heads"):
        prune_structured(model, heads_to_keep={0: [], 1: []})
    with pytest.raises(ConfigError, match="leaves 0"):
        prune_structured(model, heads_to_keep=0.1, head_scores=torch.rand(2, 4))
    with pytest.raises(ConfigError, match="importance scores"):
        prune_structured(model, heads_to_keep=0.5)
    with pytest.raises(ConfigError, match="every layer"):
        prune_structured(model, neurons_to_keep={0: [1, 2]})
    with pytest.raises(ConfigError, match="same number"):
        prune_structured(model, neurons_to_keep={0: [1, 2], 1: [1]})
    with pytest.raises(ConfigError, match="distinct indices"):
        prune_structured(model, neurons_to_keep={0: [1, 1], 1: [1, 2]})
    with pytest.raises(ConfigError, match="distinct indices"):
        prune_structured(model, heads_to_keep={0: [0, 4], 1: [1, 2]})
    with pytest.raises(ConfigError, match="list of indices"):
        prune_structured(model, heads_to_keep={0: "01", 1: [1, 2]})
    with pytest.raises(ConfigError, match="grouped-query"):
        prune_structured(tiny(n_kv_head=2), heads_to_keep={0: [0, 1], 1: [0, 1]})
    with pytest.raises(ConfigError, match="grouped-query"):
        prune_heads(tiny(n_kv_head=2).blocks[0].attn, [0])
    with pytest.raises(ConfigError, match="minillm GPT"):
        prune_structured(torch.nn.Linear(2, 2))


def test_pruned_config_keeps_the_head_size():
    config = tiny().config
    pruned = pruned_config(config, 2, 20)
    assert (pruned.n_head, pruned.d_head, pruned.head_dim, pruned.d_ff) == (2, config.head_dim, config.head_dim, 20)
    assert pruned_config(config, config.n_head, 20).d_head is None  # no head removed: D stays derived
