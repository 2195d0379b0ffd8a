"""Appendix E's exercises: a right answer passes, typical mistakes fail, the untouched stub is not attempted."""

from __future__ import annotations

import ast
import json
import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from minillm.exercises import ExerciseFailed, check

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest on a shared CPU

# -- E.1 DPO's loss from the Bradley-Terry model -----------------------------------------------


def dpo_loss_right(pc, pr, rc, rr, beta):
    chosen, rejected = pc - rc, pr - rr
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


def dpo_loss_undetached_rewards(pc, pr, rc, rr, beta):  # rewards that keep their graph are still right values
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    return -F.logsigmoid(chosen - rejected).mean(), chosen, rejected


def dpo_loss_naive_log_sigmoid(pc, pr, rc, rr, beta):  # log(sigmoid(x)) underflows to log(0) at large margins
    chosen, rejected = pc - rc, pr - rr
    loss = -torch.log(torch.sigmoid(beta * (chosen - rejected))).mean()
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


def dpo_loss_no_reference(pc, pr, rc, rr, beta):
    loss = -F.logsigmoid(beta * (pc - pr)).mean()
    return loss, (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


def dpo_loss_swapped(pc, pr, rc, rr, beta):
    chosen, rejected = pc - rc, pr - rr
    loss = -F.logsigmoid(beta * (rejected - chosen)).mean()
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


def dpo_loss_sum(pc, pr, rc, rr, beta):
    chosen, rejected = pc - rc, pr - rr
    loss = -F.logsigmoid(beta * (chosen - rejected)).sum()
    return loss, (beta * chosen).detach(), (beta * rejected).detach()


def dpo_loss_item(pc, pr, rc, rr, beta):  # a number, not a loss that trains anything
    loss, chosen, rejected = dpo_loss_right(pc, pr, rc, rr, beta)
    return torch.tensor(loss.item()), chosen, rejected


def dpo_loss_rewards_without_beta(pc, pr, rc, rr, beta):
    loss, _, _ = dpo_loss_right(pc, pr, rc, rr, beta)
    return loss, (pc - rc).detach(), (pr - rr).detach()


def test_e_1():
    assert check("E.1", dpo_loss_right) is True
    assert check("E.1", dpo_loss_undetached_rewards) is True
    wrong = (dpo_loss_naive_log_sigmoid, dpo_loss_no_reference, dpo_loss_swapped, dpo_loss_sum, dpo_loss_item,
             dpo_loss_rewards_without_beta)
    for answer in wrong:
        with pytest.raises(ExerciseFailed):
            check("E.1", answer)
    with pytest.raises(ExerciseFailed, match="large margins.*logsigmoid"):
        check("E.1", dpo_loss_naive_log_sigmoid)
    with pytest.raises(ExerciseFailed, match="left out the reference"):
        check("E.1", dpo_loss_no_reference)
    with pytest.raises(ExerciseFailed, match="swapped"):
        check("E.1", dpo_loss_swapped)
    with pytest.raises(ExerciseFailed, match="take the mean"):
        check("E.1", dpo_loss_sum)
    with pytest.raises(ExerciseFailed, match="no gradient"):
        check("E.1", dpo_loss_item)
    with pytest.raises(ExerciseFailed, match="chosen_rewards.*Multiply by beta"):
        check("E.1", dpo_loss_rewards_without_beta)


# -- E.2 group advantages ----------------------------------------------------------------------


def advantages_right(rewards):
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, correction=0, keepdim=True)
    return (rewards - mean) / (std + 1e-4)


def advantages_bessel(rewards):  # torch's default std divides by G - 1
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + 1e-4)


def advantages_no_eps(rewards):  # 0 / 0 for a group of equal rewards
    return (rewards - rewards.mean(dim=1, keepdim=True)) / rewards.std(dim=1, correction=0, keepdim=True)


def advantages_whole_batch(rewards):
    return (rewards - rewards.mean()) / (rewards.std(correction=0) + 1e-4)


def advantages_centred_only(rewards):
    return rewards - rewards.mean(dim=1, keepdim=True)


def advantages_in_place(rewards):
    rewards -= rewards.mean(dim=1, keepdim=True)
    return rewards / (rewards.std(dim=1, correction=0, keepdim=True) + 1e-4)


def test_e_2():
    assert check("E.2", advantages_right) is True
    for wrong in (advantages_bessel, advantages_no_eps, advantages_whole_batch, advantages_centred_only,
                  advantages_in_place):
        with pytest.raises(ExerciseFailed):
            check("E.2", wrong)
    with pytest.raises(ExerciseFailed, match="correction=0"):
        check("E.2", advantages_bessel)
    with pytest.raises(ExerciseFailed, match="NaN.*add eps = 1e-4"):
        check("E.2", advantages_no_eps)
    with pytest.raises(ExerciseFailed, match="all P \\* G rewards"):
        check("E.2", advantages_whole_batch)
    with pytest.raises(ExerciseFailed, match="Dr. GRPO"):
        check("E.2", advantages_centred_only)
    with pytest.raises(ExerciseFailed, match="in place"):
        check("E.2", advantages_in_place)


