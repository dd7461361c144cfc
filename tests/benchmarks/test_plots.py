"""The plots of the benchmark report (:func:`cellnet.benchmarks.report.plot`), on small synthetic
result documents and on the committed full run: what the axes, titles and legends say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cellnet.benchmarks import report
from cellnet.benchmarks.bench_config import BenchConfig

pytest.importorskip("matplotlib")

FULL = Path(__file__).resolve().parents[2] / "docs" / "bench" / "results.json"
TOPOLOGIES = ("client-server", "relayed", "direct")


def _spread(value: float) -> dict[str, float]:
    return {"median": value, "min": value * 0.9, "max": value * 1.1}


def _doc(drivers: list[str], sizes: list[int], concurrency: list[int],
         mb_per_s: dict[int, float] | None = None, rtt_ms: dict[int, float] | None = None) -> dict[str, Any]:
    """A results document with every topology of ``drivers`` measured at ``sizes`` and ``concurrency``,
    and the raw baselines the harness runs (tcp: raw_echo at every level and raw_stream)."""
    cfg = BenchConfig(drivers=drivers, sizes=sizes, concurrency=concurrency).to_json()
    summary, baselines = [], []
    for d in drivers:
        for i, size in enumerate(sizes):
            mb = (mb_per_s or {}).get(size, 10.0 * (i + 1))
            rtt = (rtt_ms or {}).get(size, 0.2 * (i + 1))
            for t, topo in enumerate(TOPOLOGIES):
                for c in concurrency:
                    rate = mb * (1 + t / 10) * c ** 0.5
                    summary.append({"driver": d, "topology": topo, "size": size, "concurrency": c,
                                    "effective_concurrency": c, "repetitions": 1, "route": [], "route_ok": True,
                                    "errors": [], "peak_rss_kib": {},
                                    "rtt_median_us": _spread(rtt * 1e3 * (1 + t / 10)),
                                    "rtt_p99_us": _spread(rtt * 2e3), "msgs_per_s": _spread(rate * 1e6 / size / 2),
                                    "mb_per_s": _spread(rate)})
            modules = [("raw_echo", c) for c in concurrency] + [("raw_stream", 1)] if d == "tcp" else [(f"raw_{d}", 1)]
            for module, c in modules:
                base = {"driver": d, "module": module, "size": size, "concurrency": c, "count": 10,
                        "mb_per_s": mb * 2}
                if module != "raw_stream":
                    base.update(rtt_median_us=rtt * 500, rtt_p99_us=rtt * 900)
                baselines.append(base)
    return {"started": "2024-01-01T00:00:00Z", "seconds": 1.0, "quick": True, "interrupted": False,
            "config": cfg, "machine": {}, "groups": [], "baselines": baselines, "summary": summary}


def _panels(fig: Any) -> list[Any]:
    return [ax for ax in fig.axes if ax.get_visible()]


def _labels(ticklabels: list[Any]) -> list[str]:
    return [t.get_text() for t in ticklabels if t.get_text()]


def _check_axes(fig: Any, sizes: list[str]) -> None:
    for ax in _panels(fig):
        assert _labels(ax.get_xticklabels()) == sizes, ax.get_title()
        ys = _labels(ax.get_yticklabels())
        assert 3 <= len(ys) <= 9, (ax.get_title(), ys)
        assert not any("^" in y or "times" in y for y in ys), ys  # plain numbers, never 10^x
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend and not any(label.startswith("raw raw") for label in legend), legend


def test_full_run(tmp_path: Path) -> None:
    doc = json.loads(FULL.read_text())
    paths = report.plot(doc, tmp_path)
    assert [p.name for p in paths] == ["latency.png", "throughput.png"]
    for p in paths:
        assert p.read_bytes().startswith(b"\x89PNG")
    units = ["100 B", "4 KiB", "64 KiB", "1 MiB", "16 MiB", "64 MiB"]
    for kind in ("latency", "throughput"):
        fig = report.figure(doc, kind)
        assert [ax.get_title() for ax in _panels(fig)] == ["tcp", "grpc", "http", "redis"]
        for ax in _panels(fig):
            # tcp's raw echo also ran at 1 KiB; the other panels have only the matrix's sizes
            want = units[:1] + ["1 KiB"] + units[1:] if ax.get_title() == "tcp" else units
            assert _labels(ax.get_xticklabels()) == want
        _check_axes_but_x(fig)
    throughput = report.figure(doc, "throughput")
    assert "solid: x1, dashed: x32" in throughput.get_suptitle()
    tcp = [t.get_text() for t in _panels(throughput)[0].get_legend().get_texts()]
    assert {"raw_echo", "raw_echo x32", "raw_stream (one-way)"} <= set(tcp)


def _check_axes_but_x(fig: Any) -> None:
    for ax in _panels(fig):
        ys = _labels(ax.get_yticklabels())
        assert 3 <= len(ys) <= 9, (ax.get_title(), ys)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert not any(label.startswith("raw raw") for label in legend), legend


def test_one_driver_one_size_one_level(tmp_path: Path) -> None:
    doc = _doc(["tcp"], [100], [1], mb_per_s={100: 1.5}, rtt_ms={100: 0.15})
    assert [p.name for p in report.plot(doc, tmp_path)] == ["latency.png", "throughput.png"]
    for kind in ("latency", "throughput"):
        fig = report.figure(doc, kind)
        assert len(_panels(fig)) == 1
        _check_axes(fig, ["100 B"])
        assert "dashed" not in fig.get_suptitle() and "solid" not in fig.get_suptitle()
    legend = [t.get_text() for t in report.figure(doc, "throughput").axes[0].get_legend().get_texts()]
    assert sorted(legend) == ["client->server x1", "raw_echo", "raw_stream (one-way)", "site->site direct x1",
                              "site->site relayed x1"]


@pytest.mark.parametrize("values", [
    (244.0, 665.0, 4447.0),  # under two decades: was labelled "1000" only
    (0.6, 1.1, 5.0),  # just over a decade: was labelled "1" only
    (3.0, 40.0, 900.0),
    (0.001, 1.0, 1e4),  # seven decades: powers of ten, not every 1-2-5 step
])
def test_every_panel_has_three_plain_y_labels(tmp_path: Path, values: tuple[float, ...]) -> None:
    sizes = [100, 4096, 1 << 20]
    doc = _doc(["grpc", "http"], sizes, [1, 32], mb_per_s=dict(zip(sizes, values)),
               rtt_ms=dict(zip(sizes, values)))
    for kind in ("latency", "throughput"):
        fig = report.figure(doc, kind)
        assert [ax.get_title() for ax in _panels(fig)] == ["grpc", "http"]
        _check_axes(fig, ["100 B", "4 KiB", "1 MiB"])


def test_narrow_span_is_linear_from_zero() -> None:
    doc = _doc(["tcp"], [100, 1024], [1], mb_per_s={100: 5.0, 1024: 6.0}, rtt_ms={100: 0.2, 1024: 0.21})
    for ax in _panels(report.figure(doc, "latency")):
        assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
        assert len(_labels(ax.get_yticklabels())) >= 3


def test_three_levels_name_every_dashed_one() -> None:
    doc = _doc(["tcp"], [100, 65536], [1, 8, 32])
    assert "(solid: x1, dashed: x8, x32)" in report.figure(doc, "throughput").get_suptitle()


def test_log_ticks() -> None:
    assert report._log_ticks(200, 5000) == [300, 1000, 3000]
    assert report._log_ticks(0.4, 6) == [0.5, 1, 2, 5]
    assert report._log_ticks(0.5, 2000) == [1, 10, 100, 1000]
    assert report._log_ticks(1e-4, 1e9) == [1e-4, 1e-2, 1, 1e2, 1e4, 1e6, 1e8]


def test_sizes_in_units() -> None:
    assert [report._size_label(n) for n in (100, 1024, 4096, 64 << 20, 3 << 19)] == [
        "100 B", "1 KiB", "4 KiB", "64 MiB", "1.5 MiB"]


def test_no_results_no_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(["tcp", "grpc"], [100], [1])
    doc["summary"], doc["baselines"], doc["interrupted"] = [], [], True
    (tmp_path / "latency.png").write_bytes(b"an earlier run's")
    assert report.plot(doc, tmp_path) == []
    assert report.figure(doc, "latency") is None
    assert not list(tmp_path.iterdir())  # not even the earlier run's plot
    # the command line says what it wrote: results.md, and no plots
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert report.main([str(tmp_path / "results.json"), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 'out' / 'results.md'}" in out and "no plots" in out and ".png" not in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.md"]


def test_report_prints_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_doc(["tcp"], [100, 4096], [1])))
    assert report.main([str(tmp_path / "results.json")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / name}" for name in
                                                    ("results.md", "latency.png", "throughput.png")]


def test_a_driver_without_results_gets_no_panel() -> None:
    doc = _doc(["tcp", "grpc"], [100, 4096], [1])
    doc["summary"] = [s for s in doc["summary"] if s["driver"] == "tcp"]
    doc["baselines"] = [b for b in doc["baselines"] if b["driver"] == "tcp"]
    assert [ax.get_title() for ax in _panels(report.figure(doc, "latency"))] == ["tcp"]
