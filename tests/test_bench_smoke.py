"""The benchmarks still run against the current code: each in-process part at a tiny size, so that
a schema or interface change cannot leave `make bench` broken until someone runs it."""

from __future__ import annotations

from bench import batch, linkage


def test_linkage_bench_runs_the_whole_workflow() -> None:
    [row] = linkage.run(n=2_000, repeats=2)
    assert row["median_ms"] > 0 and row["memory_ratio"] >= 1.0


def test_batch_floor_writes_into_the_gateways_own_tables() -> None:
    times = batch.sqlite_floor(repeats=1, batch=50)
    assert len(times) == 1 and times[0] > 0
