"""What a code model can do, measured: does it write Python that parses? (chapters 05, 07 and 08).

A loss says how surprised a model is; a reader wants to know what it can do.
The book model is a Python code model, so its skill is writing code:

* `function_prompts(docs)`: the header and docstring of every top-level
  function of held-out files (`def name(args):` + its docstring), the start
  of a function the model has never seen;
* `write_function(model, tok, prompt)`: the model continues the prompt until
  the function ends (the first non-blank line back at column 0) or a token
  budget runs out, and `ast.parse` judges the result (`FunctionAttempt`);
* `parse_rate(attempts)`: the share of attempts that wrote a body of at
  least one statement, ended, and parse, with its binomial standard error;
* `exact_match(model, tok, examples)`: the share of instructions (e.g.
  `minillm.synthetic.list_tasks`) whose greedy response equals the answer;
* `next_line_questions(docs, names, n)` and `next_line_accuracy(model, tok, questions)`:
  chapter 08's in-domain benchmark, which of four lines of a held-out file comes
  next, scored by log-likelihood (acc, acc_norm) and by mutual information
  (how much the context raises each line's log-likelihood).

A random model almost never ends a function with valid syntax; a trained
one usually does. Parsing is a low bar (the code need not be right), which is
why chapter 08 also scores held-out instructions by exact match.
"""

from __future__ import annotations

import ast
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minillm.evaluate import binomial_stderr, encode_pair, loglikelihoods, score_multiple_choice
from minillm.batching import decode_together
from minillm.codedata import documented_functions
from minillm.errors import DataError
from minillm.generate import TextDecoder, stream_text
from minillm.instruct import generate_response
from minillm.model import GPT
from minillm.tasks import MCExample
from minillm.tokenizer import ENDOFTEXT, Tokenizer


def function_prompts(docs: Iterable[str], max_chars: int = 400, limit: int | None = None) -> list[str]:
    """`def` line(s) + docstring of each top-level, undecorated function with a body after its docstring.

    A prompt ends at the docstring's closing quotes, without the newline: a BPE
    learns the newline and the next line's indentation as one token, and a prompt
    that ended with a bare newline would force a token boundary the model never
    saw in training (it would then mostly write a blank line and leave the function).
    Files that do not parse are skipped; prompts longer than `max_chars` are left
    out (the book model sees 128 tokens: a long prompt would leave little room for the body).
    The rule lives in `minillm.codedata.documented_functions` (appendix D's pairs use it too).
    """
    prompts = (pair.prompt for pair in documented_functions(docs) if len(pair.prompt) <= max_chars)
    return list(itertools.islice(prompts, limit if limit is not None and limit > 0 else None))


def function_body(text: str) -> tuple[str, bool]:
    """(the body written so far, whether the function has ended) for the text after a prompt.

    The text's first line finishes the prompt's last line (normally it is empty);
    the function ends at the next complete non-blank line that starts at column
    0, and the body is everything before that line. A model that goes straight
    back to column 0 has "ended" with an empty body.
    """
    complete = text.split("\n")[:-1]  # the last piece may be an unfinished line
    for i in range(1, len(complete)):
        line = complete[i]
        if line.strip() and not line[0].isspace():
            return "\n".join(complete[:i]) + "\n", True
    return text, False


@dataclass
class FunctionAttempt:
    """One attempt to finish a function: the prompt, the body written, and the verdicts."""

    prompt: str
    body: str
    ended: bool  # went back to column 0, or wrote the end-of-text token, within the token budget
    parses: bool  # ended, has a statement, and prompt + body is valid Python

    @property
    def source(self) -> str:
        """The whole function: prompt + body."""
        return self.prompt + self.body


def check_function(prompt: str, body: str) -> bool:
    """True when `body` has a statement and `prompt + body` is valid Python (`ast.parse`)."""
    if not body.strip():
        return False
    try:
        ast.parse(prompt + body)
    except (SyntaxError, ValueError):
        return False
    return True


