"""Appendix D's diagrams: a code model end to end, from its training data to pass@k in a sandbox.

The figures: `D_pairs` (a documented function cut into prompt and body, and the
loss mask on its tokens), `D_fim` (one function cut into prefix, middle and
suffix, and its PSM and SPM texts), `D_harness` (a HumanEval-style task, two
completions, the program each becomes, the sandbox, the outcomes), `D_sandbox`
(the layers around the program and what each one stops), `D_outcomes` (how a
run ends: passed, failed, timed out, crashed) and `D_pass_at_k` (pass@2 from
five samples of which two passed: the ten pairs, against the biased estimate).

Every number drawn comes from the package: the prompt and body from
`minillm.codedata.function_pairs`, the token ids from `encode_pairs` with a
small BPE trained here on a few lines of code (`BPE_TEXT`, a few milliseconds;
not the book model's tokenizer, whose files a drawing should not need), the
loss mask from `minillm.instruct.instruction_collate`; the cuts and the FIM
texts from `fim_split` and `to_fim` with `random.Random(FIM_SEED)`; the program
from `minillm.codeeval.program` and the outcomes from running it with
`minillm.sandbox.run_code` (statuses and errors only: the seconds vary); the
limits from `Limits()`'s defaults and the user from `sandbox.NOBODY`; pass@k
from `pass_at_k`. The task of `D_harness` is written here in HumanEval's
format (a prompt, a `check(candidate)` test, an entry point), short enough to
draw whole and with no data file to download; its two completions are examples,
not samples of a model. Drawing runs ten small programs in the sandbox, about
a second (one of them loops until its one-second deadline).
"""

from __future__ import annotations

import functools
import itertools
import math
import random

from matplotlib import patches

from minillm.codedata import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, encode_pairs, fim_split, function_pairs, to_fim
from minillm.codeeval import CodeTask, pass_at_k, program
from minillm.diagrams import diagram
from minillm.diagrams.kit import ACCENT, INK, MUTED, SERIES, STYLE, Diagram, cell, pale, text_runs, text_width
from minillm.instruct import IGNORE_INDEX, instruction_collate
from minillm.sandbox import NOBODY, Limits, Outcome, run_code, run_many
from minillm.tokenizer import ENDOFTEXT, BPETokenizer

MARKER = SERIES[3]  # a special token (sentinel, end-of-text): one id, as appendix C's and E's markers
PASS, FAIL = SERIES[2], ACCENT  # passed (green), failed (red), as appendix E's right and wrong
#: The colour of each status of a run (green and red as above; orange and purple for the other two).
STATUS_COLOR = {"passed": PASS, "failed": FAIL, "timed out": SERIES[1], "crashed": SERIES[3]}
PARTS = {"prefix": SERIES[0], "middle": SERIES[1], "suffix": SERIES[2]}  # the three pieces of a FIM cut

#: The documented function of `D_pairs`.
SQUARE = 'def square(x):\n    """Return x times x."""\n    return x * x\n'
#: What `D_pairs`' small BPE is trained on: a few lines of code (it merges enough to give whole words).
BPE_TEXT = SQUARE + 'def cube(x):\n    """Return x times x times x."""\n    return x * x * x\n' \
    + 'def twice(x):\n    """Return x plus x."""\n    return x + x\n'
BPE_VOCAB = 300
#: The function of `D_fim`, and the seed whose cuts it shows (one that cuts a name in two, as cuts may).
MEAN = "def mean(xs):\n    return sum(xs) / len(xs)\n"
FIM_SEED = 16

#: `D_harness`' task in HumanEval's format, and two completions: one right, one that passes only the docstring's
#: example.
TASK = CodeTask(
    suite="humaneval", task_id="example/0",
    prompt='def count_vowels(s: str) -> int:\n    """Count the vowels (a, e, i, o, u) in s.\n'
           '    >>> count_vowels("banana")\n    3\n    """\n',
    test='def check(candidate):\n    assert candidate("banana") == 3\n    assert candidate("sky") == 0\n'
         '    assert candidate("queue") == 4\n',
    reference='    return sum(c in "aeiou" for c in s)\n', entry_point="count_vowels")  # fmt: skip
COMPLETIONS = ('    return sum(c in "aeiou" for c in s)\n', "    return len(s) // 2\n")

