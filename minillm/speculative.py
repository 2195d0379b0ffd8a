"""Speculative decoding: a small draft model writes ahead, the large target model checks (appendix B).

Taught in appendix B (`B_inference_compression`). Plain decoding calls the
large model once per token, and at batch size 1 each call is dominated by
reading the weights, not by arithmetic: scoring k + 1 positions in one forward
pass costs about as much as scoring one. Speculative decoding uses that. A small
*draft* model (same tokenizer) guesses k tokens one at a time; the large
*target* model reads all k guesses in one forward pass and keeps a prefix of
them. The rule that decides what to keep is from Leviathan, Kalman & Matias,
"Fast Inference from Transformers via Speculative Decoding" (ICML 2023), and
Chen et al., "Accelerating Large Language Model Decoding with Speculative
Sampling" (2023). One round, with the sequence so far x (1, L):

1. the draft samples d_1 .. d_k, each from its next-token distribution
   q_i = q(. | x, d_1 .. d_{i-1}) (k draft calls, with the draft's KV cache);
2. the target reads x, d_1 .. d_k in ONE forward pass (with its KV cache, so only
   the tokens it has not read yet) and gives p_1 .. p_{k+1}, its next-token
   distributions after x, x d_1, ..., x d_1 .. d_k;
3. left to right, d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i));
   at the first rejection the round ends with a replacement drawn from the
   residual max(0, p_i - q_i), renormalized;
4. if all k were accepted, a bonus token is drawn from p_{k+1}.

Why the output has exactly the target's distribution: a token y comes out of
step 3 either as an accepted guess, probability q(y) min(1, p(y)/q(y)) =
min(p(y), q(y)), or as the replacement after a rejection, probability
(1 - sum_z min(p(z), q(z))) * max(0, p(y) - q(y)) / sum_z max(0, p(z) - q(z)),
and both sums equal the same total variation distance, so that term is
max(0, p(y) - q(y)). Together: min(p, q) + max(0, p - q) = p(y). Both p and q
are the *filtered* distributions (`minillm.generate.filter_logits`: the same
temperature, top-k and top-p), so the output follows what plain sampling from
the target with those settings would give.

Temperature 0 is greedy decoding: a guess is kept while it equals the target's
argmax, and the round ends with the target's argmax. The output is then
token-for-token the target's own greedy output (`generate(target, idx, n,
temperature=0)`); the draft only changes how many target calls it takes.

Each round costs one target call and adds the accepted guesses plus one token
of the target's own, so with acceptance rate a the target is called about
(1 - a^(k+1)) / (1 - a) times fewer (`expected_tokens_per_call`).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from minillm.attention import KVCache
from minillm.errors import ConfigError
from minillm.generate import check_sampling, filter_logits
from minillm.model import GPT


@dataclass
class SpeculativeResult:
    """The tokens `speculative_generate` wrote and the work it took.

    tokens: (1, T + n), the prompt followed by the n new tokens.
    proposed / accepted: draft tokens offered to the target / kept by it.
    target_calls / draft_calls: forward passes of each model (the first of each reads the prompt).
    Every target call adds its accepted guesses plus one token of its own: n = accepted + target_calls.
    """

    tokens: torch.Tensor
    proposed: int = 0
    accepted: int = 0
    target_calls: int = 0
    draft_calls: int = 0

    @property
    def acceptance_rate(self) -> float:
        """accepted / proposed: the share of the draft's guesses the target kept (0.0 when none were proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_call(self) -> float:
        """New tokens per forward pass of the target (1.0 is plain decoding; at most k + 1; 0.0 with no calls)."""
        return (self.accepted + self.target_calls) / self.target_calls if self.target_calls else 0.0


def expected_tokens_per_call(acceptance_rate: float, k: int) -> float:
    """Tokens per target call when each guess is kept with probability a, independently (Leviathan et al., eq. 1).

    1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a): the i-th guess counts only if all
    guesses before it were kept, and the target's own token always counts.
    """
    if not 0.0 <= acceptance_rate <= 1.0:
        raise ConfigError(f"acceptance_rate must be in [0, 1], got {acceptance_rate!r}")
    _check_k(k)
    return sum(acceptance_rate**i for i in range(k + 1))


