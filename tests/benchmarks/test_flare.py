"""The NVIDIA FLARE comparison of the benchmark harness, in quick mode.

It runs ``python -m cellnet.benchmarks --quick`` restricted to the tcp driver
(FLARE's cells in real processes) and checks the ``flare`` object of
``results.json`` and the comparison table of ``results.md``: every path,
size, concurrency and FLARE mode measured, the recorded routes as expected
(FLARE's ad-hoc link for the direct path), positive figures and ratios that
agree with them. It asserts behaviour, never speed. nvflare is an optional
extra (``pip install "cellnet[compare]"``), so without it the tests skip;
the message says how to enable them. Without nvflare the harness must say
the comparison is skipped (checked always).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cellnet.benchmarks.harness import nvflare_note

pytestmark = pytest.mark.timeout(150)

HAVE_NVFLARE = importlib.util.find_spec("nvflare") is not None
needs_nvflare = pytest.mark.skipif(
    not HAVE_NVFLARE, reason='nvflare is not importable: pip install "cellnet[compare]" to run the FLARE comparison')

QUICK_TCP = """
[bench]
drivers = ["tcp"]
[quick]
sizes = ["100B"]
repetitions = 1
duration = 0.05
min_count = 2
baseline_bytes = "1MiB"
baseline_max_count = 100
compare_sizes = ["100B", "1KiB"]
compare_large = ["16MiB"]
"""
TOPOLOGIES = ("client-server", "relayed", "direct")
ROUTES = {"client-server": ["site-1", "server"], "relayed": ["site-1", "server", "site-2"],
          "direct": ["site-3", "site-2"]}


def test_note_says_how_to_enable() -> None:
    note = nvflare_note()
    if HAVE_NVFLARE:
        assert "compared" in note
    else:
        assert "skipped" in note and 'pip install "cellnet[compare]"' in note


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    folder = tmp_path_factory.mktemp("flare")
    config = folder / "quick.toml"
    config.write_text(QUICK_TCP)
    out = folder / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cellnet.benchmarks", "--quick", "--config", str(config), "--out", str(out),
         "--no-progress"],
        check=False, capture_output=True, text=True, timeout=140,
    )
    return proc, out


@pytest.fixture(scope="module")
def doc(run: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    proc, out = run
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


@needs_nvflare
def test_flare_json_is_well_formed(doc: dict[str, Any]) -> None:
    flare = doc["flare"]
    group = flare["flare"]
    assert "error" not in group and group["version"] and doc["machine"]["packages"]["nvflare"]
    assert group["routes"] == ROUTES
    cells = sorted((m["topology"], m["size"], m["concurrency"], m["mode"]) for m in group["echo"])
    assert cells == sorted((t, s, c, mode) for t in TOPOLOGIES for s in (100, 1024) for c in (1, 32)
                           for mode in ("frame", "stream"))
    for m in group["echo"]:
        assert "error" not in m, m
        assert m["route"] == ROUTES[m["topology"]] and m["route_ok"]
        assert m["count"] >= 2 and m["rtt_min_us"] <= m["rtt_median_us"] <= m["rtt_p99_us"] <= m["rtt_max_us"]
        assert math.isclose(m["mb_per_s"], 2 * m["size"] * m["msgs_per_s"] / 1e6, rel_tol=1e-9)
        assert all(v and v > 0 for v in m["peak_rss_kib"].values()), m["peak_rss_kib"]
    large = sorted((m["size"], m["mode"]) for m in group["large"])
    assert large == [(16 << 20, "frame"), (16 << 20, "stream")]
    for m in group["large"]:
        assert "error" not in m, m
        assert m["bytes"] == 16 << 20 and m["route"] == ROUTES["relayed"] and m["mb_per_s"] > 0
    ours = flare["ours_large"]
    assert sorted(m["sink"] for m in ours) == ["discard", "file"]  # counted like FLARE's, and into a file
    for m in ours:
        assert m["size"] == 16 << 20 and m["bytes_ok"] and m["topology"] == "relayed", m
    assert "error" not in flare["ours_group"]


@needs_nvflare
def test_comparison_rows_agree(doc: dict[str, Any]) -> None:
    rows = doc["flare"]["rows"]
    echo = [r for r in rows if r["kind"] == "echo"]
    assert len(echo) == len(TOPOLOGIES) * 2 * 2
    # Ours measured in turns with FLARE's: one record per FLARE path, size and concurrency (1 repetition).
    beside = {(m["topology"], m["size"], m["concurrency"]): m for m in doc["flare"]["flare"]["ours_echo"]}
    assert len(beside) == len(echo) == len(doc["flare"]["flare"]["ours_echo"])
    for r in echo:
        ours = beside[(r["topology"], r["size"], r["concurrency"])]
        assert r["cellnet_in_turns"] and ours["driver"] == "tcp" and ours["route_ok"]
        assert r["cellnet"]["rtt_median_us"] == ours["rtt_median_us"]
        for mode in ("frame", "stream"):
            for key in ("rtt_median_us", "msgs_per_s", "mb_per_s"):
                assert r[f"flare_{mode}"][key] > 0
                assert math.isclose(r[f"ratio_{mode}"][key], r["cellnet"][key] / r[f"flare_{mode}"][key])
            assert r[f"route_ok_{mode}"]
    (large,) = [r for r in rows if r["kind"] == "large"]
    ours = {m["sink"]: m for m in doc["flare"]["ours_large"]}
    assert large["cellnet"]["mb_per_s"] == ours["discard"]["mb_per_s"]  # one repetition: the median is it
    assert large["cellnet_file"]["mb_per_s"] == ours["file"]["mb_per_s"]
    assert large["cellnet"]["relay_peak_kib"] > 0 and large["cellnet_file"]["relay_peak_kib"] > 0
    for mode in ("frame", "stream"):
        assert large[f"flare_{mode}"]["relay_peak_kib"] > 0
        assert math.isclose(large[f"ratio_{mode}"]["mb_per_s"],
                            large["cellnet"]["mb_per_s"] / large[f"flare_{mode}"]["mb_per_s"])


@needs_nvflare
def test_comparison_table(run: tuple[subprocess.CompletedProcess[str], Path], doc: dict[str, Any]) -> None:
    _proc, out = run
    md = (out / "results.md").read_text()
    section = md.split("## Against NVIDIA FLARE's CellNet", 1)[1]
    assert "(!)" not in section and "failed" not in section
    header = next(ln for ln in section.splitlines() if ln.startswith("| path"))
    echo_rows = [ln for ln in section.splitlines() if ln.startswith("| client") or ln.startswith("| site")]
    assert len(echo_rows) == len(TOPOLOGIES) * 2 * 3  # RTT and msg/s at x1, msg/s at x32
    assert all(ln.count("|") == header.count("|") for ln in echo_rows)
    assert "| 16 MiB |" in section