#: `D_outcomes`' programs: (what it shows, source); run with `Limits()` (the loop with a 1-second deadline).
RUNS = (("runs to its end", "assert sorted([3, 1, 2]) == [1, 2, 3]"),
        ("a test fails", "assert sum([1, 2]) == 4"),
        ("exits halfway", "import sys; sys.exit(0)"),
        ("too much memory", "x = [0] * 10**9"),
        ("a guarded call", 'import os; os.system("ls")'),
        ("ends without a report", "import os; os._exit(0)"),
        ("a segfault", "import ctypes; ctypes.string_at(0)"))
LOOP = ("never ends", "while True: pass")
LOOP_TIMEOUT_S = 1.0


# ---------------------------------------------------------------------------
# Drawing helpers (as appendix C's and E's)
# ---------------------------------------------------------------------------






def _lines(d: Diagram, x: float, y: float, lines, color: str = MUTED, step: float = 0.2, size: float = 9,
           ha: str = "left") -> None:  # fmt: skip
    """Lines of text from (x, y) downwards: captions and notes."""
    for k, line in enumerate(lines):
        d.text(x, y - step * k, line, size=size, color=color, ha=ha)
        if ha == "left":
            assert x + text_width(d, line, size) < d.width - 0.05, f"runs out of the figure: {line!r}"


def _shown(piece: str) -> str:
    """A token's text, newlines and spaces made visible."""
    return piece.replace("\n", "↵").replace(" ", "␣")


def _size(n: int) -> str:
    """Bytes as MiB or GiB (powers of 1,024)."""
    for unit, power in (("GiB", 30), ("MiB", 20)):
        if n >= 2**power and n % 2**power == 0:
            return f"{n // 2**power} {unit}"
    return f"{n:,} B"


def _code(d: Diagram, x: float, y: float, spans, step: float = 0.21, fills: dict | None = None) -> float:
    """Code drawn line by line from (x, y) down; `spans` [(text, colour)] may hold newlines.

    Each span's text is written in its colour; with `fills` {colour: fill}, a band of
    that fill lies behind it. Returns the y of the last line.
    """
    cx, cy = x, y
    for text, color in spans:
        for k, part in enumerate(text.split("\n")):
            if k:
                cx, cy = x, cy - step
            if part:
                w = text_width(d, part)
                if fills and color in fills:
                    d.ax.add_patch(patches.Rectangle((cx, cy - step / 2), w, step, fc=fills[color], ec="none"))
                d.text(cx, cy, part, size=9, color=color, ha="left")
                cx += w
    return cy


def _sentinel(d: Diagram, x: float, y: float, name: str, h: float = 0.3) -> float:
    """A special token as one cell (purple edge, as the chat markers of appendix C); returns its right end."""
    w = text_width(d, name) + 0.1
    cell(d, x, y, w, h, name, fill="white", edge=MARKER, color=MARKER, lw=1.4)
    return x + w


def _piece(d: Diagram, x: float, y: float, text: str, color: str, h: float = 0.3) -> float:
    """A piece of text (newlines shown as ↵) on a pale band of `color`; returns its right end."""
    shown = text.replace("\n", "↵")
    w = text_width(d, shown) + 0.06
    cell(d, x, y, w, h, "", fill=pale(color, 0.8), edge=color, lw=0.8)
    d.text(x + 0.03, y + h / 2, shown, size=9, color=INK, ha="left")
    return x + w


# ---------------------------------------------------------------------------
# Docstring -> code pairs and their loss mask
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _tokenizer() -> BPETokenizer:
    """A 300-token BPE trained on `BPE_TEXT` (with <|endoftext|>): small, and fast to train."""
    return BPETokenizer.train(BPE_TEXT, BPE_VOCAB)


