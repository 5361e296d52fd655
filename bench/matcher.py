"""Benchmark: Dice search in FilterIndex against anonlink on the same balanced Bloom filters.

Run `.venv/bin/python bench/matcher.py` (1,000,000 filters) or with `--sizes 100000` for a quick
run; `run()` returns the result rows for other harnesses.

What is compared, per query, on the same N random balanced 1600-bit filters:

* index: `FilterIndex.search(query, min_score, limit)` with the query as decoded bytes.
* anonlink: `anonlink.similarities.dice_coefficient_accelerated([[query], stored], min_score,
  k=limit)`, the public API. The stored side's bitarrays are built once, outside the timing;
  the figure includes the per-query work a caller must do (query bytes -> bitarray), and is
  also reported without it. Note that the function itself re-validates and re-joins all N
  stored bitarrays into one buffer and popcounts them on every call: that is the cost of its
  API, not something a caller can avoid, so it is in the figure.
* anonlink kernel: its C++ `_dice.dice_many_to_many` alone (a private API, so only if present),
  with the stored side joined and popcounted once outside the timing: the fairest comparison
  of raw scanning speed, reported beside the API figure so the speed-up is not overstated.

The timings alternate between the contenders in each repeat so that a noisy shared machine
disturbs both alike. Both must return the same matches (ties in anonlink go to the lower
position in the stored list, and the keys here ascend with that position, as the index orders
ties), and the planted best match must come first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

from ttp_gateway.plugins.dispatcher.matcher import FilterIndex

LENGTH_BITS = 1600
# The index is loaded in batches like a store would feed it, so growth is part of the figure.
LOAD_BATCH = 100_000
# Share of the query's record bits flipped: its planted match scores about 0.9, others about 0.5.
QUERY_NOISE = 0.1


class BalancedFilters:
    """Random balanced filters of 2L bits, as NUM sites build them from record-level filters.

    Each record-level filter of L bits is concatenated with its complement, so exactly L of
    the 2L bits are set, and the bits are permuted with one fixed permutation per study. The
    permutation here is a shuffle of the 2L/8 bytes followed by a shuffle of the bits within
    each byte position: a genuine fixed permutation of the bits that numpy applies with two
    gathers, where a general one needs all bits unpacked (ten times slower at a million).
    Dice statistics and search cost do not depend on which permutation it is.
    """

    def __init__(self, length_bits: int, rng: np.random.Generator) -> None:
        self.record_bytes = length_bits // 16
        filter_bytes = length_bits // 8
        self._byte_order = rng.permutation(filter_bytes)
        values = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
        self._bit_tables = np.stack([
            np.packbits(values[:, rng.permutation(8)], axis=1, bitorder="little")[:, 0]
            for _ in range(filter_bytes)
        ])

    def build(self, record_bits: np.ndarray) -> np.ndarray:
        """Filters as bytes (n, 2L/8) in Java BitSet bit order from record-level bits (n, L/8)."""
        out = np.empty((record_bits.shape[0], 2 * self.record_bytes), np.uint8)
        positions = np.arange(out.shape[1])
        for start in range(0, out.shape[0], 65_536):
            chunk = record_bits[start : start + 65_536]
            doubled = np.concatenate((chunk, ~chunk), axis=1)[:, self._byte_order]
            out[start : start + chunk.shape[0]] = self._bit_tables[positions, doubled]
        return out


def _median_ms(seconds: Sequence[float]) -> float:
    return statistics.median(seconds) * 1e3


def _anonlink_kernel(stored: np.ndarray) -> Any:
    """A per-query function calling anonlink's C++ kernel on a once-prepared stored side."""
    try:
        from anonlink.similarities import _dice  # private: may move between versions
    except ImportError:  # pragma: no cover
        return None
    filter_bytes = stored.shape[1]
    joined = array("b")
    joined.frombytes(stored.tobytes())
    popcounts = _dice.popcount_arrays(joined, filter_bytes)

    def search(query: bytes, threshold: float, k: int) -> tuple[array, array]:
        one = array("b")
        one.frombytes(query)
        scores, query_rows, rows = array("d"), array("I"), array("I")
        _dice.dice_many_to_many(
            one, joined, 1, stored.shape[0], popcounts, filter_bytes, k, threshold, scores, query_rows, rows
        )
        return scores, rows

    return search


