"""Scoring generated text: BLEU, ROUGE and an LLM as judge (chapter 08).

Chapter 08 (`08_evaluation`) computes these metrics by hand and shows where
they mislead (a paraphrase scores low, a word salad of the right words scores
high):

* `bleu`: corpus-level BLEU (Papineni et al., 2002): the geometric mean of
  clipped 1-4-gram precisions times a brevity penalty, on the 0-100 scale and
  with the tokenization (mteval "13a") and smoothing ("exp") that sacrebleu
  uses by default, so the numbers are comparable with published ones;
* `rouge`: ROUGE-1, ROUGE-2 (n-gram overlap) and ROUGE-L (longest common
  subsequence) precision, recall and F1 of one hypothesis against one
  reference, tokenized like Google's rouge-score (lower case, letters and
  digits only, no stemming); `rouge_corpus` averages them;
* `judge_prompt`, `parse_score`, `judge`: ask a model (any `str -> str`
  callable, or a minillm model through `model_judge`) to grade answers 1-10,
  read the grade out of messy output, and aggregate with a standard error and
  the share of unreadable verdicts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from minillm.errors import DataError
from minillm.generate import complete
from minillm.model import GPT
from minillm.tokenizer import Tokenizer

# ---------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------

# mteval-v13a tokenization, as rules: (pattern, replacement) applied in order.
_13A_RULES = [
    (re.compile(r"([{-~\[-` -&(-+:-@/])"), r" \1 "),  # split off ASCII symbols and punctuation
    (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),  # a period or comma not preceded by a digit
    (re.compile(r"([.,])([^0-9])"), r" \1 \2"),  # ... or not followed by one (keeps 3.14, 1,000)
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # a dash after a digit
]


def tokenize_13a(text: str) -> list[str]:
    """Words of `text` split as mteval-v13a (WMT's BLEU script) does: punctuation apart, numbers kept."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(entity, char)
    text = f" {text} "
    for pattern, replacement in _13A_RULES:
        text = pattern.sub(replacement, text)
    return text.split()


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


@dataclass
class BLEUScore:
    """Corpus BLEU (0-100) with its parts: n-gram precisions (0-100), brevity penalty, lengths."""

    score: float
    precisions: list[float]
    brevity_penalty: float
    hyp_len: int
    ref_len: int


def bleu(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
         max_n: int = 4, smooth: str = "exp") -> BLEUScore:  # fmt: skip
    """Corpus-level BLEU of `hypotheses` against `references`.

    `references`: one string per hypothesis, or a list of reference strings per
    hypothesis. n-gram counts are clipped by the most a single reference has
    and summed over the corpus before the precisions are taken (corpus BLEU is
    not the mean of sentence BLEUs). Brevity penalty exp(1 - r / c) when the
    hypotheses' total length c is below r, the sum of the reference lengths
    closest to each hypothesis (the shorter on ties). `smooth="exp"` replaces a
    zero precision by 1 / (2^k total), k counting the zeros so far; "none" lets
    it make the score 0.
    """
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references; give one (or a list) each")
    if smooth not in ("exp", "none"):
        raise DataError(f"smooth must be 'exp' or 'none', got {smooth!r}")
    correct, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise DataError("every hypothesis needs at least one reference")
        h = tokenize_13a(hyp)
        r_words = [tokenize_13a(r) for r in refs]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in r_words)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(h, n)
            best: Counter = Counter()
            for r in r_words:
                best |= _ngrams(r, n)  # elementwise max over references
            correct[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            total[n - 1] += sum(counts.values())
    bp = 1.0 if hyp_len >= ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len else 0.0)
    precisions, zeros = [0.0] * max_n, 0
    for n in range(max_n):
        if total[n] == 0:
            break
        if correct[n]:
            precisions[n] = 100.0 * correct[n] / total[n]
        elif smooth == "exp":
            zeros += 1
            precisions[n] = 100.0 / (2**zeros * total[n])
    if not any(correct) or min(precisions) == 0.0:
        return BLEUScore(0.0, precisions, bp, hyp_len, ref_len)
    score = bp * math.exp(sum(math.log(p) for p in precisions) / max_n)
    return BLEUScore(score, precisions, bp, hyp_len, ref_len)


# ---------------------------------------------------------------------------
# ROUGE
# ---------------------------------------------------------------------------


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits (rouge-score's default tokenizer, no stemming)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


@dataclass
class RougeScore:
    """Precision, recall and F1 (their harmonic mean) of one ROUGE variant."""

    precision: float
    recall: float
    fmeasure: float


def _prf(overlap: int, n_hyp: int, n_ref: int) -> RougeScore:
    p = overlap / n_hyp if n_hyp else 0.0
    r = overlap / n_ref if n_ref else 0.0
    return RougeScore(p, r, 2 * p * r / (p + r) if p + r else 0.0)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, O(len a * len b))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge(hypothesis: str, reference: str) -> dict[str, RougeScore]:
    """ROUGE-1, ROUGE-2 and ROUGE-L of one hypothesis against one reference: {"rouge1": ..., ...}.

    ROUGE-N counts shared n-grams (each clipped to its count in the other
    text): precision over the hypothesis' n-grams, recall over the reference's.
    ROUGE-L uses the longest common subsequence: in-order words, gaps allowed.
    """
    h, r = rouge_tokens(hypothesis), rouge_tokens(reference)
    out = {}
    for n in (1, 2):
        hc, rc = _ngrams(h, n), _ngrams(r, n)
        out[f"rouge{n}"] = _prf(sum((hc & rc).values()), sum(hc.values()), sum(rc.values()))
    out["rougeL"] = _prf(lcs_length(h, r), len(h), len(r))
    return out