def test_e_1_the_package_passes():
    from minillm.dpo import dpo_loss

    assert check("E.1", dpo_loss) is True


def test_e_2_the_package_passes():
    from minillm.grpo import group_advantages

    assert check("E.2", group_advantages) is True


# -- E.3 response log-probs from logits --------------------------------------------------------


def response_logprobs_right(logits, idx, response_mask):
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position t - 1 predicts token t
    token_logp = logp.gather(-1, idx[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return (token_logp * response_mask[:, 1:]).sum(dim=1)


def response_logprobs_by_cross_entropy(logits, idx, response_mask):
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), idx[:, 1:], reduction="none")
    return -(nll * response_mask[:, 1:]).sum(dim=1)


def response_logprobs_no_shift(logits, idx, response_mask):
    logp = torch.log_softmax(logits, dim=-1).gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    return (logp * response_mask).sum(dim=1)


def response_logprobs_mask_wrong_way(logits, idx, response_mask):
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, idx[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (logp * response_mask[:, :-1]).sum(dim=1)


def response_logprobs_every_token(logits, idx, response_mask):  # the prompt and the padding counted
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, idx[:, 1:].unsqueeze(-1)).squeeze(-1)
    return logp.sum(dim=1)


def response_logprobs_mean(logits, idx, response_mask):
    return response_logprobs_right(logits, idx, response_mask) / response_mask[:, 1:].sum(dim=1)


