"""The benchmark harness on a tiny matrix: tcp only, two sizes, one repetition.

It runs ``python -m cellnet.benchmarks`` once (real ``cellnet run`` processes)
and checks what it writes: well-formed JSON, Markdown and PNG files, positive
figures that agree with each other, and a direct route for the direct
topology. It asserts behaviour, never speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cellnet.benchmarks.procs import BenchError
from cellnet.benchmarks.harness import BenchConfig, load_bench_config

pytestmark = pytest.mark.timeout(120)

SIZES = [100, 65536]
TINY = """
[bench]
drivers = ["tcp"]
sizes = ["100B", "64KiB"]
concurrency = [1, 4]
repetitions = 1
duration = 0.02
min_count = 3
warmup = 1
baseline_bytes = "256KiB"
baseline_min_count = 3
baseline_max_count = 50
compare = false
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    folder = tmp_path_factory.mktemp("bench")
    config = folder / "tiny.toml"
    config.write_text(TINY)
    out = folder / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cellnet.benchmarks", "--config", str(config), "--out", str(out), "--no-progress"],
        check=False, capture_output=True, text=True, timeout=110,
    )
    return proc, out


@pytest.fixture(scope="module")
def doc(run: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    proc, out = run
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_json_is_well_formed(doc: dict[str, Any]) -> None:
    assert doc["config"]["drivers"] == ["tcp"] and doc["config"]["sizes"] == SIZES
    machine = doc["machine"]
    assert machine["python"] and machine["platform"] and machine["cpu_count"] >= 1
    assert "cellnet" in machine["packages"] and "matplotlib" in machine["packages"]
    assert "NVIDIA FLARE" in doc["nvflare"]
    assert "flare" not in doc  # compare = false in the tiny config
    assert [g["driver"] for g in doc["groups"]] == ["tcp"] and "error" not in doc["groups"][0]
    # every cell of the matrix was measured once, without errors
    cells = {(m["topology"], m["size"], m["concurrency"]) for m in doc["measurements"]}
    assert cells == {(t, s, c) for t in ("client-server", "relayed", "direct") for s in SIZES for c in (1, 4)}
    assert len(doc["measurements"]) == len(cells)
    assert not any("error" in m for m in doc["measurements"])
    assert len(doc["summary"]) == len(cells)
    modules = sorted((b["module"], b["size"], b["concurrency"]) for b in doc["baselines"])
    # the raw tcp echo runs at every concurrency level, the one-way stream once
    assert modules == sorted([("raw_echo", s, c) for s in SIZES for c in (1, 4)]
                             + [("raw_stream", s, 1) for s in SIZES])


def test_every_figure_is_positive(doc: dict[str, Any]) -> None:
    for m in doc["measurements"]:
        for key in ("rtt_min_us", "rtt_median_us", "rtt_mean_us", "rtt_p99_us", "msgs_per_s", "mb_per_s",
                    "elapsed_s"):
            assert m[key] > 0, (key, m)
        assert m["count"] >= 3
        assert m["rtt_min_us"] <= m["rtt_median_us"] <= m["rtt_p99_us"] <= m["rtt_max_us"]
        assert set(m["peak_rss_kib"]) == {"server", "site-2", "client"}
        assert all(v > 0 for v in m["peak_rss_kib"].values()), m["peak_rss_kib"]
    for b in doc["baselines"]:
        assert "error" not in b, b
        assert b["mb_per_s"] > 0 and b["count"] >= 3
        if b["module"] == "raw_echo":
            assert b["rtt_median_us"] > 0 and b["rtt_p99_us"] > 0
    for s in doc["summary"]:
        for key in ("rtt_median_us", "rtt_p99_us", "msgs_per_s", "mb_per_s"):
            assert 0 < s[key]["min"] <= s[key]["median"] <= s[key]["max"]
        if s["concurrency"] == 1:
            assert s["rtt_vs_raw"] > 0 and s["mb_per_s_vs_raw"] > 0
        else:  # next to the raw echo with as many requests pipelined on one connection
            assert s["raw_msgs_per_s"] > 0 and s["msgs_per_s_vs_raw"] > 0
            assert math.isclose(s["msgs_per_s_vs_raw"], s["msgs_per_s"]["median"] / s["raw_msgs_per_s"])


def test_raw_echo_at_concurrency(doc: dict[str, Any]) -> None:
    for b in doc["baselines"]:
        if b["module"] != "raw_echo" or b["concurrency"] == 1:
            continue
        assert b["effective_concurrency"] == 4 and b["count"] >= 8 * 4
        assert math.isclose(b["mb_per_s"], 2 * b["size"] * b["msgs_per_s"] / 1e6, rel_tol=1e-9)
        assert math.isclose(b["msgs_per_s"], b["count"] / b["elapsed_s"], rel_tol=1e-9)
        assert b["rtt_min_us"] <= b["rtt_median_us"] <= b["rtt_p99_us"]


def test_mb_per_s_agrees_with_size_and_rtt(doc: dict[str, Any]) -> None:
    for m in doc["measurements"]:
        size, conc = m["size"], m["effective_concurrency"]
        # payload counted once each way
        assert math.isclose(m["mb_per_s"], 2 * size * m["msgs_per_s"] / 1e6, rel_tol=1e-9)
        assert math.isclose(m["msgs_per_s"], m["count"] / m["elapsed_s"], rel_tol=1e-9)
        # Little's law: conc requests outstanding, each taking the mean RTT
        # (less the time between two requests of one stream).
        occupancy = m["msgs_per_s"] * m["rtt_mean_us"] / 1e6 / conc
        assert 0.2 < occupancy <= 1.0 + 1e-6, (occupancy, m)
        if conc == 1:
            assert m["mb_per_s"] <= 2 * size / (m["rtt_min_us"] / 1e6) / 1e6 * (1 + 1e-9)
            assert m["mb_per_s"] >= 2 * size / (m["rtt_max_us"] / 1e6) / 1e6 * 0.5


def test_routes_match_the_topologies(doc: dict[str, Any]) -> None:
    routes = {m["topology"]: m["route"] for m in doc["measurements"]}
    assert routes["direct"] == ["site-3", "site-2"]
    assert routes["relayed"] == ["site-1", "server", "site-2"]
    assert routes["client-server"] == ["site-1", "server"]
    assert all(m["route_ok"] for m in doc["measurements"])
    assert all(s["route_ok"] for s in doc["summary"])
    assert doc["groups"][0]["routes"]["direct"] == ["site-3", "site-2"]


def test_headline_table_on_the_terminal(run: tuple[subprocess.CompletedProcess[str], Path],
                                        doc: dict[str, Any]) -> None:
    proc, _out = run
    assert "headline figures: RTT and msg/s at 100 B, MB/s at 64 KiB" in proc.stderr
    rows = [ln for ln in proc.stderr.splitlines() if ln.startswith("│ tcp")]
    assert [ln.split("│")[2].strip() for ln in rows] == ["client->server", "relayed", "direct"]
    first = next(s for s in doc["summary"] if s["topology"] == "client-server" and s["size"] == SIZES[0]
                 and s["concurrency"] == 1)
    shown = float(rows[0].split("│")[3])
    assert shown == pytest.approx(first["rtt_median_us"]["median"] / 1e3, rel=0.01)


def test_markdown_and_plots(run: tuple[subprocess.CompletedProcess[str], Path], doc: dict[str, Any]) -> None:
    _proc, out = run
    md = (out / "results.md").read_text()
    assert md.startswith("# cellnet transport benchmark")
    assert "## Raw baselines" in md and "## tcp" in md
    tcp = md.split("## tcp", 1)[1]
    rows = [ln for ln in tcp.splitlines() if ln.startswith("| ") and "B |" in ln]
    assert len(rows) == 3 * len(SIZES)
    header = next(ln for ln in tcp.splitlines() if ln.startswith("| path"))
    assert all(ln.count("|") == header.count("|") for ln in rows)
    assert "(!)" not in md
    assert "raw msg/s x4" in header and "msg/s/raw x4" in header
    assert "site->site direct: site-3 -> site-2" in md
    for name in ("latency.png", "throughput.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_config_defaults_quick_and_errors(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.toml"
    assert load_bench_config(example, quick=False) == BenchConfig()
    quick = load_bench_config(example, quick=True)
    assert quick.sizes == [100, 65536, 1 << 20] and quick.repetitions == 1
    assert load_bench_config(None, quick=True) == quick
    # the message limit of the generated configs always fits the largest size
    bad = tmp_path / "bad.toml"
    bad.write_text('[bench]\nsizes = ["2GiB"]\nmax_message = "1MiB"\n')
    assert load_bench_config(bad, quick=False).max_message > 2 << 30
    assert quick.compare_sizes == [100, 1024] and quick.compare_large == [64 << 20]
    for text in ('[bench]\ndrivers = ["udp"]\n', "[bench]\ncompare_sizes = []\n", "[bench]\ncompare = 1\n", "[bench]\nrepetitions = 0\n", "[bench]\nspeed = 1\n",
                 '[bench]\nsizes = ["lots"]\n', "[other]\n"):
        bad.write_text(text)
        with pytest.raises(BenchError):
            load_bench_config(bad, quick=False)


def test_cli_registers_bench() -> None:
    proc = subprocess.run([sys.executable, "-m", "cellnet", "bench", "--help"],
                          check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--out" in proc.stdout
