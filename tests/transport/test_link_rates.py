"""Each node's link, as its model-sized transfers measured it: slow under the threshold."""

from __future__ import annotations

import pytest

from consortium.transport.link_rates import LINK_SAMPLE_BYTES, LinkRates
from consortium.transport.stall import BYTES_PER_MBIT

SLOW = 200 * BYTES_PER_MBIT
MODEL = 100 * 1024 * 1024


def test_a_node_whose_link_was_never_measured_is_not_slow() -> None:
    links = LinkRates(SLOW)
    assert links.upload_rate("a") is None and not links.slow_upload("a")
    assert not links.slow_download("a")


def test_a_model_sized_transfer_under_the_threshold_makes_the_link_slow() -> None:
    links = LinkRates(SLOW)
    links.downloaded("a", MODEL, MODEL / (20 * BYTES_PER_MBIT))  # 20 Mbit/s
    links.downloaded("b", MODEL, 0.5)  # 1.7 Gbit/s
    assert links.slow_download("a") and not links.slow_download("b")
    # before its first upload, the download stands for the node's link both ways
    assert links.slow_upload("a") and links.upload_rate("a") == pytest.approx(2.5e6)


def test_small_transfers_do_not_measure_the_link() -> None:
    links = LinkRates(SLOW)
    links.uploaded("a", LINK_SAMPLE_BYTES - 1, 100.0)  # latency, not the link
    links.uploaded("a", MODEL, 0.0)  # no time measured
    assert links.upload_rate("a") is None


def test_each_direction_prefers_its_own_last_measure() -> None:
    links = LinkRates(SLOW)
    links.downloaded("a", MODEL, 0.5)  # a fast download...
    links.uploaded("a", MODEL, 60.0)  # ...and a slow upload (an asymmetric link)
    assert links.slow_upload("a") and not links.slow_download("a")
    links.uploaded("a", MODEL, 0.5)  # the last upload counts, not the first
    assert not links.slow_upload("a")


def test_a_threshold_of_zero_makes_no_link_slow() -> None:
    links = LinkRates(0.0)
    links.uploaded("a", MODEL, 1e6)
    assert not links.slow_upload("a") and not links.slow_download("a")
    with pytest.raises(ValueError, match="slow-link"):
        LinkRates(-1.0)


def test_a_transfer_under_way_is_judged_only_once_it_moved_enough_for_long_enough() -> None:
    links = LinkRates(SLOW)
    at_20_mbit = 20 * BYTES_PER_MBIT
    # its first bytes fill the buffers at once: not judged on them
    assert not links.crawling(12 * 1024 * 1024, 0.01)
    assert not links.crawling(LINK_SAMPLE_BYTES - 1, 10.0)  # too little moved
    assert links.crawling(int(12 * 1024 * 1024 + 5 * at_20_mbit), 5.0)  # ~40 Mbit/s
    assert not links.crawling(400 * 1024 * 1024, 2.0)  # loopback: 1.7 Gbit/s
    assert not LinkRates(0.0).crawling(LINK_SAMPLE_BYTES, 1000.0)