def measure(
    n: int, repeats: int, min_scores: Sequence[float], limit: int, seed: int = 20240601
) -> list[dict[str, Any]]:
    """Result rows for n stored filters, one per min_score."""
    from anonlink.similarities import dice_coefficient_accelerated
    from bitarray import bitarray

    rng = np.random.default_rng(seed)
    generator = BalancedFilters(LENGTH_BITS, rng)
    record_bits = rng.integers(0, 256, (n, generator.record_bytes), dtype=np.uint8)
    stored = generator.build(record_bits)
    keys = 1_000 + 7 * np.arange(n, dtype=np.int64)  # store ids: ascending, not row numbers

    planted = int(rng.integers(n))
    noisy = np.unpackbits(record_bits[planted], bitorder="little")
    noisy[rng.random(noisy.size) < QUERY_NOISE] ^= 1
    query = generator.build(np.packbits(noisy, bitorder="little")[None, :])[0].tobytes()

    index = FilterIndex(LENGTH_BITS)
    filters = [row.tobytes() for row in stored]
    load_started = time.perf_counter()
    for start in range(0, n, LOAD_BATCH):
        index.upsert(keys[start : start + LOAD_BATCH], filters[start : start + LOAD_BATCH])
    load_seconds = time.perf_counter() - load_started
    del filters

    def to_bitarray(data: bytes) -> bitarray:
        bits = bitarray(endian="little")  # the same bit order as the index; Dice does not care
        bits.frombytes(data)
        return bits

    stored_bitarrays = [to_bitarray(row.tobytes()) for row in stored]
    kernel = _anonlink_kernel(stored)
    raw_bytes = n * LENGTH_BITS // 8
    index_bytes = index.nbytes

    rows = []
    for min_score in min_scores:
        index_times, anonlink_times, conversion_times, kernel_times = [], [], [], []
        for _repeat in range(repeats):
            started = time.perf_counter()
            found = index.search(query, min_score, limit)
            index_times.append(time.perf_counter() - started)

            started = time.perf_counter()
            query_bits = to_bitarray(query)
            converted = time.perf_counter()
            scores, (_query_rows, found_rows) = dice_coefficient_accelerated(
                [[query_bits], stored_bitarrays], min_score, k=limit
            )
            anonlink_times.append(time.perf_counter() - started)
            conversion_times.append(converted - started)

            if kernel is not None:
                started = time.perf_counter()
                kernel_scores, kernel_rows = kernel(query, min_score, limit)
                kernel_times.append(time.perf_counter() - started)
                if list(kernel_rows) != list(found_rows) or list(kernel_scores) != list(scores):
                    raise AssertionError("anonlink's kernel and its API disagree")

        anonlink_found = [(int(keys[row]), score) for row, score in zip(found_rows, scores)]
        index_ms = _median_ms(index_times)
        anonlink_ms = _median_ms(anonlink_times)
        kernel_ms = _median_ms(kernel_times) if kernel_times else None
        rows.append({
            "filters": n,
            "min_score": min_score,
            "limit": limit,
            "index_ms": index_ms,
            "index_min_ms": min(index_times) * 1e3,
            "anonlink_ms": anonlink_ms,
            "anonlink_call_ms": _median_ms([a - c for a, c in zip(anonlink_times, conversion_times)]),
            "anonlink_kernel_ms": kernel_ms,
            "speedup": anonlink_ms / index_ms,
            "speedup_vs_kernel": kernel_ms / index_ms if kernel_ms is not None else None,
            "index_bytes": index_bytes,
            "raw_bytes": raw_bytes,
            "memory_ratio": index_bytes / raw_bytes,
            "load_s": load_seconds,
            "best_key": found[0][0] if found else None,
            "best_score": found[0][1] if found else None,
            "same_matches": found == anonlink_found,
            "planted_first": bool(found) and found[0][0] == int(keys[planted]),
        })
    return rows


def run(
    sizes: Sequence[int] = (1_000_000,),
    repeats: int = 15,
    min_scores: Sequence[float] = (0.0, 0.8),
    limit: int = 10,
) -> list[dict[str, Any]]:
    """Measure each size and min_score, print one table, return the rows."""
    rows = [row for n in sizes for row in measure(n, repeats, min_scores, limit)]
    print_table(rows)
    return rows


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    def times(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}x"

    print(f"Dice top-{rows[0]['limit'] if rows else '-'} search, balanced {LENGTH_BITS}-bit filters; "
          "median ms per query (index min in brackets)")
    print(
        f"{'filters':>9} {'min':>4} {'index':>13} {'anonlink':>9} {'no conv':>8} {'kernel':>7} "
        f"{'speed-up':>9} {'vs kernel':>9} {'index MiB':>9} {'raw MiB':>8} {'ratio':>5} {'same':>4}"
    )
    for row in rows:
        print(
            f"{row['filters']:>9,} {row['min_score']:>4.2f} "
            f"{ms(row['index_ms']):>6} ({ms(row['index_min_ms']):>4}) "
            f"{ms(row['anonlink_ms']):>9} {ms(row['anonlink_call_ms']):>8} "
            f"{ms(row['anonlink_kernel_ms']):>7} "
            f"{times(row['speedup']):>9} {times(row['speedup_vs_kernel']):>9} "
            f"{row['index_bytes'] / 2**20:>9.1f} {row['raw_bytes'] / 2**20:>8.1f} "
            f"{row['memory_ratio']:>5.2f} "
            f"{'yes' if row['same_matches'] and row['planted_first'] else 'NO':>4}"
        )
    print(
        "anonlink: dice_coefficient_accelerated incl. query bytes -> bitarray; no conv: without that; "
        "kernel: its C++ dice_many_to_many alone, stored side prepared once; speed-up: anonlink / index"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000], help="numbers of stored filters")
    parser.add_argument("--repeats", type=int, default=15, help="timed queries per size (median reported)")
    parser.add_argument("--min-scores", type=float, nargs="+", default=[0.0, 0.8])
    parser.add_argument("--limit", type=int, default=10)
    arguments = parser.parse_args(argv)
    rows = run(arguments.sizes, arguments.repeats, arguments.min_scores, arguments.limit)
    if not all(row["same_matches"] and row["planted_first"] for row in rows):
        raise SystemExit("the index and anonlink disagree on the best matches")


if __name__ == "__main__":
    main()
