"""Appendix E's diagrams: aligning the model on its own answers, with DPO and GRPO.

The figures: `E_three_stages` (pretraining, instruction tuning, alignment, and
the data of each), `E_response_logprob` (log p(response | prompt) of a padded
batch: the mask, the shift, the sum), `E_pairs` (preference pairs from the
model's answers and a checker), `E_dpo_loss` (four log-probs, two implicit
rewards, one margin, the loss), `E_grpo_group` (a group's rewards and
advantages; a group with no signal), `E_ppo_clip` (the clipped objective
against the ratio, for a positive and a negative advantage), `E_grpo_loop` (one
GRPO step) and `E_reward_hacking` (the exact answer against the length proxy).

Every number drawn comes from the package: the prompt is the list task "sort"
of `minillm.synthetic` and its right answer the task's own function; token ids
from `response_batch` with a 320-token BPE trained on the book's list tasks;
log-probs from `sequence_logprobs` of a tiny random GPT (the reference) and of
its copy after a few `train_dpo` steps on one pair (the policy; a fraction of a
second); the loss and rewards from `dpo_loss`; rewards from the programs of
`minillm.align` (`exact_match_reward`, `length_reward`,
`looks_like_answer_reward`); advantages from `group_advantages`; the clipped
objective and its gradient from `grpo_loss`; settings from `DPOConfig` and
`GRPOConfig`. The model's wrong answers are not sampled: they are made from the
list by simple mistakes (drop a repeated item, swap two, reverse, add one) and
drawn as examples; the answer after training on the length reward is one that a
run of the appendix wrote. Values computed by PyTorch are rounded before they
are drawn.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from matplotlib import patches

from minillm.align import exact_match_reward, length_reward, looks_like_answer_reward, response_batch, sequence_logprobs
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, SERIES, STYLE, Diagram, cell, pale, text_width
from minillm.dpo import DPOConfig, PreferencePair, dpo_loss, train_dpo
from minillm.grpo import GRPOConfig, group_advantages, grpo_loss
from minillm.instruct import add_special_tokens
from minillm.model import GPT, GPTConfig
from minillm.synthetic import TASKS, list_tasks
from minillm.tokenizer import BPETokenizer

MARKER = SERIES[3]  # a chat marker: one special id (as in appendix C's template figure)
RIGHT, WRONG = SERIES[2], ACCENT  # a right answer (green), a wrong one (red), as in chapter 08
NUMBERS = [5, 2, 8, 2]  # the list the figures' prompt is about (short: its tokens fit a row)
#: A sort prompt's list, and an answer the policy wrote to it after GRPO on `length_reward` (a run of the appendix).
HACKED_NUMBERS, HACKED = [6, 7, 9, 2, 9, 0], "[0, 0, 2, 7, 9, 9, 9, 9, 9]"
DPO_STEPS, DPO_LR = 5, 1e-3  # the worked example's plain-DPO steps on one pair (a tiny model moves fast)


# ---------------------------------------------------------------------------
# The prompt, its answers, the tokenizer and the tiny models
# ---------------------------------------------------------------------------


def _row(task: str = "sort", numbers: list[int] = NUMBERS) -> dict:
    """The list task `task` on `numbers` as a row: instruction, input, and the output its function computes."""
    instruction, answer = TASKS[task]
    return {"instruction": instruction, "input": str(numbers), "output": str(answer(numbers))}


def _mistakes() -> dict[str, str]:
    """Wrong answers to the sort prompt, made from the list by simple mistakes (examples, not sampled)."""
    right = sorted(NUMBERS)
    swapped = right[:-2] + [right[-1], right[-2]]
    return {"a repeat dropped": str(sorted(set(NUMBERS))), "two items swapped": str(swapped),
            "reversed, not sorted": str(TASKS["reverse"][1](NUMBERS)),
            "an item added": str(sorted(NUMBERS + [max(NUMBERS)]))}


def _pair() -> PreferencePair:
    """The pair of the log-prob and DPO figures: the right answer, and the repeat-dropped one."""
    row = _row()
    return PreferencePair(row, row["output"], _mistakes()["a repeat dropped"])


@functools.lru_cache(maxsize=1)
def _tokenizer() -> BPETokenizer:
    """A 320-token BPE trained on 400 of the book's list tasks, plus the chat markers (as appendix C's)."""
    rows = list_tasks(400, seed=0)
    text = "\n".join(f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows)
    return add_special_tokens(BPETokenizer.train(text, 320))


def _tiny_gpt() -> GPT:
    """A random 1-layer GPT over the tokenizer's vocabulary: the worked examples' reference model."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=_tokenizer().vocab_size, context_length=64, d_model=16, n_layer=1, n_head=2)
    return GPT(config).eval()


def _batch() -> dict[str, torch.Tensor]:
    """The pair as one right-padded batch: row 0 the chosen response, row 1 the rejected one."""
    pair = _pair()
    return response_batch([pair.prompt, pair.prompt], [pair.chosen, pair.rejected], _tokenizer(), 64)