@torch.no_grad()
def speculative_generate(
    target: GPT,
    draft: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    k: int = 4,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> SpeculativeResult:
    """Prompt idx (1, T) -> `SpeculativeResult` with tokens (1, T + max_new_tokens), drawn as the target would.

    The draft proposes up to `k` tokens a round (fewer in the last round, so that
    exactly `max_new_tokens` tokens are written and no call is wasted); the target
    checks them in one forward pass (see the module docstring for the rule).
    `temperature`, `top_k` and `top_p` filter both models' distributions the same
    way (`filter_logits`); `temperature=0` is greedy decoding and gives exactly the
    target's greedy output. Random draws come from `generator` (else the global RNG).
    Batch size 1 only, and T + max_new_tokens must fit in both models' context
    lengths (no sliding window). Both models run in eval mode (their training flags
    are restored afterwards).
    """
    _check(target, draft, idx, max_new_tokens, k)
    check_sampling(temperature, top_k, top_p)
    sampling = (temperature, top_k, top_p)
    result = SpeculativeResult(tokens=idx.clone())
    total = idx.size(1) + max_new_tokens  # the final length
    if max_new_tokens == 0:
        return result
    training = [m for m in (target, draft) if m.training]  # switched to eval mode for the run, then back
    for model in training:
        model.eval()
    try:
        # Both caches hold keys/values of the sequence minus its last token: at most total - 1 positions.
        target_cache, draft_cache = target.new_kv_cache(1, total - 1), draft.new_kv_cache(1, total - 1)
        tokens = idx
        while tokens.size(1) < total:
            n = min(k, total - tokens.size(1) - 1)  # guesses this round; leave room for the target's token
            guesses, q = _propose(draft, draft_cache, tokens, n, sampling, generator)  # (1, n), (n, V) or None
            feed = torch.cat([tokens[:, target_cache.length :], guesses], dim=1)  # what the target has not read
            logits, _ = target(feed, kv_cache=target_cache)  # (1, len(feed), V)
            kept, last = _verify(guesses[0], q, logits[0, -(n + 1) :], sampling, generator)  # p_1 .. p_{n+1}
            tokens = torch.cat([tokens, guesses[:, :kept], last.view(1, 1)], dim=1)
            result.proposed, result.accepted = result.proposed + n, result.accepted + kept
            result.target_calls, result.draft_calls = result.target_calls + 1, result.draft_calls + n
            # Forget the rejected guesses: each cache keeps at most the sequence minus its last token.
            for cache in (target_cache, draft_cache):
                cache.rewind(max(0, cache.length - (tokens.size(1) - 1)))
        result.tokens = tokens
    finally:
        for model in training:
            model.train()
    return result


def _propose(draft: GPT, cache: KVCache, tokens: torch.Tensor, n: int, sampling: tuple,
             generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """The draft's n guesses (1, n), one call each, and the distributions q they were drawn from (n, V).

    q is None when greedy (temperature 0: each guess is the draft's argmax). The first
    call reads every token the draft's cache lacks (the whole prompt at the start; the
    last one or two tokens later); the n-th guess is drawn but not read.
    """
    temperature, top_k, top_p = sampling
    feed = tokens[:, cache.length :]  # (1, >= 1)
    guesses, dists = [], []
    for _ in range(n):
        logits, _ = draft(feed, kv_cache=cache, only_last=True)
        logits = logits[0, -1]  # (V,)
        if temperature == 0:
            guess = logits.argmax()
        else:
            q = filter_logits(logits, temperature, top_k, top_p)  # (V,)
            guess = torch.multinomial(q, 1, generator=generator)[0]
            dists.append(q)
        guesses.append(guess)
        feed = guess.view(1, 1)
    if not guesses:
        return tokens.new_empty(1, 0), None
    return torch.stack(guesses).view(1, n), (torch.stack(dists) if dists else None)


def _verify(guesses: torch.Tensor, q: torch.Tensor | None, logits: torch.Tensor, sampling: tuple,
            generator: torch.Generator | None) -> tuple[int, torch.Tensor]:  # fmt: skip
    """(how many guesses (n,) the target keeps, the target's own next token ()).

    logits (n + 1, V): row i is the target's next-token logits after the first i guesses.
    """
    temperature, top_k, top_p = sampling
    n = guesses.numel()
    if temperature == 0:  # greedy: keep guesses while they are the target's argmax, then add its argmax
        best = logits.argmax(dim=-1)  # (n + 1,)
        kept = 0
        while kept < n and int(guesses[kept]) == int(best[kept]):
            kept += 1
        return kept, best[kept]
    p = filter_logits(logits, temperature, top_k, top_p)  # (n + 1, V)
    for i in range(n):
        d = guesses[i]
        u = torch.rand((), generator=generator, device=p.device)  # uniform in [0, 1)
        if u < p[i, d] / q[i, d]:  # accepted with probability min(1, p/q); q[i, d] > 0 since d was drawn from it
            continue
        residual = (p[i] - q[i]).clamp(min=0.0)  # (V,) where the target wants more than the draft gave
        if residual.sum() <= 0:  # p <= q everywhere, so p == q: a rejection happens only by rounding
            residual = p[i]
        return i, torch.multinomial(residual, 1, generator=generator)[0]  # multinomial normalizes
    return n, torch.multinomial(p[n], 1, generator=generator)[0]  # all kept: a bonus token from p_{n+1}


def _check_k(k: int) -> None:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k (draft tokens proposed per round) must be an integer >= 1, got {k!r}")


def _check(target: GPT, draft: GPT, idx: torch.Tensor, max_new_tokens: int, k: int) -> None:
    """Raise a clear error for inputs speculative decoding cannot work with."""
    for name, model in (("target", target), ("draft", draft)):
        if not isinstance(model, GPT):
            raise TypeError(f"the {name} model must be a minillm GPT, got {type(model).__name__}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ConfigError(
            f"the target has vocab_size {target.config.vocab_size}, the draft {draft.config.vocab_size}; "
            "speculative decoding compares both models' probabilities token by token, so the draft must "
            "use the target's tokenizer (the same vocabulary)"
        )
    _check_k(k)
    if not isinstance(max_new_tokens, numbers.Integral) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.size(1) == 0:
        shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise ConfigError(f"prompt idx must be a (1, T) tensor of token ids with T >= 1, got {shape}")
    if idx.dtype not in (torch.int64, torch.int32):
        raise ConfigError(f"prompt idx must hold integer token ids (torch.long), got dtype {idx.dtype}")
    if idx.size(0) != 1:
        raise ConfigError(
            f"speculative_generate writes one sequence at a time (batch size 1), got a batch of {idx.size(0)}; "
            "call it once per row, or use minillm.generate.generate for batches"
        )
    total = idx.size(1) + max_new_tokens
    for name, model in (("target", target), ("draft", draft)):
        if total > model.config.context_length:
            raise ConfigError(
                f"the prompt ({idx.size(1)} tokens) plus max_new_tokens ({max_new_tokens}) is {total} tokens, "
                f"more than the {name}'s context length {model.config.context_length}; keep only the prompt's "
                "last tokens or ask for fewer new ones"
            )