@diagram("D_pairs")
def pairs() -> Diagram:
    """A function cut into prompt (def line + docstring) and body; its tokens; the loss only on body + end."""
    [pair] = function_pairs([SQUARE])
    assert pair.source == SQUARE and pair.body.startswith("\n")
    tok = _tokenizer()
    [(ids, n_prompt)] = encode_pairs([pair], tok)
    eot = tok.special_tokens[ENDOFTEXT]
    assert ids[-1] == eot and tok.decode(ids[:-1]) == SQUARE
    targets = instruction_collate([(ids, n_prompt)], pad_id=eot)["targets"][0].tolist()
    counted = [False] + [t != IGNORE_INDEX for t in targets]  # token j is a target iff the slot before it is
    assert counted == [j >= n_prompt for j in range(len(ids))]  # the body and the end, nothing of the prompt
    grey, blue = STYLE["op"], STYLE["tensor"]
    d = Diagram(7.3, 3.95, title="A docstring → code pair: the prompt is given, the loss is on the body")
    # the function, its two parts shaded
    top = 3.35
    d.box(0.15, top - 0.62, 3.4, 0.82, kind="data")
    last = _code(d, 0.3, top, [(pair.prompt, INK), ("↵" + pair.body.rstrip("\n"), blue[1])],
                 fills={INK: grey[0], blue[1]: blue[0]})
    assert last == top - 0.42  # three lines
    _lines(d, 4.0, top + 0.05, ("CodePair.prompt: the def line and docstring,", "ending at the closing quotes"),
           color=INK, step=0.19)
    _lines(d, 4.0, top - 0.42, ("CodePair.body: the rest, from the newline",), color=blue[1])
    d.text(0.15, top - 0.8, f"function_pairs: {len(pair.prompt)} + {len(pair.body)} characters; "
           f"prompt + body = the source", size=9, color=MUTED, ha="left")
    # the tokens, wrapped, each with its loss mark under it
    ch, x0, x_max = 0.3, 0.95, 7.15
    rows, row, x = [], [], x0
    for j, i in enumerate(ids):
        label = ENDOFTEXT if i == eot else _shown(tok.decode([i]))
        w = max(0.3, text_width(d, label) + 0.1)
        if x + w > x_max:
            rows.append(row)
            row, x = [], x0
        row.append((j, label, x, w))
        x += w + 0.03
    rows.append(row)
    assert len(rows) <= 2
    for r, row in enumerate(rows):
        y = 1.95 - 0.8 * r
        d.text(x0 - 0.1, y + ch / 2, "tokens", size=9, color=MUTED, ha="right")
        d.text(x0 - 0.1, y - 0.21, "target?", size=9, color=MUTED, ha="right")
        for j, label, x, w in row:
            if ids[j] == eot:
                cell(d, x, y, w, ch, label, fill="white", edge=MARKER, color=MARKER, lw=1.4)
            elif j < n_prompt:
                cell(d, x, y, w, ch, label, fill=grey[0], edge=grey[1])
            else:
                cell(d, x, y, w, ch, label, fill=blue[0], edge=blue[1])
            if counted[j]:
                cell(d, x, y - 0.33, w, 0.24, "✓", fill=pale(PASS, 0.8), edge=PASS, color=PASS, size=10)
            elif j > 0:
                cell(d, x, y - 0.33, w, 0.24, fill=pale(ACCENT, 0.85), edge=ACCENT, lw=0.8)
    kept = sum(counted)
    _lines(d, 0.15, 0.55, (f"encode_pairs: {n_prompt} prompt ids, {len(ids) - n_prompt - 1} body ids, {ENDOFTEXT}. "
                           "instruction_collate: red, target −100 (no loss);",
                           f"✓, in the loss: {kept} of {len(ids) - 1} targets, the last the end. The first token "
                           "is never a target.",
                           "The model learns to write the body, and to stop."), color=INK, step=0.2)
    return d


# ---------------------------------------------------------------------------
# Fill-in-the-middle
# ---------------------------------------------------------------------------


def _fim_cut() -> tuple[str, str, str]:
    """The cut that `to_fim(MEAN, random.Random(FIM_SEED), rate=1.0)` makes (its first draw decides to transform)."""
    rng = random.Random(FIM_SEED)
    assert rng.random() < 1.0
    return fim_split(MEAN, rng)