class _FunctionWriter:
    """Follows one attempt token by token: its text (`TextDecoder`), and whether the function has ended."""

    def __init__(self, prompt: str, tokenizer: Tokenizer, stop_ids: frozenset[int]) -> None:
        self.prompt, self.decoder, self.text, self.result = prompt, TextDecoder(tokenizer, (), stop_ids), "", None

    def push(self, piece: str) -> bool:
        """Take the next piece of text; True once the function has ended (the attempt is decided)."""
        self.text += piece
        if "\n" in piece:
            body, ended = function_body(self.text)
            if ended:
                self.result = FunctionAttempt(self.prompt, body, True, check_function(self.prompt, body))
        return self.result is not None

    def push_token(self, token: int) -> bool:
        """Take the next token; True when the attempt is decided or the text has stopped (end of text)."""
        return self.push(self.decoder.push(token)) or self.decoder.stopped

    def finish(self) -> FunctionAttempt:
        """The attempt: decided, or, when the tokens ran out, judged on what was written (a final line may close it)."""
        if self.result is None and not self.decoder.stopped:
            self.push(self.decoder.finish())
        if self.result is None and self.decoder.stopped:  # the end-of-text token: the file, so the function, ended
            body = self.text if self.text.endswith("\n") else self.text + "\n"
            self.result = FunctionAttempt(self.prompt, body, True, check_function(self.prompt, body))
        if self.result is None:
            body, ended = function_body(self.text + "\n")
            self.result = FunctionAttempt(self.prompt, body, ended, ended and check_function(self.prompt, body))
        return self.result


def write_function(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 256, *,
                   temperature: float = 0.4, top_k: int | None = 50, seed: int | None = 0) -> FunctionAttempt:  # fmt: skip
    """Let the model continue `prompt` (a function header and docstring) until the function ends.

    Sampling at temperature 0.4 (top-k 50): a small model's most likely tokens
    are its best code, while some randomness keeps it out of the loops that
    greedy decoding falls into (greedy ends fewer functions).
    """
    writer = _FunctionWriter(prompt, tokenizer, frozenset())
    for piece in stream_text(model, tokenizer, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                             seed=seed):  # fmt: skip
        if writer.push(piece):
            break
    return writer.finish()


def write_functions(model: GPT, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int = 256, *,
                    temperature: float = 0.4, top_k: int | None = 50, seed: int = 0,
                    rows: int = 16) -> list[FunctionAttempt]:  # fmt: skip
    """`write_function` for each prompt, attempt i sampled with seed `seed + i` (reproducible).

    The attempts are decoded `rows` at a time (`minillm.batching.decode_together`);
    each samples from its own generator, so they are the attempts `write_function`
    makes one by one (a test checks it), about 1.4x faster on chapter 05's prompts.
    """
    ctx = model.config.context_length
    end = tokenizer.special_tokens.get(ENDOFTEXT)
    stop_ids = frozenset() if end is None else frozenset({end})
    ids = []
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"each prompt must be a str, got {type(p).__name__}")
        encoded = tokenizer.encode_ordinary(p)
        if not encoded:
            raise DataError(f"the prompt {p!r} encodes to no tokens; give a function header to continue")
        ids.append(encoded[-ctx:])  # cut on the left to the context, as stream_text does
    writers = [_FunctionWriter(p, tokenizer, stop_ids) for p in prompts]
    decode_together(model, ids, max_new_tokens, seeds=[seed + i for i in range(len(prompts))],
                    temperature=temperature, top_k=top_k, stop_ids=stop_ids, rows=rows,
                    on_token=lambda i, token: writers[i].push_token(token))  # fmt: skip
    return [w.finish() for w in writers]


@dataclass(frozen=True)
class Rate:
    """A share of successes with its binomial standard error (`str`: "0.62 ± 0.05 (n=64)")."""

    k: int
    n: int

    @property
    def value(self) -> float:
        """k / n (0 when n is 0)."""
        return self.k / self.n if self.n else 0.0

    @property
    def stderr(self) -> float:
        """sqrt(p (1 - p) / n): the standard error of the share."""
        return binomial_stderr(self.value, self.n) if self.n else math.nan

    def __str__(self) -> str:
        return f"{self.value:.2f} ± {self.stderr:.2f} (n={self.n})"


def parse_rate(attempts: list[FunctionAttempt]) -> Rate:
    """The share of attempts that ended with a body that parses."""
    return Rate(sum(a.parses for a in attempts), len(attempts))


