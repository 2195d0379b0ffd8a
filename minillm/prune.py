"""Pruning: zero the smallest weights, or remove whole heads and neurons (appendix B).

Appendix B (`B_inference_compression`) makes a trained model cheaper and
measures what that costs in quality. Pruning takes weights away; it comes in
two kinds:

* **Unstructured (magnitude) pruning** zeroes the individual weights with the
  smallest |w| in the blocks' linear layers (`qkv`, `proj`, the MLP's
  `fc`/`proj` or `gate`/`up`/`down`; never embeddings, norms or biases).
  `magnitude_masks` picks them, one threshold over all those matrices
  (`scope="global"`) or the same fraction in each (`scope="layer"`);
  `apply_masks` zeroes them and `sparsity` measures the fraction of zeros. The
  matrices keep their shape: the zeros save time or memory only with sparse
  kernels or formats, and what it shows is how much quality survives. To keep
  the zeros while the model trains on (a recovery fine-tune), `hold_masks`
  re-applies the masks after every step of an optimizer (the optimizer's moments
  and weight decay would otherwise move them); a loop that builds its own
  optimizer, such as `minillm.distill.distill`, takes
  `after_step=lambda step: apply_masks(model, masks)`.
* **Structured pruning** removes whole attention heads and MLP neurons, so the
  matrices become physically smaller. Which ones go is decided by an importance
  score (`head_importance`, `neuron_importance`): each head's output (and each
  neuron's activation) is multiplied by a gate xi = 1, and the importance is the
  mean over sequences of |dL/dxi| = |sum over positions and dims of activation x
  gradient|, the first-order estimate of how much the loss changes if the unit
  is removed (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better than
  One?", for heads; the same Taylor criterion for neurons).
  `prune_heads` / `prune_neurons` shrink one attention / MLP module;
  `prune_structured` shrinks a whole `GPT`.

**The pruned model's shape.** `GPTConfig` has one `n_head` and one `d_ff` for
all layers, so `prune_structured` keeps the *same number* of heads and neurons
in every layer (which ones differ per layer). Then the result is a plain `GPT`
of `GPTConfig(..., d_ff=kept neurons, n_head=kept heads)`, saved with
`save_model_folder` and read back with `load_model` like any other. A kept head
keeps its size D (and its weights), so with fewer heads H' D < d_model: the
pruned config stores D in `GPTConfig.d_head`. Heads are removed from multi-head attention only
(n_kv_head == n_head); with grouped-query attention a query head shares its key
and value head with others.

Shapes: H heads of size D, d_ff neurons, L layers; masks have their weight's shape.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from minillm.attention import CausalSelfAttention
from minillm.errors import ConfigError, DataError
from minillm.model import GPT, GPTConfig

SCOPES = ("global", "layer")

# ---------------------------------------------------------------------------
# Unstructured: magnitude pruning
# ---------------------------------------------------------------------------


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """{name: weight} of every linear layer inside `model.blocks` (not embeddings, norms, biases, head)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ConfigError(f"{type(model).__name__} has no `blocks`; pruning works on minillm's GPT-style models")
    return {f"blocks.{name}.weight": m.weight for name, m in blocks.named_modules() if isinstance(m, nn.Linear)}


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """{weight name: bool mask, True = keep} that zero the fraction `sparsity` of smallest |w|.

    `scope="global"`: one ranking over all prunable weights together (layers
    with many small weights lose more); `"layer"`: round(sparsity * numel) of
    each matrix. Exactly that many weights are masked: the k smallest by |w|
    (ties broken arbitrarily), so every masked |w| <= the k-th smallest <= every
    kept one.
    """
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {SCOPES}, got {scope!r}")
    weights = {name: w.detach() for name, w in prunable_weights(model).items()}
    if scope == "layer":
        return {name: _keep_largest(w.abs().flatten(), sparsity).view_as(w) for name, w in weights.items()}
    flat = torch.cat([w.abs().flatten().float() for w in weights.values()])  # (N,) all prunable weights
    keep = _keep_largest(flat, sparsity).split([w.numel() for w in weights.values()])
    return {name: k.view_as(w) for (name, w), k in zip(weights.items(), keep)}


