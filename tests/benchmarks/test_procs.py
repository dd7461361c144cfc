"""The benchmarks' child processes are all stopped, even when Ctrl-C lands
while they are being stopped."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from cellnet.benchmarks.procs import Procs

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_an_interrupt_while_stopping_one_still_stops_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    procs = Procs(tmp_path)
    started = [procs.start(f"p{i}", SLEEPER) for i in range(3)]
    stop = Procs.stop
    calls = []

    def interrupted_once(self: Procs, proc, grace: float = 5.0) -> None:  # type: ignore[no-untyped-def]
        calls.append(proc.pid)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C before the first one was even signalled
        stop(self, proc, grace)

    monkeypatch.setattr(Procs, "stop", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        procs.stop_all()
    assert [p.poll() is not None for p in started] == [True, True, True]
    assert procs.procs == []


def test_wait_stops_a_process_whose_wait_is_interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    procs = Procs(tmp_path)
    proc = procs.start("sleeper", SLEEPER)
    real_wait = type(proc).wait
    waits = []

    def wait(self, timeout=None):  # type: ignore[no-untyped-def]
        waits.append(timeout)
        if len(waits) == 1:
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(type(proc), "wait", wait)
    with pytest.raises(KeyboardInterrupt):
        procs.wait(proc, 30)
    assert proc.poll() is not None and procs.procs == []


def test_baselines_that_ended_are_kept_when_a_later_one_is_interrupted(tmp_path: Path) -> None:
    from cellnet.benchmarks.bench_config import BenchConfig
    from cellnet.benchmarks.sessions import run_baselines

    cfg = BenchConfig(sizes=[100], concurrency=[1], baseline_max_count=20)
    procs = Procs(tmp_path)
    steps: list[str] = []

    def advance(what: str) -> None:
        steps.append(what)
        if what == "tcp: raw raw_stream":  # Ctrl-C as the second baseline starts
            raise KeyboardInterrupt

    out: list[dict[str, object]] = []
    with pytest.raises(KeyboardInterrupt):
        run_baselines("tcp", cfg, procs, None, advance, out)
    assert steps == ["tcp: raw raw_echo", "tcp: raw raw_stream"]
    assert [(r["module"], r["size"], r["count"]) for r in out] == [("raw_echo", 100, 20)]
    assert float(out[0]["rtt_median_us"]) > 0  # type: ignore[arg-type]