@diagram("D_fim")
def fim() -> Diagram:
    """A function cut at two random characters into prefix, middle, suffix; its PSM and SPM texts."""
    prefix, middle, suffix = _fim_cut()
    assert prefix and middle and suffix and prefix + middle + suffix == MEAN
    spans = {"prefix": prefix, "middle": middle, "suffix": suffix}
    orders = {"psm": [FIM_PREFIX, "prefix", FIM_SUFFIX, "suffix", FIM_MIDDLE, "middle"],
              "spm": [FIM_PREFIX, FIM_SUFFIX, "suffix", FIM_MIDDLE, "prefix", "middle"]}
    for mode, order in orders.items():  # the drawn rows are exactly what to_fim writes
        text = "".join(spans.get(p, p) for p in order)
        assert to_fim(MEAN, random.Random(FIM_SEED), rate=1.0, mode=mode) == text
    d = Diagram(7.3, 4.1, title="Fill in the middle: cut, move the middle to the end, train as usual")
    # the document and its cut
    top = 3.5
    d.text(0.15, top + 0.1, "a document", size=10, weight="bold", ha="left")
    d.box(0.15, top - 0.65, 3.3, 0.55, kind="data")
    fills = {c: pale(c, 0.75) for c in PARTS.values()}
    _code(d, 0.3, top - 0.27, [(prefix, INK), (middle, SERIES[1]), (suffix, SERIES[2])],
          fills={INK: fills[PARTS["prefix"]], SERIES[1]: fills[PARTS["middle"]], SERIES[2]: fills[PARTS["suffix"]]})
    i, j = len(prefix), len(prefix) + len(middle)
    _lines(d, 3.7, top + 0.1, ("fim_split draws two cuts over the characters:",
                               f"here {i} and {j} of {len(MEAN)} (random.Random({FIM_SEED})).",
                               "A cut may fall inside a name, as a cursor may."), color=INK, step=0.2)
    for k, (name, color) in enumerate(PARTS.items()):
        x = 3.7 + 1.15 * k
        cell(d, x, top - 0.68, 0.22, 0.2, fill=pale(color, 0.75), edge=color, lw=0.8)
        d.text(x + 0.28, top - 0.58, f"{name} ({len(spans[name])})", size=9, ha="left")
    # the two layouts
    rows = {"psm": (1.95, "PSM: prefix, suffix, then the middle"),
            "spm": (1.05, "SPM: suffix first, then prefix and middle run on as plain text")}
    for mode, (y, caption) in rows.items():
        d.text(0.15, y + 0.5, caption, size=10, weight="bold", ha="left")
        x = 0.15
        for p in orders[mode]:
            x = (_piece(d, x, y, spans[p], PARTS[p]) if p in spans else _sentinel(d, x, y, p)) + 0.03
        assert x < 7.25, x
        d.text(x - 0.03, y - 0.15, f"then {ENDOFTEXT}, as after every document", size=9, color=MUTED, ha="right")
    _lines(d, 0.15, 0.55, ("to_fim(text, rng, rate=1.0, mode) writes these rows; each sentinel is one token.",
                          f"The corpus ends each document with {ENDOFTEXT}: the model learns to close a middle.",
                          f"At inference fim_prompt(prefix, suffix) ends at {FIM_MIDDLE}; the model writes the "
                          "middle."), color=MUTED, step=0.2)
    return d


# ---------------------------------------------------------------------------
# The harness: task, completion, program, sandbox, outcome
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _outcomes() -> dict[str, Outcome]:
    """Every program the figures show, run in the sandbox once: {source: outcome}."""
    sources = [program(TASK, c) for c in COMPLETIONS] + [s for _, s in RUNS]
    found = dict(zip(sources, run_many(sources, Limits(), workers=2)))
    found[LOOP[1]] = run_code(LOOP[1], Limits(timeout_s=LOOP_TIMEOUT_S))
    return found


def _status(d: Diagram, x: float, y: float, outcome: Outcome, w: float = 0.95, h: float = 0.3) -> None:
    """An outcome's status as a coloured chip."""
    color = STATUS_COLOR[outcome.status]
    cell(d, x, y, w, h, outcome.status, fill=pale(color, 0.8), edge=color, color=INK, lw=1.2)


