"""Appendix C's exercises: a right answer passes, typical mistakes fail, the untouched stub is not attempted."""

from __future__ import annotations

import heapq
import json
import math
import random

import pytest
import torch

from minillm.exercises import ExerciseFailed, check

# -- C.1 reading a streamed answer -------------------------------------------------------------


def parse_sse_right(lines):
    chunks = []
    for line in lines:
        if not line.startswith("data: "):
            continue  # blank lines between events, comments (": keep-alive"), event:, id:, retry:
        payload = line[len("data: "):]
        if payload == "[DONE]":
            return chunks
        chunk = json.loads(payload)
        if "error" in chunk:
            raise ValueError(f"the server answered an error: {chunk['error']['message']}")
        chunks.append(chunk)
    raise ValueError("the stream ended without data: [DONE]")


def parse_sse_stops_at_error(lines):  # returns what came before an error, as if the answer were complete
    chunks = []
    for line in lines:
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return chunks
        chunk = json.loads(line[6:])
        if "error" in chunk:
            return chunks
        chunks.append(chunk)
    raise ValueError("the stream ended without data: [DONE]")


def parse_sse_ignores_errors(lines):  # an error chunk is just one more chunk
    chunks = []
    for line in lines:
        if line.startswith("data: "):
            if line == "data: [DONE]":
                return chunks
            chunks.append(json.loads(line[6:]))
    raise ValueError("the stream ended without data: [DONE]")


def parse_sse_error_without_message(lines):
    try:
        return parse_sse_right(lines)
    except ValueError:
        raise ValueError("the request failed") from None


def parse_sse_keeps_done(lines):  # returns the [DONE] marker as a last "chunk"
    chunks = []
    for line in lines:
        if line == "data: [DONE]":
            return [*chunks, "[DONE]"]
        if line.startswith("data: "):
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise ValueError(chunk["error"]["message"])
            chunks.append(chunk)
    raise ValueError("the stream ended without data: [DONE]")


def parse_sse_chokes_on_comments(lines):  # parses every non-blank line as a data line
    chunks = []
    for line in lines:
        if not line:
            continue
        if line == "data: [DONE]":
            return chunks
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise ValueError(chunk["error"]["message"])
        chunks.append(chunk)
    raise ValueError("the stream ended without data: [DONE]")


def parse_sse_accepts_truncated(lines):  # the end of the lines is taken as the end of the answer
    chunks = []
    for line in lines:
        if line == "data: [DONE]":
            break
        if line.startswith("data: "):
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise ValueError(chunk["error"]["message"])
            chunks.append(chunk)
    return chunks


def parse_sse_done_anywhere(lines):  # "[DONE]" in the line: a text containing it ends the stream early
    chunks = []
    for line in lines:
        if "[DONE]" in line:
            return chunks
        if line.startswith("data: "):
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise ValueError(chunk["error"]["message"])
            chunks.append(chunk)
    raise ValueError("the stream ended without data: [DONE]")


def parse_sse_indexes(lines):  # treats the iterator as a list
    end = lines.index("data: [DONE]")
    return [json.loads(line[6:]) for line in lines[:end] if line.startswith("data: ")]


def parse_sse_returns_strings(lines):  # the payloads, not parsed
    chunks = []
    for line in lines:
        if line == "data: [DONE]":
            return chunks
        if line.startswith("data: "):
            if '"error"' in line:
                raise ValueError(json.loads(line[6:])["error"]["message"])
            chunks.append(line[6:])
    raise ValueError("the stream ended without data: [DONE]")