def rouge_corpus(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs (as summarization papers report it)."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise DataError(f"need as many references as hypotheses (> 0), got {len(hypotheses)} and {len(references)}")
    scores = [rouge(h, r) for h, r in zip(hypotheses, references)]
    return {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in ("rouge1", "rouge2", "rougeL")}


# ---------------------------------------------------------------------------
# LLM as judge
# ---------------------------------------------------------------------------

JUDGE_TEMPLATE = """You are grading an answer to a question. Rate how correct and helpful the answer is \
on a scale from 1 (wrong or useless) to 10 (fully correct and helpful).
{reference_block}
Question: {question}
Answer: {answer}

Reply with one line: "Score: N", where N is a whole number from 1 to 10.
Score:"""


def judge_prompt(question: str, answer: str, reference: str | None = None) -> str:
    """The grading prompt for one answer (with a reference answer when one is known)."""
    block = f"\nA correct reference answer: {reference}\n" if reference else ""
    return JUDGE_TEMPLATE.format(reference_block=block, question=question, answer=answer)


_WORDS = {w: i for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"])}
_NUMBER = r"(\d+(?:\.\d+)?|zero|one|two|three|four|five|six|seven|eight|nine|ten)"


def parse_score(text: str, low: int = 1, high: int = 10) -> float | None:
    """The grade in a judge's reply, or None when there is no readable grade in [low, high].

    Tolerates what models write: "Score: 7", "**8**/10", "I'd rate it 6 out of
    10", "score - seven", "7.5". Tried in order: a number after "score" or
    "rating"; "N/10" or "N out of 10"; the reply's first number. A number
    outside [low, high] does not count.
    """
    if not isinstance(text, str):
        raise TypeError(f"the judge's reply must be a str, got {type(text).__name__}")
    lowered = text.lower().replace("*", "")
    patterns = [rf"(?:score|rating|grade|rate it)\s*(?:is|of|=|:|-)?\s*{_NUMBER}",
                rf"{_NUMBER}\s*(?:/|out of)\s*{high}\b", rf"(?<![\w.]){_NUMBER}(?![\w])"]  # fmt: skip
    for pattern in patterns:
        for match in re.finditer(pattern, lowered):
            word = match.group(1)
            value = float(_WORDS[word]) if word in _WORDS else float(word)
            if low <= value <= high:
                return value
    return None


@dataclass
class JudgeResult:
    """Aggregated grades: mean and standard error over readable verdicts, plus every raw reply."""

    scores: list[float | None]
    replies: list[str]

    @property
    def valid(self) -> list[float]:
        """The grades that could be read."""
        return [s for s in self.scores if s is not None]

    @property
    def mean(self) -> float:
        """Mean grade over readable verdicts (nan when there are none)."""
        return sum(self.valid) / len(self.valid) if self.valid else math.nan

    @property
    def stderr(self) -> float:
        """Standard error of the mean grade: sample standard deviation / sqrt(n)."""
        v = self.valid
        if len(v) < 2:
            return math.nan
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))

    @property
    def unparsed(self) -> float:
        """Share of replies with no readable grade: a judge that often fails to answer is not a judge."""
        return 1 - len(self.valid) / len(self.scores) if self.scores else 0.0


def judge(judge_fn: Callable[[str], str], questions: Sequence[str], answers: Sequence[str],
          references: Sequence[str | None] | None = None, low: int = 1, high: int = 10) -> JudgeResult:  # fmt: skip
    """Grade each answer with `judge_fn` (prompt -> reply) and aggregate the parsed grades."""
    if len(questions) != len(answers) or (references is not None and len(references) != len(answers)):
        raise DataError("questions, answers (and references) must have the same length")
    if not callable(judge_fn):
        raise TypeError(f"judge_fn must be a callable str -> str (or use model_judge), got {type(judge_fn)}")
    refs = references if references is not None else [None] * len(answers)
    replies = [str(judge_fn(judge_prompt(q, a, r))) for q, a, r in zip(questions, answers, refs)]
    return JudgeResult([parse_score(t, low, high) for t in replies], replies)


def model_judge(model: GPT, tokenizer: Tokenizer, max_new_tokens: int = 8) -> Callable[[str], str]:
    """A judge function from a minillm model: the prompt's greedy continuation (`minillm.generate.complete`,
    up to `max_new_tokens` tokens or <|endoftext|>; a long prompt is cut on the left to the context)."""

    def reply(prompt: str) -> str:
        return complete(model, tokenizer, prompt, max_new_tokens, temperature=0.0)

    return reply
