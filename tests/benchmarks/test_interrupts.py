"""An interrupted benchmark stops every process it started, says so, and
still writes what it measured: Ctrl-C during the raw baselines, two signals
at once during the cells (as when Ctrl-C reaches both ``timeout`` and the
harness), and SIGTERM during the large-message benchmark."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[bench]
drivers = ["tcp"]
topologies = ["client-server"]
sizes = ["{size}"]
concurrency = [1]
repetitions = 50
duration = 0.5
baseline_bytes = "1GiB"
baseline_min_count = {baseline_count}
baseline_max_count = {baseline_count}
compare = false
"""


def children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, with their command lines."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", *args, "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def until(proc: subprocess.Popen[str], wanted: Callable[[dict[int, str]], bool], timeout: float = 60) -> dict[int, str]:
    """Poll the children of ``proc`` until ``wanted`` holds for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        kids = children(proc.pid)
        if wanted(kids):
            return kids
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"children never matched: {children(proc.pid)}")


def finish(proc: subprocess.Popen[str], kids: dict[int, str]) -> str:
    """Wait for the harness to exit; every child it had is gone too. Its stderr."""
    _out, err = proc.communicate(timeout=60)
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {pid: cmd for pid, cmd in kids.items() if alive(pid)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"left running: {left}\n{err[-3000:]}"
    return err


def test_ctrl_c_during_a_baseline_stops_it(tmp_path: Path) -> None:
    config = tmp_path / "bench.toml"
    config.write_text(CONFIG.format(size="16MiB", baseline_count=2000))  # a raw echo of ~30 s
    proc = start(["cellnet.benchmarks", "--config", str(config), "--out", str(tmp_path / "out")])
    kids = until(proc, lambda k: any("_worker raw raw_echo" in cmd for cmd in k.values()))
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    err = finish(proc, kids)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: the processes it started are stopped" in err
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["interrupted"] is True


def test_two_signals_at_once_during_the_cells(tmp_path: Path) -> None:
    config = tmp_path / "bench.toml"
    config.write_text(CONFIG.format(size="100B", baseline_count=3))
    out = tmp_path / "out"
    proc = start(["cellnet.benchmarks", "--config", str(config), "--out", str(out)])
    # server and site-2 (cellnet run) and the measuring worker
    kids = until(proc, lambda k: sum("cellnet run" in c or "_worker cells" in c for c in k.values()) == 3)
    time.sleep(1.0)  # measuring
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    err = finish(proc, kids)
    assert proc.returncode == 130, err[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["interrupted"] is True
    assert doc["groups"] == [{"driver": "tcp", "error": "interrupted"}]
    assert (out / "results.md").read_text().count("interrupted") >= 1
    assert (out / "latency.png").stat().st_size > 0 and (out / "throughput.png").stat().st_size > 0


def test_sigterm_during_the_large_benchmark(tmp_path: Path) -> None:
    proc = start(["cellnet.benchmarks.large", "--drivers", "tcp", "--topologies", "relayed", "--sizes", "2GiB",
                  "--repetitions", "3", "--sinks", "discard", "--out", str(tmp_path / "out")])
    kids = until(proc, lambda k: sum("cellnet.benchmarks.large worker" in c or "cellnet run" in c
                                     for c in k.values()) >= 3)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    err = finish(proc, kids)
    assert proc.returncode == 143, err[-3000:]
    assert json.loads((tmp_path / "out" / "large.json").read_text())["interrupted"] is True
