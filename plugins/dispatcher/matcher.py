"""In-memory Dice search over all Bloom filters of one study version.

Layout. The filters live in one contiguous uint64 matrix stored *word-major*: `bits[w, row]` is
word w of the filter in `row`. A search then runs, per block of rows and per word, three numpy
calls over one long contiguous run (AND with the query's word, popcount, add into the overlap
counts). The row-major alternative needs an inner-axis reduction over only ~25 words per row,
which numpy did 1.5-2 times more slowly in measurements here. Beside the matrix: the popcount
of each row, the key (the store's person id) of each row, and a key -> row lookup.

Pruning. Halfway through the words, a row's overlap can still grow by at most the query's bits
in the second half. When that bound drops nearly all rows of a block below the threshold (the
min_score, or the score of the current k-th best), only the few rows left have their second
half read. Against a million random filters this halves a search with min_score 0.8.

Key lookup without a large Python dict. A dict of a million int keys with int values costs about
100 bytes an entry (table plus two int objects), half the size of a 1600-bit filter, which alone
would break the memory budget of 1.5x the raw filter bytes. Instead the keys live in a sorted
int64 array with the matching rows (16 bytes an entry), searched with `np.searchsorted`. Keys
added since that array was built sit in a small dict (`_recent`) until it outgrows ~1/32 of the
index and the sorted arrays are rebuilt (an argsort, ~0.1 s at a million rows, so amortised a few
microseconds an insert). Removed keys leave stale entries in the sorted arrays; a hit there counts
only if `keys[row]` still names the key, which is exact because keys are unique among live rows.

Growth is geometric with factor 1.25 (amortised O(1) inserts like a vector, and at most 25 %
unused capacity, which keeps a loaded index within 1.41x the raw filter bytes: 1.25 x (200 + 10)
bytes a 1600-bit row, plus 16 for the sorted lookup and ~3 for the recent dict); removal moves
the last row into the hole, and capacity shrinks back to 1.25x when less than half is used.
While growing, old and new arrays exist together for a moment.

Concurrency. Searches hold a shared lock for their whole run and writers an exclusive one, so a
search never sees a row half-written, moved or reallocated; waiting writers block new searches
so that a stream of searches cannot starve them (an upsert waits for the searches already
running: tens of milliseconds at a million filters). A large search spreads its blocks over
this thread and one helper thread per further core (numpy releases the GIL inside ufunc loops);
blocks are handed out one at a time, so a helper slowed by a busy neighbour just takes fewer.

Scores are exact: 2*overlap and popcount sums are exact in float64 and one IEEE division rounds
them the same way Python's `2 * overlap / total` does, so they equal `bloom.dice`. Ties are
ordered by key, so results are deterministic.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, TypeVar

import numpy as np

from .bloom import byte_length, pad_filter

__all__ = ["FilterIndex"]

_T = TypeVar("_T")


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._condition:
            while self._writing or self._writers_waiting:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._condition:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._condition.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


_helpers: ThreadPoolExecutor | None = None
_helper_count = 0
_helpers_lock = threading.Lock()


def _forget_helpers() -> None:
    # A forked child has the pool object but not its threads: let it start its own.
    global _helpers, _helpers_lock
    _helpers, _helpers_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers)


def _helper_pool() -> tuple[ThreadPoolExecutor | None, int]:
    """Threads that scan blocks beside the searching thread: one per further core, or none."""
    global _helpers, _helper_count
    with _helpers_lock:
        if _helpers is None:
            _helper_count = _usable_cores() - 1
            if _helper_count < 1:
                return None, 0
            _helpers = ThreadPoolExecutor(_helper_count, thread_name_prefix="dice-search")
        return _helpers, _helper_count


class _TopK:
    """The best `limit` rows seen so far: score descending, then key ascending."""

    def __init__(self, min_score: float, limit: int, keys: np.ndarray) -> None:
        self._min_score = min_score
        self._limit = limit
        self._keys = keys
        self.scores = np.empty(0, np.float64)
        self.rows = np.empty(0, np.int64)
        # Rows scoring below this cannot enter any more. Ties with the current last one can
        # (a smaller key wins), hence >= everywhere.
        self.threshold = min_score

    def offer(self, scores: np.ndarray, rows: np.ndarray | int) -> None:
        """Consider `scores` of `rows` (an array, or the first row of consecutive ones)."""
        hits = np.flatnonzero(scores >= self.threshold)
        if hits.size > self._limit:
            # Keep the `limit` best and everything tied with the last of them.
            values = scores[hits]
            cut = hits.size - self._limit
            hits = hits[values >= np.partition(values, cut)[cut]]
        if hits.size:
            self.add(scores[hits], hits + rows if isinstance(rows, int) else rows[hits])

    def add(self, scores: np.ndarray, rows: np.ndarray) -> None:
        scores = np.concatenate((self.scores, scores))
        rows = np.concatenate((self.rows, rows))
        order = np.lexsort((self._keys[rows], -scores))[: self._limit]
        self.scores, self.rows = scores[order], rows[order]
        if order.size == self._limit:
            self.threshold = max(self._min_score, float(self.scores[-1]))

    def results(self) -> list[tuple[int, float]]:
        return list(zip(self._keys[self.rows].tolist(), self.scores.tolist()))


class FilterIndex:
    """All Bloom filters of one study and version, for vectorised Dice search."""

    # Rows per block: one word of a block is 512 KiB of the matrix, and the temporaries of a
    # block (~1 MiB) stay in a core's L2 cache while its 25 words stream through.
    _block_rows = 65_536
    # Below this many rows a second thread costs more than it saves.
    _parallel_min_rows = 2 * 65_536
    # Queries scanned together in one pass of search_many: each word slice is loaded once for
    # all of them, and their overlap counters (2 bytes a row each) still fit in cache.
    _queries_per_pass = 8
    # Rows left after the halfway bound are finished one by one if at most 1/this of a block:
    # each costs a cache line per word, where the whole block costs 1/8 of one per row.
    _sparse_share = 64
    # Rows of a block whose halfway bound is computed first, to see if the rest is worth it.
    _probe_rows = 1024
    _growth = 1.25
    _min_capacity = 64
    # The recent-keys dict is folded into the sorted arrays beyond max(this, rows // 32).
    _recent_min = 1024

    def __init__(self, length_bits: int) -> None:
        self.length_bits = length_bits
        self._filter_bytes = byte_length(length_bits)  # also validates length_bits
        self._words = (length_bits + 63) // 64
        # Overlaps and popcounts never exceed length_bits.
        self._count_dtype = np.dtype(np.uint16 if length_bits <= 0xFFFF else np.uint32)
        self._bits = np.empty((self._words, 0), np.uint64)
        self._popcounts = np.empty(0, self._count_dtype)
        self._keys = np.empty(0, np.int64)
        self._count = 0
        self._sorted_keys = np.empty(0, np.int64)
        self._sorted_rows = np.empty(0, np.int64)
        self._recent: dict[int, int] = {}
        self._lock = _ReadWriteLock()

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Memory held by the index: matrix, popcounts, keys and the key lookup."""
        with self._lock.reading():
            arrays = (self._bits, self._popcounts, self._keys, self._sorted_keys, self._sorted_rows)
            total = sum(array.nbytes for array in arrays)
            total += sys.getsizeof(self._recent)
            total += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in self._recent.items())
            return total

    # --- writing -----------------------------------------------------------------------------

    def upsert(self, keys: Sequence[int], filters: Sequence[bytes]) -> None:
        """Store `filters` under `keys`, replacing a key's filter if present (last one wins)."""
        key_array = _as_keys(keys)
        if key_array.size != len(filters):
            raise ValueError("upsert needs exactly one filter per key")
        if not key_array.size:
            return
        words, popcounts = self._pack(filters)
        key_array, words, popcounts = _last_per_key(key_array, words, popcounts)
        with self._lock.writing():
            rows = self._locate(key_array)
            known = rows >= 0
            if known.any():
                self._bits[:, rows[known]] = words[known].T
                self._popcounts[rows[known]] = popcounts[known]
            new = ~known
            added = int(np.count_nonzero(new))
            if not added:
                return
            start, stop = self._count, self._count + added
            self._reserve(stop)
            self._bits[:, start:stop] = words[new].T
            self._popcounts[start:stop] = popcounts[new]
            self._keys[start:stop] = key_array[new]
            self._count = stop
            if len(self._recent) + added > max(self._recent_min, stop // 32):
                self._rebuild_lookup()
            else:
                self._recent.update(zip(key_array[new].tolist(), range(start, stop)))

    def remove(self, keys: Sequence[int]) -> None:
        """Forget the filters of `keys`; unknown keys are ignored."""
        key_array = _as_keys(keys)
        if not key_array.size:
            return
        with self._lock.writing():
            for key in key_array.tolist():
                row = self._locate_one(key)
                if row < 0:
                    continue
                last = self._count - 1
                if row != last:  # fill the hole with the last row
                    self._bits[:, row] = self._bits[:, last]
                    self._popcounts[row] = self._popcounts[last]
                    moved = int(self._keys[last])
                    self._keys[row] = moved
                    self._relocate(moved, row)
                self._recent.pop(key, None)
                self._count = last
            capacity = self._keys.size
            if capacity > self._min_capacity and self._count < capacity // 2:
                self._reallocate(max(self._min_capacity, int(self._count * self._growth)))
            if self._sorted_keys.size > 2 * self._count + self._recent_min:
                self._rebuild_lookup()  # mostly stale entries: give their memory back

    def _reserve(self, rows: int) -> None:
        capacity = self._keys.size
        if rows > capacity:
            self._reallocate(max(rows, int(capacity * self._growth), self._min_capacity))

    def _reallocate(self, capacity: int) -> None:
        n = self._count
        bits = np.empty((self._words, capacity), np.uint64)
        bits[:, :n] = self._bits[:, :n]
        popcounts = np.empty(capacity, self._count_dtype)
        popcounts[:n] = self._popcounts[:n]
        keys = np.empty(capacity, np.int64)
        keys[:n] = self._keys[:n]
        self._bits, self._popcounts, self._keys = bits, popcounts, keys

    # --- key lookup --------------------------------------------------------------------------

    def _rebuild_lookup(self) -> None:
        live = self._keys[: self._count]
        order = np.argsort(live, kind="stable")
        self._sorted_keys = live[order]
        self._sorted_rows = order.astype(np.int64, copy=False)
        self._recent.clear()

    def _locate(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 where absent."""
        rows = np.full(keys.size, -1, np.int64)
        if self._sorted_keys.size:
            at = np.minimum(np.searchsorted(self._sorted_keys, keys), self._sorted_keys.size - 1)
            candidates = self._sorted_rows[at]
            hit = (self._sorted_keys[at] == keys) & (candidates < self._count)
            hit[hit] = self._keys[candidates[hit]] == keys[hit]  # not a removed key's stale entry
            rows[hit] = candidates[hit]
        if self._recent:
            if keys.size <= 64:
                for i, key in enumerate(keys.tolist()):
                    rows[i] = self._recent.get(key, rows[i])
            else:
                recent_keys = np.fromiter(self._recent.keys(), np.int64, len(self._recent))
                recent_rows = np.fromiter(self._recent.values(), np.int64, len(self._recent))
                order = np.argsort(recent_keys)
                recent_keys, recent_rows = recent_keys[order], recent_rows[order]
                at = np.minimum(np.searchsorted(recent_keys, keys), recent_keys.size - 1)
                hit = recent_keys[at] == keys
                rows[hit] = recent_rows[at[hit]]
        return rows

    def _locate_one(self, key: int) -> int:
        row = self._recent.get(key)
        if row is not None:
            return row
        at = int(np.searchsorted(self._sorted_keys, key))
        if at < self._sorted_keys.size and self._sorted_keys[at] == key:
            row = int(self._sorted_rows[at])
            if row < self._count and self._keys[row] == key:
                return row
        return -1

    def _relocate(self, key: int, row: int) -> None:
        """Record that live `key` now sits in `row`."""
        if key in self._recent:
            self._recent[key] = row
        else:  # every live key not in _recent has a valid sorted entry
            self._sorted_rows[np.searchsorted(self._sorted_keys, key)] = row

    # --- searching ---------------------------------------------------------------------------

    def search(self, query: bytes, min_score: float, limit: int = 10) -> list[tuple[int, float]]:
        """(key, Dice score) of the best matches, best first, scores >= min_score, at most `limit`."""
        return self.search_many([query], min_score, limit)[0]

    def search_many(
        self, queries: Sequence[bytes], min_score: float, limit: int = 10
    ) -> list[list[tuple[int, float]]]:
        """`search` for several queries in shared passes over the matrix."""
        if not len(queries):
            return []
        words, popcounts = self._pack(queries)
        if limit <= 0:
            return [[] for _ in range(len(queries))]
        results: list[list[tuple[int, float]]] = []
        with self._lock.reading():
            for first in range(0, len(queries), self._queries_per_pass):
                part = slice(first, first + self._queries_per_pass)
                results += self._search_pass(words[part], popcounts[part], float(min_score), limit)
        return results

    def _search_pass(
        self, words: np.ndarray, popcounts: np.ndarray, min_score: float, limit: int
    ) -> list[list[tuple[int, float]]]:
        # The caller holds the lock throughout, so these arrays stay valid and unchanged.
        plan = _Pass(self, words, popcounts, min_score, limit)
        starts = iter(range(0, self._count, self._block_rows))
        per_worker = _run_shared(
            lambda blocks: _Scanner(plan).run(blocks), starts, self._count >= self._parallel_min_rows
        )
        results = []
        for q in range(len(plan.query_popcounts)):
            top = per_worker[0][q]
            for other in per_worker[1:]:
                top.add(other[q].scores, other[q].rows)
            results.append(top.results())
        return results

    # --- conversion --------------------------------------------------------------------------

    def _pack(self, filters: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Filters as rows of uint64 words (zero-padded) and their popcounts; validates lengths."""
        size = self._filter_bytes
        if not all(len(f) == size for f in filters):
            filters = [pad_filter(f, self.length_bits) for f in filters]
        joined = np.frombuffer(b"".join(filters), np.uint8).reshape(len(filters), size)
        spare_bits = size * 8 - self.length_bits
        if spare_bits and (joined[:, -1] >> (8 - spare_bits)).any():
            raise ValueError(f"Bloom filter has bits set beyond the version's {self.length_bits} bits")
        padded = np.zeros((len(filters), self._words * 8), np.uint8)
        padded[:, :size] = joined
        words = padded.view(np.uint64)
        popcounts = np.bitwise_count(words).sum(axis=1, dtype=self._count_dtype)
        return words, popcounts


class _Pass:
    """What all threads scanning for the same queries share: the index's arrays and the queries."""

    def __init__(
        self, index: FilterIndex, words: np.ndarray, popcounts: np.ndarray, min_score: float, limit: int
    ) -> None:
        self.bits, self.popcounts, self.keys = index._bits, index._popcounts, index._keys
        self.count, self.block_rows = index._count, index._block_rows
        self.sparse_share, self.probe_rows = index._sparse_share, index._probe_rows
        self.count_dtype = index._count_dtype
        self.words, self.min_score, self.limit = words, min_score, limit
        self.query_popcounts: list[int] = popcounts.tolist()
        # For each word, the queries with bits in it and their word: words a query leaves
        # empty add nothing to its overlap and are skipped.
        self.word_users = [[(q, word) for q, word in enumerate(column) if word] for column in words.T]
        # Halfway through the words, a row's overlap can grow by at most the query's bits in
        # the second half. Where that cannot reach the threshold (a high min_score, or a full
        # top-k list) the row is dropped; when nearly all rows of a block are, the second half
        # is read for the few left only, which halves the memory traffic and the work.
        self.halfway = (words.shape[1] + 1) // 2
        self.rest_popcounts: list[int] = np.bitwise_count(words[:, self.halfway :]).sum(axis=1).tolist()


class _Scanner:
    """One thread's share of a pass: blocks of rows, with buffers reused from block to block."""

    def __init__(self, plan: _Pass) -> None:
        self.plan = plan
        queries, rows = len(plan.query_popcounts), plan.block_rows
        self.tops = [_TopK(plan.min_score, plan.limit, plan.keys) for _ in range(queries)]
        self._conjunction = np.empty(rows, np.uint64)
        self._word_overlap = np.empty(rows, np.uint8)
        self._overlaps = np.empty((queries, rows), plan.count_dtype)
        self._totals = np.empty(rows, np.float64)
        self._scores = np.empty(rows, np.float64)

    def run(self, block_starts: Iterator[int]) -> list[_TopK]:
        for start in block_starts:
            self._scan_block(start, min(start + self.plan.block_rows, self.plan.count))
        return self.tops

    def _scan_block(self, start: int, stop: int) -> None:
        plan, size = self.plan, stop - start
        block = plan.bits[:, start:stop]
        block_popcounts = plan.popcounts[start:stop]
        total, score = self._totals[:size], self._scores[:size]
        overlaps = self._overlaps[:, :size]
        overlaps.fill(0)
        queries = range(len(plan.query_popcounts))
        words = plan.words.shape[1]

        self._add_overlaps(block, range(plan.halfway), queries, size)
        unpruned = []
        for q in queries:
            if self.tops[q].threshold > 0 and plan.halfway < words:
                # A probe of the first rows tells cheaply whether bounding them all pays.
                probe = min(size, plan.probe_rows)
                if self._reachable(q, block_popcounts, probe).size * plan.sparse_share <= probe:
                    left = self._reachable(q, block_popcounts, size)
                    if left.size * plan.sparse_share <= size:
                        # Few left: fetch their second-half words row by row.
                        rest = block[plan.halfway :, left] & plan.words[q, plan.halfway :, None]
                        final = overlaps[q][left] + np.bitwise_count(rest).sum(axis=0)
                        self.tops[q].offer(_dice(final.astype(np.float64), total[left]), left + start)
                        continue
            unpruned.append(q)
        self._add_overlaps(block, range(plan.halfway, words), unpruned, size)
        for q in unpruned:
            _totals(total, block_popcounts, plan.query_popcounts[q])
            np.copyto(score, overlaps[q])
            self.tops[q].offer(_dice(score, total), start)

    def _add_overlaps(self, block: np.ndarray, words: range, queries: Sequence[int], size: int) -> None:
        # Word-major, so that each word slice of the block is read from memory once for all
        # queries of the pass; the temporaries stay in cache.
        anded, counted = self._conjunction[:size], self._word_overlap[:size]
        overlaps = self._overlaps[:, :size]
        for w in words:
            stored = block[w]
            for q, word in self.plan.word_users[w]:
                if q in queries:
                    np.bitwise_and(stored, word, out=anded)
                    np.bitwise_count(anded, out=counted)
                    np.add(overlaps[q], counted, out=overlaps[q])

    def _reachable(self, q: int, block_popcounts: np.ndarray, rows: int) -> np.ndarray:
        """Those of the block's first `rows` rows whose Dice can still reach the threshold.

        Leaves |A|+|B| of these rows in the totals buffer. The bound is exact: the final
        2*overlap is at most 2*(overlap so far + the query's remaining bits), and IEEE division
        by the same total is monotonic, so no row reaching the threshold is dropped.
        """
        total = _totals(self._totals[:rows], block_popcounts[:rows], self.plan.query_popcounts[q])
        bound = self._scores[:rows]
        np.add(self._overlaps[q, :rows], self.plan.rest_popcounts[q], out=bound, dtype=np.float64)
        return np.flatnonzero(_dice(bound, total) >= self.tops[q].threshold)


def _totals(out: np.ndarray, popcounts: np.ndarray, query_popcount: int) -> np.ndarray:
    """|A| + |B| per row as float64, 1 where both are empty (their Dice is 0, not 0/0)."""
    np.add(popcounts, query_popcount, out=out, dtype=np.float64)
    if query_popcount == 0:
        np.maximum(out, 1.0, out=out)
    return out


def _dice(overlaps: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """2 * overlaps / totals in place in `overlaps` (float64): exact like Python's division."""
    np.multiply(overlaps, 2.0, out=overlaps)
    return np.divide(overlaps, totals, out=overlaps)


def _as_keys(keys: Sequence[int]) -> np.ndarray:
    array = np.asarray(keys)
    if not array.size:
        return np.empty(0, np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TypeError("keys must be a sequence of integers")
    return array.astype(np.int64, copy=False)


def _last_per_key(
    keys: np.ndarray, words: np.ndarray, popcounts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop all but the last filter of keys given more than once in one batch."""
    unique, last_from_end = np.unique(keys[::-1], return_index=True)
    if unique.size == keys.size:
        return keys, words, popcounts
    keep = np.sort(keys.size - 1 - last_from_end)
    return keys[keep], words[keep], popcounts[keep]


def _run_shared(work: Callable[[Iterator[int]], _T], blocks: Iterator[int], parallel: bool) -> list[_T]:
    """Run `work` here and, if `parallel`, on helper threads, all pulling from one block iterator.

    Taking the next block from a shared iterator is atomic under the GIL, so each block is
    scanned exactly once. A helper that has not started by the time this thread runs out of
    blocks is cancelled rather than waited for (helpers may be busy with other searches).
    """
    pool, helper_count = _helper_pool() if parallel else (None, 0)
    if pool is None:
        return [work(blocks)]
    helpers = [pool.submit(work, blocks) for _ in range(helper_count)]
    try:
        results = [work(blocks)]
    finally:
        # Helpers read arrays the caller's lock protects: never leave while one still runs.
        started = [future for future in helpers if not future.cancel()]
        for future in started:
            future.exception()  # waits
    return results + [future.result() for future in started]
