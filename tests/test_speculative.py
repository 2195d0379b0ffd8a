"""Tests of minillm.speculative: greedy identity, the output distribution, counters, errors.

The distribution tests enumerate a tiny target's exact distribution over its
first two new tokens (8 x 8 = 64 outcomes), draw speculative samples, and apply a
chi-square goodness-of-fit test at alpha = 0.001; the same test must reject
samples drawn from the draft alone, so it has the power to see a wrong rule.
"""

from __future__ import annotations

import copy

import pytest
import torch

from minillm.errors import ConfigError
from minillm.generate import filter_logits, generate
from minillm.model import GPT, GPTConfig
from minillm.speculative import SpeculativeResult, expected_tokens_per_call, speculative_generate

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest on a shared CPU

ALPHA = 0.001


def tiny(seed: int, vocab_size: int = 64, init_std: float = 0.2, **overrides) -> GPT:
    """A random GPT in eval mode; a larger init_std than GPT-2's gives peaky, varied distributions."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=vocab_size, context_length=64, d_model=32, n_layer=2, n_head=4, init_std=init_std)
    return GPT(GPTConfig(**{**fields, **overrides})).eval()


def perturbed(model: GPT, scale: float, seed: int) -> GPT:
    """A copy of `model` with Gaussian noise (scale x each tensor's std) added to every weight."""
    draft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return draft


def always_guesses(token: int, vocab_size: int = 64) -> GPT:
    """A draft whose next-token distribution is (nearly) all on `token`, whatever it reads."""
    draft = tiny(5, vocab_size, tie_embeddings=False)
    with torch.no_grad():
        draft.norm_f.weight.zero_()  # the final LayerNorm outputs its bias: all ones
        draft.norm_f.bias.fill_(1.0)
        draft.lm_head.weight.zero_()
        draft.lm_head.weight[token] = 1.0  # logit 32 for `token`, 0 for the rest
    return draft


# ---------------------------------------------------------------------------
# Greedy decoding: token for token the target's own greedy output
# ---------------------------------------------------------------------------

PROMPTS = [[7], [1, 2, 3, 4, 5], [60, 3, 3, 9, 41, 0, 12, 12, 5, 33, 2, 18]]
NEW = 16


@pytest.fixture(scope="module")
def target() -> GPT:
    return tiny(0)


@pytest.fixture(scope="module")
def greedy_refs(target) -> list[torch.Tensor]:
    """Plain greedy decoding with the target alone, one reference per prompt."""
    return [generate(target, torch.tensor([p]), NEW, temperature=0) for p in PROMPTS]


@pytest.fixture(scope="module")
def drafts(target, greedy_refs) -> dict[str, GPT]:
    written = set().union(*(ref[0, len(p) :].tolist() for p, ref in zip(PROMPTS, greedy_refs)))
    never = min(set(range(64)) - written)  # a token the target never writes greedily
    return {
        "perturbed": perturbed(target, 0.3, seed=1),  # agrees often, not always
        "other": tiny(3, d_model=16, n_layer=1, n_head=2, positions="rope"),  # another shape and positions
        "disagrees": always_guesses(never),
        "identical": target,  # the very same model
    }


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("which", ["perturbed", "other", "disagrees", "identical"])
def test_greedy_is_token_for_token_the_targets_greedy_output(target, drafts, greedy_refs, which, k):
    accepted = proposed = 0
    for prompt, ref in zip(PROMPTS, greedy_refs):
        result = speculative_generate(target, drafts[which], torch.tensor([prompt]), NEW, k=k, temperature=0)
        assert torch.equal(result.tokens, ref), (which, k, prompt)
        accepted, proposed = accepted + result.accepted, proposed + result.proposed
    assert proposed > 0
    if which == "disagrees":
        assert accepted == 0  # every round ends at its first guess with the target's argmax
    elif which == "identical":
        assert accepted == proposed
    elif which == "perturbed":
        assert 0 < accepted < proposed  # the test is not trivial: some guesses kept, some thrown away


@torch.no_grad()
def greedy_without_caches(target: GPT, draft: GPT, prompt: torch.Tensor, new: int, k: int) -> tuple:
    """Greedy speculative decoding written plainly, every forward pass over the whole sequence (no KV cache).

    Returns (tokens (1, T + new), accepted, target calls): an independent check of the caches' rewinding.
    """
    tokens, accepted, calls, total = prompt, 0, 0, prompt.size(1) + new
    while tokens.size(1) < total:
        n, length = min(k, total - tokens.size(1) - 1), tokens.size(1)
        seq = tokens
        for _ in range(n):
            seq = torch.cat([seq, draft(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
        best = target(seq)[0][0, length - 1 :].argmax(-1)  # (n + 1,)
        kept = 0
        while kept < n and seq[0, length + kept] == best[kept]:
            kept += 1
        tokens = torch.cat([seq[:, : length + kept], best[kept].view(1, 1)], dim=1)
        accepted, calls = accepted + kept, calls + 1
    return tokens, accepted, calls


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("which", ["perturbed", "other"])
def test_rewound_caches_give_the_guesses_of_a_cache_free_run(target, drafts, which, k):
    prompt = torch.tensor([PROMPTS[2]])
    tokens, accepted, calls = greedy_without_caches(target, drafts[which], prompt, NEW, k)
    result = speculative_generate(target, drafts[which], prompt, NEW, k=k, temperature=0)
    assert torch.equal(result.tokens, tokens)
    assert (result.accepted, result.target_calls) == (accepted, calls)  # same guesses: the draft's cache is right


def test_identical_draft_keeps_every_guess_and_writes_k_plus_1_tokens_per_target_call(target):
    prompt = torch.tensor([PROMPTS[1]])
    for k in (1, 3, 4):
        new = 3 * (k + 1)
        for temperature in (0.0, 1.0):
            g = torch.Generator().manual_seed(k)
            result = speculative_generate(target, target, prompt, new, k=k, temperature=temperature, generator=g)
            assert result.acceptance_rate == 1.0
            assert result.tokens_per_target_call == k + 1
            assert (result.target_calls, result.proposed, result.draft_calls) == (3, 3 * k, 3 * k)
            assert result.tokens.shape == (1, prompt.size(1) + new)


# ---------------------------------------------------------------------------
# Sampling: the output follows the target's distribution (chi-square test)
# ---------------------------------------------------------------------------

V = 8
PROMPT = torch.tensor([[1, 2, 3]])


@torch.no_grad()
def first_two(model: GPT, **filters) -> torch.Tensor:
    """The model's exact distribution over its first two new tokens after PROMPT, (V * V,), index t1 * V + t2."""
    p1 = filter_logits(model(PROMPT)[0][0, -1], **filters)  # (V,)
    rows = torch.cat([PROMPT.repeat(V, 1), torch.arange(V)[:, None]], dim=1)  # (V, T + 1): PROMPT + each t1
    p2 = filter_logits(model(rows)[0][:, -1], **filters)  # (V, V): row t1 is p(t2 | PROMPT, t1)
    return (p1[:, None] * p2).flatten().double()


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of observed `counts` against `probs`.

    Cells expected fewer than 5 times are pooled into one bin; a sample in a cell of
    probability 0 is impossible under `probs`: statistic inf, p-value 0. The p-value
    is the chi-square survival function, the regularized upper incomplete gamma
    function Q(df / 2, statistic / 2).
    """
    if counts[probs == 0].sum() > 0:
        return float("inf"), 0, 0.0
    expected = counts.sum() * probs
    small = (expected < 5) & (probs > 0)
    obs = torch.cat([counts[expected >= 5].double(), counts[small].sum().double()[None]])
    exp = torch.cat([expected[expected >= 5], expected[small].sum()[None]])
    obs, exp = obs[exp > 0], exp[exp > 0]
    stat, df = float(((obs - exp) ** 2 / exp).sum()), exp.numel() - 1
    p_value = float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2)))
    return stat, df, p_value


def test_chi_square_p_value_matches_tables():
    # critical values of the chi-square distribution at alpha 0.001 and 0.05 (any statistics table)
    for df, critical, alpha in [(1, 10.828, 0.001), (10, 29.588, 0.001), (30, 59.703, 0.001), (8, 15.507, 0.05)]:
        q = torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(critical / 2))
        assert abs(float(q) - alpha) < 1e-3 * alpha + 1e-6
    counts, probs = torch.tensor([30, 30, 40]), torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    assert chi_square(counts, probs) == (0.0, 2, 1.0)
    assert chi_square(torch.tensor([1, 99]), torch.tensor([0.0, 1.0], dtype=torch.float64))[2] == 0.0


@pytest.mark.parametrize(
    "filters, k, n",
    [({}, 2, 500), ({"top_k": 3}, 3, 500)],  # k = 3 with 3 new tokens: 2 guesses in the first round
    ids=["plain", "top_k=3"],
)
def test_samples_follow_the_targets_distribution_and_the_test_can_tell_the_draft_apart(filters, k, n):
    target = tiny(0, V, init_std=0.3, n_layer=1)
    draft = perturbed(target, 0.3, seed=1)  # acceptance about 0.35-0.45
    p_target, p_draft = first_two(target, **filters), first_two(draft, **filters)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(V * V, dtype=torch.long)
    accepted = proposed = 0
    for _ in range(n):  # 3 new tokens, so the first round proposes 2 and may reject either
        result = speculative_generate(target, draft, PROMPT, 3, k=k, generator=g, **filters)
        counts[result.tokens[0, 3] * V + result.tokens[0, 4]] += 1
        accepted, proposed = accepted + result.accepted, proposed + result.proposed
    assert 0.2 < accepted / proposed < 0.8  # both accepting and rejecting are exercised
    stat, df, p_value = chi_square(counts, p_target)
    assert p_value > ALPHA, f"speculative samples do not follow the target: chi2 {stat:.1f}, df {df}, p {p_value:.2g}"
    # power: as many samples from the draft alone are rejected by the same test
    from_draft = torch.bincount(torch.multinomial(p_draft.float(), n, replacement=True, generator=g), minlength=V * V)
    stat, df, p_value = chi_square(from_draft, p_target)
    assert p_value < ALPHA, f"the test cannot tell the draft from the target: chi2 {stat:.1f}, df {df}"
    inside = p_target > 0  # with top-k, draft samples also fall outside the target's support: rejected at once,
    if not inside.all():  # so test the draft's samples inside it against the target's renormalized there too
        stat, df, p_value = chi_square(from_draft[inside], p_target[inside] / p_target[inside].sum())
        assert p_value < ALPHA, f"inside the target's support the test cannot tell them apart: chi2 {stat:.1f}"


def test_sampling_respects_top_k_and_top_p_and_is_reproducible(target, drafts):
    prompt = torch.tensor([PROMPTS[1]])
    runs = []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        runs.append(speculative_generate(target, drafts["perturbed"], prompt, 30, k=3, top_k=2, generator=g))
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert runs[0].proposed == runs[1].proposed and runs[0].accepted == runs[1].accepted
    tokens = runs[0].tokens
    logits, _ = target(tokens[:, :-1])  # (1, L - 1, V): the target's logits before each token
    top2 = logits[0, prompt.size(1) - 1 :].topk(2, dim=-1).indices  # (30, 2)
    assert (top2 == tokens[0, prompt.size(1) :, None]).any(dim=-1).all()  # every new token in the target's top 2
    g = torch.Generator().manual_seed(0)  # top_p near 0: only the most likely token survives -> greedy
    nucleus = speculative_generate(target, drafts["other"], prompt, NEW, k=2, top_p=1e-6, generator=g)
    assert torch.equal(nucleus.tokens, generate(target, prompt, NEW, temperature=0))


# ---------------------------------------------------------------------------
# Counters, context length, modes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5])
def test_counters_are_consistent(target, drafts, k):
    prompt = torch.tensor([PROMPTS[0]])
    g = torch.Generator().manual_seed(k)
    result = speculative_generate(target, drafts["perturbed"], prompt, 25, k=k, temperature=0.8, generator=g)
    assert isinstance(result, SpeculativeResult)
    assert result.tokens.shape == (1, 26)
    assert 25 == result.accepted + result.target_calls  # each target call: kept guesses + one of its own
    assert 0 <= result.accepted <= result.proposed == result.draft_calls <= k * result.target_calls
    assert result.acceptance_rate == result.accepted / result.proposed
    assert result.tokens_per_target_call == 25 / result.target_calls
    assert 1 <= result.tokens_per_target_call <= k + 1


def test_zero_new_tokens_and_a_full_context(target, drafts):
    prompt = torch.tensor([PROMPTS[2]])
    none = speculative_generate(target, drafts["perturbed"], prompt, 0)
    assert torch.equal(none.tokens, prompt) and none.tokens is not prompt
    assert (none.proposed, none.target_calls, none.acceptance_rate, none.tokens_per_target_call) == (0, 0, 0.0, 0.0)
    one = speculative_generate(target, drafts["perturbed"], prompt, 1, k=4, temperature=0)  # no room for guesses
    assert (one.proposed, one.target_calls) == (0, 1)
    fill = 64 - prompt.size(1)  # prompt + new tokens exactly fill the context
    full = speculative_generate(target, drafts["perturbed"], prompt, fill, k=5, temperature=0)
    assert torch.equal(full.tokens, generate(target, prompt, fill, temperature=0))


def test_training_flags_are_restored():
    target, draft = tiny(0, dropout=0.1), tiny(1, dropout=0.1)
    target.train()
    result = speculative_generate(target, draft, torch.tensor([PROMPTS[1]]), 10, k=3, temperature=0)
    assert target.training and not draft.training  # each back to what it was
    target.eval()  # dropout was off during the run: the output is the deterministic greedy one
    assert torch.equal(result.tokens, generate(target, torch.tensor([PROMPTS[1]]), 10, temperature=0))


def test_expected_tokens_per_call():
    assert expected_tokens_per_call(0.0, 4) == 1.0
    assert expected_tokens_per_call(1.0, 4) == 5.0
    assert expected_tokens_per_call(0.5, 2) == pytest.approx(1.75)
    with pytest.raises(ConfigError, match="acceptance_rate"):
        expected_tokens_per_call(1.5, 2)
    with pytest.raises(ConfigError, match="k"):
        expected_tokens_per_call(0.5, 0)


# ---------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, match",
    [
        ({"draft": "vocab"}, r"target has vocab_size 64, the draft 32"),
        ({"draft": "short"}, r"draft's context length 16"),
        ({"k": 0}, r"k \(draft tokens proposed per round\) must be an integer >= 1, got 0"),
        ({"k": 2.0}, r"integer >= 1, got 2.0"),
        ({"k": True}, r"integer >= 1, got True"),
        ({"idx": [[1, 2], [3, 4]]}, r"batch size 1\), got a batch of 2"),
        ({"idx": [1, 2, 3]}, r"\(1, T\) tensor .* got \(3,\)"),
        ({"idx": "float"}, r"integer token ids .* torch.float32"),
        ({"idx": [[1, 99]]}, r"token ids must be in \[0, 64\)"),
        ({"max_new_tokens": -1}, r"max_new_tokens must be an integer >= 0, got -1"),
        ({"max_new_tokens": 2.5}, r"max_new_tokens .* got 2.5"),
        ({"max_new_tokens": 63}, r"plus max_new_tokens \(63\) is 65 tokens, more than the target's context length 64"),
        ({"temperature": -1.0}, r"temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, r"temperature"),
        ({"temperature": "hot"}, r"temperature"),
        ({"top_k": 0}, r"top_k must be an integer >= 1"),
        ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\]"),
    ],
)
def test_bad_inputs_raise_config_errors(target, drafts, change, match):
    args = {"draft": drafts["perturbed"], "idx": torch.tensor([[1, 2]]), "max_new_tokens": 5}
    args.update(change)
    if args["draft"] == "vocab":  # named stand-ins, built here
        args["draft"] = tiny(1, vocab_size=32)
    elif args["draft"] == "short":
        args["draft"], args["max_new_tokens"] = tiny(1, context_length=16), 20
    if isinstance(args["idx"], str):
        args["idx"] = torch.tensor([[1.0, 2.0]])
    elif isinstance(args["idx"], list):
        args["idx"] = torch.tensor(args["idx"])
    with pytest.raises(ConfigError, match=match):
        speculative_generate(target, **args)


def test_models_must_be_minillm_gpts(target):
    with pytest.raises(TypeError, match="draft model must be a minillm GPT"):
        speculative_generate(target, torch.nn.Linear(2, 2), torch.tensor([[1]]), 3)
    with pytest.raises(TypeError, match="target model must be a minillm GPT"):
        speculative_generate("gpt2", target, torch.tensor([[1]]), 3)
