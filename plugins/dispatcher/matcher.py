"""Exact Dice search over all Bloom filters of one study version, on faiss binary codes.

Scores from Hamming distances. faiss scans binary codes for Hamming distances H. With |A| and |B|
the popcounts of query and stored filter, the overlap is (|A|+|B|-H)/2, so the Dice score is
(|A|+|B|-H)/(|A|+|B|): two exact integers and one IEEE division, rounded as Python's
`2 * overlap / total` is, hence equal to `bloom.dice` bit for bit (0.0 when both are empty).
Balanced filters all have the same popcount, so Dice falls as H grows and the nearest codes
are the best matches. Filters of varying popcount (CLKs) are not ordered by H alone, but a
stored filter with popcount at most the index's largest, `high`, at Hamming distance at least H
scores at most (|A|+high-H)/(|A|+high); the search uses that bound to stay exact.

Search. One faiss k-nearest pass fetches the 2*limit+16 nearest codes of every query; their
exact scores give the top `limit` among them and the score to beat, t (the limit-th best, or
min_score if fewer reach it). Every code not fetched is at least as far as the farthest fetched
one, so when the bound above for that distance is below t (always, for balanced filters, unless
all the codes fetched beyond the limit-th are as near as it) the answer is complete. The margin
beyond limit+1 costs next to nothing in the scan. Otherwise a range pass collects
every code within the Hamming radius that scores >= t can have, and the answer comes from
those. This second pass is what keeps ties ordered by key (an exact tie at the cut must be
settled among all tied rows, not the ones faiss happened to keep) and CLK searches exact. A
k-nearest pass rather than a range search for the common call (limit ~12, min_score 0.78): the
two scan equally fast here (measured within 10 %), and k-nearest results are bounded in size
whatever the min_score.

Layout. The codes are the filters as stored (Java BitSet byte order, zero-padded to the
version's byte length; faiss wants whole bytes, and the spare bits are zero, so they add
nothing to H). They live in chunks of 2^k rows, about 16 MiB each: only the last chunk ever
grows (by 1/8, up to a full chunk), so a large index never copies or doubles its codes to
grow, and each chunk is one faiss call. Rows are numbered across the chunks; beside them sit
the key (the store's filter id, int64) and the popcount (uint16) of every row, and a histogram
of popcounts for the largest one. Removal moves the last rows into the holes.

Key lookup without a large Python dict (a dict entry costs about half a filter). The rows
ordered by key are an int32 array (`_sorted_rows`), searched by bisection through the key
column; keys added since it was built sit in a small dict (`_recent`) until it outgrows 1/64 of
the index, and are then merged in (a sort of the new keys and one pass over the array; a batch
of keys above all stored ones, as the store hands them out, is simply appended). Removed keys
leave it at once, so every entry names a live row and moving a row only rewrites its entry.

Memory budget, measured by `nbytes` and held by the tests: the raw code bytes plus 14 bytes a
row (key 8, popcount 2, lookup 4): 1.07x the raw bytes of 1600-bit filters after a load. Spare
capacity while growing adds at most 1/8 of the key and popcount columns, 1/8 of the last chunk
(2 MiB) and the recent dict (~1.6 bytes a row): below 1.09x for a large index.

Threads. A search hands its chunks one at a time to this thread and one helper thread per
further usable core; faiss releases the GIL in its scans. faiss's own OpenMP threads are set to
one in every thread that calls it (OpenMP keeps the setting per thread), because a single query
gives OpenMP nothing to split and its idle workers would spin against ours.

Speed (bench/matcher.py; a shared 2-core Xeon VM). faiss scans a 200-byte code in ~8 ns from
cache and ~15-20 ns from memory, on one core: its Hamming loop is generic for code sizes other
than 4/8/16/20/32/64 bytes. So a query against 1,000,000 balanced 1600-bit filters takes ~19 ms
on one core and ~10 ms on two (anonlink's kernel ~38 ms on its one core), 16 queries at once
~5 ms each, and 10,000,000 filters ~100 ms on two idle cores: the scan is the cost, the
exactness around it is not (one call, a few microseconds of numpy per chunk).

Concurrency. Searches hold a shared lock for their whole run and writers an exclusive one, so a
search never sees a row half-written, moved or reallocated; waiting writers block new searches
so that a stream of searches cannot starve them.

GPU. With `device="gpu"` (faiss built with GPU support), the k-nearest pass runs on a copy of
the codes in GPU memory; writes update that copy (appends) or rebuild it (replacements,
removals). The range pass and all bookkeeping stay on the CPU, so results are the same.
"""

