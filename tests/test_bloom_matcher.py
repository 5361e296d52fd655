"""Bloom filter codec (Java BitSet byte order) and the faiss-backed Dice index.

The index is checked against the plain-Python `bloom.dice` reference: same scores bit for bit,
best first, ties by ascending key, for any length and popcount. `SmallIndex` shrinks chunks,
capacity and the key-lookup merge limit so that small examples run through every code path
that large indexes take (several chunks, helper threads, growth, shrinking, merged lookups, the
range pass after the k-nearest one). No timing assertions: speed is measured by bench/matcher.py.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import random
import threading
import time
from typing import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conftest import DEMO_CONFIG
from ttp_gateway.core.app import config_problems
from ttp_gateway.core.config import load_config
from ttp_gateway.core.plugins import load_plugins
from ttp_gateway.plugins.dispatcher import bloom
from ttp_gateway.plugins.dispatcher.linkage import FilterIndexes
from ttp_gateway.plugins.dispatcher.matcher import FilterIndex, gpu_available
from ttp_gateway.plugins.dispatcher.store import LINKAGE, BloomFilterRow
from ttp_gateway.plugins.dispatcher.studies import Study


class SmallIndex(FilterIndex):
    _chunk_rows = 8
    _parallel_min_rows = 16
    _min_capacity = 4
    _recent_min = 4
    _few_keys = 2


INDEX_CLASSES = [FilterIndex, SmallIndex]

# Lengths that are and are not multiples of 8 and 64.
LENGTHS = st.one_of(st.sampled_from([1, 13, 64, 65, 100, 900, 1000, 1024, 1600]), st.integers(1, 2100))


def reference(
    stored: dict[int, bytes], query: bytes, min_score: float, limit: int
) -> list[tuple[int, float]]:
    scored = [(key, bloom.dice(query, data)) for key, data in stored.items()]
    scored = [(key, score) for key, score in scored if score >= min_score]
    scored.sort(key=lambda pair: (-pair[1], pair[0]))
    return scored[:limit]


def random_filter(rng: random.Random, length_bits: int, density: float | None = None) -> bytes:
    density = rng.random() if density is None else density
    return bloom.from_positions([i for i in range(length_bits) if rng.random() < density], length_bits)


@st.composite
def filters_of(draw: st.DrawFn, length_bits: int) -> bytes:
    # Mostly random densities, sometimes empty or full, to reach the 0/0 and 1.0 corners.
    kind = draw(st.sampled_from(["random", "random", "random", "empty", "full"]))
    if kind == "empty":
        return bytes(bloom.byte_length(length_bits))
    if kind == "full":
        return bloom.from_positions(range(length_bits), length_bits)
    seed = draw(st.integers(0, 2**32))
    return random_filter(random.Random(seed), length_bits)


# --- codec: Java BitSet.toByteArray() order ----------------------------------------------------


def test_bit_zero_encodes_like_java() -> None:
    assert bloom.from_positions([0], 8) == b"\x01"
    assert bloom.encode_filter(bloom.from_positions([0], 1600)) == "AQ=="


def test_bit_nine_is_second_byte_second_bit() -> None:
    assert bloom.from_positions([9], 16) == b"\x00\x02"
    assert bloom.positions(b"\x00\x02") == [9]


def test_java_bitset_example() -> None:
    # new BitSet(); set(63); set(64); toByteArray() == {0,0,0,0,0,0,0,(byte)0x80,0x01}
    data = bloom.from_positions([63, 64], 1600)
    assert bloom.encode_filter(data) == base64.b64encode(bytes(7) + b"\x80\x01").decode()


def test_trailing_zero_bytes_are_dropped_and_padded_back() -> None:
    data = bloom.from_positions([0, 9], 1600)
    assert len(data) == 200
    text = bloom.encode_filter(data)
    assert text == "AQI="
    assert bloom.decode_filter(text, 1600) == data
    assert bloom.decode_filter("AQI", 1600) == data  # missing padding
    assert bloom.decode_filter("  AQI=\n", 1600) == data  # surrounding whitespace
    # The same filter from a fixed-length encoder (clkhash-like) decodes identically.
    assert bloom.decode_filter(base64.b64encode(data).decode(), 1600) == data


def test_decode_pads_to_length_not_multiple_of_eight() -> None:
    data = bloom.decode_filter("AQ==", 13)
    assert data == b"\x01\x00"
    assert bloom.decode_filter(bloom.encode_filter(bloom.from_positions([12], 13)), 13) == b"\x00\x10"


def test_decode_accepts_zero_bytes_beyond_the_length() -> None:
    assert bloom.decode_filter(base64.b64encode(b"\x01\x00\x00").decode(), 8) == b"\x01"


@pytest.mark.parametrize(
    ("data", "length_bits"),
    [
        (bloom.from_positions([12], 16), 12),  # bit 12 in a 12-bit version
        (bloom.from_positions([15], 16), 13),
        (b"\x01\x00\x01", 16),  # a third byte with a bit set
        (bloom.from_positions([1600], 1608), 1600),
    ],
)
def test_decode_rejects_bits_beyond_the_version_length(data: bytes, length_bits: int) -> None:
    with pytest.raises(ValueError, match="beyond"):
        bloom.decode_filter(bloom.encode_filter(data), length_bits)


@pytest.mark.parametrize(
    "text",
    ["AQ*=", "A", "AAAAA", "AQ==AQ==", "AQ===", "-_8=", "AQ I=", "Ä", "AQ\x00"],
)
def test_decode_rejects_invalid_base64(text: str) -> None:
    with pytest.raises(ValueError, match="base64"):
        bloom.decode_filter(text, 1600)


@pytest.mark.parametrize("text", ["", "   ", "\n", "==", "="])
def test_decode_rejects_empty_input(text: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        bloom.decode_filter(text, 1600)


def test_decode_rejects_non_text() -> None:
    with pytest.raises(ValueError):
        bloom.decode_filter(b"AQ==", 1600)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "length_bits"),
    [
        ("c2VjcmV0UGVyc29uRmlsdGVy", 64),  # valid base64, too long for 64 bits
        ("c2VjcmV0UGVyc29uRmlsdGVy*", 1600),  # invalid character
        ("c2VjcmV0UGVyc29uRmlsdGVyA", 1600),  # invalid length
    ],
)
def test_errors_never_contain_the_filter(text: str, length_bits: int) -> None:
    with pytest.raises(ValueError) as caught:
        bloom.decode_filter(text, length_bits)
    for shown in (str(caught.value), repr(caught.value), repr(caught.value.__cause__)):
        assert text[:8] not in shown
    index = FilterIndex(64)
    with pytest.raises(ValueError) as caught:
        index.upsert([1], [b"secretPersonFilter"])
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("length_bits", [0, -8, 1.5, True])
def test_length_must_be_positive_bits(length_bits: object) -> None:
    with pytest.raises(ValueError):
        bloom.decode_filter("AQ==", length_bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FilterIndex(length_bits)  # type: ignore[arg-type]


@given(length_bits=LENGTHS, data=st.data())
def test_encode_decode_round_trip(length_bits: int, data: st.DataObject) -> None:
    chosen = data.draw(st.sets(st.integers(0, length_bits - 1), min_size=1))
    filter_bytes = bloom.from_positions(chosen, length_bits)
    assert bloom.positions(filter_bytes) == sorted(chosen)
    text = bloom.encode_filter(filter_bytes)
    assert not base64.b64decode(text).endswith(b"\0")
    assert bloom.decode_filter(text, length_bits) == filter_bytes


def test_from_positions_rejects_positions_outside_the_filter() -> None:
    with pytest.raises(ValueError):
        bloom.from_positions([16], 16)
    with pytest.raises(ValueError):
        bloom.from_positions([-1], 16)


# --- Dice reference ----------------------------------------------------------------------------


def test_dice_hand_computed() -> None:
    a = bloom.from_positions([0, 1, 2, 3], 16)
    b = bloom.from_positions([2, 3, 4], 16)
    assert bloom.popcount(a) == 4
    assert bloom.dice(a, b) == 2 * 2 / (4 + 3)
    assert bloom.dice(a, a) == 1.0
    assert bloom.dice(a, bloom.from_positions([8, 9], 16)) == 0.0
    empty = bytes(2)
    assert bloom.dice(empty, empty) == 0.0
    assert bloom.dice(a, empty) == 0.0
    # Shorter (Java-trimmed) and padded forms compare as equal.
    assert bloom.dice(b"\x01", b"\x01\x00\x00") == 1.0
    assert bloom.dice(bloom.from_positions([0, 9], 1000), b"\x01\x02") == 1.0


# --- the index against the reference ------------------------------------------------------------


@pytest.mark.parametrize("index_class", INDEX_CLASSES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length_bits=LENGTHS, data=st.data())
def test_search_equals_reference(
    index_class: type[FilterIndex], length_bits: int, data: st.DataObject
) -> None:
    stored_filters = data.draw(st.lists(filters_of(length_bits), max_size=60), label="filters")
    keys = data.draw(
        st.lists(st.integers(-(2**63), 2**63 - 1), min_size=len(stored_filters),
                 max_size=len(stored_filters), unique=True),
        label="keys",
    )
    queries = data.draw(st.lists(filters_of(length_bits), min_size=1, max_size=5), label="queries")
    min_score = data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1), label="min_score")
    limit = data.draw(st.integers(1, 12), label="limit")
    stored = dict(zip(keys, stored_filters))
    index = index_class(length_bits)
    index.upsert(keys, stored_filters)
    assert len(index) == len(stored)
    for query in queries:
        assert index.search(query, min_score, limit) == reference(stored, query, min_score, limit)
    assert index.search_many(queries, min_score, limit) == [
        reference(stored, query, min_score, limit) for query in queries
    ]


@pytest.mark.parametrize("index_class", INDEX_CLASSES)
def test_top_k_ties_are_ordered_by_key(index_class: type[FilterIndex]) -> None:
    same = bloom.from_positions([1, 5, 7], 100)
    index = index_class(100)
    index.upsert([50, 3, 40, 7, 20, 9, 11, 2, 30, 8], [same] * 10)
    index.upsert([99], [bloom.from_positions([1, 5], 100)])
    assert index.search(same, 0.0, 4) == [(2, 1.0), (3, 1.0), (7, 1.0), (8, 1.0)]
    assert index.search(same, 0.0, 11)[-1] == (99, 0.8)
    assert len(index.search(same, 0.0, 100)) == 11


@pytest.mark.parametrize("index_class", INDEX_CLASSES)
def test_min_score_includes_the_boundary(index_class: type[FilterIndex]) -> None:
    index = index_class(16)
    index.upsert([1, 2, 3], [bloom.from_positions(p, 16) for p in ([0, 1], [0, 2], [4, 5])])
    query = bloom.from_positions([0, 1], 16)
    assert index.search(query, 0.5) == [(1, 1.0), (2, 0.5)]
    assert index.search(query, 0.51) == [(1, 1.0)]
    assert index.search(query, 1.01) == []
    assert index.search(query, 0.0, limit=0) == []


def test_empty_index_and_empty_batches() -> None:
    index = FilterIndex(1600)
    assert index.search(bloom.from_positions([3], 1600), 0.0) == []
    assert index.search_many([], 0.0) == []
    index.upsert([], [])
    index.remove([])
    assert len(index) == 0


@pytest.mark.parametrize("index_class", INDEX_CLASSES)
def test_upsert_replaces_a_keys_filter(index_class: type[FilterIndex]) -> None:
    index = index_class(64)
    first, second = bloom.from_positions([1, 2, 3], 64), bloom.from_positions([40, 41], 64)
    index.upsert([7, 8], [first, first])
    index.upsert([7], [second])
    assert len(index) == 2
    assert index.search(second, 0.0) == [(7, 1.0), (8, 0.0)]
    # Within one batch, the last filter given for a key wins.
    index.upsert(np.array([8, 9, 8]), [second, first, second])
    assert len(index) == 3
    assert index.search(second, 0.9) == [(7, 1.0), (8, 1.0)]


@pytest.mark.parametrize("index_class", INDEX_CLASSES)
def test_remove(index_class: type[FilterIndex]) -> None:
    rng = random.Random(5)
    stored = {key: random_filter(rng, 90) for key in range(10, 30)}
    index = index_class(90)
    index.upsert(list(stored), list(stored.values()))
    index.remove([29])  # the last row
    index.remove([10, 10, 12345, -1])  # the first row (refilled by the last), twice, unknown keys
    del stored[29], stored[10]
    assert len(index) == len(stored)
    for query in stored.values():
        assert index.search(query, 0.0, 50) == reference(stored, query, 0.0, 50)
    # Key 28 moved into the first row: replacing and removing it must find it there.
    replaced = random_filter(rng, 90)
    index.upsert([28], [replaced])
    stored[28] = replaced
    assert len(index) == len(stored)
    assert index.search(replaced, 0.0, 50) == reference(stored, replaced, 0.0, 50)
    index.remove([28, 27])
    del stored[28], stored[27]
    assert index.search(replaced, 0.0, 50) == reference(stored, replaced, 0.0, 50)
    index.remove(list(stored))
    assert len(index) == 0
    assert index.search(random_filter(rng, 90), 0.0) == []
    index.upsert([10], [stored[11]])  # back after removal
    assert index.search(stored[11], 0.0) == [(10, 1.0)]


def test_growth_across_capacity_boundaries_keeps_everything_findable() -> None:
    rng = random.Random(11)
    index = FilterIndex(1000)
    stored: dict[int, bytes] = {}
    for key in range(3000):  # one at a time: every growth step, and the key-lookup rebuild
        stored[key * 3] = bloom.from_positions([key % 1000, *rng.sample(range(1000), 40)], 1000)
        index.upsert([key * 3], [stored[key * 3]])
        if key in (63, 64, 65, 80, 81, 1024, 1025, 2999):
            for found_key, data in stored.items():
                assert index.search(data, 1.0, 1) == [(found_key, 1.0)]
    big = {10**12 + key: random_filter(rng, 1000, 0.1) for key in range(5000)}
    index.upsert(list(big), list(big.values()))  # one batch across several boundaries
    stored |= big
    assert len(index) == len(stored)
    for found_key, data in list(stored.items())[::37]:
        assert index.search(data, 1.0, 1) == [(found_key, 1.0)]


def test_shorter_filters_count_as_zero_padded() -> None:
    index = FilterIndex(1600)
    index.upsert([1], [b"\x01\x02"])  # Java-trimmed
    assert index.search(bloom.from_positions([0, 9], 1600), 0.0) == [(1, 1.0)]
    assert index.search(b"\x01", 0.0) == [(1, 2 / 3)]


def test_index_rejects_filters_that_do_not_fit_the_version() -> None:
    index = FilterIndex(13)
    with pytest.raises(ValueError, match="beyond"):
        index.upsert([1], [bloom.from_positions([13], 16)])
    with pytest.raises(ValueError, match="beyond"):
        index.upsert([1], [b"\x01\x00\x01"])
    with pytest.raises(ValueError, match="beyond"):
        index.search(bloom.from_positions([15], 16), 0.0)
    with pytest.raises(ValueError):
        index.upsert([1, 2], [b"\x01"])
    with pytest.raises(TypeError):
        index.upsert(["a"], [b"\x01"])  # type: ignore[list-item]
    assert len(index) == 0


class ChunkedIndex(FilterIndex):
    _chunk_rows = 1024  # many chunks of real size relative to the rows: the large-index budget


def test_memory_after_a_load_is_the_codes_and_fourteen_bytes_a_row() -> None:
    raw = np.random.default_rng(3).integers(0, 256, (40_000, 200), dtype=np.uint8)
    for index_class in (FilterIndex, ChunkedIndex):
        index = index_class(1600)
        index.load(np.arange(40_000) * 5, raw)
        # Codes, keys (8), popcounts (2), lookup (4); the popcount histogram and object headers.
        assert raw.nbytes + 14 * 40_000 <= index.nbytes <= raw.nbytes + 14 * 40_000 + 32 * 1024
        assert index.nbytes <= 1.07 * raw.nbytes + 32 * 1024


def test_memory_while_growing_and_after_removal() -> None:
    rng = np.random.default_rng(3)
    index = ChunkedIndex(1600)
    # Fixed slack: a last chunk grows by 1/8 at a time; up to 1,024 new keys wait in a dict
    # (~100 bytes each) before they join the sorted lookup.
    slack = 1024 * 200 // 8 + 1024 * 128
    raw = rng.integers(0, 256, (40_000, 200), dtype=np.uint8)
    for start in range(0, len(raw), 1_000):  # batches: growth leaves spare capacity
        index.upsert(range(start, start + 1_000), [row.tobytes() for row in raw[start : start + 1_000]])
        stored = (start + 1_000) * 200
        assert index.nbytes <= 1.09 * stored + slack
    for key in range(40_000, 41_000):  # one at a time: the recent-keys dict fills and is merged
        index.upsert([key], [raw[key - 40_000].tobytes()])
        assert index.nbytes <= 1.09 * (key + 1) * 200 + slack
    index.remove(range(0, 35_000))  # gives chunks and spare capacity back
    assert len(index) == 6_000
    assert index.nbytes <= 1.09 * 6_000 * 200 + slack
    assert index.search(raw[-1].tobytes(), 1.0) == [(39_999, 1.0)]
    assert index.search(raw[5].tobytes(), 1.0) == [(40_005, 1.0)]


class IndexMachine(RuleBasedStateMachine):
    """Random upserts, removals and searches against a dict of key -> filter."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[int, bytes] = {}
        self.length_bits = 1
        self.index: FilterIndex = SmallIndex(1)

    @initialize(length_bits=st.sampled_from([13, 70, 128, 333]))
    def start(self, length_bits: int) -> None:
        self.length_bits = length_bits
        self.index = SmallIndex(length_bits)

    @rule(data=st.data(), size=st.integers(1, 80))  # above 64: the vectorised lookup of recent keys
    def upsert(self, data: st.DataObject, size: int) -> None:
        keys = data.draw(st.lists(st.integers(0, 60), min_size=size, max_size=size))
        filters = [data.draw(filters_of(self.length_bits)) for _ in keys]
        self.index.upsert(keys, filters)
        self.stored.update(zip(keys, filters))

    @rule(keys=st.lists(st.integers(-5, 65), max_size=20))
    def remove(self, keys: list[int]) -> None:
        self.index.remove(keys)
        for key in keys:
            self.stored.pop(key, None)

    @rule(data=st.data(), min_score=st.sampled_from([0.0, 0.3, 0.6, 1.0]), limit=st.integers(1, 70))
    def search(self, data: st.DataObject, min_score: float, limit: int) -> None:
        if self.stored and data.draw(st.booleans()):
            query = data.draw(st.sampled_from(sorted(self.stored.values())))
        else:
            query = data.draw(filters_of(self.length_bits))
        assert self.index.search(query, min_score, limit) == reference(self.stored, query, min_score, limit)

    @invariant()
    def same_size(self) -> None:
        assert len(self.index) == len(self.stored)

    @invariant()
    def every_key_is_found_under_its_filter(self) -> None:
        keys = [key for key, data in self.stored.items() if any(data)]  # empty ones score 0
        found = self.index.search_many([self.stored[key] for key in keys], 1.0, 100)
        for key, hits in zip(keys, found):
            assert (key, 1.0) in hits