@functools.lru_cache(maxsize=1)
def _dpo_example() -> dict:
    """The four sequence log-probs of the pair, before (reference) and after `DPO_STEPS` plain-DPO steps (policy).

    Also the rewards, margin and loss that `dpo_loss` computes from them, and
    the reference's per-token log-probs (B, T-1). Everything rounded.
    """
    reference, pair = _tiny_gpt(), _pair()
    policy = copy.deepcopy(reference)
    config = DPOConfig(lr=DPO_LR, steps=DPO_STEPS, batch_size=1, sft_coef=0.0, device="cpu")
    train_dpo(policy, reference, [pair], _tokenizer(), config)
    batch = _batch()
    with torch.no_grad():
        ref = sequence_logprobs(reference, batch["idx"], batch["response_mask"])
        pol = sequence_logprobs(policy, batch["idx"], batch["response_mask"])
        per_token = sequence_logprobs(reference, batch["idx"], batch["response_mask"], per_token=True)
    # rounded to the 2 decimals drawn, then through dpo_loss: the rewards are the differences of the drawn numbers
    pol, ref = (torch.tensor([round(float(v), 2) for v in t], dtype=torch.float64) for t in (pol, ref))
    loss, chosen, rejected = dpo_loss(pol[:1], pol[1:], ref[:1], ref[1:], config.beta)
    out = {"pc": pol[0], "pr": pol[1], "rc": ref[0], "rr": ref[1], "reward_c": chosen[0], "reward_r": rejected[0],
           "loss": loss, "beta": config.beta}
    out = {k: round(float(v), 6) for k, v in out.items()}
    out["margin"] = round(out["reward_c"] - out["reward_r"], 6)
    out["per_token"] = [[round(float(v), 3) for v in row] for row in per_token]
    return out


def _group() -> tuple[list[str], list[float], list[float]]:
    """Eight answers to the sort prompt (right ones and mistakes), their exact-match rewards and advantages."""
    row, wrong = _row(), _mistakes()
    answers = [wrong["a repeat dropped"], row["output"], wrong["reversed, not sorted"], row["output"],
               wrong["a repeat dropped"], wrong["two items swapped"], row["output"], wrong["an item added"]]
    rewards = [exact_match_reward(row, a) for a in answers]
    adv = group_advantages(torch.tensor([rewards]))[0]
    return answers, rewards, [round(float(a), 2) for a in adv]


# ---------------------------------------------------------------------------
# Drawing helpers (as appendix C's)
# ---------------------------------------------------------------------------




def _lines(d: Diagram, x: float, y: float, lines, color: str = MUTED, step: float = 0.21, size: float = 9,
           ha: str = "left") -> None:  # fmt: skip
    """Lines of 9-point text from (x, y) downwards: captions and notes."""
    for k, line in enumerate(lines):
        d.text(x, y - step * k, line, size=size, color=color, ha=ha)


def _shown(piece: str) -> str:
    """A token's text, newlines and leading spaces made visible."""
    return piece.replace("\n", "↵").replace(" ", "␣")


def _signed(x: float, digits: int = 1) -> str:
    """+1.7, −0.6 (a real minus sign)."""
    return f"{x:+.{digits}f}".replace("-", "−")


def _num(x: float, digits: int = 1) -> str:
    """−81.1 (a real minus sign)."""
    return f"{x:.{digits}f}".replace("-", "−")


def _axes(d: Diagram, x0: float, y0: float, w: float, h: float, xlim, ylim):
    """A plot frame at (x0, y0), w x h inches, for data in xlim x ylim; returns the data -> inches map."""
    (a, b), (c, e) = xlim, ylim

    def at(x: float, y: float) -> tuple[float, float]:
        return x0 + w * (x - a) / (b - a), y0 + h * (y - c) / (e - c)

    d.line([(x0, y0 + h), (x0, y0), (x0 + w, y0)], color=INK, lw=0.9)
    return at


# ---------------------------------------------------------------------------
# The three stages
# ---------------------------------------------------------------------------


@diagram("E_three_stages")
def three_stages() -> Diagram:
    """Pretraining (next token of text), instruction tuning (given answers), alignment (the model's own, judged)."""
    row, wrong = _row(), _mistakes()["a repeat dropped"]
    d = Diagram(7.3, 4.3, title="Three stages of training, three kinds of data")
    w, gap, x0, top = 2.15, 0.3, 0.15, 3.55
    stages = (("1. pretraining", "chapter 05", "predict the next token", "of every position of the text"),
              ("2. instruction tuning", "chapter 07", "imitate a given answer:", "loss on the response tokens"),
              ("3. alignment", "appendix E", "learn from its own answers,", "judged better or worse"))
    xs = [x0 + k * (w + gap) for k in range(3)]
    models = []
    for x, (name, where, *learns) in zip(xs, stages):
        d.text(x + w / 2, top + 0.2, name, size=10, weight="bold")
        d.text(x + w / 2, top - 0.02, where, size=9, color=MUTED)
        m = d.box(x + 0.35, 0.95, w - 0.7, 0.45, "the GPT", kind="layer", size=9)
        models.append(m)
        _lines(d, x + w / 2, 0.72, learns, color=INK, ha="center")
    # 1: text
    box = d.box(xs[0], 1.75, w, 1.55, kind="data")
    _lines(d, xs[0] + 0.1, box.y + box.h - 0.22, ("text: the curated corpus", "(chapter 01), any document"),
           color=INK)
    _lines(d, xs[0] + 0.1, box.y + 0.72, ("no question, no answer:", "the text is its own target"))
    # 2: a prompt and its right answer
    box = d.box(xs[1], 1.75, w, 1.55, kind="data")
    _lines(d, xs[1] + 0.1, box.y + box.h - 0.22, ("prompt + the right answer", row["instruction"], row["input"]),
           color=INK)
    d.text(xs[1] + 0.1, box.y + 0.55, f"→ {row['output']}", size=9, color=RIGHT, ha="left")
    d.text(xs[1] + 0.1, box.y + 0.25, "written by people or a program", size=9, color=MUTED, ha="left")
    # 3: the model's own answers, judged two ways
    x = xs[2]
    dpo = d.box(x, 2.6, w, 0.7, kind="data")
    _lines(d, x + 0.1, dpo.y + dpo.h - 0.17, ("DPO: pairs, better and worse",), color=INK)
    d.text(x + 0.1, dpo.y + 0.3, f"✓ {row['output']}", size=9, color=RIGHT, ha="left")
    d.text(x + 0.1, dpo.y + 0.1, f"✗ {wrong}  (its own answer)", size=9, color=WRONG, ha="left")
    grpo = d.box(x, 1.75, w, 0.7, kind="data")
    _lines(d, x + 0.1, grpo.y + grpo.h - 0.17, ("GRPO: prompts + a program", "that scores each sample:"),
           color=INK, step=0.19)
    d.text(x + 0.1, grpo.y + 0.12, "exact_match_reward: 1 or 0", size=9, color=MUTED, ha="left")
    for a, b in zip(models, models[1:]):
        d.arrow(a.right, b.left, label="weights", label_offset=(0, 0.13))
    for x in xs:
        d.arrow((x + w / 2, 1.75), (x + w / 2, 1.4))
    d.text(3.65, 0.2, "each stage starts from the weights of the one before; only the data and the loss change",
           size=9, color=MUTED)
    return d


