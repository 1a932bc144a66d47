"""The AI-MIP protocol's facts (docs/aimip.md)."""

import pytest

from mdiff import protocol


def test_experiments_and_their_offsets():
    assert protocol.EXPERIMENTS == ("aimip", "aimip-p2k", "aimip-p4k")
    assert protocol.SST_OFFSET_K == {"aimip": 0.0, "aimip-p2k": 2.0, "aimip-p4k": 4.0}
    assert protocol.WARMED == ("aimip-p2k", "aimip-p4k")


def test_the_run_has_555_months():
    months = protocol.months(*protocol.RUN)
    assert len(months) == 555 and months[:4] == ["1978-10", "1978-11", "1978-12", "1979-01"]
    assert months[-1] == "2024-12" and protocol.months("1980-02", "1980-01") == []
    with pytest.raises(ValueError, match="'1980-13' is not a month"):
        protocol.months("1980-01", "1980-13")


def test_member_batches_cover_every_member_once():
    batches = protocol.member_batches(5, 2)
    assert batches == [(1, 2), (3, 4), (5, 5)] and protocol.batch_label(*batches[1]) == "members_003-004"
    assert [protocol.member_batch(k, 5, 2) for k in range(1, 6)] == [(1, 2), (1, 2), (3, 4), (3, 4), (5, 5)]
