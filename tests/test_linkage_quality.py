"""Linkage quality through the service: synthetic sites with realistic errors in their records
(typos, umlaut spellings, changed family names, swapped day and month, twins, namesakes) send
their Bloom filters, answer the clearing's tasks with IDAT and collect their pseudonyms."""

from __future__ import annotations

import pytest

from bench.quality import evaluate


@pytest.mark.parametrize("seed", [5, 6])
def test_f1_and_clearing_share_with_the_demo_thresholds(seed: int, tmp_path) -> None:
    quality = evaluate(n_people=800, seed=seed, storage_url=f"sqlite:///{tmp_path / 'quality.db'}")
    assert quality.precision >= 0.995  # twins and namesakes are not merged
    assert quality.f1 >= 0.99
    assert quality.clearing_share <= 0.15
