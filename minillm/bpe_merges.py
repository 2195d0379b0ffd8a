"""The BPE merge algorithms on token ids (chapter 02): learning merges, applying them, which tokens come back.

:class:`minillm.bpe.BPETokenizer` is a table ``id -> bytes``, a list of
merges ``(left id, right id, merged id)`` in priority order and the special
tokens. Its algorithms work on ids alone and need nothing else of the
tokenizer, so they live here:

* :func:`learn_merges`: training, the most frequent adjacent pair merged again
  and again, on a corpus given as unique chunks (byte ids) and their counts
  (:meth:`minillm.bpe.BPETokenizer.train` cuts the text and builds the
  vocabulary around it);
* :func:`tokens_that_come_back`: the tokens that the merge loop turns back
  into themselves, without running it on each, and :func:`whole_tokens`, the
  table of those that can be a chunk: a chunk that is such a token is encoded
  as that one id (the shortcut of
  :meth:`minillm.bpe.BPETokenizer.encode_ordinary`);
* :func:`merge_piece`: encoding's step 4 on one chunk, the merges applied lowest
  rank first, and :func:`merge_long_piece`, the same with a heap for long chunks
  (the tokenizer picks one by length and caches the result).
"""

from __future__ import annotations

import heapq
import warnings
from collections import defaultdict