# ---------------------------------------------------------------------------
# Log-probabilities of a response
# ---------------------------------------------------------------------------


@diagram("E_response_logprob")
def response_logprob() -> Diagram:
    """A chosen and a rejected row, right-padded; mask on response + <|end|>; logits at t-1 score token t; sums."""
    tok, batch, ex = _tokenizer(), _batch(), _dpo_example()
    idx, mask = batch["idx"].tolist(), batch["response_mask"].tolist()
    n_prompt = mask[0].index(True)
    assert n_prompt == mask[1].index(True)  # one prompt, two responses
    T = len(idx[0])
    ends = [max(t for t in range(T) if mask[r][t]) + 1 for r in range(2)]  # one past each row's <|end|>
    assert ends[0] == T > ends[1]  # the rejected response is the shorter: it is padded
    markers = {i: name for name, i in tok.special_tokens.items()}

    def label(r: int, t: int) -> str:
        return "pad" if t >= ends[r] else markers.get(idx[r][t], _shown(tok.decode([idx[r][t]])))

    d = Diagram(7.3, 4.3, title="log p(response | prompt): mask, shift by one, sum")
    ch, x0 = 0.3, 0.95
    xs, x = {}, x0 + 0.55  # the elided prompt (one cell), then its last token, then the response
    for t in range(n_prompt - 1, T):
        w = max(0.335, max(text_width(d, label(r, t)) for r in range(2)) + 0.1)
        xs[t], x = (x, w), x + w + 0.03
    rows_y = (2.45, 1.55)
    names = ("chosen", "rejected")
    for r, y in enumerate(rows_y):
        d.text(x0 - 0.1, y + ch / 2 + 0.08, f"row {r}", size=9, color=MUTED, ha="right")
        d.text(x0 - 0.1, y + ch / 2 - 0.1, names[r], size=9, color=RIGHT if r == 0 else WRONG, ha="right")
        d.text(x0 - 0.1, y - 0.22, "log p", size=9, color=MUTED, ha="right")
        cell(d, x0, y, 0.5, ch, "…", fill=STYLE["op"][0], edge=STYLE["op"][1])
        d.text(x0 + 0.25, y - 0.22, "0", size=9, color="#9a9a9a")
        for t in range(n_prompt - 1, T):
            (x, w), i = xs[t], idx[r][t]
            if t >= ends[r]:  # padding (the end token's id, masked out)
                cell(d, x, y, w, ch, "pad", fill="#f4f4f4", edge="#b0b0b0", color=MUTED, hatch="///", lw=0.6)
            elif mask[r][t]:
                special = i in markers
                cell(d, x, y, w, ch, label(r, t), fill=STYLE["tensor"][0],
                      edge=MARKER if special else STYLE["tensor"][1], color=MARKER if special else INK,
                      lw=1.4 if special else 1.0)
            else:
                cell(d, x, y, w, ch, label(r, t), fill=STYLE["op"][0], edge=STYLE["op"][1])
            # the log-prob of token t, computed from the logits at t - 1 (entry t - 1 of per_token), under it
            value = ex["per_token"][r][t - 1]
            d.text(x + w / 2, y - 0.22, _num(value) if mask[r][t] else "0", size=9,
                   color=INK if mask[r][t] else "#9a9a9a")
        assert abs(sum(ex["per_token"][r]) - ex["rc" if r == 0 else "rr"]) < 0.05
        xr = xs[T - 1][0] + xs[T - 1][1] + 0.08
        d.text(xr, y - 0.22, f"Σ = {_num(ex['rc' if r == 0 else 'rr'], 2)}", size=9, ha="left", weight="bold")
    # the shift: the logits at t - 1 predict token t (arcs above row 0)
    y = rows_y[0] + ch
    for t in range(n_prompt, ends[0]):
        first = t == n_prompt
        (xa, wa), (xb, wb) = xs[t - 1], xs[t]
        d.arrow((xa + wa / 2, y), (xb + wb / 2, y), curve=-0.9, color=ACCENT if first else "#9a9a9a",
                lw=1.1 if first else 0.7)
    top = y + 0.45
    d.brace(x0, xs[n_prompt - 1][0] + xs[n_prompt - 1][1], top, f"prompt: {n_prompt} tokens", below=False)
    d.brace(xs[n_prompt][0], xs[T - 1][0] + xs[T - 1][1], top, f"response + end marker: {T - n_prompt} tokens",
            below=False)
    d.text(0.15, 3.78, "red: the last prompt token's logits score the first response token; each token is "
           "scored by the one before", size=9, color=ACCENT, ha="left")
    # legend and notes
    ly = 0.78
    legend = ((STYLE["op"][0], STYLE["op"][1], None, "prompt: mask False"),
              (STYLE["tensor"][0], STYLE["tensor"][1], None, "response (with its end): mask True"),
              ("#f4f4f4", "#b0b0b0", "///", "right padding: mask False"))
    for (fill, edge, hatch, text), x in zip(legend, (0.15, 1.95, 4.85)):
        cell(d, x, ly, 0.22, 0.2, fill=fill, edge=edge, hatch=hatch)
        d.text(x + 0.3, ly + 0.1, text, size=9, ha="left")
    log_v = -torch.log(torch.tensor(float(tok.vocab_size))).item()
    _lines(d, 0.15, 0.42, (f"sequence_logprobs(model, idx, response_mask): one forward pass over the (2, {T}) batch; "
                           "the sums, (2,)", f"a tiny random GPT: each token near −log V = {_num(log_v)} "
                           f"(V = {tok.vocab_size}); padding after a row leaves its sum as it is"))
    return d


