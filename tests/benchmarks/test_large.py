"""The large-message benchmark in its quick mode: tcp only, 64 MiB, one repetition.

It runs ``python -m cellnet.benchmarks.large --quick`` once (real worker
processes streaming 64 MiB, with both sinks: counted and discarded, and saved
into files) and checks what it writes: well-formed JSON and Markdown, a row
per sink, positive figures, exact byte counts, RSS figures for every role,
the raw TCP baseline, and no received file left behind. It asserts
behaviour, never speed. ``cellnet bench --large`` is checked to reach the
same code with the ``[large]`` table of a config file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cellnet.benchmarks.procs import BenchError
from cellnet.benchmarks.large import GIB, MIB, SINKS, LargeConfig, load_large_config

pytestmark = pytest.mark.timeout(90)

SIZE = 64 * MIB
TOPOLOGIES = ("client-server", "relayed")


def _run(args: list[str], timeout: float = 80) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    folder = tmp_path_factory.mktemp("large")
    out, files = folder / "out", folder / "files"
    files.mkdir()
    proc = _run(["-m", "cellnet.benchmarks.large", "--quick", "--drivers", "tcp", "--out", str(out),
                 "--tmp", str(files), "--no-progress"])
    return proc, out, files


@pytest.fixture(scope="module")
def doc(quick: tuple[subprocess.CompletedProcess[str], Path, Path]) -> dict[str, Any]:
    proc, out, _files = quick
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    return json.loads((out / "large.json").read_text())


def test_json_is_well_formed(doc: dict[str, Any]) -> None:
    cfg = doc["config"]
    assert cfg["drivers"] == ["tcp"] and cfg["sizes"] == [SIZE] and cfg["repetitions"] == 1
    assert cfg["sinks"] == ["discard", "file"]
    assert doc["quick"] is True and doc["interrupted"] is False
    machine = doc["machine"]
    assert machine["python"] and machine["platform"] and machine["cpu_count"] >= 1
    assert "cellnet" in machine["packages"]
    assert doc["files"]["folder"] and "filesystem" in doc["files"]
    assert [g["driver"] for g in doc["groups"]] == ["tcp"] and "error" not in doc["groups"][0]
    cells = sorted((m["topology"], m["sink"], m["size"], m["repetition"]) for m in doc["measurements"])
    assert cells == [(t, s, SIZE, 0) for t in TOPOLOGIES for s in ("discard", "file")]
    rows = sorted((r["topology"], r["sink"]) for r in doc["summary"]["rows"])
    assert rows == [(t, s) for t in TOPOLOGIES for s in ("discard", "file")]
    assert not any("error" in m for m in doc["measurements"])


def test_byte_counts_are_exact(doc: dict[str, Any]) -> None:
    for m in doc["measurements"]:
        assert m["bytes"] == SIZE and m["bytes_ok"] is True
        assert m["chunked"] is True  # 64 MiB never travels as one frame
        if m["sink"] == "file":
            assert m["file_bytes"] == SIZE and m["file"]
        else:  # counted and dropped: no file
            assert m["file_bytes"] is None and "file" not in m


def test_figures_are_positive_and_agree(doc: dict[str, Any]) -> None:
    for m in doc["measurements"]:
        assert m["elapsed_s"] > 0
        assert m["mb_per_s"] == pytest.approx(SIZE / m["elapsed_s"] / 1e6)
        if m["sink"] == "file":
            assert 0 < m["save_s"] <= m["elapsed_s"]
        else:
            assert "save_s" not in m
    (raw,) = doc["baselines"]
    assert raw["size"] == SIZE and raw["bytes"] == SIZE and raw["mb_per_s"] > 0 and raw["seconds"] > 0
    assert doc["summary"]["raw"][str(SIZE)]["median"] == raw["mb_per_s"]
    for row in doc["summary"]["rows"]:
        assert row["repetitions"] == 1 and not row["errors"] and row["bytes_ok"] and row["route_ok"]
        assert row["mb_per_s"]["min"] == row["mb_per_s"]["median"] == row["mb_per_s"]["max"] > 0
        assert row["vs_raw"] == pytest.approx(row["mb_per_s"]["median"] / raw["mb_per_s"]) and row["vs_raw"] > 0
        if row["sink"] == "file":
            assert row["save_s"]["median"] > 0
        else:
            assert row["save_s"] is None


def test_rss_fields_are_present(doc: dict[str, Any]) -> None:
    for m in doc["measurements"]:
        roles = {"sender", "receiver"} | ({"relay"} if m["topology"] == "relayed" else set())
        assert set(m["rss"]) == roles
        assert m["rss"]["sender"]["cell"] == "site-1"
        assert m["rss"]["receiver"]["cell"] == ("site-2" if m["topology"] == "relayed" else "server")
        for figures in m["rss"].values():
            assert figures["baseline_kib"] > 0 and figures["peak_kib"] > 0
            assert figures["growth_kib"] == figures["peak_kib"] - figures["baseline_kib"]
    for row in doc["summary"]["rows"]:
        for role in row["rss_kib"].values():
            assert set(role) == {"baseline_kib", "peak_kib", "growth_kib"}


def test_markdown_and_no_files_left(quick: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    proc, out, files = quick
    text = (out / "large.md").read_text()
    assert "| driver | path | sink | size | reps | MB/s | x raw |" in text
    for path in ("client->server", "site->server->site relayed"):
        for sink in SINKS:
            (line,) = [ln for ln in text.splitlines() if ln.startswith(f"| tcp | {path} | {sink} | 64 MiB | 1 |")]
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert len(cells) == 11
            assert float(cells[5]) > 0 and float(cells[6]) > 0  # MB/s, x raw
            assert (cells[10] == "-") == (sink == "discard")  # save s
    assert "Raw TCP baseline" in text and "(!)" not in text
    assert text in proc.stdout  # the table is printed too
    assert list(files.iterdir()) == []  # every received file, and the run's folder, removed


def test_bench_large_uses_the_large_table(tmp_path: Path) -> None:
    config = tmp_path / "bench.toml"
    config.write_text('[bench]\ndrivers = ["tcp"]\n\n[large]\ndrivers = ["tcp"]\ntopologies = ["client-server"]\n'
                      'sinks = ["file"]\nsizes = ["8MiB"]\nrepetitions = 1\nbaselines = false\n')
    out = tmp_path / "out"
    proc = _run(["-m", "cellnet.benchmarks", "--large", "--config", str(config), "--out", str(out),
                 "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "large.json").read_text())
    assert [(m["topology"], m["sink"], m["size"], m["bytes_ok"]) for m in doc["measurements"]] == [
        ("client-server", "file", 8 * MIB, True)]
    assert doc["baselines"] == [] and not (out / "results.json").exists()


def test_config(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "benchmarks" / "bench.toml"
    assert load_large_config(example, quick=False) == LargeConfig()
    assert load_large_config(None, quick=False).reps(2 * GIB) == 1
    quick = load_large_config(example, quick=True)
    assert quick.sizes == [SIZE] and quick.reps(SIZE) == 1
    assert load_large_config(None, quick=True) == quick
    assert LargeConfig().sinks == quick.sinks == ["discard", "file"]
    only = tmp_path / "only.toml"
    only.write_text('[large]\nsinks = ["file", "file"]\n')
    assert load_large_config(only, quick=False).sinks == ["file"]
    bad = tmp_path / "bad.toml"
    for text in ('[large]\ndrivers = ["redis"]\n', '[large]\nsizes = ["lots"]\n', "[large]\nspeed = 1\n",
                 "[large]\nrepetitions = 0\n", '[large]\nsinks = ["disk"]\n', "[large]\nsinks = []\n"):
        bad.write_text(text)
        with pytest.raises(BenchError):
            load_large_config(bad, quick=False)


def test_sinks_option_on_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _run(["-m", "cellnet.benchmarks.large", "--drivers", "tcp", "--topologies", "client-server",
                 "--sinks", "discard", "--sizes", "8MiB", "--repetitions", "1", "--out", str(out),
                 "--tmp", str(tmp_path), "--no-progress"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "large.json").read_text())
    assert doc["config"]["sinks"] == ["discard"]
    assert [(m["sink"], m["bytes"], m["bytes_ok"]) for m in doc["measurements"]] == [("discard", 8 * MIB, True)]
    (row,) = doc["summary"]["rows"]
    assert row["sink"] == "discard" and row["save_s"] is None and row["vs_raw"] > 0
    assert "| tcp | client->server | discard | 8 MiB | 1 |" in (out / "large.md").read_text()