from __future__ import annotations

import bisect
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, TypeVar

import faiss
import numpy as np

from .bloom import byte_length, pad_filter

__all__ = ["FilterIndex", "gpu_available"]

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


def _single_threaded_faiss() -> None:
    """Parallelism comes from our threads over chunks, never from OpenMP inside one scan."""
    faiss.omp_set_num_threads(1)


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
    """Threads that scan chunks beside the searching thread: one per further core, or none."""
    global _helpers, _helper_count
    with _helpers_lock:
        if _helpers is None:
            _helper_count = _usable_cores() - 1
            if _helper_count < 1:
                return None, 0
            _helpers = ThreadPoolExecutor(_helper_count, thread_name_prefix="dice-search",
                                          initializer=_single_threaded_faiss)
        return _helpers, _helper_count


def gpu_available() -> bool:
    """Whether this faiss can put an index on a GPU, and a GPU is there."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FilterIndex:
    """All Bloom filters of one study and version, for exact Dice search."""

    # Codes per chunk: rows are a power of two (row -> chunk is a shift) near this many bytes.
    # Large enough that faiss's per-call cost is ~1 % of a chunk's scan, small enough that the
    # chunks spread evenly over the threads and a growing last chunk wastes little.
    _chunk_bytes = 1 << 24
    _chunk_rows: int | None = None  # fixed number of rows per chunk (tests), else from bytes
    # Below this many rows a second thread costs more than it saves.
    _parallel_min_rows = 2 * 65_536
    _growth = 1.125
    _min_capacity = 64
    # The recent-keys dict is merged into the sorted lookup beyond max(this, rows // 64).
    _recent_min = 1024
    # Up to this many keys are looked up one by one (bisect), more at once (vectorised).
    _few_keys = 16

    def __init__(self, length_bits: int, device: str = "cpu") -> None:
        self.length_bits = length_bits
        self._code_bytes = byte_length(length_bits)  # also validates length_bits
        chunk_rows = self._chunk_rows or max(1, self._chunk_bytes // self._code_bytes)
        self._shift = chunk_rows.bit_length() - 1
        self._rows_per_chunk = 1 << self._shift
        # Popcounts never exceed length_bits.
        self._popcount_dtype = np.dtype(np.uint16 if length_bits <= 0xFFFF else np.uint32)
        self._chunks: list[np.ndarray] = []
        self._keys = np.empty(0, np.int64)
        self._popcounts = np.empty(0, self._popcount_dtype)
        self._histogram = np.zeros(length_bits + 1, np.int64)  # rows per popcount
        self._count = 0
        self._sorted_rows = np.empty(0, np.int32)
        self._recent: dict[int, int] = {}
        self._lock = _ReadWriteLock()
        if device not in ("cpu", "gpu"):
            raise ValueError('the index device must be "cpu" or "gpu"')
        self._gpu = _GpuCodes(self._code_bytes) if device == "gpu" else None

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Memory held by the index: codes, keys, popcounts and the key lookup (CPU side)."""
        with self._lock.reading():
            arrays = [*self._chunks, self._keys, self._popcounts, self._histogram, self._sorted_rows]
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
        codes = self._pack(filters)
        self._store(key_array, codes)

    def load(self, keys: Sequence[int] | np.ndarray, codes: np.ndarray | bytes) -> None:
        """`upsert` from one buffer: the filters of `keys` back to back, each padded to the
        version's byte length (a (rows, bytes) uint8 array or the bytes of one). The fast
        path for loading many filters at start-up."""
        key_array = _as_keys(keys)
        array = np.frombuffer(codes, np.uint8) if isinstance(codes, (bytes, bytearray, memoryview)) else codes
        array = np.ascontiguousarray(array, np.uint8).reshape(-1, self._code_bytes)
        if key_array.size != array.shape[0]:
            raise ValueError("load needs exactly one filter per key")
        if not key_array.size:
            return
        self._check_spare_bits(array)
        self._store(key_array, array)

    def remove(self, keys: Sequence[int]) -> None:
        """Forget the filters of `keys`; unknown keys are ignored."""
        key_array = np.unique(_as_keys(keys))
        if not key_array.size:
            return
        with self._lock.writing():
            rows = self._locate(key_array)
            known = rows >= 0
            if not known.any():
                return
            key_array, rows = key_array[known], rows[known]
            self._forget_keys(key_array, rows)
            np.subtract.at(self._histogram, self._popcounts[rows], 1)
            count = self._count - rows.size
            # Live rows beyond the new end fill the holes below it, in order.
            holes = np.sort(rows[rows < count])
            tail = np.arange(count, self._count)
            movers = tail[~np.isin(tail, rows)]
            if movers.size:
                self._copy_rows(movers, holes)
                self._keys[holes] = self._keys[movers]
                self._popcounts[holes] = self._popcounts[movers]
                self._relocate(self._keys[holes], movers, holes)
            self._count = count
            self._shrink()
            if self._gpu is not None:
                self._gpu.rebuild(self._chunks, self._count, self._rows_per_chunk)

    def _store(self, keys: np.ndarray, codes: np.ndarray) -> None:
        keys, codes = _last_per_key(keys, codes)
        popcounts = self._popcounts_of(codes)
        with self._lock.writing():
            rows = self._locate(keys)
            known = rows >= 0
            if known.any():
                replaced = rows[known]
                np.subtract.at(self._histogram, self._popcounts[replaced], 1)
                np.add.at(self._histogram, popcounts[known], 1)
                self._popcounts[replaced] = popcounts[known]
                self._write_rows(replaced, codes[known])
                new = ~known
                keys, codes, popcounts = keys[new], codes[new], popcounts[new]
            start, stop = self._count, self._count + keys.size
            if keys.size:
                self._reserve(stop)
                self._write_run(start, codes)
                self._keys[start:stop] = keys
                self._popcounts[start:stop] = popcounts
                self._histogram += np.bincount(popcounts, minlength=self._histogram.size)
                self._count = stop
                self._remember(keys, start)
            if self._gpu is not None:
                if known.any():
                    self._gpu.rebuild(self._chunks, self._count, self._rows_per_chunk)
                else:
                    self._gpu.append(self._chunks, start, stop, self._rows_per_chunk)

    # --- code storage ------------------------------------------------------------------------

    def _reserve(self, rows: int) -> None:
        """Room for `rows` rows: full chunks, then a last chunk grown geometrically."""
        size = self._rows_per_chunk
        if rows > self._keys.size:
            self._resize_columns(max(rows, int(self._keys.size * self._growth), self._min_capacity))
        chunks_needed = -(-rows // size)
        while len(self._chunks) < chunks_needed:
            if self._chunks and self._chunks[-1].shape[0] < size:
                self._resize_last_chunk(size)
            # A new chunk holds what it must now: a bulk load ends without spare rows.
            self._chunks.append(np.empty((min(size, rows - len(self._chunks) * size), self._code_bytes),
                                         np.uint8))
        in_last = rows - (chunks_needed - 1) * size
        if self._chunks and self._chunks[-1].shape[0] < in_last:
            capacity = self._chunks[-1].shape[0]
            self._resize_last_chunk(min(size, max(in_last, int(capacity * self._growth), self._min_capacity)))

    def _resize_last_chunk(self, capacity: int) -> None:
        last = self._chunks[-1]
        used = min(last.shape[0], max(0, self._count - (len(self._chunks) - 1) * self._rows_per_chunk))
        grown = np.empty((capacity, self._code_bytes), np.uint8)
        grown[:used] = last[:used]
        self._chunks[-1] = grown

    def _resize_columns(self, capacity: int) -> None:
        n = self._count
        keys = np.empty(capacity, np.int64)
        keys[:n] = self._keys[:n]
        popcounts = np.empty(capacity, self._popcount_dtype)
        popcounts[:n] = self._popcounts[:n]
        self._keys, self._popcounts = keys, popcounts

    def _shrink(self) -> None:
        """Give memory back after removals: whole chunks, then spare rows of the last one."""
        size = self._rows_per_chunk
        del self._chunks[-(-self._count // size):]
        if self._chunks:
            used = self._count - (len(self._chunks) - 1) * size
            capacity = self._chunks[-1].shape[0]
            if capacity > self._min_capacity and used < capacity // 2:
                self._resize_last_chunk(max(self._min_capacity, int(used * self._growth)))
        capacity = self._keys.size
        if capacity > self._min_capacity and self._count < capacity // 2:
            self._resize_columns(max(self._min_capacity, int(self._count * self._growth)))

    def _write_run(self, start: int, codes: np.ndarray) -> None:
        """Codes into consecutive rows from `start`, across chunk boundaries."""
        size, done = self._rows_per_chunk, 0
        while done < codes.shape[0]:
            chunk, offset = divmod(start + done, size)
            take = min(size - offset, codes.shape[0] - done)
            self._chunks[chunk][offset : offset + take] = codes[done : done + take]
            done += take

    def _write_rows(self, rows: np.ndarray, codes: np.ndarray) -> None:
        chunks = rows >> self._shift
        offsets = rows & (self._rows_per_chunk - 1)
        for chunk in np.unique(chunks).tolist():
            mine = chunks == chunk
            self._chunks[chunk][offsets[mine]] = codes[mine]

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        codes = np.empty((rows.size, self._code_bytes), np.uint8)
        chunks = rows >> self._shift
        offsets = rows & (self._rows_per_chunk - 1)
        for chunk in np.unique(chunks).tolist():
            mine = chunks == chunk
            codes[mine] = self._chunks[chunk][offsets[mine]]
        return codes

    def _copy_rows(self, sources: np.ndarray, targets: np.ndarray) -> None:
        self._write_rows(targets, self._read_rows(sources))

    # --- key lookup --------------------------------------------------------------------------

    def _locate(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key, -1 where absent."""
        rows = np.full(keys.size, -1, np.int64)
        # Keys from the store mostly ascend: a batch of new ones needs no search.
        if self._sorted_rows.size and keys.min() <= self._keys[self._sorted_rows[-1]]:
            at = np.minimum(self._lower_bound(keys), self._sorted_rows.size - 1)
            candidates = self._sorted_rows[at].astype(np.int64)
            hit = self._keys[candidates] == keys
            rows[hit] = candidates[hit]
        if self._recent:
            if keys.size <= 64:
                for i, key in enumerate(keys.tolist()):
                    rows[i] = self._recent.get(key, rows[i])
            else:
                recent_keys, recent_rows = self._recent_arrays()
                at = np.minimum(np.searchsorted(recent_keys, keys), recent_keys.size - 1)
                hit = recent_keys[at] == keys
                rows[hit] = recent_rows[at[hit]]
        return rows

    def _lower_bound(self, keys: np.ndarray) -> np.ndarray:
        """Position of each key in the sorted lookup (where it is, or would be inserted)."""
        order, column = self._sorted_rows, self._keys
        if keys.size <= self._few_keys:
            by_key = column.__getitem__
            return np.array([bisect.bisect_left(order, key, key=by_key) for key in keys.tolist()], np.int64)
        size = order.size
        low = np.zeros(keys.size, np.int64)
        high = np.full(keys.size, size, np.int64)
        for _ in range(size.bit_length()):  # halves every open interval
            open_ = low < high
            middle = (low + high) >> 1
            below = open_ & (column[order[np.minimum(middle, size - 1)]] < keys)
            low = np.where(below, middle + 1, low)
            high = np.where(open_ & ~below, middle, high)
        return low

    def _recent_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        recent_keys = np.fromiter(self._recent.keys(), np.int64, len(self._recent))
        recent_rows = np.fromiter(self._recent.values(), np.int64, len(self._recent))
        order = np.argsort(recent_keys)
        return recent_keys[order], recent_rows[order]

    def _remember(self, keys: np.ndarray, start: int) -> None:
        """Record new keys stored from row `start` on."""
        if len(self._recent) + keys.size <= max(self._recent_min, self._count // 64):
            self._recent.update(zip(keys.tolist(), range(start, start + keys.size)))
            return
        rows = np.arange(start, start + keys.size, dtype=np.int64)
        if self._recent:
            recent_keys, recent_rows = self._recent_arrays()
            keys, rows = np.concatenate((recent_keys, keys)), np.concatenate((recent_rows, rows))
            self._recent.clear()
        order = np.argsort(keys, kind="stable")
        keys, rows = keys[order], rows[order]
        dtype = np.int32 if self._count < 2**31 else np.int64
        if not self._sorted_rows.size:
            self._sorted_rows = rows.astype(dtype)
        elif self._keys[self._sorted_rows[-1]] < keys[0]:  # keys from the store mostly ascend
            self._sorted_rows = np.concatenate((self._sorted_rows.astype(dtype, copy=False), rows.astype(dtype)))
        else:
            self._sorted_rows = np.insert(self._sorted_rows.astype(dtype, copy=False),
                                          self._lower_bound(keys), rows.astype(dtype))

    def _forget_keys(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Drop live `keys` (in `rows`) from the lookup."""
        in_sorted = np.ones(keys.size, bool)
        if self._recent:
            for i, key in enumerate(keys.tolist()):
                if self._recent.pop(key, None) is not None:
                    in_sorted[i] = False
        if in_sorted.any():
            self._sorted_rows = np.delete(self._sorted_rows, self._lower_bound(keys[in_sorted]))

    def _relocate(self, keys: np.ndarray, old_rows: np.ndarray, new_rows: np.ndarray) -> None:
        """Record that live `keys` moved from `old_rows` to `new_rows` (old rows still hold them)."""
        in_sorted = np.ones(keys.size, bool)
        if self._recent:
            for i, (key, row) in enumerate(zip(keys.tolist(), new_rows.tolist())):
                if key in self._recent:
                    self._recent[key] = row
                    in_sorted[i] = False
        if in_sorted.any():
            self._sorted_rows[self._lower_bound(keys[in_sorted])] = new_rows[in_sorted]

    # --- searching ---------------------------------------------------------------------------

    def search(self, query: bytes, min_score: float, limit: int = 10) -> list[tuple[int, float]]:
        """(key, Dice score) of the best matches, best first, scores >= min_score, at most `limit`."""
        return self.search_many([query], min_score, limit)[0]

    def search_many(
        self, queries: Sequence[bytes], min_score: float, limit: int = 10
    ) -> list[list[tuple[int, float]]]:
        """`search` for several queries in the same faiss calls."""
        if not len(queries):
            return []
        codes = self._pack(queries)
        if limit <= 0:
            return [[] for _ in range(len(queries))]
        popcounts = self._popcounts_of(codes).astype(np.int64)
        with self._lock.reading():
            return self._search(codes, popcounts, float(min_score), int(limit))

    def _search(
        self, codes: np.ndarray, popcounts: np.ndarray, min_score: float, limit: int
    ) -> list[list[tuple[int, float]]]:
        # The caller holds the lock throughout, so the arrays stay valid and unchanged.
        results: list[list[tuple[int, float]]] = [[] for _ in range(codes.shape[0])]
        if not self._count or not min_score <= 1.0:
            return results
        high = int(np.flatnonzero(self._histogram)[-1])  # the largest stored popcount
        # More than limit+1: among random filters the limit-th and the next are often equally far,
        # and that tie alone would send the search into the range pass.
        seen = min(2 * limit + 16, self._count)
        distances, rows = self._nearest(codes, seen)
        unsettled: list[tuple[int, float]] = []
        for q, query_popcount in enumerate(popcounts.tolist()):
            scores = _dice(query_popcount, distances[q], self._popcounts[rows[q]])
            results[q] = _best(scores, self._keys[rows[q]], min_score, limit)
            beat = results[q][-1][1] if len(results[q]) == limit else min_score
            if seen < self._count and _best_possible(query_popcount, high, int(distances[q, -1])) >= beat:
                unsettled.append((q, beat))
        if unsettled:
            chosen = [q for q, _ in unsettled]
            radius = max(_radius(int(popcounts[q]), high, beat, self.length_bits) for q, beat in unsettled)
            found = self._within(codes[chosen], popcounts[chosen], radius, min_score, limit)
            for q, hits in zip(chosen, found):
                results[q] = hits
        return results

    def _nearest(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest rows of each query by Hamming distance (any order among equals):
        distances and rows, both (queries, k), nearest first."""
        if self._gpu is not None and k <= self._gpu.max_k:
            return self._gpu.nearest(codes, k)
        size = self._rows_per_chunk

        def scan(chunk_numbers: Iterator[int]) -> list[tuple[np.ndarray, np.ndarray]]:
            _single_threaded_faiss()
            found = []
            for chunk in chunk_numbers:
                filled = min(size, self._count - chunk * size)
                distances, rows = faiss.knn_hamming(codes, self._chunks[chunk][:filled], min(k, filled))
                found.append((distances, rows + chunk * size))
            return found

        parts = [part for worker in self._run(scan) for part in worker]
        distances = np.concatenate([d for d, _ in parts], axis=1)
        rows = np.concatenate([r for _, r in parts], axis=1)
        if distances.shape[1] > k:
            keep = np.argpartition(distances, k - 1, axis=1)[:, :k]
            distances = np.take_along_axis(distances, keep, axis=1)
            rows = np.take_along_axis(rows, keep, axis=1)
        order = np.argsort(distances, axis=1, kind="stable")
        return np.take_along_axis(distances, order, axis=1), np.take_along_axis(rows, order, axis=1)

    def _within(
        self, codes: np.ndarray, popcounts: np.ndarray, radius: int, min_score: float, limit: int
    ) -> list[list[tuple[int, float]]]:
        """The best `limit` rows by exact score among those within Hamming distance `radius`."""
        size, queries = self._rows_per_chunk, codes.shape[0]

        def scan(chunk_numbers: Iterator[int]) -> list[list[tuple[int, float]]]:
            _single_threaded_faiss()
            best: list[list[tuple[int, float]]] = [[] for _ in range(queries)]
            for chunk in chunk_numbers:
                filled = min(size, self._count - chunk * size)
                found = faiss.RangeSearchResult(queries)
                # faiss keeps the distances below its radius argument.
                faiss.hamming_range_search(faiss.swig_ptr(codes), faiss.swig_ptr(self._chunks[chunk][:filled]),
                                           queries, filled, radius + 1, self._code_bytes, found)
                bounds = faiss.rev_swig_ptr(found.lims, queries + 1).astype(np.int64)
                if not bounds[-1]:
                    continue
                distances = faiss.rev_swig_ptr(found.distances, int(bounds[-1])).astype(np.int64)
                rows = faiss.rev_swig_ptr(found.labels, int(bounds[-1])) + chunk * size
                for q in range(queries):
                    part = slice(bounds[q], bounds[q + 1])
                    if part.start == part.stop:
                        continue
                    scores = _dice(int(popcounts[q]), distances[part], self._popcounts[rows[part]])
                    hits = _best(scores, self._keys[rows[part]], min_score, limit)
                    best[q] = _merge(best[q], hits, limit)
            return best

        results: list[list[tuple[int, float]]] = [[] for _ in range(queries)]
        for worker in self._run(scan):
            results = [_merge(mine, theirs, limit) for mine, theirs in zip(results, worker)]
        return results

    def _run(self, scan: Callable[[Iterator[int]], _T]) -> list[_T]:
        return _run_shared(scan, iter(range(len(self._chunks))), self._count >= self._parallel_min_rows)

    # --- conversion --------------------------------------------------------------------------

    def _pack(self, filters: Sequence[bytes]) -> np.ndarray:
        """Filters as rows of codes (zero-padded to the byte length); validates lengths."""
        size = self._code_bytes
        if not (np.fromiter(map(len, filters), np.int64, len(filters)) == size).all():
            filters = [pad_filter(f, self.length_bits) for f in filters]
        codes = np.frombuffer(b"".join(filters), np.uint8).reshape(len(filters), size)
        self._check_spare_bits(codes)
        return codes

    def _check_spare_bits(self, codes: np.ndarray) -> None:
        spare_bits = self._code_bytes * 8 - self.length_bits
        if spare_bits and (codes[:, -1] >> (8 - spare_bits)).any():
            raise ValueError(f"Bloom filter has bits set beyond the version's {self.length_bits} bits")

    def _popcounts_of(self, codes: np.ndarray) -> np.ndarray:
        words = codes.view(np.uint64) if self._code_bytes % 8 == 0 else codes
        counts = np.empty(codes.shape[0], self._popcount_dtype)
        for start in range(0, codes.shape[0], 65_536):  # bounded temporaries
            part = words[start : start + 65_536]
            counts[start : start + part.shape[0]] = np.bitwise_count(part).sum(axis=1, dtype=np.uint32)
        return counts


class _GpuCodes:
    """The codes again in GPU memory, in row order, for the k-nearest pass."""

    # The largest k faiss's GPU k-selection supports in every version (newer ones go to 2048).
    max_k = 1024

    def __init__(self, code_bytes: int) -> None:
        if not gpu_available():
            raise RuntimeError("the Bloom filter index was asked to use a GPU, but faiss has no GPU "
                               "support here (install faiss-gpu) or sees no GPU")
        self._bits = code_bytes * 8
        self._resources = faiss.StandardGpuResources()
        self._index = faiss.index_binary_cpu_to_gpu(self._resources, 0, faiss.IndexBinaryFlat(self._bits))
        self._lock = threading.Lock()  # one GPU stream: searches take turns

    def append(self, chunks: list[np.ndarray], start: int, stop: int, size: int) -> None:
        with self._lock:
            for chunk in range(start // size, -(-stop // size)):
                first = max(start, chunk * size) - chunk * size
                self._index.add(chunks[chunk][first : min(stop, (chunk + 1) * size) - chunk * size])

    def rebuild(self, chunks: list[np.ndarray], count: int, size: int) -> None:
        with self._lock:
            self._index.reset()
        self.append(chunks, 0, count, size)

    def nearest(self, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            distances, rows = self._index.search(codes, k)
        return distances.astype(np.int64), rows


def _dice(query_popcount: int, distances: np.ndarray, popcounts: np.ndarray) -> np.ndarray:
    """Exact Dice scores from Hamming distances: (|A|+|B|-H) / (|A|+|B|), 0 where both are empty.

    Numerator and denominator are integers well below 2^53, so float64 holds them exactly and
    the one division rounds like Python's `2 * overlap / total`."""
    totals = popcounts.astype(np.float64) + query_popcount
    overlaps_twice = totals - distances
    np.maximum(totals, 1.0, out=totals)  # 0/1 = 0.0 where both filters are empty
    return overlaps_twice / totals


def _best_possible(query_popcount: int, high: int, distance: int) -> float:
    """The highest score any row at Hamming distance >= `distance` with popcount <= `high` can
    have: the score rises with the popcount at a fixed distance, and rounding is monotonic."""
    total = query_popcount + high
    return (total - distance) / total if total else 0.0


def _radius(query_popcount: int, high: int, score: float, length_bits: int) -> int:
    """A Hamming distance beyond which no row reaches `score` (an upper bound, 1 to spare)."""
    if score <= 0.0:
        return length_bits
    return min(length_bits, int((1.0 - score) * (query_popcount + high)) + 1)


def _best(scores: np.ndarray, keys: np.ndarray, min_score: float, limit: int) -> list[tuple[int, float]]:
    """The best `limit` (key, score) pairs with score >= min_score: score down, then key up."""
    keep = scores >= min_score
    scores, keys = scores[keep], keys[keep]
    order = np.lexsort((keys, -scores))[:limit]
    return list(zip(keys[order].tolist(), scores[order].tolist()))


def _merge(a: list[tuple[int, float]], b: list[tuple[int, float]], limit: int) -> list[tuple[int, float]]:
    if not a or not b:
        return (a or b)[:limit]
    return sorted(a + b, key=lambda hit: (-hit[1], hit[0]))[:limit]


def _as_keys(keys: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(keys)
    if not array.size:
        return np.empty(0, np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise TypeError("keys must be a sequence of integers")
    return array.astype(np.int64, copy=False)


def _last_per_key(keys: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop all but the last filter of keys given more than once in one batch."""
    if keys.size < 2 or (keys[1:] > keys[:-1]).all():  # ascending, as the store returns them
        return keys, codes
    unique, last_from_end = np.unique(keys[::-1], return_index=True)
    if unique.size == keys.size:
        return keys, codes
    keep = np.sort(keys.size - 1 - last_from_end)
    return keys[keep], codes[keep]


def _run_shared(work: Callable[[Iterator[int]], _T], chunks: Iterator[int], parallel: bool) -> list[_T]:
    """Run `work` here and, if `parallel`, on helper threads, all pulling from one chunk iterator.

    Taking the next chunk from a shared iterator is atomic under the GIL, so each chunk is
    scanned exactly once. A helper that has not started by the time this thread runs out of
    chunks is cancelled rather than waited for (helpers may be busy with other searches).
    """
    pool, helper_count = _helper_pool() if parallel else (None, 0)
    if pool is None:
        return [work(chunks)]
    helpers = [pool.submit(work, chunks) for _ in range(helper_count)]
    try:
        results = [work(chunks)]
    finally:
        # Helpers read arrays the caller's lock protects: never leave while one still runs.
        started = [future for future in helpers if not future.cancel()]
        for future in started:
            future.exception()  # waits
    return results + [future.result() for future in started]
