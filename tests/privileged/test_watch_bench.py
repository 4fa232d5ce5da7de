"""A short run of bench/watch_bench.py: under a UDP flood that matches its
filter, watch keeps redrawing, its memory does not run away, the loss is on
screen, and `q` ends it promptly. (The 5-minute numbers are in bench/README.md.)"""

from __future__ import annotations

import math
import re
import shutil

import pytest

from bench.watch_bench import measure
from tests.conftest import new_prefix

pytestmark = pytest.mark.privileged


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 not installed")
def test_watch_keeps_up_with_a_flood() -> None:
    r = measure(15, new_prefix(), baseline_s=0)
    assert r["frames"] >= 30  # ~5 redraws a second over 15 s, despite the flood
    assert r["interval_ms_p50"] < 400
    assert r["interval_ms_p99"] < 2000
    assert r["events"] > 10_000  # the flood was seen...
    shown = re.search(r"lost ([\d,]+)", r["header"])
    assert shown is not None, r["header"]
    if r["lost"]:  # ...and what the kernel dropped is on screen (read just before q)
        assert int(shown.group(1).replace(",", "")) > 0
    assert r["rss_mib_max"] - r["rss_mib_start"] < 40
    assert r["quit_s"] < 5
    assert not math.isnan(r["traced_pps"])