# ---------------------------------------------------------------------------
# Preference pairs
# ---------------------------------------------------------------------------


@diagram("E_pairs")
def pairs() -> Diagram:
    """The model's greedy and sampled answers, checked by a program; the right output against each wrong one."""
    row, wrong = _row(), _mistakes()
    answers = (("greedy", wrong["a repeat dropped"]), ("sample 1", row["output"]),
               ("sample 2", wrong["a repeat dropped"]), ("sample 3", wrong["two items swapped"]),
               ("sample 4", wrong["reversed, not sorted"]))
    rewards = [exact_match_reward(row, a) for _, a in answers]
    rejected = list(dict.fromkeys(a for (_, a), r in zip(answers, rewards) if r == 0))  # distinct, in order
    d = Diagram(7.3, 4.7, title="Preference pairs from the model's own answers")
    prompt = d.box(0.15, 3.55, 1.75, 0.6, kind="data")
    _lines(d, 0.25, prompt.y + 0.42, (row["instruction"], row["input"]), color=INK)
    model = d.box(2.35, 3.6, 1.5, 0.5, "the chat model\n(chapter 07)", kind="layer", size=9)
    d.arrow(prompt.right, model.left)
    _lines(d, 4.05, 4.02, ("answers it, greedily (temperature 0)", "and by sampling at temperature 1",
                           "(the answers drawn are examples)"), step=0.2)
    w, gap, y = 1.3, 0.1, 2.55
    xs = [0.15 + k * (w + gap) for k in range(len(answers))]
    seen = set()
    for x, (name, answer), reward in zip(xs, answers, rewards):
        d.arrow(model.bottom, (x + w / 2, y + 0.7), color="#9a9a9a", lw=0.8)
        d.text(x + w / 2, y + 0.55, name, size=9, color=MUTED)
        d.box(x, y, w, 0.4, answer, kind="data", size=9)
        ok = reward == 1
        d.text(x + w / 2, y - 0.68, f"{reward:g}  {'✓' if ok else '✗'}", size=10, color=RIGHT if ok else WRONG,
               weight="bold")
        if not ok and answer in seen:
            d.text(x + w / 2, y - 0.9, "a repeat: dropped", size=9, color=MUTED)
        seen.add(answer)
    check = d.box(0.15, y - 0.45, xs[-1] + w - 0.15, 0.25, kind="op")
    d.text(check.center[0], check.center[1], "exact_match_reward(row, answer): 1 if it is the row's output, else 0",
           size=9)
    for x in xs:
        d.arrow((x + w / 2, y), (x + w / 2, check.y + check.h))
    # the pairs: the row's output (computed by the task, not sampled) against each distinct wrong answer
    top = 1.2
    d.text(0.15, top + 0.15, f"{len(rejected)} pairs: the right output, chosen, against each distinct wrong answer, "
           "rejected", size=10, weight="bold", ha="left")
    pw = (7.15 - 0.15 - 0.2 * (len(rejected) - 1)) / len(rejected)
    for k, bad in enumerate(rejected):
        x = 0.15 + k * (pw + 0.2)
        d.box(x, top - 0.72, pw, 0.62, kind="data")
        d.text(x + 0.1, top - 0.26, "chosen", size=9, color=MUTED, ha="left")
        d.text(x + 0.85, top - 0.26, row["output"], size=9, color=RIGHT, ha="left")
        d.text(x + 0.1, top - 0.55, "rejected", size=9, color=MUTED, ha="left")
        d.text(x + 0.85, top - 0.55, bad, size=9, color=WRONG, ha="left")
    _lines(d, 0.15, 0.3, ("chosen: the task's own answer, even when no sample found it; rejected: the model's",
                          "answers that the program marks wrong. A prompt the model always answers right gives "
                          "no pair."),
           step=0.2)
    return d


# ---------------------------------------------------------------------------
# DPO's loss
# ---------------------------------------------------------------------------