TestIndexMachine = IndexMachine.TestCase
TestIndexMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


# --- concurrency --------------------------------------------------------------------------------


@pytest.mark.parametrize("index_class", INDEX_CLASSES)
def test_concurrent_searches_and_upserts(index_class: type[FilterIndex]) -> None:
    rng = random.Random(17)
    # Anchors have bit 0 set and stay; churned keys come and go, never with bit 0, so an
    # anchor's own filter is its only perfect match whatever the writer is doing. Every key
    # always has the same filter, so each reported score must be the reference Dice of the
    # query with that key's filter: a search that saw rows moved or rewritten under it (and
    # reported a key with another row's score) fails this.
    anchors = {key: bloom.from_positions([0, *rng.sample(range(1, 256), 60)], 256) for key in range(200)}

    def filter_of(key: int) -> bytes:
        if key in anchors:
            return anchors[key]
        return bloom.from_positions(random.Random(key).sample(range(1, 256), 60), 256)

    index = index_class(256)
    index.upsert(list(anchors), list(anchors.values()))
    failures: list[BaseException] = []
    stop = threading.Event()

    def churn() -> None:
        writer_rng = random.Random(23)
        try:
            while not stop.is_set():
                keys = [1_000 + writer_rng.randrange(3_000) for _ in range(writer_rng.randrange(1, 400))]
                index.upsert(keys, [filter_of(key) for key in keys])
                gone = [1_000 + writer_rng.randrange(3_000) for _ in range(writer_rng.randrange(1, 600))]
                index.remove(gone)
                anchor = writer_rng.randrange(200)
                index.upsert([anchor], [anchors[anchor]])  # rewrites a row in place
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    def search(seed: int) -> None:
        reader_rng = random.Random(seed)
        try:
            while not stop.is_set():
                key = reader_rng.randrange(200)
                found = index.search(anchors[key], 0.2, 20)
                assert found[0] == (key, 1.0)
                assert all(a[1] > b[1] or (a[1] == b[1] and a[0] < b[0]) for a, b in zip(found, found[1:]))
                for other, score in found:
                    assert score == bloom.dice(anchors[key], filter_of(other))
                many = index.search_many([anchors[key], anchors[(key + 1) % 200]], 0.9, 3)
                assert [hits[0][0] for hits in many] == [key, (key + 1) % 200]
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=churn, daemon=True)]
    threads += [threading.Thread(target=search, args=(i,), daemon=True) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread hangs"
    assert not failures, failures[0]
    for key, data in anchors.items():  # settled: still all there
        assert index.search(data, 1.0, 5) == [(key, 1.0)]


# --- varying popcounts, ties beyond the k-nearest pass, bulk loading ------------------------------


@pytest.mark.parametrize("index_class", INDEX_CLASSES)
def test_nearest_by_hamming_is_not_best_by_dice(index_class: type[FilterIndex]) -> None:
    # With popcounts that differ, a sparse filter can be nearer in Hamming distance and still
    # score lower: the k-nearest pass alone would answer (1, 1/3).
    query = bloom.from_positions(range(10), 200)
    sparse = bloom.from_positions([0, 1], 200)  # H = 8, Dice 4/12
    dense = bloom.from_positions([*range(10), *range(100, 120)], 200)  # H = 20, Dice 20/40
    far = [bloom.from_positions([150 + i], 200) for i in range(40)]  # H = 11, Dice 0
    index = index_class(200)
    index.upsert([1, 2, *range(10, 50)], [sparse, dense, *far])
    assert index.search(query, 0.0, 1) == [(2, 0.5)]
    assert index.search(query, 0.3, 5) == [(2, 0.5), (1, 4 / 12)]
    assert index.search_many([query, dense], 0.0, 1) == [[(2, 0.5)], [(2, 1.0)]]


@pytest.mark.parametrize("index_class", INDEX_CLASSES)
@pytest.mark.parametrize("min_score", [0.0, 0.5, 0.7, 0.8])
def test_clk_like_filters_of_varying_popcount(index_class: type[FilterIndex], min_score: float) -> None:
    # CLKs: 1024 bits, each record sets its own number of bits (about 250 to 600).
    rng = random.Random(41)
    stored = {1000 + 3 * i: random_filter(rng, 1024, rng.uniform(0.25, 0.6)) for i in range(1500)}
    index = index_class(1024)
    index.upsert(list(stored), list(stored.values()))
    queries = []
    for key in rng.sample(sorted(stored), 6):  # noisy copies: one close match each, others near
        positions = set(bloom.positions(stored[key]))
        flipped = set(rng.sample(range(1024), 60))
        queries.append(bloom.from_positions(sorted(positions ^ flipped), 1024))
    queries.append(random_filter(rng, 1024, 0.4))
    expected = [reference(stored, query, min_score, 7) for query in queries]
    assert index.search_many(queries, min_score, 7) == expected
    assert [index.search(query, min_score, 7) for query in queries] == expected


@pytest.mark.parametrize("index_class", INDEX_CLASSES)
def test_ties_beyond_the_nearest_pass_are_settled_by_key(index_class: type[FilterIndex]) -> None:
    # 300 equal filters: far more than the k-nearest pass fetches, so which of them faiss keeps
    # is arbitrary; the answer must still be the smallest keys.
    rng = random.Random(8)
    same = random_filter(rng, 333, 0.5)
    keys = rng.sample(range(10**6), 300)
    others = {10**7 + i: random_filter(rng, 333, 0.5) for i in range(200)}
    index = index_class(333)
    index.upsert([*keys, *others], [same] * 300 + list(others.values()))
    assert index.search(same, 0.9, 5) == [(key, 1.0) for key in sorted(keys)[:5]]
    assert index.search_many([same, same], 0.0, 3) == [[(key, 1.0) for key in sorted(keys)[:3]]] * 2
    index.remove(sorted(keys)[:2])
    assert index.search(same, 0.9, 2) == [(key, 1.0) for key in sorted(keys)[2:4]]


@pytest.mark.parametrize("index_class", INDEX_CLASSES)
def test_load_equals_upsert(index_class: type[FilterIndex]) -> None:
    rng = np.random.default_rng(12)
    codes = rng.integers(0, 256, (500, 13), dtype=np.uint8)
    codes[:, -1] &= 0x0F  # 100 bits: the last 4 bits of the last byte are spare
    keys = rng.permutation(10_000)[:500]
    loaded, upserted = index_class(100), index_class(100)
    loaded.load(keys[:200], codes[:200])
    loaded.load(keys[200:], codes[200:].tobytes())  # one bytes buffer works as well
    upserted.upsert(keys.tolist(), [row.tobytes() for row in codes])
    assert len(loaded) == len(upserted) == 500
    queries = [row.tobytes() for row in codes[::50]]
    assert loaded.search_many(queries, 0.0, 20) == upserted.search_many(queries, 0.0, 20)
    loaded.load(keys[:1], codes[1:2])  # replaces, like upsert
    assert loaded.search(codes[1].tobytes(), 1.0, 5) == sorted([(int(keys[0]), 1.0), (int(keys[1]), 1.0)])
    with pytest.raises(ValueError, match="beyond"):
        loaded.load([1], np.full((1, 13), 0xFF, np.uint8))
    with pytest.raises(ValueError):
        loaded.load([1, 2], codes[:1])
    assert len(loaded) == 500


def test_index_device_must_be_known_and_gpu_needs_faiss_gpu() -> None:
    with pytest.raises(ValueError, match="cpu"):
        FilterIndex(1600, device="tpu")
    rng = random.Random(4)
    stored = [random_filter(rng, 1600, 0.5) for _ in range(300)]
    if not gpu_available():
        with pytest.raises(RuntimeError, match="GPU"):
            FilterIndex(1600, device="gpu")
        return
    on_gpu, on_cpu = FilterIndex(1600, device="gpu"), FilterIndex(1600)
    for index in (on_gpu, on_cpu):
        index.upsert(range(300), stored)
        index.remove([0, 5])
        index.upsert([7], [stored[8]])
    assert on_gpu.search_many(stored[:20], 0.0, 10) == on_cpu.search_many(stored[:20], 0.0, 10)


def test_device_copy_follows_every_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # A CPU IndexBinaryFlat stands in for the GPU one: what is checked here is that the copy
    # stays row for row in step with the index through appends across chunks, replacements
    # and removals, and that its answers go through the same exact scoring.
    import faiss

    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: None, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_binary_cpu_to_gpu", lambda resources, device, index: index, raising=False)
    rng = random.Random(9)
    filters = {key: random_filter(rng, 120, rng.uniform(0.2, 0.6)) for key in range(200)}
    on_device, on_cpu = SmallIndex(120, device="gpu"), SmallIndex(120)
    queries = [*list(filters.values())[::20], random_filter(rng, 120, 0.4)]
    for index in (on_device, on_cpu):
        index.upsert(list(filters)[:13], list(filters.values())[:13])
        index.upsert(list(filters)[13:], list(filters.values())[13:])
    assert on_device.search_many(queries, 0.0, 5) == on_cpu.search_many(queries, 0.0, 5)
    for index in (on_device, on_cpu):
        index.upsert([3, 500], [filters[100], filters[101]])
        index.remove(list(range(0, 200, 7)))
    expected = {**filters, 3: filters[100], 500: filters[101]}
    for key in range(0, 200, 7):
        expected.pop(key, None)
    assert len(on_device) == len(expected)
    for limit in (1, 5, 60):
        found = on_device.search_many(queries, 0.3, limit)
        assert found == on_cpu.search_many(queries, 0.3, limit)
        assert found == [reference(expected, query, 0.3, limit) for query in queries]


def test_configuration_checks_the_index_device() -> None:
    config = load_config(DEMO_CONFIG, environ={})
    assert config_problems(config.with_overrides(dispatcher={"index_device": "cpu"}), load_plugins()) == []
    problems = config_problems(config.with_overrides(dispatcher={"index_device": "tpu"}), load_plugins())
    assert any("index_device" in problem for problem in problems)
    problems = config_problems(config.with_overrides(dispatcher={"index_device": "gpu"}), load_plugins())
    assert (problems == []) == gpu_available()
    assert all("faiss-gpu" in problem for problem in problems)


class _Changes:
    """A repository whose linkage store returns stored filter rows after a change number."""

    def __init__(self, rows: list[BloomFilterRow]) -> None:
        self.rows = rows

    @contextlib.contextmanager
    def read(self) -> Iterator[dict[object, "_Changes"]]:
        yield {LINKAGE: self}

    def get_bloom_filter_changes(self, study: str, version: str, after: int) -> list[BloomFilterRow]:
        return [row for row in self.rows if row.sequence > after]


def test_indexes_load_in_steps_and_log_counts_only(caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(6)
    study = Study.from_settings("s", {"sites": ["a"], "versions": [{"name": "1", "length": 64}]})
    filters = [random_filter(rng, 64, 0.5) for _ in range(25)]
    tx = _Changes([BloomFilterRow(100 + i, i, "a", "1", data, i + 1) for i, data in enumerate(filters)])
    indexes = FilterIndexes(tx)  # type: ignore[arg-type]
    indexes.load_step = 10
    with caplog.at_level(logging.INFO, logger="ttp_gateway.dispatcher"):
        index, sequence = indexes.synced(study, "1")  # type: ignore[arg-type]
    assert (len(index), sequence) == (25, 25)
    loaded = [record for record in caplog.records if record.getMessage() == "Bloom filters loaded"]
    assert [(r.loaded, r.total) for r in loaded] == [(10, 25), (20, 25), (25, 25)]  # type: ignore[attr-defined]
    for record in caplog.records:
        text = repr(record.__dict__)
        assert not any(base64.b64encode(data).decode()[:8] in text or repr(data) in text for data in filters)
    tx.rows.append(BloomFilterRow(100, 0, "a", "1", None, 26))  # withdrawn
    tx.rows.append(BloomFilterRow(200, 1, "a", "1", filters[0], 27))
    caplog.clear()
    index, sequence = indexes.synced(study, "1")  # type: ignore[arg-type]
    assert (len(index), sequence) == (25, 27)
    assert index.search(filters[0], 1.0) == [(200, 1.0)]
    assert not caplog.records  # small changes: no progress lines