def exact_match(model: GPT, tokenizer: Tokenizer, examples: list[dict], template: str = "alpaca",
                max_new_tokens: int = 32) -> tuple[Rate, list[str]]:  # fmt: skip
    """(share of examples whose greedy response equals their `output`, the responses), whitespace-stripped."""
    responses = [generate_response(model, tokenizer, ex, template, max_new_tokens) for ex in examples]
    return Rate(sum(r == ex["output"].strip() for r, ex in zip(responses, examples)), len(examples)), responses


def next_line_questions(docs: Sequence[str], names: Sequence[str], n: int, seed: int = 0, context_lines: int = 24,
                        min_chars: int = 20, max_chars: int = 72) -> list[MCExample]:  # fmt: skip
    """n questions "which line comes next?" from held-out files (chapter 08 writes the same out inline).

    A question is the `context_lines` lines before a line of `min_chars` to
    `max_chars` characters that is not a comment; its choices are that line and
    three other lines of the same file whose stripped length is within 3
    characters of it, all indented like the real one. `names[i]` names `docs[i]`.
    """
    if n < 1 or len(docs) != len(names):
        raise DataError(f"need n >= 1 and one name per document, got n={n}, {len(docs)} docs, {len(names)} names")
    rng = random.Random(seed)
    files = [doc.split("\n") for doc in docs]

    def usable(line: str) -> bool:
        text = line.strip()
        return min_chars <= len(text) <= max_chars and not text.startswith("#")

    by_length: dict[tuple[int, int], set[str]] = {}  # (file, stripped length) -> stripped lines: the distractors
    for f, lines in enumerate(files):
        for line in lines:
            if usable(line):
                by_length.setdefault((f, len(line.strip())), set()).add(line.strip())
    spots = [(f, i) for f, lines in enumerate(files) for i, line in enumerate(lines) if i >= 4 and usable(line)]
    if not spots:
        raise DataError("no line in these documents can be a question")
    out: list[MCExample] = []
    for _ in range(1000 * n):  # a spot without three lines of its length is drawn again
        if len(out) == n:
            return out
        f, i = rng.choice(spots)
        line = files[f][i]
        answer, indent = line.strip(), line[: len(line) - len(line.lstrip())]
        pool = sorted({text for k in range(len(answer) - 3, len(answer) + 4)
                       for text in by_length.get((f, k), ()) if text != answer})  # fmt: skip
        if len(pool) < 3:
            continue
        options = [answer] + rng.sample(pool, 3)
        rng.shuffle(options)
        context = "\n".join(files[f][max(0, i - context_lines) : i])
        out.append(MCExample(id=f"{names[f]}:{i + 1}", question=context, choices=[indent + o for o in options],
                             label=options.index(answer), context=context,
                             continuations=["\n" + indent + o for o in options], subject=names[f]))  # fmt: skip
    raise DataError(f"found {len(out)} of {n} questions: too few lines of similar length in these documents")


def next_line_accuracy(model: GPT, tokenizer: Tokenizer, questions: Sequence[MCExample],
                       batch_size: int = 32) -> dict[str, Any]:  # fmt: skip
    """`score_multiple_choice`'s metrics (acc, acc_norm, acc_token, with standard errors) plus acc_mutual_info.

    acc_mutual_info picks the choice whose log-likelihood the context raises most,
    log p(line | context) - log p(line | <|endoftext|>), so that a line that is
    likely anywhere (a common idiom) does not win by being common.
    """
    result = score_multiple_choice(model, tokenizer, questions, batch_size=batch_size, task="next-line")
    eot = tokenizer.special_tokens[ENDOFTEXT]
    alone = loglikelihoods(model, [([eot], encode_pair(tokenizer, q.context, c)[1]) for q in questions
                                   for c in q.continuations], batch_size=2 * batch_size)  # fmt: skip
    picks, i = [], 0
    for scores in result.scores:
        picks.append(int(np.argmax(np.array(scores) - np.array(alone[i : i + len(scores)]))))
        i += len(scores)
    result.predictions["acc_mutual_info"] = picks
    return result.metrics()