def test_c_1():
    assert check("C.1", parse_sse_right) is True
    wrong = (parse_sse_stops_at_error, parse_sse_ignores_errors, parse_sse_error_without_message, parse_sse_keeps_done,
             parse_sse_chokes_on_comments, parse_sse_accepts_truncated, parse_sse_done_anywhere, parse_sse_indexes,
             parse_sse_returns_strings)  # fmt: skip
    for answer in wrong:
        with pytest.raises(ExerciseFailed):
            check("C.1", answer)
    with pytest.raises(ExerciseFailed, match="instead of raising"):
        check("C.1", parse_sse_stops_at_error)
    with pytest.raises(ExerciseFailed, match="Check each chunk for an 'error' key"):
        check("C.1", parse_sse_ignores_errors)
    with pytest.raises(ExerciseFailed, match="does not say why"):
        check("C.1", parse_sse_error_without_message)
    with pytest.raises(ExerciseFailed, match="end marker"):
        check("C.1", parse_sse_keeps_done)
    with pytest.raises(ExerciseFailed, match="skip blank lines, comments"):
        check("C.1", parse_sse_chokes_on_comments)
    with pytest.raises(ExerciseFailed, match="without data: \\[DONE\\]"):
        check("C.1", parse_sse_accepts_truncated)
    with pytest.raises(ExerciseFailed, match="compare the whole line"):
        check("C.1", parse_sse_done_anywhere)
    with pytest.raises(ExerciseFailed, match="iterator"):
        check("C.1", parse_sse_indexes)
    with pytest.raises(ExerciseFailed, match="json.loads"):
        check("C.1", parse_sse_returns_strings)


def test_c_1_a_parser_that_also_accepts_data_without_a_space_passes():
    def parse_sse_spec(lines):  # the SSE spec: "data:" then an optional space; a blank line ends an event
        chunks, data = [], []
        for line in lines:
            if line == "":
                if data:
                    payload = "\n".join(data)
                    data = []
                    if payload == "[DONE]":
                        return chunks
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        raise ValueError(chunk["error"]["message"])
                    chunks.append(chunk)
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data and data == ["[DONE]"]:
            return chunks
        raise ValueError("the stream ended without data: [DONE]")

    assert check("C.1", parse_sse_spec) is True


# -- C.2 the key mask of a decode step ---------------------------------------------------------


def key_mask_right(lengths, max_len):
    return torch.arange(max_len)[None, :] <= lengths[:, None]


def key_mask_off_by_one(lengths, max_len):  # hides the position being written
    return torch.arange(max_len)[None, :] < lengths[:, None]


def key_mask_transposed(lengths, max_len):
    return key_mask_right(lengths, max_len).T


def key_mask_float(lengths, max_len):
    return key_mask_right(lengths, max_len).float()


def key_mask_everything(lengths, max_len):  # one length for all rows: the longest
    return key_mask_right(lengths.max().expand_as(lengths), max_len)


def key_mask_in_place(lengths, max_len):
    lengths += 1
    return torch.arange(max_len)[None, :] < lengths[:, None]


def test_c_2():
    assert check("C.2", key_mask_right) is True
    for wrong in (key_mask_off_by_one, key_mask_transposed, key_mask_float, key_mask_everything, key_mask_in_place):
        with pytest.raises(ExerciseFailed):
            check("C.2", wrong)
    with pytest.raises(ExerciseFailed, match="<=, not <"):
        check("C.2", key_mask_off_by_one)
    with pytest.raises(ExerciseFailed, match="transposed"):
        check("C.2", key_mask_transposed)
    with pytest.raises(ExerciseFailed, match="dtype"):
        check("C.2", key_mask_float)
    with pytest.raises(ExerciseFailed, match="in place"):
        check("C.2", key_mask_in_place)


# -- C.3 percentiles of latencies --------------------------------------------------------------


def percentile_right(values, q):
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def percentile_nearest_rank(values, q):
    xs = sorted(values)
    return xs[max(0, math.ceil(q / 100 * len(xs)) - 1)]


