"""Tests of minillm.align, minillm.dpo and minillm.grpo: sequence log-probs, DPO, GRPO and their rewards, against independent computations."""

from __future__ import annotations

import copy
import math
import random
import statistics

import numpy as np
import pytest
import torch

from minillm.align import (exact_match_reward, greedy_answers, length_reward, looks_like_answer_reward, pack, prompt_ids,
                           response_batch, sample_group, sequence_logprobs)
from minillm.dpo import DPOConfig, PreferencePair, dpo_loss, pair_batch, pairs_from_answers, train_dpo
from minillm.grpo import GRPOConfig, group_advantages, grpo_loss, train_grpo
from minillm.errors import ConfigError, DataError
from minillm.evaluate import paired_change
from minillm.instruct import add_special_tokens, encode_example, format_prompt, generate_response
from minillm.model import GPT, GPTConfig
from minillm.synthetic import list_tasks
from minillm.tokenizer import BPETokenizer

ROWS = list_tasks(40, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest on a shared CPU


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    text = [format_prompt(r, "chat") + r["output"] for r in list_tasks(300, seed=0)] + ["yes no maybe"]
    return add_special_tokens(BPETokenizer.train(text, 300))


def tiny_gpt(vocab_size: int, seed: int = 0, context_length: int = 64) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=context_length, d_model=32, n_layer=2,
                         n_head=4)).eval()  # fmt: skip