def _keep_largest(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool (N,): False for the round(sparsity * N) smallest entries, True elsewhere."""
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    k = round(sparsity * magnitudes.numel())
    if k:
        keep[torch.topk(magnitudes, k, largest=False).indices] = False
    return keep


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero, in place, every weight whose mask entry is False (masks from `magnitude_masks`)."""
    weights = prunable_weights(model)
    for name, mask in masks.items():
        if name not in weights:
            raise ConfigError(f"mask for {name!r}, which is not a prunable weight of this model")
        if mask.shape != weights[name].shape or mask.dtype != torch.bool:
            raise ConfigError(f"mask for {name} must be bool of shape {tuple(weights[name].shape)}, "
                              f"got {mask.dtype} {tuple(mask.shape)}")  # fmt: skip
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].masked_fill_(~mask.to(weights[name].device), 0.0)


def hold_masks(optimizer: torch.optim.Optimizer, model: nn.Module, masks: dict[str, torch.Tensor]) -> RemovableHandle:
    """Keep the masked weights at zero while `model` trains: `apply_masks` after every `optimizer.step()`.

    Returns the hook's handle; `handle.remove()` lets the weights move again.
    """
    apply_masks(model, masks)  # checks the masks now, not at the first step
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: apply_masks(model, masks))


def sparsity(model: nn.Module) -> float:
    """The fraction of exact zeros among the prunable weights (`prunable_weights`)."""
    weights = prunable_weights(model).values()
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))


# ---------------------------------------------------------------------------
# Structured: which heads and neurons matter
# ---------------------------------------------------------------------------


def _mlp_out(mlp: nn.Module) -> nn.Linear:
    """The MLP's last linear layer, whose input is the d_ff neurons: `proj` (GELU) or `down` (gated)."""
    return mlp.proj if hasattr(mlp, "proj") else mlp.down


