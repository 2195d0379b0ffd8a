"""Data for a code model: docstring-to-code pairs and fill-in-the-middle (appendix D).

Appendix D (`D_code_model`) turns the book model into a small code assistant,
starting from the corpus chapter 01 curated (`minillm.corpus.curated_stdlib`):

* **Docstring -> code pairs.** `function_pairs(docs)` reads every document with
  `ast` and cuts each documented function in two: the `CodePair.prompt` is its
  `def` line(s) and docstring, exactly as in the source and ending at the
  docstring's closing quotes (the rule of `minillm.skills.function_prompts`,
  which uses `documented_functions`); the `CodePair.body` is the rest of the
  function, so `prompt + body` is the function's source. `dedup_pairs` drops
  repeated bodies and prompts, `decontaminate_pairs` drops pairs that share an
  n-gram with HumanEval or MBPP (`minillm.dedup.Decontaminator`), and
  `encode_pairs` turns pairs into the `(ids, prompt length)` items that
  `minillm.instruct.instruction_collate` masks: the loss is only on the body.
* **License headers.** `strip_license_header(text)` removes a file's leading
  comment block when it is a copyright or license notice (`license_header`
  finds it), so that a code model is not taught to write notices.
* **Fill-in-the-middle** (Bavarian et al. 2022, "Efficient Training of Language
  Models to Fill in the Middle"). A left-to-right model can only append; cut a
  document into prefix, middle and suffix, move the middle to the end behind
  sentinel tokens, and the same next-token loss teaches it to fill a gap:

      PSM: <|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle
      SPM: <|fim_prefix|> <|fim_suffix|> suffix <|fim_middle|> prefix middle

  The middle needs no end sentinel of its own: it ends the transformed text, and
  the corpus puts the end-of-text token after every document
  (`minillm.corpus.encode_documents`), so the model learns to close a middle with
  `<|endoftext|>`, and generation stops there. `to_fim` transforms a share `rate`
  of documents (the paper's FIM rate), `from_fim` undoes it, `fim_prompt` is
  what a model completes at inference, and `encode_fim` encodes a transformed
  document with each sentinel one token (after `minillm.instruct.add_special_tokens`).
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from minillm.dedup import Decontaminator
from minillm.errors import ConfigError, DataError
from minillm.tokenizer import ENDOFTEXT, Tokenizer

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
FIM_MODES = ("psm", "spm")


def _documents(docs: Iterable[str]) -> list[str]:
    """`docs` as a list of strings, or DataError (a single string is a common slip: it would iterate characters)."""
    if isinstance(docs, str):
        raise DataError("expected a list of documents, got a single str; wrap it in a list")
    docs = list(docs)
    for i, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise DataError(f"document {i} is a {type(doc).__name__}, not a str")
    return docs


def _limit(value: int | None, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive int or None, got {value!r}")


# ---------------------------------------------------------------------------
# License headers
# ---------------------------------------------------------------------------

_NOTICE = re.compile(r"copyright|\(c\)\s*\d{4}|licen[cs]e|all rights reserved|spdx-license-identifier", re.I)
_PREAMBLE = re.compile(r"#!|#.*coding[:=]")  # a shebang or an encoding cookie: kept, they change how a file runs


def _notice_span(text: str) -> tuple[int, int]:
    """(start, end) characters of the license notice at the top of `text`; start == end if it has none."""
    _check_text(text)
    lines = text.splitlines(keepends=True)
    first = 0
    while first < min(len(lines), 2) and _PREAMBLE.match(lines[first]):
        first += 1
    start = end = position = sum(map(len, lines[:first]))
    in_notice = False  # inside a comment paragraph that names a copyright or license
    for line in lines[first:]:
        if line.strip() and not line.lstrip().startswith("#"):
            break  # the first line of code ends the comment block
        position += len(line)
        in_notice = bool(line.strip()) and (in_notice or bool(_NOTICE.search(line)))
        if in_notice:
            end = position  # the notice runs to the end of the last paragraph that names one
    return start, end


def license_header(text: str) -> str:
    """The copyright or license notice a source file opens with, or "" if it has none.

    The file's leading comment block (after a shebang or an encoding line) is
    read paragraph by paragraph (blank lines between them); the notice runs
    from its start to the end of the last paragraph that names a copyright, a
    license or "all rights reserved". Comments after that stay. Docstrings are
    left alone: they are code (``__doc__``) and documentation, not a header.
    """
    start, end = _notice_span(text)
    return text[start:end]


def strip_license_header(text: str) -> str:
    """`text` without the notice `license_header` finds and the blank lines after it; else unchanged."""
    start, end = _notice_span(text)
    return text if start == end else text[:start] + text[end:].lstrip("\r\n")


# ---------------------------------------------------------------------------
# Docstring -> code pairs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CodePair:
    """One documented function cut in two: `prompt` (def line(s) + docstring) and `body` (the rest).

    `prompt` ends at the docstring's closing line, without its newline; `body`
    starts with that newline and ends with the function's last line and its
    newline, so `prompt + body` (`source`) is the function's source (dedented,
    for a method). `name`: the function's name (`Class.method` for a method);
    `doc`: the index of its document; `line`: the 1-based line of its `def`.
    """

    prompt: str
    body: str
    name: str
    doc: int
    line: int

    @property
    def source(self) -> str:
        """The whole function: prompt + body."""
        return self.prompt + self.body


def _candidates(tree: ast.Module, methods: bool) -> Iterator[tuple[str, ast.FunctionDef]]:
    """(qualified name, node) of top-level functions and, with `methods`, of functions in (nested) classes."""
    stack: list[tuple[str, list[ast.stmt]]] = [("", tree.body)]
    while stack:
        prefix, body = stack.pop(0)
        for node in body:
            if isinstance(node, ast.FunctionDef):
                yield prefix + node.name, node
            elif methods and isinstance(node, ast.ClassDef):
                stack.append((f"{prefix}{node.name}.", node.body))


def documented_functions(docs: Iterable[str], *, methods: bool = False) -> Iterator[CodePair]:
    """Every undecorated `def` with a docstring and a statement after it, as a `CodePair`, file by file.

    Files that do not parse are skipped. Decorated functions are skipped too (a
    decorator changes what the function is, and its line would come before the
    prompt), as are `async def` and functions nested in functions. With
    `methods`, functions defined in class bodies follow the file's top-level
    ones; each line of a method loses the `def` line's indentation (a shorter
    blank line becomes empty), and a method with a non-blank line that starts
    left of it (in a multi-line string, or a comment) is skipped. Unlike
    `function_pairs`: no length limits, and a body written on the docstring's
    line is kept (in the prompt; the body is then just "\\n").
    """
    for index, doc in enumerate(_documents(docs)):
        try:
            tree = ast.parse(doc)
        except (SyntaxError, ValueError):
            continue
        lines = doc.split("\n")
        for name, node in _candidates(tree, methods):
            if node.decorator_list or len(node.body) < 2 or ast.get_docstring(node) is None:
                continue
            text = lines[node.lineno - 1 : node.end_lineno]
            indent = text[0][: node.col_offset]  # "" at the top level; the def's indentation in a class
            if any(line.strip() and not line.startswith(indent) for line in text):
                continue  # a line left of the def: dedenting would cut into it
            text = [line[len(indent) :] for line in text]
            cut = node.body[0].end_lineno - node.lineno + 1  # lines of def + docstring
            prompt, body = "\n".join(text[:cut]), "\n" + "".join(line + "\n" for line in text[cut:])
            yield CodePair(prompt, body, name, index, node.lineno)


def function_pairs(docs: Iterable[str], *, max_prompt_chars: int | None = 400, max_body_chars: int | None = 1000,
                   methods: bool = False) -> list[CodePair]:  # fmt: skip
    """Docstring -> code pairs of `documented_functions` whose body has code and both parts fit the limits.

    A prompt over `max_prompt_chars` or a body over `max_body_chars` leaves the
    pair out (None: no limit): the book model sees 128 tokens, about 400
    characters of code, and a pair it cannot see whole teaches it little.
    """
    _limit(max_prompt_chars, "max_prompt_chars")
    _limit(max_body_chars, "max_body_chars")
    return [p for p in documented_functions(docs, methods=methods) if p.body.strip()
            and (max_prompt_chars is None or len(p.prompt) <= max_prompt_chars)
            and (max_body_chars is None or len(p.body) <= max_body_chars)]  # fmt: skip


def _body_key(body: str) -> str:
    """A body with blank lines dropped, trailing spaces stripped and inner space runs collapsed (indentation kept)."""
    lines = (line.rstrip() for line in body.split("\n"))
    return "\n".join(line[: len(line) - len(line.lstrip())] + " ".join(line.split()) for line in lines if line)


def dedup_pairs(pairs: Sequence[CodePair], against: Iterable[CodePair] = ()) -> list[CodePair]:
    """The pairs without repeats, first occurrence kept: a body seen before (up to whitespace, `_body_key`),
    or a prompt seen before (one prompt, two answers: the model cannot learn both).

    Pairs whose body or prompt occurs in `against` go too: `dedup_pairs(val, against=train)`
    keeps functions copied between files of the two sides out of the validation pairs.
    """
    bodies = {_body_key(p.body) for p in against}
    prompts = {p.prompt for p in against}
    kept = []
    for pair in pairs:
        key = _body_key(pair.body)
        if key not in bodies and pair.prompt not in prompts:
            kept.append(pair)
        bodies.add(key)
        prompts.add(pair.prompt)
    return kept


def decontaminate_pairs(pairs: Sequence[CodePair], decontaminator: Decontaminator
                        ) -> tuple[list[CodePair], list[tuple[CodePair, dict[str, int]]]]:  # fmt: skip
    """(pairs kept, [(pair removed, {benchmark: shared n-grams})]): a pair whose source shares a word
    n-gram (`decontaminator.n` words) with an evaluation set is removed.

    E.g. `Decontaminator.from_benchmarks(("humaneval", "mbpp"))`. The curated
    corpus already dropped whole files sharing a 13-gram; a smaller n checks
    the pairs more strictly.
    """
    kept, removed = [], []
    for pair in pairs:
        found = decontaminator.matches(pair.source)
        if found:
            removed.append((pair, found))
        else:
            kept.append(pair)
    return kept, removed


def pairs_to_examples(pairs: Iterable[CodePair]) -> list[dict[str, str]]:
    """The pairs as `{"prompt", "completion"}` dicts (TRL's prompt-completion format), e.g. for JSON Lines."""
    return [{"prompt": p.prompt, "completion": p.body} for p in pairs]


def encode_pairs(pairs: Iterable[CodePair], tokenizer: Tokenizer, max_length: int | None = None
                 ) -> list[tuple[list[int], int]]:  # fmt: skip
    """`(prompt ids + body ids + end-of-text id, number of prompt ids)` per pair, the items that
    `minillm.instruct.instruction_collate` pads and masks (the loss only on the body and its end).

    Why not the Alpaca template of `minillm.instruct`: a code model's natural
    instruction is the header and docstring itself, the prompt that chapter 05's
    skill and HumanEval give it, and the template's preamble would take a third
    of a 128-token context. Prompt and body are encoded separately, so the
    prompt's ids are exactly those a model is given at inference
    (`minillm.skills.write_function`). With `max_length` (the model's
    context), a pair longer than `max_length + 1` ids is left out rather than
    cut: a body cut short would teach the model to stop mid-function.
    """
    _limit(max_length, "max_length")
    eot = tokenizer.special_tokens.get(ENDOFTEXT)
    if eot is None:
        raise DataError(f"the tokenizer has no {ENDOFTEXT} token to end a body with")
    items = []
    for pair in pairs:
        prompt = tokenizer.encode_ordinary(pair.prompt)
        ids = prompt + tokenizer.encode_ordinary(pair.body) + [eot]
        if max_length is None or len(ids) <= max_length + 1:
            items.append((ids, len(prompt)))
    return items


# ---------------------------------------------------------------------------
# Fill-in-the-middle
# ---------------------------------------------------------------------------


def _check_mode(mode: str) -> None:
    if mode not in FIM_MODES:
        raise ConfigError(f"mode must be one of {FIM_MODES} (prefix-suffix-middle or suffix-prefix-middle), "
                          f"got {mode!r}")  # fmt: skip


def _check_text(text: str, what: str = "text") -> None:
    if not isinstance(text, str):
        raise DataError(f"{what} must be a str, got {type(text).__name__}")
    found = [s for s in FIM_TOKENS if s in text]
    if found:
        raise DataError(f"{what} already contains {found}: its FIM form would be ambiguous; "
                        "remove or escape the sentinels (or drop the document) first")  # fmt: skip


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of `text`, cut at two character positions drawn uniformly from 0..len(text).

    As in the paper, the cuts are over characters, not tokens (a cut may fall
    inside a word): at inference a user's cursor can be anywhere. The two
    positions are drawn independently and sorted, so the middle may be empty.
    """
    if not isinstance(text, str):
        raise DataError(f"text must be a str, got {type(text).__name__}")
    i, j = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:i], text[i:j], text[j:]


def _fim_text(prefix: str, middle: str, suffix: str, mode: str) -> str:
    if mode == "psm":
        return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{middle}"
    return f"{FIM_PREFIX}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{prefix}{middle}"


def _check_rate(rate: float) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or math.isnan(rate) or not 0 <= rate <= 1:
        raise ConfigError(f"rate must be a number in [0, 1] (the share of documents transformed), got {rate!r}")


def to_fim(text: str, rng: random.Random, rate: float = 0.5, mode: str = "psm") -> str:
    """`text` in FIM form with probability `rate`, else unchanged: `rng.random() < rate` decides, then `fim_split` cuts.

    PSM: prefix, suffix, then the middle; SPM: suffix first, then prefix and
    middle together (the paper's variant, in which the prefix runs straight into
    the middle as in ordinary text). A text that contains a sentinel raises DataError.
    """
    _check_text(text)
    _check_rate(rate)
    _check_mode(mode)
    if rng.random() >= rate:
        return text
    return _fim_text(*fim_split(text, rng), mode)


def from_fim(text: str) -> str:
    """The original of a `to_fim` text (either mode); a text without sentinels is returned as it is.

    Both modes read as FIM_PREFIX, a, FIM_SUFFIX, s, FIM_MIDDLE, b, with the
    original a + b + s (PSM: a = prefix, b = middle; SPM: a = "", b = prefix +
    middle), so one rule inverts both. The text must not carry a trailing
    end-of-text token. Anything else with sentinels raises DataError.
    """
    if not isinstance(text, str):
        raise DataError(f"text must be a str, got {type(text).__name__}")
    if not any(s in text for s in FIM_TOKENS):
        return text
    if not text.startswith(FIM_PREFIX) or any(text.count(s) != 1 for s in FIM_TOKENS):
        raise DataError("not a FIM text: expected one <|fim_prefix|> at the start, then one <|fim_suffix|> "
                        "and one <|fim_middle|>")  # fmt: skip
    a, rest = text[len(FIM_PREFIX) :].split(FIM_SUFFIX)
    if FIM_MIDDLE not in rest:
        raise DataError("not a FIM text: <|fim_middle|> must come after <|fim_suffix|>")
    s, b = rest.split(FIM_MIDDLE)
    return a + b + s


def fim_documents(docs: Iterable[str], rate: float = 0.5, seed: int = 0, mode: str = "psm") -> list[str]:
    """`to_fim` of each document with one `random.Random(seed)`: the same seed gives the same texts."""
    docs = _documents(docs)
    _check_rate(rate)
    _check_mode(mode)
    rng = random.Random(seed)
    return [to_fim(doc, rng, rate, mode) for doc in docs]


def fim_prompt(prefix: str, suffix: str, mode: str = "psm") -> str:
    """The text a FIM-trained model completes with the middle (up to its end-of-text token).

    PSM: FIM_PREFIX prefix FIM_SUFFIX suffix FIM_MIDDLE; SPM: FIM_PREFIX FIM_SUFFIX
    suffix FIM_MIDDLE prefix. Encode it with `encode_fim`.
    """
    _check_text(prefix, "prefix")
    _check_text(suffix, "suffix")
    _check_mode(mode)
    return _fim_text(prefix, "", suffix, mode)


def encode_fim(text: str, tokenizer: Tokenizer, end: bool = False) -> list[int]:
    """Token ids of a FIM text with each sentinel one id; any other special-token text is ordinary text.

    With `end`, the end-of-text id follows (what closes the middle in training,
    as `minillm.corpus.encode_documents` puts it after every document; that
    function encodes sentinels as plain text, so FIM documents go through this one).

    The tokenizer needs the three sentinels as special tokens:
    `minillm.instruct.add_special_tokens(tokenizer, FIM_TOKENS)` adds them (and
    `minillm.instruct.resize_vocab` grows the model to match).
    """
    missing = [s for s in FIM_TOKENS if s not in tokenizer.special_tokens]
    if missing:
        raise DataError(f"the tokenizer lacks the FIM tokens {missing}; add them with "
                        "minillm.instruct.add_special_tokens(tokenizer, FIM_TOKENS)")  # fmt: skip
    ids = tokenizer.encode(text, allowed_special=set(FIM_TOKENS), disallowed_special=())
    if end:
        if ENDOFTEXT not in tokenizer.special_tokens:
            raise DataError(f"the tokenizer has no {ENDOFTEXT} token to end the document with")
        ids.append(tokenizer.special_tokens[ENDOFTEXT])
    return ids