@diagram("E_dpo_loss")
def dpo_loss_figure() -> Diagram:
    """Policy and frozen reference score chosen and rejected; two implicit rewards; margin; -log sigmoid(margin)."""
    ex, pair = _dpo_example(), _pair()
    beta = ex["beta"]
    d = Diagram(7.3, 4.95, title="DPO's loss on one pair: four log-probs, two rewards, one margin")
    _lines(d, 0.15, 4.42, ("log p(response + end | prompt) by sequence_logprobs; the reference: a tiny random GPT; "
                           "the policy:", f"its copy after {DPO_STEPS} plain-DPO steps on this pair (lr = {DPO_LR:g}); "
                           "everything else by dpo_loss"), step=0.2)
    cx, cw, chh = (1.75, 3.0), 1.05, 0.4
    d.text(cx[0] + cw / 2, 3.82, "chosen", size=10, weight="bold", color=RIGHT)
    d.text(cx[1] + cw / 2, 3.82, "rejected", size=10, weight="bold", color=WRONG)
    d.text(cx[0] + cw / 2, 3.61, pair.chosen, size=9, color=RIGHT)
    d.text(cx[1] + cw / 2, 3.61, pair.rejected, size=9, color=WRONG)
    rows = ((2.95, "policy π", "layer", "trained", ("pc", "pr")),
            (2.3, "reference", "op", "frozen copy", ("rc", "rr")))
    for y, name, kind, note, keys in rows:
        d.box(0.15, y, 1.4, chh + 0.05, f"{name}\n({note})", kind=kind, size=9)
        for x, key in zip(cx, keys):
            d.box(x, y + 0.025, cw, chh, _num(ex[key], 2), kind="tensor", size=9)
    yr = 1.45
    d.text(1.6, yr + chh / 2 + 0.1, "implicit reward", size=9, ha="right")
    d.text(1.6, yr + chh / 2 - 0.1, f"β (π − ref), β = {beta:g}", size=9, color=MUTED, ha="right")
    for x, key, color in ((cx[0], "reward_c", RIGHT), (cx[1], "reward_r", WRONG)):
        d.box(x, yr, cw, chh, f"r = {_signed(ex[key], 2)}", kind="tensor", size=9, edge=color)
        d.arrow((x + cw / 2, 2.32), (x + cw / 2, yr + chh))
    margin = d.box(1.95, 0.72, 1.9, 0.42, f"margin r_c − r_r = {_signed(ex['margin'], 2)}", kind="op", size=9)
    d.arrow((cx[0] + cw / 2, yr), (margin.x + 0.45, margin.y + margin.h))
    d.arrow((cx[1] + cw / 2, yr), (margin.x + margin.w - 0.45, margin.y + margin.h))
    loss = d.box(1.95, 0.12, 1.9, 0.42, f"loss −log σ(margin) = {ex['loss']:.2f}", kind="op", size=9,
                 edge=ACCENT)
    d.arrow(margin.bottom, loss.top)
    p = torch.sigmoid(torch.tensor(ex["margin"])).item()
    _lines(d, 0.15, 1.0, ("Bradley–Terry:", "p(chosen ≻ rejected)", f"= σ(margin) = {p:.2f}"), color=INK, step=0.2)
    # the loss as a function of the margin, drawn from F.logsigmoid
    ox, oy, pw, ph = 4.75, 1.1, 2.3, 2.0
    lo, hi, top = -4.0, 4.0, 4.5
    at = _axes(d, ox, oy, pw, ph, (lo, hi), (0.0, top))
    ms = [lo + (hi - lo) * k / 80 for k in range(81)]  # Python floats: torch.linspace's last bits vary by CPU
    ys = (-F.logsigmoid(torch.tensor(ms, dtype=torch.float64))).tolist()
    d.line([at(m, round(v, 4)) for m, v in zip(ms, ys)], color=SERIES[0], lw=1.8)
    zero = at(0.0, 0.0)
    d.line([(zero[0], oy), (zero[0], oy + ph)], color="#c8c8c8", lw=0.7, dashed=True)
    for m in (lo, 0.0, hi):
        x, _ = at(m, 0)
        d.line([(x, oy), (x, oy - 0.05)], color=INK)
        d.text(x, oy - 0.16, _num(m, 0), size=9)
    for v in (0, 2, 4):
        _, y = at(lo, v)
        d.line([(ox, y), (ox - 0.05, y)], color=INK)
        d.text(ox - 0.09, y, str(v), size=9, ha="right")
    d.text(ox + pw / 2, oy - 0.38, "margin r_c − r_r", size=9)
    d.text(ox + pw / 2, oy + ph + 0.3, "−log σ(margin)", size=10, weight="bold")
    log2 = -F.logsigmoid(torch.tensor(0.0)).item()
    start, here = at(0.0, log2), at(ex["margin"], ex["loss"])
    d.circle(*start, 0.045, kind="tensor")
    d.line([(start[0] + 0.03, start[1] + 0.04), (start[0] + 0.12, start[1] + 0.55)], color=MUTED, lw=0.7)
    _lines(d, start[0] + 0.0, start[1] + 1.05, ("step 0:", "policy = reference,", f"log 2 = {log2:.2f}"),
           color=INK, step=0.2)
    d.circle(*here, 0.05, kind="warn")
    d.line([(here[0] + 0.04, here[1] + 0.04), (here[0] + 0.2, here[1] + 0.22)], color=ACCENT, lw=0.7)
    _lines(d, here[0] + 0.16, here[1] + 0.5, ("this pair:", f"{ex['loss']:.2f}"), color=ACCENT, step=0.2)
    _lines(d, 4.35, 0.5, ("only the margin counts: plain DPO", "may lower both log-probs; sft_coef",
                          "adds the chosen's NLL (RPO)"), step=0.2)
    return d


# ---------------------------------------------------------------------------
# GRPO: groups, the clipped objective, the loop
# ---------------------------------------------------------------------------