def percentile_fraction(values, q):  # q taken as a fraction of one
    xs = sorted(values)
    pos = min((len(xs) - 1) * q, len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def percentile_fraction_unclamped(values, q):
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    return xs[lo] + (xs[lo + 1] - xs[lo]) * (pos - lo)


def percentile_unsorted(values, q):
    pos = (len(values) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def percentile_sorts_in_place(values, q):
    values.sort()
    return percentile_right(values, q)


def test_c_3():
    assert check("C.3", percentile_right) is True
    for wrong in (percentile_nearest_rank, percentile_fraction, percentile_fraction_unclamped, percentile_unsorted,
                  percentile_sorts_in_place):
        with pytest.raises(ExerciseFailed):
            check("C.3", wrong)
    with pytest.raises(ExerciseFailed, match="nearest-rank"):
        check("C.3", percentile_nearest_rank)
    with pytest.raises(ExerciseFailed, match="not a fraction"):
        check("C.3", percentile_fraction)
    with pytest.raises(ExerciseFailed, match="percentage"):
        check("C.3", percentile_fraction_unclamped)
    with pytest.raises(ExerciseFailed, match="in place"):
        check("C.3", percentile_sorts_in_place)


def test_c_3_numpy_and_the_bench_pass():
    import numpy as np

    from minillm.bench.serve import percentile

    assert check("C.3", lambda values, q: np.percentile(values, q)) is True
    assert check("C.3", percentile) is True


# -- C.4 decode steps under continuous batching ------------------------------------------------


def continuous_steps_right(lengths, slots):
    waiting, running, step = list(lengths), [], 0  # running: steps left of each request in a slot
    while waiting or running:
        while waiting and len(running) < slots:  # free slots are taken at this step, in order of arrival
            running.append(waiting.pop(0))
        running = [n - 1 for n in running if n > 1]  # one decode step for every row; finished ones leave
        step += 1
    return step


def continuous_steps_static(lengths, slots):  # groups of `slots`, each waiting for its longest
    return sum(max(lengths[i:i + slots]) for i in range(0, len(lengths), slots))


def continuous_steps_plus_one(lengths, slots):
    return continuous_steps_right(lengths, slots) + 1 if lengths else 0


def continuous_steps_slot_free_late(lengths, slots):  # a freed slot is taken only one step later
    free = [0] * slots
    for n in lengths:
        heapq.heappush(free, heapq.heappop(free) + n + 1)
    return max(free) - 1 if lengths else 0


def continuous_steps_divided(lengths, slots):  # the work spread evenly over the slots
    return math.ceil(sum(lengths) / slots) if lengths else 0


def continuous_steps_longest_first(lengths, slots):  # reorders the queue (not in arrival order)
    return continuous_steps_right(sorted(lengths, reverse=True), slots)


def test_c_4():
    assert check("C.4", continuous_steps_right) is True
    for wrong in (continuous_steps_static, continuous_steps_plus_one, continuous_steps_slot_free_late,
                  continuous_steps_divided, continuous_steps_longest_first):
        with pytest.raises(ExerciseFailed):
            check("C.4", wrong)
    with pytest.raises(ExerciseFailed, match="static batching: each group"):
        check("C.4", continuous_steps_static)
    with pytest.raises(ExerciseFailed, match="Off by one"):
        check("C.4", continuous_steps_plus_one)
    with pytest.raises(ExerciseFailed, match="cannot be spread"):
        check("C.4", continuous_steps_divided)
    with pytest.raises(ExerciseFailed, match="order of arrival"):
        check("C.4", continuous_steps_longest_first)


def test_c_4_edge_cases_of_the_reference():
    assert continuous_steps_right([3, 1, 4], 1) == 8
    assert continuous_steps_right([3, 1, 4], 5) == 4
    assert continuous_steps_right([], 2) == 0
    assert continuous_steps_right([10, 2, 2, 2, 2, 2, 2, 10], 2) == 20
    assert continuous_steps_static([10, 2, 2, 2, 2, 2, 2, 10], 2) == 24


def test_the_checks_leave_the_random_states_alone():
    state, py_state = torch.random.get_rng_state(), random.getstate()
    for id, answer in (("C.1", parse_sse_right), ("C.2", key_mask_right), ("C.3", percentile_right),
                       ("C.4", continuous_steps_right)):
        assert check(id, answer) is True
    assert torch.equal(torch.random.get_rng_state(), state)
    assert random.getstate() == py_state


# -- the stubs ---------------------------------------------------------------------------------


def test_an_answer_that_forgets_to_return_is_wrong_not_unattempted():
    def forgets_return(lengths, max_len):
        mask = key_mask_right(lengths, max_len)  # noqa: F841

    with pytest.raises(ExerciseFailed, match="should be a torch.Tensor, got NoneType"):
        check("C.2", forgets_return)

    def parse_forgets_return(lines):
        chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]  # noqa: F841

    with pytest.raises(ExerciseFailed, match="parse_sse returned NoneType"):
        check("C.1", parse_forgets_return)