def _gate_scores(model: GPT, batches: Iterable, sites: list[nn.Linear], units: int) -> torch.Tensor:
    """(len(sites), units): mean over sequences of |dL/dxi| for a gate xi = 1 on each unit of each site's input.

    A site's input (B, T, units * size) is viewed as (B, T, units, size) and
    multiplied by a gate (B, 1, units, 1) of ones, so dL/dxi[b, u] is the sum of
    activation x gradient over the positions and dims of unit u in sequence b.
    L of a sequence is its mean token cross-entropy.
    """
    gates: dict[int, torch.Tensor] = {}

    def gate_hook(i: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            (x,) = args
            b, t, _ = x.shape
            gates[i] = torch.ones(b, 1, units, 1, device=x.device, dtype=x.dtype, requires_grad=True)
            return ((x.view(b, t, units, -1) * gates[i]).view(b, t, -1),)

        return hook

    handles = [site.register_forward_pre_hook(gate_hook(i)) for i, site in enumerate(sites)]
    scores = torch.zeros(len(sites), units, dtype=torch.float64)
    sequences, was_training = 0, model.training
    model.eval()  # no dropout while measuring
    try:
        for x, y in batches:
            _, loss = model(x, y)  # mean over B * T tokens
            grads = torch.autograd.grad(loss * x.size(0), [gates[i] for i in range(len(sites))])  # sum of B means
            scores += torch.stack([g.detach().abs().sum(0).flatten().double().cpu() for g in grads])
            sequences += x.size(0)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not sequences:
        raise DataError("no batches given: importance needs at least one (x, y) batch of token ids")
    return (scores / sequences).float()


def head_importance(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Importance (L, H) of every attention head: E over sequences of |dL/dxi_h| (Michel et al. 2019).

    `batches` yields (x, y) token ids (B, T) and targets (B, T) (e.g. from
    `minillm.tokens.get_batch`). Parameters' `.grad` are left untouched.
    """
    sites = [block.attn.proj for block in model.blocks]  # input (B, T, H D): the heads' outputs side by side
    return _gate_scores(model, batches, sites, model.config.n_head)


def neuron_importance(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Importance (L, d_ff) of every MLP neuron: E over sequences of |sum over positions of activation x gradient|."""
    sites = [_mlp_out(block.mlp) for block in model.blocks]  # input (B, T, d_ff)
    return _gate_scores(model, batches, sites, model.config.ff_width)


def keep_most_important(scores: torch.Tensor, fraction: float) -> dict[int, list[int]]:
    """{layer: sorted indices} of the round(fraction * N) highest scores in each row of `scores` (L, N)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ConfigError(f"the fraction to keep must be in (0, 1], got {fraction!r}")
    count = round(fraction * scores.size(1))
    if count < 1:
        raise ConfigError(f"keeping {fraction} of {scores.size(1)} leaves 0 in each layer; keep at least one")
    return {layer: sorted(row.topk(count).indices.tolist()) for layer, row in enumerate(scores)}


# ---------------------------------------------------------------------------
# Structured: removing them
# ---------------------------------------------------------------------------


def _fresh(module_class: type, *args) -> nn.Module:
    """A new module, built without touching the global random state (its weights are overwritten anyway)."""
    with torch.random.fork_rng(devices=[]):
        return module_class(*args)


def prune_heads(attn: CausalSelfAttention, keep: list[int]) -> CausalSelfAttention:
    """A new attention module with only the heads `keep` (multi-head attention, H == Hkv).

    qkv: ((H + 2H) D, C) -> (3 H' D, C), the q, k and v rows of each kept head;
    proj: (C, H D) -> (C, H' D), its columns. The head size D stays, so the
    config gets `d_head = D`. Its output equals the original's with the removed
    heads' outputs set to zero.
    """
    h, d = attn.n_head, attn.head_dim
    if attn.n_kv_head != h:
        raise ConfigError(f"heads can be removed only from multi-head attention; this layer has {h} query heads "
                          f"sharing {attn.n_kv_head} key/value heads (grouped-query attention)")  # fmt: skip
    _check_keep(keep, h, "heads")
    within = (torch.tensor(keep)[:, None] * d + torch.arange(d)).flatten()  # (H' D,) rows of q
    rows = torch.cat([within, h * d + within, 2 * h * d + within])  # q, k, v rows of the kept heads
    config = dataclasses.replace(attn.config, n_head=len(keep), n_kv_head=None, d_head=d)
    state = attn.state_dict()
    state["qkv.weight"] = state["qkv.weight"][rows]
    if "qkv.bias" in state:
        state["qkv.bias"] = state["qkv.bias"][rows]
    state["proj.weight"] = state["proj.weight"][:, within]
    w = attn.qkv.weight
    new = _fresh(CausalSelfAttention, config).to(device=w.device, dtype=w.dtype)
    new.load_state_dict(state)
    return new.train(attn.training)


def prune_neurons(mlp: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of an MLP (`MLP`: fc/proj, or `GatedMLP`: gate/up/down) with only the neurons `keep`.

    The input-side layers (d_ff, C) keep the rows `keep`, the output layer
    (C, d_ff) those columns: (.., d_ff) -> (.., d_ff'). Its output equals the
    original's with the removed neurons' activations set to zero.
    """
    out = _mlp_out(mlp)
    _check_keep(keep, out.in_features, "neurons")
    index = torch.tensor(keep, device=out.weight.device)
    new = copy.deepcopy(mlp)
    for name, layer in new.named_children():
        if not isinstance(layer, nn.Linear):
            continue
        rows = layer is not _mlp_out(new)  # fc, gate, up: (d_ff, C) keep rows; proj, down: (C, d_ff) columns
        layer.weight = nn.Parameter(layer.weight.detach().index_select(0 if rows else 1, index).clone())
        if rows and layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias.detach()[index].clone())
        if rows:
            layer.out_features = len(keep)
        else:
            layer.in_features = len(keep)
    return new


def _check_keep(keep: list[int], n: int, what: str) -> None:
    if not isinstance(keep, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in keep):
        raise ConfigError(f"{what} to keep must be a list of indices, got {keep!r}")
    if not keep:
        raise ConfigError(f"cannot keep 0 {what}: a layer needs at least one")
    if len(set(keep)) != len(keep) or not all(0 <= i < n for i in keep):
        raise ConfigError(f"{what} to keep must be distinct indices in [0, {n}), got {keep}")


def _keep_lists(spec, scores: torch.Tensor | None, n_layer: int, n: int, what: str) -> list[list[int]]:
    """Per layer, the sorted indices to keep, from None (all), a fraction (with scores) or {layer: indices}."""
    if spec is None:
        return [list(range(n))] * n_layer
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if scores is None or tuple(scores.shape) != (n_layer, n):
            raise ConfigError(f"keeping a fraction of the {what} needs their importance scores of shape "
                              f"({n_layer}, {n}), got {None if scores is None else tuple(scores.shape)}")  # fmt: skip
        spec = keep_most_important(scores, spec)
    if not isinstance(spec, dict):
        raise ConfigError(f"{what} to keep must be None, a fraction or {{layer: [indices]}}, got {type(spec).__name__}")
    if set(spec) != set(range(n_layer)):
        raise ConfigError(f"{what} to keep must list every layer 0..{n_layer - 1}, got layers {sorted(spec)}")
    for layer in range(n_layer):
        _check_keep(spec[layer], n, what)
    lists = [sorted(spec[layer]) for layer in range(n_layer)]
    if len({len(keep) for keep in lists}) != 1:
        raise ConfigError(f"every layer must keep the same number of {what} (one GPTConfig for all layers), "
                          f"got {[len(keep) for keep in lists]}")  # fmt: skip
    return lists


def pruned_config(config: GPTConfig, n_head: int, d_ff: int) -> GPTConfig:
    """The `GPTConfig` of `config` with `n_head` heads of the original size and an MLP of width `d_ff`."""
    if n_head == config.n_head:
        return dataclasses.replace(config, d_ff=d_ff)
    return dataclasses.replace(config, n_head=n_head, n_kv_head=None, d_head=config.head_dim, d_ff=d_ff)


def prune_structured(
    model: GPT,
    heads_to_keep: dict[int, list[int]] | float | None = None,
    neurons_to_keep: dict[int, list[int]] | float | None = None,
    *,
    head_scores: torch.Tensor | None = None,
    neuron_scores: torch.Tensor | None = None,
) -> GPT:
    """A new, smaller `GPT` with only the kept heads and MLP neurons (`model` is not changed).

    Each of `heads_to_keep` / `neurons_to_keep` is None (keep all), {layer:
    [indices]} for every layer, or a fraction in (0, 1] that keeps the
    round(fraction * N) most important per layer by `head_scores` (L, H) /
    `neuron_scores` (L, d_ff) (from `head_importance` / `neuron_importance`).
    Every layer keeps the same number (see the module docstring). Its logits
    equal the original's with the removed heads' outputs and neurons'
    activations zeroed; with nothing removed, they are identical.
    """
    if not isinstance(model, GPT):
        raise ConfigError(f"prune_structured takes a minillm GPT, got {type(model).__name__}")
    c = model.config
    heads = _keep_lists(heads_to_keep, head_scores, c.n_layer, c.n_head, "heads")
    neurons = _keep_lists(neurons_to_keep, neuron_scores, c.n_layer, c.ff_width, "neurons")
    if len(heads[0]) < c.n_head and c.kv_heads != c.n_head:
        raise ConfigError(f"heads can be removed only from multi-head attention; this model has {c.n_head} "
                          f"query heads sharing {c.kv_heads} key/value heads (grouped-query attention)")  # fmt: skip
    config = pruned_config(c, len(heads[0]), len(neurons[0]))
    pruned = copy.deepcopy(model)  # embeddings, norms and head as they are (a tied head stays tied)
    pruned.config = config
    for block, keep_heads, keep_neurons in zip(pruned.blocks, heads, neurons):
        if len(keep_heads) < c.n_head:
            block.attn = prune_heads(block.attn, keep_heads)
        if len(keep_neurons) < c.ff_width:
            block.mlp = prune_neurons(block.mlp, keep_neurons)
    return pruned