@diagram("D_harness")
def harness() -> Diagram:
    """HumanEval's harness: prompt + completion + test + check(entry_point) as one program, run in the sandbox."""
    runs = _outcomes()
    programs = [program(TASK, c) for c in COMPLETIONS]
    right, wrong = (runs[p] for p in programs)
    assert right.passed and wrong.status == "failed" and wrong.error.startswith("AssertionError")
    assert programs[0] == TASK.prompt + COMPLETIONS[0] + "\n" + TASK.test + f"\ncheck({TASK.entry_point})\n"
    grey, blue, green = STYLE["op"], STYLE["tensor"], STYLE["data"]
    d = Diagram(7.3, 4.6, title="The harness: prompt + completion + tests, run as one program")
    # the task
    top = 3.95
    d.text(0.15, top + 0.05, f"a task (HumanEval's format), entry_point = {TASK.entry_point!r}", size=10,
           weight="bold", ha="left")
    d.box(0.15, top - 1.2, 3.1, 1.05, kind="data")
    _code(d, 0.25, top - 0.3, [(TASK.prompt.rstrip("\n"), INK)], step=0.19)
    d.text(0.2, top - 1.35, "task.prompt: what the model continues", size=9, color=MUTED, ha="left")
    d.box(3.5, top - 1.2, 3.65, 1.05, kind="data")
    _code(d, 3.6, top - 0.3, [(TASK.test.rstrip("\n"), INK)], step=0.19)
    d.text(3.55, top - 1.35, "task.test: hidden from the model", size=9, color=MUTED, ha="left")
    # the completions
    y = 2.05
    d.text(0.15, y + 0.05, "two completions (examples)", size=10, weight="bold", ha="left")
    for k, c in enumerate(COMPLETIONS):
        cell(d, 0.15, y - 0.45 - 0.38 * k, 3.1, 0.3, "", fill=blue[0], edge=blue[1])
        d.text(0.22, y - 0.3 - 0.38 * k, f"{k + 1}: {c.strip()}", size=9, ha="left")
    d.text(0.15, y - 1.05, "the second passes the docstring's example", size=9, color=MUTED, ha="left")
    d.text(0.15, y - 1.25, "(len(\"banana\") // 2 = 3), not the tests", size=9, color=MUTED, ha="left")
    # the program
    x = 3.5
    d.text(x, y + 0.05, "program(task, completion)", size=10, weight="bold", ha="left")
    parts = ((grey, "prompt", TASK.prompt.count("\n")), (blue, "completion", COMPLETIONS[0].count("\n")),
             (green, "test", TASK.test.count("\n")), (STYLE["accent"], f"check({TASK.entry_point})", 1))
    yy = y - 0.45
    for (fill, edge, _), name, n in parts:
        label = name if name.startswith("check") else f"{name}: {n} line{'s' if n > 1 else ''}"
        cell(d, x, yy, 2.0, 0.3, label, fill=fill, edge=edge)
        yy -= 0.32
    assert programs[0].count("\n") == sum(n for *_, n in parts) + 2  # + a blank line after the completion and the test
    # the sandbox and the outcomes
    sx = 5.8
    box = d.box(sx, 0.87, 1.35, 0.8, "run_code\n(the sandbox)", kind="op", size=9)
    d.arrow((x + 2.0, box.left[1]), box.left)
    for k, outcome in enumerate((right, wrong)):
        yo = 0.12
        xo = 0.15 + 3.6 * k
        _status(d, xo + 1.15, yo, outcome)
        d.text(xo, yo + 0.15, f"completion {k + 1}:", size=9, ha="left")
        d.text(xo + 2.2, yo + 0.15, outcome.error or "ran to its end", size=9, color=MUTED, ha="left")
    d.arrow(box.bottom, (box.center[0], 0.5))
    d.text(box.center[0] + 0.1, 0.68, "Outcome", size=9, color=MUTED, ha="left")
    return d


# ---------------------------------------------------------------------------
# The sandbox's layers, and how a run ends
# ---------------------------------------------------------------------------


