"""Seeded benchmark payloads: the same bytes per (seed, size), any size."""

from __future__ import annotations

import pytest
from cellnet.benchmarks import _worker
from cellnet.benchmarks._worker import payload_for


def test_payloads_are_seeded() -> None:
    assert payload_for(1, 100) == payload_for(1, 100)
    assert payload_for(1, 100) != payload_for(2, 100)
    assert len(payload_for(1, 0)) == 0


def test_a_large_payload_is_filled_block_by_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_worker, "_RANDBYTES_MAX", 1000)
    first, again = payload_for(7, 2500), payload_for(7, 2500)
    assert len(first) == 2500 and first == again
    assert len({bytes(first[i:i + 500]) for i in range(0, 2500, 500)}) == 5  # no block repeated


def test_256_mib_and_more() -> None:
    # One Random.randbytes call takes at most 2**31 - 1 bits: 256 MiB failed.
    size = (256 << 20) + 3
    payload = payload_for(1, size)
    assert len(payload) == size
    assert payload[-1000:] != bytes(1000)  # filled to the end