@diagram("E_grpo_group")
def grpo_group() -> Diagram:
    """One prompt, G = 8 samples, rewards 0/1, advantages (r - mean) / std; a group of equal rewards gives zeros."""
    g = GRPOConfig().group_size
    row, answers, rewards, adv = _row(), *_group()
    assert len(answers) == g
    easy = _row("first")
    easy_rewards = [exact_match_reward(easy, easy["output"])] * g  # every sample right
    easy_adv = [round(float(a), 2) for a in group_advantages(torch.tensor([easy_rewards]))[0]]
    r = torch.tensor(rewards)
    mean, std = r.mean().item(), r.std(correction=0).item()
    d = Diagram(7.3, 4.65, title=f"A group of G = {g} samples of one prompt: rewards and advantages")
    top, h = 3.55, 0.3
    # the informative group
    d.box(0.15, top + 0.05, 2.6, 0.5, kind="data")
    _lines(d, 0.25, top + 0.4, (row["instruction"], row["input"]), color=INK, step=0.2)
    d.text(0.15, top - 0.2, "sample (examples)", size=9, color=MUTED, ha="left")
    d.text(1.7, top - 0.2, "reward", size=9, color=MUTED)
    d.text(2.6, top - 0.2, "advantage", size=9, color=MUTED)
    xa, scale = 3.75, 0.42  # the advantage bars: zero line at xa, inches per unit
    d.text(xa, top - 0.2, "its tokens pushed", size=9, color=MUTED)
    y0 = top - 0.55
    for k, (answer, reward, a) in enumerate(zip(answers, rewards, adv)):
        y = y0 - k * h
        ok = reward == 1
        d.text(0.15, y, answer, size=9, ha="left", color=RIGHT if ok else WRONG)
        d.text(1.7, y, f"{reward:g}", size=9, color=RIGHT if ok else WRONG)
        d.text(2.6, y, _signed(a, 2), size=9, color=RIGHT if ok else WRONG)
        d.ax.add_patch(patches.Rectangle((xa, y - 0.09), a * scale, 0.18, fc=pale(RIGHT if ok else WRONG, 0.45),
                                         ec=RIGHT if ok else WRONG, lw=0.8))
        d.text(xa + a * scale + (0.08 if a > 0 else -0.08), y, "up" if a > 0 else "down", size=9,
               ha="left" if a > 0 else "right", color=RIGHT if ok else WRONG)
    ybot = y0 - (g - 1) * h
    d.line([(xa, y0 + 0.2), (xa, ybot - 0.2)], color=INK, lw=0.9)
    assert abs(sum(adv)) < 0.05
    _lines(d, 0.15, ybot - 0.45, (f"mean {mean:.3f}, std {std:.3f}: A = (r − mean) / (std + ε),",
                                  "by group_advantages; a group's advantages sum to 0"),
           color=INK, step=0.2)
    # the group with no signal
    x2 = 4.95
    d.box(x2, top + 0.05, 2.1, 0.5, kind="data")
    _lines(d, x2 + 0.1, top + 0.4, ("Return the first item", f"of the list. {easy['input']}"), color=INK, step=0.2)
    assert easy["instruction"] == "Return the first item of the list."
    d.text(x2, top - 0.2, "sample", size=9, color=MUTED, ha="left")
    d.text(x2 + 0.95, top - 0.2, "reward", size=9, color=MUTED)
    d.text(x2 + 1.75, top - 0.2, "advantage", size=9, color=MUTED)
    for k, (reward, a) in enumerate(zip(easy_rewards, easy_adv)):
        y = y0 - k * h
        d.text(x2, y, easy["output"], size=9, ha="left", color=RIGHT)
        d.text(x2 + 0.95, y, f"{reward:g}", size=9, color=RIGHT)
        d.text(x2 + 1.75, y, f"{abs(a):.2f}", size=9, color=MUTED)
    d.line([(x2 - 0.2, y0 + 0.2), (x2 - 0.2, ybot - 0.2)], color="#c8c8c8", lw=0.8, dashed=True)
    _lines(d, x2, ybot - 0.45, ("all right (or all wrong): all 0,", "no signal: left out of the update"),
           color=ACCENT, step=0.2)
    return d


def _clipped(adv: float, eps: float) -> tuple[list[float], list[float], list[float]]:
    """(ratios, objective, its gradient) of one token with advantage `adv`, from `grpo_loss` and autograd.

    The ratios fall between hundredths (0.405, 0.415, ...), never on a clip bound,
    where the last bit of exp(log r) would decide on which side the point lies.
    """
    ratios = [round(0.405 + 0.01 * k, 3) for k in range(120)]
    values, grads = [], []
    one = torch.ones(1, 1, dtype=torch.bool)
    for r in ratios:
        logp = torch.tensor([[r]], dtype=torch.float64).log().requires_grad_()
        loss, _ = grpo_loss(logp, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([adv], dtype=torch.float64),
                            one, clip_eps=eps)
        (grad,) = torch.autograd.grad(-loss, logp)
        values.append(round(-loss.item(), 6))
        grads.append(round(grad.item(), 6))
    return ratios, values, grads