@diagram("D_sandbox")
def sandbox() -> Diagram:
    """The layers around the program, outermost first, each with what it stops; values of Limits()."""
    lim = Limits()
    layers = (
        ("a separate process", ("python -I, no inherited environment, its own", "empty work folder and session"),
         (("an infinite loop", f"killed at timeout_s = {lim.timeout_s:g} s"),
          ("API keys in env", "a clean environment"))),
        ("namespaces (unshare)",
         ("network, PID and mount; the file tree", f"read-only, a private {_size(lim.disk_bytes)} tmpfs"),
         (("a connection out", "new network namespace"),
          ("a fork bomb", "dies with the PID namespace"),
          ("rm -rf ~", "read-only file tree"))),
        ("no privileges", (f"user nobody ({NOBODY}) when run as root;", "no capabilities, no new privileges"),
         (("undoing the mounts", "no capabilities"),)),
        ("resource limits (setrlimit)", ("soft = hard, kept by every process", "it starts; no core files"),
         (("a busy loop", f"RLIMIT_CPU, cpu_s = {lim.cpu_s} s"),
          ("an 8 GB list", f"RLIMIT_AS {_size(lim.memory_bytes)}: MemoryError"),
          ("a 1 GB file", f"RLIMIT_FSIZE {_size(lim.file_bytes)}"),
          ("a fork bomb", f"RLIMIT_NPROC {lim.processes} processes"))),
        ("the guard (guard=True)", ("a speed bump, not a wall:", "ctypes gets around it"),
         (("os.system, subprocess", "PermissionError"),
          ("os.remove, os.kill", "PermissionError"))),
    )
    assert lim.guard and not lim.network and 8 * 10**9 > lim.memory_bytes
    step, pad, inset = 0.19, 0.12, 0.13
    heights = [max(len(notes) + 1, len(stops)) * step + 2 * pad for _, notes, stops in layers]
    core = 0.45
    total = sum(heights) + core + 2 * pad + len(layers) * 0.06
    d = Diagram(7.3, total + 0.55, title="The sandbox: layers around the program, and what each one stops")
    x, y, w, h = 0.1, 0.1, 7.1, total
    shades = [pale(MUTED, a) for a in (0.93, 0.89, 0.85, 0.81, 0.77)]
    xs = 3.55  # where the "stops" column starts
    for k, ((name, notes, stops), band) in enumerate(zip(layers, heights)):
        d.ax.add_patch(patches.FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0,rounding_size=0.08",
                                              fc=shades[k], ec=STYLE["op"][1], lw=1.0))
        ty = y + h - pad - 0.08
        d.text(x + 0.12, ty, f"{k + 1}. {name}", size=10, weight="bold", ha="left")
        _lines(d, x + 0.12, ty - step - 0.02, notes, color=INK, step=step)
        xa = xs + max(text_width(d, threat) for threat, _ in stops) + 0.14  # the band's arrows, one column
        for m, (threat, how) in enumerate(stops):
            d.text(xs, ty - step * m, threat, size=9, color=ACCENT, ha="left")
            d.text(xa, ty - step * m, "→", size=9, color=MUTED)
            d.text(xa + 0.14, ty - step * m, how, size=9, color=INK, ha="left")
            assert xa + 0.14 + text_width(d, how) < x + w - 0.08, (threat, how)
        x, y, w, h = x + inset, y + 0.06, w - 2 * inset, h - band - 0.06
    box = d.box(x + 0.1, y + pad, w - 0.2, core, kind="warn")
    d.text(box.center[0], box.center[1], "the program: prompt + completion + tests, run by exec", size=10)
    return d


@diagram("D_outcomes")
def outcomes() -> Diagram:
    """Small programs run by run_code and how each ended: passed, failed, timed out, crashed."""
    found = _outcomes()
    rows = [(what, src, found[src]) for what, src in RUNS] + [(LOOP[0], LOOP[1], found[LOOP[1]])]
    order = {s: k for k, s in enumerate(STATUS_COLOR)}
    rows.sort(key=lambda r: order[r[2].status])
    assert {r[2].status for r in rows} == set(STATUS_COLOR)  # every status shown
    d = Diagram(7.3, 4.45, title="How a run ends: run_code(source) → Outcome(status, error)")
    top, step = 3.85, 0.34
    cols = (0.15, 1.65, 4.1, 5.2)  # what it shows, the source, the status, the error
    for x, head in zip(cols, ("", "the program (source)", "status", "Outcome.error")):
        d.text(x, top, head, size=9, color=MUTED, ha="left")
    for k, (what, src, outcome) in enumerate(rows):
        y = top - 0.35 - step * k
        d.text(cols[0], y, what, size=9, color=MUTED, ha="left")
        d.text(cols[1], y, src, size=9, ha="left")
        assert cols[1] + text_width(d, src) < cols[2] - 0.05, src
        _status(d, cols[2], y - 0.13, outcome, h=0.26)
        error = outcome.error.split(": ")[0] if outcome.error.startswith("PermissionError") else outcome.error
        d.text(cols[3], y, error or "—", size=9, color=MUTED, ha="left")  # the guard's message: its type only
        assert cols[3] + text_width(d, error) < d.width - 0.05, error
    assert found[LOOP[1]].error == f"timed out after {LOOP_TIMEOUT_S:g} s"
    _lines(d, 0.15, top - 0.35 - step * len(rows) - 0.05, (
        "passed only if the source ran to its end: a random nonce, sent on stdin, comes back on a pipe only after",
        "exec returns, so sys.exit(0) or os._exit(0) halfway is no pass. failed: it raised (SystemExit too);",
        f"timed out: the wall clock (here {LOOP_TIMEOUT_S:g} s, by default {Limits().timeout_s:g} s) or RLIMIT_CPU; "
        "crashed: a signal, or no report."), color=INK, step=0.2)
    return d