def response_logprobs_raw_logits(logits, idx, response_mask):
    scores = logits[:, :-1].gather(-1, idx[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (scores * response_mask[:, 1:]).sum(dim=1)


def response_logprobs_detached(logits, idx, response_mask):
    return response_logprobs_right(logits.detach(), idx, response_mask)


def test_e_3():
    assert check("E.3", response_logprobs_right) is True
    assert check("E.3", response_logprobs_by_cross_entropy) is True
    wrong = (response_logprobs_no_shift, response_logprobs_mask_wrong_way, response_logprobs_every_token,
             response_logprobs_mean, response_logprobs_raw_logits, response_logprobs_detached)
    for answer in wrong:
        with pytest.raises(ExerciseFailed):
            check("E.3", answer)
    with pytest.raises(ExerciseFailed, match="shift by one"):
        check("E.3", response_logprobs_no_shift)
    with pytest.raises(ExerciseFailed, match="shifted the wrong way"):
        check("E.3", response_logprobs_mask_wrong_way)
    with pytest.raises(ExerciseFailed, match="prompt's and the padding's"):
        check("E.3", response_logprobs_every_token)
    with pytest.raises(ExerciseFailed, match="do not average"):
        check("E.3", response_logprobs_mean)
    with pytest.raises(ExerciseFailed, match="raw logits"):
        check("E.3", response_logprobs_raw_logits)
    with pytest.raises(ExerciseFailed, match="no gradient"):
        check("E.3", response_logprobs_detached)


# -- E.4 PPO's clipped objective ---------------------------------------------------------------


def clipped_objective_right(ratio, advantage, eps):
    return torch.minimum(ratio * advantage, torch.clamp(ratio, 1 - eps, 1 + eps) * advantage)


def clipped_objective_only_clipped(ratio, advantage, eps):
    return torch.clamp(ratio, 1 - eps, 1 + eps) * advantage


def clipped_objective_max(ratio, advantage, eps):
    return torch.maximum(ratio * advantage, torch.clamp(ratio, 1 - eps, 1 + eps) * advantage)


def clipped_objective_min_of_ratios(ratio, advantage, eps):
    return torch.minimum(ratio, torch.clamp(ratio, 1 - eps, 1 + eps)) * advantage


def clipped_objective_clip_product(ratio, advantage, eps):
    return torch.minimum(ratio * advantage, torch.clamp(ratio * advantage, 1 - eps, 1 + eps))


def clipped_objective_loss(ratio, advantage, eps):  # the loss, not the objective
    return -clipped_objective_right(ratio, advantage, eps)


def test_e_4():
    assert check("E.4", clipped_objective_right) is True
    wrong = (clipped_objective_only_clipped, clipped_objective_max, clipped_objective_min_of_ratios,
             clipped_objective_clip_product, clipped_objective_loss)
    for answer in wrong:
        with pytest.raises(ExerciseFailed):
            check("E.4", answer)
    with pytest.raises(ExerciseFailed, match="Only the clipped term"):
        check("E.4", clipped_objective_only_clipped)
    with pytest.raises(ExerciseFailed, match="take the minimum"):
        check("E.4", clipped_objective_max)
    with pytest.raises(ExerciseFailed, match="not over the ratios"):
        check("E.4", clipped_objective_min_of_ratios)
    with pytest.raises(ExerciseFailed, match="That is the loss"):
        check("E.4", clipped_objective_loss)
    with pytest.raises(ExerciseFailed, match="Clip the ratio, not the product"):
        check("E.4", clipped_objective_clip_product)


# -- E.5 a reward that length cannot hack ------------------------------------------------------


def sort_reward_right(row, text):
    try:
        answer = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return 0.0
    if not isinstance(answer, list) or not all(type(x) is int for x in answer):
        return 0.0
    numbers = ast.literal_eval(row["input"])
    if Counter(answer) != Counter(numbers):
        return 0.0
    target = sorted(numbers)
    return sum(a == b for a, b in zip(answer, target)) / len(target)


def sort_reward_json(row, text):
    try:
        answer = json.loads(text)
    except ValueError:
        return 0.0
    numbers = json.loads(row["input"])
    if not isinstance(answer, list) or any(type(x) is not int for x in answer) or sorted(answer) != sorted(numbers):
        return 0.0
    return sum(a == b for a, b in zip(answer, sorted(numbers))) / len(numbers)


def sort_reward_no_multiset(row, text):  # positions only: a padded answer keeps its full credit
    try:
        answer = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return 0.0
    if not isinstance(answer, list):
        return 0.0
    target = sorted(ast.literal_eval(row["input"]))
    return sum(a == b for a, b in zip(answer, target)) / len(target)


def sort_reward_exact_only(row, text):
    return float(sort_reward_right(row, text) == 1.0)


def sort_reward_raises(row, text):  # no try: a text that does not parse raises
    answer = ast.literal_eval(text.strip())
    if not isinstance(answer, list) or not all(type(x) is int for x in answer):
        return 0.0
    numbers = ast.literal_eval(row["input"])
    if Counter(answer) != Counter(numbers):
        return 0.0
    return sum(a == b for a, b in zip(answer, sorted(numbers))) / len(numbers)


def sort_reward_finds_a_list(row, text):  # digs the first list out of any text
    start, end = text.find("["), text.find("]")
    return sort_reward_right(row, text[start : end + 1]) if 0 <= start < end else 0.0


def sort_reward_strings(row, text):  # compares the characters
    target = str(sorted(ast.literal_eval(row["input"])))
    return sum(a == b for a, b in zip(text, target)) / len(target)


def test_e_5():
    assert check("E.5", sort_reward_right) is True
    assert check("E.5", sort_reward_json) is True
    wrong = (sort_reward_no_multiset, sort_reward_exact_only, sort_reward_raises, sort_reward_finds_a_list,
             sort_reward_strings)
    for answer in wrong:
        with pytest.raises(ExerciseFailed):
            check("E.5", answer)
    with pytest.raises(ExerciseFailed, match="padded.*not exactly the input's"):
        check("E.5", sort_reward_no_multiset)
    with pytest.raises(ExerciseFailed, match="partial credit"):
        check("E.5", sort_reward_exact_only)
    with pytest.raises(ExerciseFailed, match="must not raise"):
        check("E.5", sort_reward_raises)
    with pytest.raises(ExerciseFailed, match="whole response must be a list"):
        check("E.5", sort_reward_finds_a_list)
    with pytest.raises(ExerciseFailed, match="Compare numbers, not characters"):
        check("E.5", sort_reward_strings)


def test_e_5_the_reference_agrees_with_exact_match_on_full_credit():
    from minillm.align import exact_match_reward
    from minillm.exercises.e import sort_reward
    from minillm.synthetic import list_tasks

    for row in list_tasks(30, seed=1, tasks=("sort",)):
        assert sort_reward(row, row["output"]) == exact_match_reward(row, row["output"]) == 1.0
        assert sort_reward(row, row["output"][:-1] + ", 9]") == 0.0  # one more number: no credit
    row = {"instruction": "Sort the list.", "input": "[3, 1, 2]", "output": "[1, 2, 3]", "task": "sort"}
    assert sort_reward(row, "[3, 2, 1]") == pytest.approx(1 / 3)
    assert sort_reward(row, "[1, 3, 2]") == pytest.approx(1 / 3)
    assert sort_reward(row, "[1, 2, 3, 3]") == sort_reward(row, "[True, 2, 3]") == sort_reward(row, "x") == 0.0


# -- all of them -------------------------------------------------------------------------------

RIGHT = {"E.1": dpo_loss_right, "E.2": advantages_right, "E.3": response_logprobs_right,
         "E.4": clipped_objective_right, "E.5": sort_reward_right}


def test_the_checks_leave_the_random_states_alone():
    state, py_state = torch.random.get_rng_state(), random.getstate()
    for id, answer in RIGHT.items():
        assert check(id, answer) is True
    assert torch.equal(torch.random.get_rng_state(), state)
    assert random.getstate() == py_state


def test_an_answer_that_forgets_to_return_is_wrong_not_unattempted():
    def forgets_return(rewards):
        advantages = advantages_right(rewards)  # noqa: F841

    with pytest.raises(ExerciseFailed, match="should be a torch.Tensor, got NoneType"):
        check("E.2", forgets_return)
    with pytest.raises(ExerciseFailed, match="return a tuple of three tensors"):
        check("E.1", lambda pc, pr, rc, rr, beta: dpo_loss_right(pc, pr, rc, rr, beta)[0])