@diagram("E_ppo_clip")
def ppo_clip() -> Diagram:
    """min(ratio A, clip(ratio) A) against the ratio for A > 0 and A < 0; flat (no gradient) past the clip."""
    config = GRPOConfig()
    eps = config.clip_eps
    d = Diagram(7.3, 3.95,
                title="The clipped objective of one token: min(ratio · A, clip(ratio, 1 − ε, 1 + ε) · A)")
    pw, ph, oy = 2.75, 2.05, 1.05
    for adv, x0 in ((1.0, 0.75), (-1.0, 4.3)):
        ratios, values, grads = _clipped(adv, eps)
        lo, hi = (0.3, 1.7) if adv > 0 else (-1.7, -0.3)
        at = _axes(d, x0, oy, pw, ph, (0.4, 1.6), (lo, hi))
        flat = [r for r, gr in zip(ratios, grads) if gr == 0]  # where the clip stops the gradient
        assert flat == [r for r in ratios if (r > 1 + eps if adv > 0 else r < 1 - eps)]
        # the band: from half-way between the last sloped sample and the first flat one, to the frame's edge
        sloped = [r for r in ratios if r not in flat]
        bound = round((min(flat) + max(sloped)) / 2 if adv > 0 else (max(flat) + min(sloped)) / 2, 3)
        a, b = (at(bound, lo), at(1.6, hi)) if adv > 0 else (at(0.4, lo), at(bound, hi))
        d.ax.add_patch(patches.Rectangle(a, b[0] - a[0], b[1] - a[1], fc=pale(ACCENT, 0.85), ec="none"))
        d.line([at(r, r * adv) for r in (0.4, 1.6)], color=MUTED, lw=1.0, dashed=True)
        d.line([at(r, v) for r, v in zip(ratios, values)], color=SERIES[0], lw=2.0)
        for r in (0.4, 1 - eps, 1.0, 1 + eps, 1.6):
            x, _ = at(r, lo)
            d.line([(x, oy), (x, oy - 0.05)], color=INK)
            d.text(x, oy - 0.16, f"{r:g}", size=9)
            if r in (1 - eps, 1 + eps):
                d.line([(x, oy), (x, oy + ph)], color="#c8c8c8", lw=0.7, dashed=True)
        for v in (0.5 * adv, 1.0 * adv, 1.5 * adv):
            _, y = at(ratios[0], v)
            d.line([(x0, y), (x0 - 0.05, y)], color=INK)
            d.text(x0 - 0.09, y, _num(v), size=9, ha="right")
        d.text(x0 + pw / 2, oy - 0.4, "ratio = π(token) / π_old(token)", size=9)
        d.text(x0 - 0.55, oy + ph / 2, "objective", size=9, rotation=90, color=MUTED)
        d.text(x0 + pw / 2, oy + ph + 0.22, f"A = {adv:+g}: better than its group" if adv > 0 else
               f"A = {_num(adv, 0)}: worse than its group", size=10, weight="bold")
        xf, yf = at((min(flat) + max(flat)) / 2, 0.7 * adv if adv > 0 else 1.25 * adv)
        _lines(d, xf, yf, ("clipped: flat,", "gradient 0"), color=ACCENT, ha="center", step=0.2)
    d.text(0.15, 0.4, f"blue: the objective (ε = clip_eps = {eps:g}); dashed: ratio · A unclipped; red band: "
           "no gain, no gradient", size=9, color=MUTED, ha="left")
    d.text(0.15, 0.18, f"with inner_updates = {config.inner_updates} (the default) the ratio is exactly 1: the "
           "clip acts only from a second update on", size=9, color=MUTED, ha="left")
    return d


@diagram("E_grpo_loop")
def grpo_loop() -> Diagram:
    """One train_grpo step: prompts, G samples each (KV cache), rewards, advantages, loss on the responses, AdamW."""
    c = GRPOConfig()
    p, g = c.prompts_per_step, c.group_size
    d = Diagram(7.3, 4.25, title="One step of GRPO (train_grpo), repeated for every step")
    w, h, gap = 1.3, 0.62, 0.15
    xs = [0.15 + k * (w + gap) for k in range(5)]
    y1, y2, y3 = 2.9, 1.7, 0.55
    prompts = d.box(xs[0], y1, w, h, f"{p} prompts\n(epoch shuffle)", kind="data", size=9)
    policy = d.box(xs[1], y1, w, h, f"policy: G = {g}\nsamples each", kind="layer", size=9)
    answers = d.box(xs[2], y1, w, h, f"{p * g} answers,\n≤ {c.max_new_tokens} tokens", kind="data", size=9)
    reward = d.box(xs[3], y1, w, h, "reward_fn:\na program", kind="op", size=9)
    rewards = d.box(xs[4], y1, w, h, "rewards", kind="tensor", size=9, shape=f"(P, G) = ({p}, {g})")
    for a, b in ((prompts, policy), (policy, answers), (answers, reward), (reward, rewards)):
        d.arrow(a.right, b.left)
    d.text(policy.center[0], y1 + h + 0.32, "sample_group: one batched decode", size=9, color=MUTED)
    d.text(policy.center[0], y1 + h + 0.13, f"with the KV cache, T = {c.temperature:g}", size=9, color=MUTED)
    d.text(reward.center[0], y1 + h + 0.13, "exact_match_reward", size=9, color=MUTED)
    adv = d.box(xs[4], y2, w, h, "(r − mean) / std\nin each group", kind="op", size=9)
    d.arrow((rewards.center[0], y1 - 0.25), adv.top)
    d.text(adv.center[0] - 0.1, y2 - 0.15, "group_advantages", size=9, color=MUTED)
    d.text(adv.center[0] - 0.1, y2 - 0.35, "equal groups dropped", size=9, color=ACCENT)
    advt = d.box(xs[3], y2, w, h, "advantages", kind="tensor", size=9)
    d.text(advt.center[0] + 0.12, y2 - 0.15, "(N,)", size=9, color=MUTED, ha="left")
    d.arrow(adv.left, advt.right)
    logps = d.box(xs[2] - 0.05, y2, w + 0.1, h, "sequence_logprobs\nper token", kind="tensor", size=9)
    d.text(logps.center[0] - 0.12, y2 - 0.15, "(N, T − 1)", size=9, color=MUTED, ha="right")
    d.arrow(answers.bottom, logps.top, label="prompt + answer, packed", label_offset=(0.95, 0))
    loss = d.box(xs[2], y3, xs[3] + w - xs[2], h, "grpo_loss, on each response token:\n"
                 "min(ratio · A, clip(ratio) · A)", kind="op", size=9)
    d.arrow(logps.bottom, (logps.center[0], y3 + h))
    d.arrow(advt.bottom, (advt.center[0], y3 + h))
    step = d.box(xs[1], y3, w, h, "backward, clip,\nAdamW step", kind="op", size=9)
    d.arrow(loss.left, step.right)
    d.arrow(step.top, policy.bottom, color=ACCENT)
    _lines(d, step.center[0] - 0.1, (y3 + h + y1) / 2 + 0.1, ("new", "weights"), color=ACCENT, ha="right", step=0.2)
    ref = d.box(xs[4], y3, w, h, "reference\n(frozen copy)", kind="op", size=9)
    d.arrow(ref.left, loss.right, dashed=True, color=MUTED)
    d.text(xs[4] + w, y3 - 0.17, f"+ kl_coef · k3, only if kl_coef > 0 (default {c.kl_coef:g})", size=9,
           color=MUTED, ha="right")
    return d