# ---------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------


@diagram("D_pass_at_k")
def pass_at_k_pairs() -> Diagram:
    """n = 5 samples, c = 2 passed: the C(5, 2) = 10 pairs, 7 with a pass = pass_at_k(5, 2, 2); the naive 0.64."""
    n, passed, k = 5, (1, 3), 2
    c = len(passed)
    subsets = list(itertools.combinations(range(n), k))
    hits = [s for s in subsets if any(i in passed for i in s)]
    unbiased = pass_at_k(n, c, k)
    assert len(subsets) == math.comb(n, k) and math.isclose(len(hits) / len(subsets), unbiased)
    naive = 1 - (1 - c / n) ** k
    d = Diagram(7.3, 4.25, title=f"pass@{k} from n = {n} samples, c = {c} passed: every pair of samples")
    # the samples
    top = 3.5
    d.text(0.15, top + 0.12, f"{n} samples of one task, run", size=10, weight="bold", ha="left")
    sw = 0.42
    for i in range(n):
        ok = i in passed
        color = PASS if ok else FAIL
        cell(d, 0.15 + i * (sw + 0.08), top - 0.45, sw, 0.34, f"{i + 1} {'✓' if ok else '✗'}",
             fill=pale(color, 0.8), edge=color, lw=1.2)
    # the pairs
    d.text(3.06, top + 0.12, f"all C({n}, {k}) = {len(subsets)} ways to pick {k} of them", size=10, weight="bold",
           ha="left")
    pw = 0.3
    _lines(d, 0.15, top - 0.8, (f"pass@{k}: the chance that at least one", f"of {k} samples, drawn from these {n}",
                                "without repeats, passes"), color=INK, step=0.2)
    for m, s in enumerate(subsets):
        col, row = m % 5, m // 5
        x, y = 3.1 + col * 0.8, top - 0.45 - row * 0.75
        hit = s in hits
        for q, i in enumerate(s):
            color = PASS if i in passed else FAIL
            cell(d, x + q * pw, y, pw, 0.34, str(i + 1), fill=pale(color, 0.8), edge=color)
        d.ax.add_patch(patches.Rectangle((x - 0.04, y - 0.04), 2 * pw + 0.08, 0.42, fc="none",
                                         ec=PASS if hit else MUTED, lw=1.6 if hit else 0.8,
                                         ls="-" if hit else "--"))
        d.text(x + pw, y - 0.17, "a pass" if hit else "none", size=9, color=PASS if hit else MUTED)
    # the numbers
    y = 1.75
    text_runs(d, 0.15, y, ((f"{len(hits)} of {len(subsets)} pairs hold a passing sample: ", INK),
                       (f"{len(hits) / len(subsets):.2f} = pass_at_k({n}, {c}, {k}) = "
                        f"1 − C({n - c}, {k}) / C({n}, {k})", PASS)), size=10)
    text_runs(d, 0.15, y - 0.3, (("naive: 1 − (1 − c/n)^k = ", INK), (f"1 − {1 - c / n:g}² = {naive:.2f}", FAIL),
                             ("  as if a draw could repeat a sample; biased low", MUTED)), size=10)
    # pass@k for every k
    ty = 0.95
    d.text(0.15, ty, "k", size=9, color=MUTED, ha="left")
    d.text(0.15, ty - 0.25, "unbiased", size=9, color=PASS, ha="left")
    d.text(0.15, ty - 0.5, "naive", size=9, color=FAIL, ha="left")
    for kk in range(1, n + 1):
        x = 1.3 + (kk - 1) * 0.75
        d.text(x, ty, str(kk), size=9, color=MUTED)
        d.text(x, ty - 0.25, f"{pass_at_k(n, c, kk):.2f}", size=9, color=PASS, weight="bold" if kk == k else "normal")
        d.text(x, ty - 0.5, f"{1 - (1 - c / n) ** kk:.2f}", size=9, color=FAIL, weight="bold" if kk == k else "normal")
    assert pass_at_k(n, c, n - c + 1) == 1.0
    _lines(d, 5.0, ty, ("pass@1 = c/n for both; the", "naive one never reaches 1,", "though any 4 of these 5",
                        "must hold a pass"), color=INK, step=0.2)
    return d