def learn_merges(words: list[list[int]], freqs: list[int], n_merges: int) -> list[tuple[int, int, int]]:
    """The BPE merges of a corpus given as unique chunks (byte ids) with counts.

    Each step merges the most frequent adjacent pair (ties: the smallest pair);
    merge ``k`` (from 0) makes id ``256 + k``. With no pair left it warns and
    stops early.

    ``pair_counts`` holds every adjacent pair's total count, ``where`` the chunks
    in which a pair may occur (stale entries are skipped), and ``heap`` entries
    ``(-count, pair)`` (stale when the count has changed since the push).
    ``words`` is modified in place.
    """
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, c) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += c
            where[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int, int]] = []
    while len(merges) < n_merges:
        while heap and pair_counts.get(heap[0][1], 0) != -heap[0][0]:
            heapq.heappop(heap)  # stale entry
        if not heap:
            warnings.warn(f"BPE training stopped after {len(merges)} of {n_merges} merges: no pair "
                          "of tokens is left to merge (the training text is too small)", stacklevel=3)
            break
        _, (a, b) = heapq.heappop(heap)
        new = 256 + len(merges)
        merges.append((a, b, new))
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for w in where.pop((a, b)):
            word, out, i = words[w], [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            if len(out) == len(word):
                continue  # stale: this chunk no longer holds the pair
            c = freqs[w]
            for pair in zip(word, word[1:]):
                delta[pair] -= c
            for pair in zip(out, out[1:]):
                delta[pair] += c
                where[pair].add(w)
            words[w] = out
        for pair, d in delta.items():
            if d:
                pair_counts[pair] += d
                if pair_counts[pair] > 0:
                    heapq.heappush(heap, (-pair_counts[pair], pair))
                else:
                    del pair_counts[pair]
    return merges


def tokens_that_come_back(byte_ids: list[int], merges: list[tuple[int, int, int]],
                          ranks: dict[tuple[int, int], int]) -> set[int] | None:
    """The ids of the tokens that ``BPETokenizer._bpe`` (the merge loop) turns back into themselves.

    ``byte_ids[b]`` is the id of byte ``b``, ``merges`` the ``(left, right,
    merged)`` triples in priority order and ``ranks`` the rank of each merged
    pair (of its first merge), as a :class:`~minillm.bpe.BPETokenizer`
    holds them. Every byte comes back; a merged token ``t`` comes back if the
    merge loop, run on t's bytes alone, ends with the one token ``t``.

    Does every token come back? In a vocabulary learned by BPE
    (:meth:`~minillm.bpe.BPETokenizer.train`, GPT-2's), yes: ``t = a + b``
    was learned where ``a`` and ``b`` stood side by side, and the merges that
    made them from t's bytes happen the same way with no text around. In a
    hand-made list of merges, not always: with ``b c``, then ``a b``, then
    ``ab c``, the bytes ``abc`` become ``a`` + ``bc`` and stop. So each token
    is checked, in merge order, without running the merge loop on its bytes:

    ``t = a + b``, made by the merge of rank k, comes back if ``a`` and ``b``
    do and, before rank k, no merge joins a token on a's side of the
    boundary to one on b's side. The token at the end of a's side is, in
    turn, each token of a's *right spine* (a's last byte, the token that
    took it in, ..., ``a``); the token at the start of b's side each of b's
    *left spine*. A pair ``(x, y)`` of them merges if its rank q comes after
    both are made, before x is taken into its left neighbour (a merge of the
    same rank further left goes first) and no later than y is taken into its
    right neighbour (there ``(x, y)`` is the leftmost pair, so it goes first).
    Walking both spines in time order looks up only the pairs that meet: for
    GPT-2's 50,000 tokens that is about 4x faster than running the merge loop
    on each (a few tenths of a second, once per tokenizer).

    Ranks count time only if every merge ranks after the merges that make
    its two parts, and each token is made by one merge (as in any learned
    vocabulary, and as :meth:`~minillm.bpe.BPETokenizer.to_tiktoken`
    requires). Otherwise the answer is None: not known without running the
    merge loop.
    """
    made = {t: -1 for t in byte_ids}  # token -> rank of the merge that makes it
    for k, (a, b, t) in enumerate(merges):
        if t in made or made.get(a, k) >= k or made.get(b, k) >= k:
            return None
        made[t] = k
    never = len(merges)
    # token that comes back -> (its left or right spine from the byte up, the rank that made each)
    left = {t: ((t,), (-1,)) for t in byte_ids}
    right = dict(left)
    for k, (a, b, t) in enumerate(merges):
        if a not in left or b not in left:
            continue  # a part that does not come back: neither does t
        (xs, x_made), (ys, y_made) = right[a], left[b]
        # xs[i] is at the boundary from rank x_made[i] to x_made[i + 1] (a: to k); ys alike
        x_made, y_made, i, j = x_made + (k,), y_made + (k,), 0, 0
        while True:  # each pair (xs[i], ys[j]) that meet at the boundary, in time order
            q = ranks.get((xs[i], ys[j]), never)
            if x_made[i] < q < x_made[i + 1] and y_made[j] < q <= y_made[j + 1]:
                break  # they merge across the boundary: t does not come back
            if x_made[i + 1] < y_made[j + 1]:
                i += 1
            elif j + 1 < len(ys):
                j += 1
            else:  # no pair merged: t comes back
                left[t] = (left[a][0] + (t,), left[a][1] + (k,))
                right[t] = (right[b][0] + (t,), right[b][1] + (k,))
                break
    return set(left)


def whole_tokens(vocab: list[bytes], back: set[int] | None) -> dict[str, tuple[int]]:
    """``text -> (id,)`` for every token in ``back`` (:func:`tokens_that_come_back`) that can be a chunk.

    ``vocab[i]`` is the bytes of token ``i``. A chunk whose bytes are a token
    that comes back needs no merging: its ids are that one token (tiktoken
    takes the same shortcut). Most chunks of a text are (``" the"``,
    ``" learning"``), so encoding skips most of the merge loop. Only tokens
    whose bytes are valid UTF-8 can be a chunk, so only they are in the table;
    with ``back`` None (not known) the table is empty: no shortcut.
    """
    whole = {}
    for t in back or ():
        try:
            whole[vocab[t].decode("utf-8")] = (t,)
        except UnicodeDecodeError:
            pass
    return whole


def merge_piece(piece: bytes, byte_ids: list[int], pair_rank: dict[tuple[int, int], int],
                merged: list[int]) -> tuple[int, ...]:
    """Token ids of one pre-tokenized chunk: its bytes, then merges, lowest rank first.

    ``byte_ids[b]`` is the id of byte b, ``pair_rank`` maps a pair of ids to the
    rank of its (first) merge and ``merged[rank]`` is the id that merge makes, as
    in :class:`~minillm.bpe.BPETokenizer`.

    The textbook loop (chapter 02) finds the adjacent pair with the lowest
    merge rank, merges every occurrence of it in one left-to-right pass,
    recomputes the ranks of all pairs and repeats. This makes the same merges
    without the recomputing: ``ranks[i]`` is the rank of the pair
    ``(ids[i], ids[i + 1])`` (``never`` if no merge makes it), and a merge looks
    up only the ranks of the two pairs it creates, on either side of the new
    token. The pass becomes: merge the leftmost occurrence, then the leftmost
    remaining one, until none is left, and only then go on to the next lowest
    rank. The result is the same because a new pair holds the new token, which
    is longer than either of its parts, so it is never the pair being merged.
    Sentinels (-1, in no pair) at both ends spare checks for the first and last
    token. The scans of ``ranks`` make this loop quadratic in the length of the
    piece: the tokenizer sends long pieces to :func:`merge_long_piece`.
    """
    get, never = pair_rank.get, len(merged)
    ids = [-1, *[byte_ids[b] for b in piece], -1]
    ranks = [get(pair, never) for pair in zip(ids, ids[1:])]
    rank = min(ranks)
    while rank != never:
        i = ranks.index(rank)  # the leftmost occurrence of the lowest-rank pair
        token = merged[rank]
        ids[i] = token
        del ids[i + 1], ranks[i]
        ranks[i - 1] = get((ids[i - 1], token), never)
        ranks[i] = get((token, ids[i + 1]), never)
        if rank not in ranks:  # every occurrence is merged: on to the next lowest rank
            rank = min(ranks)
    return tuple(ids[1:-1])


def merge_long_piece(piece: bytes, byte_ids: list[int], pair_rank: dict[tuple[int, int], int],
                     merged: list[int]) -> tuple[int, ...]:
    """:func:`merge_piece` in O(n log n) for a piece of n bytes (a long number, a run of
    spaces or symbols), with the same result.

    The tokens form a linked list: ``after[i]`` and ``before[i]`` are the
    positions of the next and the previous token, and ``ids[i]`` becomes None
    once the token at ``i`` is merged into its left neighbour. A heap holds
    ``(rank, position)`` for the pair starting at each position, so popping it
    gives the lowest rank, at its positions from left to right; an entry whose
    pair has been merged or changed since it was pushed is skipped. The pairs
    that a merge creates are pushed only after every occurrence of the current
    rank is merged, as in one pass of the textbook loop.
    """
    get = pair_rank.get
    ids: list[int | None] = [byte_ids[b] for b in piece]
    n = len(ids)
    after, before = list(range(1, n + 1)), list(range(-1, n - 1))
    heap = [(rank, i) for i, pair in enumerate(zip(ids, ids[1:])) if (rank := get(pair)) is not None]
    heapq.heapify(heap)
    while heap:
        rank, changed = heap[0][0], []
        while heap and heap[0][0] == rank:  # every occurrence of this pair, left to right
            i = heapq.heappop(heap)[1]
            j = after[i]
            if ids[i] is None or j == n or get((ids[i], ids[j])) != rank:
                continue  # stale: merged away or changed since it was pushed
            ids[i], ids[j] = merged[rank], None
            after[i] = after[j]
            if after[i] < n:
                before[after[i]] = i
            changed += (before[i], i)  # the pairs left and right of the new token
        for i in changed:
            if i >= 0 and after[i] < n and (new := get((ids[i], ids[after[i]]))) is not None:
                heapq.heappush(heap, (new, i))
    return tuple(t for t in ids if t is not None)