# ---------------------------------------------------------------------------
# Reward hacking
# ---------------------------------------------------------------------------


@diagram("E_reward_hacking")
def reward_hacking() -> Diagram:
    """The goal (the exact answer) against a proxy (length_reward): the policy learns what the program pays for."""
    row = _row("sort", HACKED_NUMBERS)
    answers = (("the right answer", row["output"], RIGHT),
               ("an answer after training on the length reward", HACKED, WRONG))
    rewards = (("exact_match_reward", exact_match_reward), ("looks_like_answer_reward", looks_like_answer_reward),
               ("length_reward", length_reward))
    chars = 40  # length_reward's default cap
    assert length_reward(row, "x" * (chars + 5)) == length_reward(row, "x" * chars) == 1.0
    d = Diagram(7.3, 4.55, title="Reward hacking: the policy learns what the program pays for")
    d.box(0.15, 3.45, 2.3, 0.5, kind="data")
    _lines(d, 0.25, 3.8, (row["instruction"], row["input"]), color=INK, step=0.2)
    # the table: answers x rewards
    xc = (3.55, 5.15, 6.7)
    for x, (name, _) in zip(xc, rewards):
        d.text(x, 3.7, name, size=9)
    for k, (what, answer, color) in enumerate(answers):
        y = 3.05 - 0.55 * k
        d.text(0.15, y + 0.1, what, size=9, color=MUTED, ha="left")
        d.text(0.15, y - 0.11, f"{answer}  ({len(answer)} characters)", size=9, color=color, ha="left")
        for x, (name, fn) in zip(xc, rewards):
            d.text(x, y, f"{fn(row, answer):.2f}", size=10, weight="bold", color=INK)
    hacked = [fn(row, HACKED) for _, fn in rewards]
    right = [fn(row, row["output"]) for _, fn in rewards]
    assert hacked[0] < right[0] and hacked[1] == right[1] and hacked[2] > right[2]
    for x, color in ((xc[0], RIGHT), (xc[2], ACCENT)):
        d.ax.add_patch(patches.Rectangle((x - 0.45, 2.25), 0.9, 1.1, fc="none", ec=color, lw=1.2))
    d.text(xc[0], 2.08, "what we meant", size=9, color=RIGHT)
    d.text(xc[2], 2.08, "what we paid for", size=9, color=ACCENT)
    # length_reward as a function of the length, with the two answers on it
    ox, oy, pw, ph = 0.75, 0.62, 2.9, 1.0
    at = _axes(d, ox, oy, pw, ph, (0, 50), (0, 1.05))
    d.line([at(n, length_reward(row, "x" * n)) for n in (0, chars, 50)], color=SERIES[0], lw=1.8)
    for n in (0, 20, chars):
        x, _ = at(n, 0)
        d.line([(x, oy), (x, oy - 0.05)], color=INK)
        d.text(x, oy - 0.16, str(n), size=9)
    for v in (0, 1):
        _, y = at(0, v)
        d.line([(ox, y), (ox - 0.05, y)], color=INK)
        d.text(ox - 0.09, y, str(v), size=9, ha="right")
    d.text(ox + pw / 2, oy - 0.38, "characters of the answer", size=9)
    d.text(ox + pw / 2, oy + ph + 0.22, f"length_reward = min(length, {chars}) / {chars}", size=9, weight="bold")
    for (_, answer, color), (dx, dy, ha) in zip(answers, ((0.08, -0.14, "left"), (-0.08, 0.14, "right"))):
        x, y = at(len(answer), length_reward(row, answer))
        d.circle(x, y, 0.05, kind="warn" if color == WRONG else "data")
        d.text(x + dx, y + dy, "right" if color == RIGHT else "after training", size=9, color=color, ha=ha)
    # what the policy did with it
    x = 4.25
    _lines(d, x, 1.6, ("The policy climbs the reward it is given:", "longer lists, repeated items; the sorted",
                       "list is lost.", "A weak check can be hacked too: any",
                       "list of integers looks like an answer."),
           color=INK, step=0.22)
    return d