def by_loop(model: GPT, idx: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Sum over masked positions t of log_softmax(logits[t - 1])[idx[t]], one token at a time."""
    with torch.no_grad():
        logits, _ = model(idx)
    out = []
    for b in range(idx.size(0)):
        total = 0.0
        for t in range(1, idx.size(1)):
            if mask[b, t]:
                total += float(torch.log_softmax(logits[b, t - 1].double(), dim=-1)[idx[b, t]])
        out.append(total)
    return out


# ---------------------------------------------------------------------------
# Log-probabilities and batches
# ---------------------------------------------------------------------------


def test_sequence_logprobs_equals_a_token_by_token_sum_and_ignores_padding(tok):
    model = tiny_gpt(tok.vocab_size)
    batch = response_batch(ROWS[:4], [r["output"] for r in ROWS[:4]], tok, 64)
    idx, mask = batch["idx"], batch["response_mask"]
    got = sequence_logprobs(model, idx, mask)
    assert got.shape == (4,)
    torch.testing.assert_close(got.double(), torch.tensor(by_loop(model, idx, mask), dtype=torch.float64),
                               rtol=0, atol=1e-4)  # fmt: skip
    per = sequence_logprobs(model, idx, mask, per_token=True)
    assert per.shape == (4, idx.size(1) - 1)
    torch.testing.assert_close(per.sum(-1), got)
    assert bool((per[~mask[:, 1:]] == 0).all())
    for b in range(4):  # a row alone (no padding) scores as in the padded batch
        n = int(mask[b].nonzero().max()) + 1
        alone = sequence_logprobs(model, idx[b : b + 1, :n], mask[b : b + 1, :n])
        torch.testing.assert_close(alone[0], got[b], rtol=0, atol=1e-5)
    with pytest.raises(DataError, match="position 0"):
        sequence_logprobs(model, idx, torch.ones_like(mask))


def test_gradients_flow_through_sequence_logprobs(tok):
    model = tiny_gpt(tok.vocab_size)
    batch = response_batch(ROWS[:2], ["[1, 2]", "7"], tok, 64)
    sequence_logprobs(model, batch["idx"], batch["response_mask"]).sum().backward()
    assert model.tok_emb.weight.grad is not None and float(model.tok_emb.weight.grad.abs().sum()) > 0


def test_masks_cover_exactly_the_response_tokens(tok):
    rows, answers = ROWS[:3], ["[3, 1]", "12", "[0]"]
    batch = response_batch(rows, answers, tok, 64)
    end = tok.special_tokens["<|end|>"]
    for b, (row, answer) in enumerate(zip(rows, answers)):
        ids, n = encode_example({**row, "output": answer}, tok, "chat")
        assert batch["idx"][b, : len(ids)].tolist() == ids
        assert batch["idx"][b, len(ids) :].tolist() == [end] * (batch["idx"].size(1) - len(ids))  # padding
        assert batch["response_mask"][b].nonzero().flatten().tolist() == list(range(n, len(ids)))
        assert tok.decode(ids[n:]) == answer + "<|end|>"
        assert prompt_ids(row, tok) == ids[:n]
    pairs = [PreferencePair(rows[0], "[1, 3]", "[3, 1, 1]"), PreferencePair(rows[1], "5", "50")]
    pb = pair_batch(pairs, tok, 64, pad_id=0)
    assert pb["chosen_idx"].shape == pb["rejected_idx"].shape == pb["chosen_mask"].shape
    for b, p in enumerate(pairs):
        for side in ("chosen", "rejected"):
            ids, n = encode_example({**p.prompt, "output": getattr(p, side)}, tok, "chat")
            assert pb[f"{side}_mask"][b].nonzero().flatten().tolist() == list(range(n, len(ids)))
            assert pb[f"{side}_idx"][b, len(ids) :].eq(0).all()
    assert pack([([5, 6, 7], 2)], pad_id=9)["response_mask"].tolist() == [[False, False, True]]


def test_bad_batches_raise_clear_errors(tok):
    with pytest.raises(DataError, match=r"pair 1: chosen and rejected are the same"):
        pair_batch([PreferencePair(ROWS[0], "1", "2"), PreferencePair(ROWS[1], "[1]", " [1] ")], tok, 64)
    n = len(encode_example({**ROWS[0], "output": "1"}, tok, "chat")[0])
    with pytest.raises(DataError, match=rf"pair 0 \(chosen\): {n} tokens .* context of {n - 1}"):
        pair_batch([PreferencePair(ROWS[0], "1", "2")], tok, n - 1)
    with pytest.raises(DataError, match="example 1"):
        response_batch(ROWS[:2], ["1", "  "], tok, 64)  # an empty response
    with pytest.raises(DataError, match="2 rows but 1 responses"):
        response_batch(ROWS[:2], ["1"], tok, 64)


# ---------------------------------------------------------------------------
# DPO
# ---------------------------------------------------------------------------


def test_dpo_loss_and_rewards_match_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    logps = [-20 * torch.rand(6, generator=gen, dtype=torch.float64) for _ in range(4)]
    for beta in (0.01, 0.1, 0.5, 3.0):
        loss, rc, rr = dpo_loss(*logps, beta=beta)
        pc, pr, c, r = ([float(x) for x in t] for t in logps)
        terms = []
        for i in range(6):
            z = beta * ((pc[i] - c[i]) - (pr[i] - r[i]))
            terms.append(-math.log(1 / (1 + math.exp(-z))))
        assert float(loss) == pytest.approx(sum(terms) / 6, rel=1e-12)
        assert [float(x) for x in rc] == pytest.approx([beta * (pc[i] - c[i]) for i in range(6)])
        assert [float(x) for x in rr] == pytest.approx([beta * (pr[i] - r[i]) for i in range(6)])
    same = torch.zeros(3)
    assert float(dpo_loss(same, same, same, same)[0]) == pytest.approx(math.log(2))  # policy = reference
    big = torch.tensor([1e4])  # logsigmoid: no overflow at huge margins
    assert float(dpo_loss(-big, big, big, -big, beta=1.0)[0]) == pytest.approx(4e4)
    for beta in (0, -0.1, float("nan")):
        with pytest.raises(ConfigError, match="beta"):
            dpo_loss(same, same, same, same, beta=beta)
    with pytest.raises(ConfigError, match="one shape"):
        dpo_loss(same, same, same, torch.zeros(2))


def test_dpo_raises_the_margin_and_leaves_the_reference_alone(tok):
    policy = tiny_gpt(tok.vocab_size, seed=1)
    reference = copy.deepcopy(policy)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    pairs = [PreferencePair(r, r["output"], "[9, 9, 9]" if r["output"] != "[9, 9, 9]" else "0") for r in ROWS[:12]]
    config = DPOConfig(beta=0.5, lr=3e-3, steps=12, batch_size=4, sft_coef=0.0, device="cpu")
    result = train_dpo(policy, reference, pairs, tok, config, eval_pairs=pairs[:6])
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # starts at the reference
    assert result.history[0]["reward_accuracy"] == 0.0  # ties: no pair ranked yet
    assert result.eval_before["margin"] == pytest.approx(0.0, abs=1e-5)
    assert result.eval_after["margin"] > 1.0 and result.eval_after["reward_accuracy"] == 1.0
    assert result.history[-1]["loss"] < 0.5 * math.log(2)
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in before.items())
    again = train_dpo(tiny_gpt(tok.vocab_size, seed=1), copy.deepcopy(reference), pairs, tok, config)
    assert [h["loss"] for h in again.history] == [h["loss"] for h in result.history]  # the seed decides


def test_a_dpo_step_is_the_hand_written_step(tok):
    pairs = [PreferencePair(r, r["output"], "[9, 9, 9]" if r["output"] != "[9, 9, 9]" else "0") for r in ROWS[:4]]
    policy, hand = tiny_gpt(tok.vocab_size, seed=4), tiny_gpt(tok.vocab_size, seed=4)
    reference = copy.deepcopy(policy)
    config = DPOConfig(beta=0.3, lr=1e-2, steps=1, batch_size=4, sft_coef=0.5, grad_clip=0, device="cpu")
    train_dpo(policy, reference, pairs, tok, config)
    # by hand: DPO on all four pairs + 0.5 x the chosen responses' NLL per token, one step of torch's AdamW
    batch = pair_batch(pairs, tok, 64)
    pc = sequence_logprobs(hand, batch["chosen_idx"], batch["chosen_mask"])
    pr = sequence_logprobs(hand, batch["rejected_idx"], batch["rejected_mask"])
    with torch.no_grad():
        rc = sequence_logprobs(reference, batch["chosen_idx"], batch["chosen_mask"])
        rr = sequence_logprobs(reference, batch["rejected_idx"], batch["rejected_mask"])
    z = 0.3 * ((pc - rc) - (pr - rr))
    nll = -(pc / batch["chosen_mask"].sum(dim=1)).mean()
    (torch.log1p(torch.exp(-z)).mean() + 0.5 * nll).backward()
    torch.optim.AdamW(hand.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0).step()
    for (name, a), b in zip(policy.named_parameters(), hand.parameters()):
        # a first Adam step moves each weight by about lr * sign(gradient); where the gradient is zero up to
        # rounding (the key biases: softmax ignores them) the sign is noise, so only the others are compared
        real = b.grad.abs() > 1e-7
        torch.testing.assert_close(a[real], b[real], rtol=0, atol=1e-6, msg=name)


def test_dpo_refuses_bad_settings(tok):
    policy = tiny_gpt(tok.vocab_size)
    pairs = [PreferencePair(ROWS[0], "1", "2")]
    with pytest.raises(ConfigError, match="copy.deepcopy"):
        train_dpo(policy, policy, pairs, tok, DPOConfig(device="cpu"))
    with pytest.raises(DataError, match="pair 0: chosen and rejected"):
        train_dpo(policy, copy.deepcopy(policy), [PreferencePair(ROWS[0], "1", "1")], tok, DPOConfig(device="cpu"))
    for bad in (dict(beta=0), dict(beta=-1.0), dict(lr=0), dict(steps=0), dict(batch_size=0), dict(schedule="x"),
                dict(sft_coef=-1.0), dict(warmup_steps=41)):
        with pytest.raises(ConfigError):
            DPOConfig(**bad)


# ---------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 3.0]])
    adv = group_advantages(rewards, eps=1e-4)
    # group 0: mean 0.5, population std 0.5 -> about +-1; group 1: all equal -> 0;
    # group 2: mean 0.75, deviations -0.75 (x3) and 2.25, population std sqrt((3 * 0.5625 + 5.0625) / 4)
    s0, s2 = 0.5 + 1e-4, math.sqrt((3 * 0.5625 + 5.0625) / 4) + 1e-4
    expected = [[0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0], [0.0] * 4, [-0.75 / s2] * 3 + [2.25 / s2]]
    torch.testing.assert_close(adv, torch.tensor(expected))
    assert not bool(adv.isnan().any())
    torch.testing.assert_close(group_advantages(rewards, scale=False),
                               torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [-0.75] * 3 + [2.25]]))  # fmt: skip
    with pytest.raises(ConfigError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(DataError, match="finite"):
        group_advantages(torch.tensor([[0.0, float("nan")]]))


def test_grpo_loss_is_the_policy_gradient_at_ratio_one():
    gen = torch.Generator().manual_seed(0)
    n, t = 4, 6
    logps = (-3 * torch.rand(n, t, generator=gen, dtype=torch.float64)).requires_grad_(True)
    mask = torch.rand(n, t, generator=gen) > 0.3
    mask[:, 0] = True
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    loss, info = grpo_loss(logps, logps.detach(), adv, mask)
    loss.backward()
    counts = mask.sum(1).tolist()
    for i in range(n):
        for j in range(t):
            expected = -float(adv[i]) / (counts[i] * n) if mask[i, j] else 0.0  # -A grad logp, per-sequence mean
            assert float(logps.grad[i, j]) == pytest.approx(expected, abs=1e-12)
    assert float(loss.detach()) == pytest.approx(-float(adv.mean()))  # ratio 1: loss = -mean A
    assert info["clip_fraction"] == 0.0 and math.isnan(info["kl"])


def test_grpo_clipping_stops_the_gradient_only_in_the_advantages_direction():
    old = torch.zeros(4, 1, dtype=torch.float64)
    # ratios 1.5, 0.5, 1.5, 0.5 with advantages +1, -1, -1, +1 (eps 0.2)
    logps = torch.log(torch.tensor([[1.5], [0.5], [1.5], [0.5]], dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    loss, info = grpo_loss(logps, old, adv, torch.ones(4, 1, dtype=torch.bool), clip_eps=0.2)
    loss.backward()
    grad = logps.grad.flatten().tolist()
    assert grad[0] == 0.0 and grad[1] == 0.0  # already moved past the clip the way A wants: no more push
    assert grad[2] == pytest.approx(1.5 / 4) and grad[3] == pytest.approx(-0.5 / 4)  # d(-ratio A)/dlogp / N
    assert info["clip_fraction"] == 0.5
    assert float(loss.detach()) == pytest.approx(-(1.2 - 0.8 - 1.5 + 0.5) / 4)


def test_grpo_loss_kl_term_is_the_k3_estimate():
    logps = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    k3 = [math.exp(r - p) - (r - p) - 1 for p, r in ((-1.0, -1.5), (-2.0, -1.0))]
    loss, info = grpo_loss(logps, logps, torch.tensor([0.0], dtype=torch.float64), mask, kl_coef=0.3, ref_logps=ref)
    assert info["kl"] == pytest.approx(sum(k3) / 2)
    assert float(loss) == pytest.approx(0.3 * sum(k3) / 2)
    with pytest.raises(ConfigError, match="ref_logps"):
        grpo_loss(logps, logps, torch.zeros(1), mask, kl_coef=0.1)


def test_sample_group_decodes_a_batch_and_stops_at_the_end_marker(tok):
    model = tiny_gpt(tok.vocab_size)
    end = tok.special_tokens["<|end|>"]
    samples = sample_group(model, tok, ROWS[0], 6, 5, generator=torch.Generator().manual_seed(0))
    assert len(samples) == 6 and all(1 <= len(s) <= 5 for s in samples)
    assert all(end not in s[:-1] for s in samples)  # cut at the first end marker
    again = sample_group(model, tok, ROWS[0], 6, 5, generator=torch.Generator().manual_seed(0))
    assert again == samples
    with pytest.raises(DataError, match="exceeds the context"):
        sample_group(model, tok, ROWS[0], 2, 64)


def _sft(model: GPT, tok, rows: list[dict], answers: list[str], steps: int = 60) -> None:
    """Teach the model to answer each row with one of `answers`, about equally often (a start for RL)."""
    batch = response_batch([r for r in rows for _ in answers], answers * len(rows), tok, 64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = -sequence_logprobs(model, batch["idx"], batch["response_mask"]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_grpo_raises_the_probability_of_the_rewarded_answer(tok):
    rows = ROWS[:4]
    policy = tiny_gpt(tok.vocab_size, seed=2)
    _sft(policy, tok, rows, ["yes", "no"])
    target = response_batch(rows, ["yes"] * 4, tok, 64)

    def p_yes(model: GPT) -> float:
        with torch.no_grad():
            return float(sequence_logprobs(model, target["idx"], target["response_mask"]).exp().mean())

    start = p_yes(policy)
    assert 0.2 < start < 0.8, start  # both answers likely: groups have signal
    reference = copy.deepcopy(policy)
    config = GRPOConfig(group_size=6, prompts_per_step=4, steps=12, lr=1e-3, max_new_tokens=4, device="cpu")
    result = train_grpo(policy, reference, rows, tok, lambda row, text: float(text.strip() == "yes"), config)
    assert p_yes(policy) > start + 0.08  # +0.16 to +0.19 over 4 models x 3 seeds
    assert p_yes(reference) == start
    assert len(result.history) == 12 and all(0 <= h["reward_mean"] <= 1 for h in result.history)
    assert all(h["kl"] >= 0 for h in result.history if h["updated"])


def test_grpo_counts_skips_and_refuses_bad_rewards_and_settings(tok):
    policy = tiny_gpt(tok.vocab_size)
    rows = ROWS[:3]
    config = GRPOConfig(group_size=3, prompts_per_step=3, steps=2, max_new_tokens=3, device="cpu")
    calls = []

    def flaky(row, text):
        calls.append(text)
        if len(calls) % 4 == 0:
            raise ValueError("cannot parse")
        return random.Random(len(calls)).random()

    result = train_grpo(policy, None, rows, tok, flaky, config)
    assert result.skipped == sum(h["skipped"] for h in result.history) == len(calls) // 4 > 0
    assert len(result.history) == 2
    flat = train_grpo(tiny_gpt(tok.vocab_size), None, rows, tok, lambda r, t: 1.0, config)
    assert flat.zero_signal_groups == 6 and not any(h["updated"] for h in flat.history)
    assert flat.history[0]["reward_one"] == 1.0
    with pytest.raises(DataError, match="finite number"):
        train_grpo(policy, None, rows, tok, lambda r, t: float("nan"), config)
    with pytest.raises(DataError, match="finite number"):
        train_grpo(policy, None, rows, tok, lambda r, t: "1", config)
    with pytest.raises(ConfigError, match="copy.deepcopy"):
        train_grpo(policy, policy, rows, tok, exact_match_reward, config)
    with pytest.raises(ConfigError, match="reference"):
        train_grpo(policy, None, rows, tok, exact_match_reward, GRPOConfig(kl_coef=0.1, device="cpu"))
    with pytest.raises(DataError, match="row 0: a prompt of"):
        train_grpo(policy, None, rows, tok, exact_match_reward, GRPOConfig(max_new_tokens=60, device="cpu"))
    for bad in (dict(group_size=1), dict(group_size=0), dict(temperature=0), dict(inner_updates=0), dict(lr=-1)):
        with pytest.raises(ConfigError):
            GRPOConfig(**bad)


def test_rewards():
    row = {"instruction": "Sort the list.", "input": "[2, 1]", "output": "[1, 2]"}
    assert exact_match_reward(row, " [1, 2]\n") == 1.0
    assert exact_match_reward(row, "[2, 1]") == 0.0
    for text, want in (("[2, 1]", 1.0), ("[]", 1.0), ("17", 1.0), ("[1, 2", 0.0), ("two", 0.0), ("[1, a]", 0.0)):
        assert looks_like_answer_reward(row, text) == want, text
    assert length_reward(row, " [1, 2] ") == 6 / 40 and length_reward(row, "9" * 50) == 1.0
    assert length_reward(row, "", chars=10) == 0.0


def test_pairs_from_answers_pairs_the_right_output_with_each_distinct_wrong_answer(tok):
    model, rows = tiny_gpt(tok.vocab_size), ROWS[:6]  # an untrained model: nearly every answer is wrong
    pairs = pairs_from_answers(model, tok, rows, samples=3, max_new_tokens=8, seed=1)
    assert pairs and all(isinstance(p, PreferencePair) for p in pairs)
    end = tok.special_tokens["<|end|>"]
    gen = torch.Generator().manual_seed(1)  # the same draws, by hand: greedy first, then the samples
    expected = []
    for row in rows:
        answers = [generate_response(model, tok, row, "chat", 8)]
        answers += [tok.decode([t for t in s if t != end]).strip() for s in sample_group(model, tok, row, 3, 8, 1.0, gen)]
        kept = []
        for a in answers:
            if a and a not in kept and a.strip() != row["output"]:
                kept.append(a)
        expected += [(row["output"], a) for a in kept]
    assert [(p.chosen, p.rejected) for p in pairs] == expected
    assert all(p.prompt["output"] == p.chosen for p in pairs)
    pair_batch(pairs, tok, 64)  # every pair is usable: chosen differs from rejected
    # a reward that calls every answer right gives no pair; greedy alone draws one answer a row
    assert pairs_from_answers(model, tok, rows, reward_fn=lambda row, text: 1.0, samples=2, max_new_tokens=8) == []
    assert len(pairs_from_answers(model, tok, rows, samples=0, max_new_tokens=8)) <= len(rows)
    with pytest.raises(ConfigError, match="samples"):
        pairs_from_answers(model, tok, rows, samples=0, greedy=False)
    with pytest.raises(ConfigError, match="samples"):
        pairs_from_answers(model, tok, rows, samples=-1)


def test_paired_change_is_the_standard_error_of_the_mean_difference():
    rng = random.Random(0)
    before = [rng.random() < 0.5 for _ in range(50)]
    after = [b if rng.random() < 0.8 else not b for b in before]
    mean, se = paired_change(before, after)
    diffs = [int(a) - int(b) for b, a in zip(before, after)]
    assert mean == pytest.approx(statistics.fmean(diffs))
    assert se == pytest.approx(statistics.stdev(diffs) / math.sqrt(len(diffs)))
    assert paired_change([1, 1, 0], [1, 1, 0]) == (0.0, 0.0)  # the same answers: no change, no spread
    for bad in (([1, 0], [1]), ([1], [0]), ([0.0, math.nan], [1.0, 1.0])):
        with pytest.raises(DataError):
            paired_change(*bad)


def test_greedy_answers_are_generate_responses_answers(tok):
    model = tiny_gpt(tok.vocab_size, seed=4)
    rows = ROWS[:12]
    want = [generate_response(model, tok, r, "chat", 10) for r in rows]
    assert greedy_answers(model, tok, rows, max_new_tokens=10, batch=5) == want
    assert greedy_answers(model, tok, [], max_new_tokens=10) == []


def test_greedy_answers_match_generate_response_where_answers_stop_at_the_end_marker(tok):
    rows = ROWS[:12]
    model = tiny_gpt(tok.vocab_size, seed=5)
    batch = response_batch(rows, [r["output"] for r in rows], tok, 64)  # each row its own output, then <|end|>
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        (-sequence_logprobs(model, batch["idx"], batch["response_mask"]).mean()).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    end = tok.special_tokens["<|end|>"]
    for max_new in (4, 24):  # 4 cuts most answers short, 24 lets them end
        want = [generate_response(model, tok, r, "chat", max_new) for r in rows]
        assert greedy_answers(model, tok, rows, max_new_tokens=max_new, batch=5) == want
    stopped = sum(end in s for r in rows for s in sample_group(model, tok, r, 1, 24, 1e-3, torch.Generator().manual_seed(0)))
    assert stopped >= 10  # the stop path is exercised: most rows reached the end marker


def test_grpo_with_a_kl_penalty_and_reused_samples_still_learns(tok):
    rows = ROWS[:4]
    policy = tiny_gpt(tok.vocab_size, seed=2)
    _sft(policy, tok, rows, ["yes", "no"])
    reference = copy.deepcopy(policy)
    config = GRPOConfig(group_size=6, prompts_per_step=4, steps=6, lr=1e-3, max_new_tokens=4, kl_coef=0.05,
                        inner_updates=2, device="cpu")  # fmt: skip
    result = train_grpo(policy, reference, rows, tok, lambda row, text: float(text.strip() == "yes"), config)
    updated = [h for h in result.history if h["updated"]]
    assert updated and all(h["kl"] >= 0 and 0 <= h["clip_fraction"] <= 1 for h in updated)
    assert any(h["kl"] > 0 for h in updated)  # the policy moved away from the reference, and the penalty saw it
    assert any(h["clip_fraction"] > 0 for h in updated)  # the second update on a batch: some ratios left the clip


def test_hostile_inputs_give_clear_errors(tok):
    model, ref = tiny_gpt(tok.vocab_size), tiny_gpt(tok.vocab_size, seed=1)
    rows = ROWS[:3]
    z = torch.zeros(2)
    config = GRPOConfig(group_size=2, prompts_per_step=2, steps=1, max_new_tokens=3, device="cpu")
    cases = [
        (TypeError, "list of dict rows", lambda: response_batch(ROWS[0], ["1"], tok, 64)),
        (TypeError, "list of str", lambda: response_batch(rows, "123", tok, 64)),
        (TypeError, "list of dict rows", lambda: greedy_answers(model, tok, "Sort the list.")),
        (TypeError, "PreferencePair", lambda: pair_batch([(rows[0], "a", "b")], tok, 64)),
        (TypeError, "PreferencePair", lambda: PreferencePair(rows[0], None, "2")),
        (ConfigError, "one shape", lambda: dpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))),
        (ConfigError, "B >= 1", lambda: dpo_loss(*[torch.zeros(0)] * 4)),
        (TypeError, "floating-point", lambda: dpo_loss([0.0], [0.0], [0.0], [0.0])),
        (ConfigError, "beta", lambda: dpo_loss(z, z, z, z, beta=True)),
        (ConfigError, "reference", lambda: train_dpo(model, None, [PreferencePair(rows[0], "1", "2")], tok, DPOConfig(device="cpu"))),
        (ConfigError, "does not match", lambda: train_dpo(model, tiny_gpt(tok.vocab_size + 4), [PreferencePair(rows[0], "1", "2")],
                                                         tok, DPOConfig(device="cpu"))),
        (TypeError, "DPOConfig", lambda: train_dpo(model, ref, [PreferencePair(rows[0], "1", "2")], tok, {"steps": 1})),
        (DataError, "no 'output'", lambda: pairs_from_answers(model, tok, [{"instruction": "x", "input": ""}], samples=0)),
        (DataError, "row 0: the reward function raised", lambda: pairs_from_answers(
            model, tok, rows, reward_fn=lambda r, t: 1 / 0, samples=0, max_new_tokens=2)),
        (DataError, "finite number", lambda: pairs_from_answers(
            model, tok, rows, reward_fn=lambda r, t: None, samples=0, max_new_tokens=2)),
        (ConfigError, "greedy a bool", lambda: pairs_from_answers(model, tok, rows, samples=True)),
        (TypeError, "reward_fn must be a function", lambda: train_grpo(model, None, rows, tok, None, config)),
        (DataError, "raised for every sample of step 1", lambda: train_grpo(
            model, None, rows, tok, lambda text: float(text == "1"), config)),  # wrong arity: every call raises
        (TypeError, "GRPOConfig", lambda: train_grpo(model, None, rows, tok, exact_match_reward, None)),
        (TypeError, "integer token ids", lambda: sequence_logprobs(model, torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.bool))),
        (TypeError, "bool", lambda: sequence_logprobs(model, torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4))),
        (ConfigError, "temperature", lambda: sequence_logprobs(model, torch.zeros(1, 4, dtype=torch.long),
                                                               torch.zeros(1, 4, dtype=torch.bool), temperature=math.inf)),
        (DataError, "prompt of 5", lambda: pack([([1, 2], 5)], 0)),
        (ConfigError, "pad_id", lambda: pack([([1, 2], 1)], 0.5)),
        (ConfigError, "eps", lambda: group_advantages(torch.ones(1, 3), eps=0)),
        (ConfigError, "ref_logps", lambda: grpo_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1),
                                                     torch.ones(1, 3, dtype=torch.bool), 0.2, 0.1, torch.zeros(1, 2))),
        (ConfigError, "clip_eps", lambda: grpo_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1),
                                                    torch.ones(1, 3, dtype=torch.bool), clip_eps=-0.5)),
        (DataError, "'output'", lambda: exact_match_reward({"instruction": "x"}, "1")),
        (ConfigError, "chars", lambda: length_reward(rows[0], "abc", chars=0)),
        (TypeError, "1-D sequence", lambda: paired_change("101", "111")),
        (TypeError, "1-D sequence", lambda: paired_change({1: 0, 2: 1}, {1: 1, 2: 1})),
        (TypeError, "before\\[1\\] must be a number", lambda: paired_change([1, None], [1, 1])),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
    for bad in (dict(steps=True), dict(batch_size=True), dict(lr=math.inf), dict(beta=True), dict(warmup_steps=1.5),
                dict(seed=1.5), dict(template="bogus"), dict(sft_coef=math.inf)):
        with pytest.raises(ConfigError):
            DPOConfig(**bad)
    for bad in (dict(steps=True), dict(temperature=math.inf), dict(clip_eps=5.0), dict(scale_rewards="no"),
                dict(kl_coef=math.inf), dict(template="bogus")):
        with pytest.raises(ConfigError):
            GRPOConfig(**bad)
    # what is accepted: ints and bools as rewards (exact in float), numpy numbers, 1-D arrays for paired_change
    assert torch.equal(group_advantages(torch.tensor([[1, 0]])), group_advantages(torch.tensor([[1.0, 0.0]], dtype=torch.float64)))
    assert paired_change(np.array([0, 1, 1]), [True, True, False]) == paired_change([0, 1, 1], [1, 1, 0])
    assert looks_like_answer_reward(rows[0], "٣") == 0.0  # only ASCII digits are an answer's shape
    # a NaN in the padding of a row does not reach the loss
    logps = torch.tensor([[0.0, math.nan]])
    loss, _ = grpo_loss(logps, torch.zeros(1, 2), torch.tensor([1.0]), torch.tensor([[True, False]]))
    assert math.isfinite(float(loss))
