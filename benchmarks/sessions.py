"""What runs one driver's measurements: the raw baselines, and our cells up
and linked (:class:`CellSession`), each measurement a line of JSON to the
measuring process and one back (:class:`LineReader`)."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._redis import private_redis
from ._worker import reset_peak, vm_hwm_kib
from .bench_config import EXPECTED_ROUTES, MIB, RAW_CONCURRENT, RAW_MODULES, BenchConfig, cell_configs
from .procs import BenchError, Procs, tail
from .report import fmt_size

class LineReader:
    """Lines of a child's stdout, read by a thread, taken with a timeout."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line.decode(errors="replace") if isinstance(line, bytes) else line)
        self.lines.put(None)

    def json(self, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(f"{what}: no answer within {timeout:g} s") from None
            if line is None:
                raise BenchError(f"{what}: the measuring process ended")
            if line.startswith("{"):
                return json.loads(line)


def baseline_counts(cfg: BenchConfig) -> list[int]:
    return [max(cfg.baseline_min_count, min(cfg.baseline_max_count, cfg.baseline_bytes // s)) for s in cfg.sizes]


def run_baselines(driver: str, cfg: BenchConfig, procs: Procs, redis_url: str | None,
                  advance: Callable[[str], None], out: list[dict[str, Any]]) -> None:
    """Each raw baseline of ``driver``, its records appended to ``out`` as each ends (an
    interrupt keeps those that ended)."""
    counts = baseline_counts(cfg)
    for module in RAW_MODULES[driver]:
        advance(f"{driver}: raw {module}")
        args = [sys.executable, "-m", "cellnet.benchmarks._worker", "raw", module,
                "--sizes", ",".join(map(str, cfg.sizes)), "--counts", ",".join(map(str, counts))]
        if redis_url and module == "raw_redis_echo":
            args += ["--url", redis_url]
        levels = cfg.concurrency if module in RAW_CONCURRENT else [1]
        if module in RAW_CONCURRENT:
            args += ["--concurrency", ",".join(map(str, levels)), "--max-inflight", str(cfg.max_inflight)]
        label = f"{driver}-{module}"
        proc = procs.start(label, args, signal.SIGINT)
        procs.wait(proc, cfg.timeout + 120)  # on a timeout, the missing sizes are reported
        lines = [json.loads(ln) for ln in (procs.folder / f"{label}.log").read_text(errors="replace").splitlines()
                 if ln.startswith("{")]
        by_key = {(r.get("size"), r.get("concurrency", 1)): r for r in lines}
        for level in levels:
            for size in cfg.sizes:
                r = by_key.get((size, level)) or {
                    "size": size, "concurrency": level,
                    "error": f"no result: {tail(procs.folder / f'{label}.log', 5)}"}
                out.append({"driver": driver, "module": module, **r})


class CellSession:
    """Our cells for one driver, up and linked: ``server`` and ``site-2`` as
    ``cellnet run`` processes, ``site-1`` and ``site-3`` in one measuring
    process (:mod:`cellnet.benchmarks._worker`). :meth:`measure` runs one
    measurement; :meth:`quit` lets the worker end (the caller's ``Procs``
    stops the rest)."""

    def __init__(self, driver: str, cfg: BenchConfig, folder: Path, procs: Procs,
                 redis: tuple[str, Any] | None, advance: Callable[[str], None]) -> None:
        self.driver, self.cfg, self.procs = driver, cfg, procs
        py = sys.executable
        redis_url, redis_proc = (redis[0], redis[1]) if redis else (None, None)
        for name, text in cell_configs(driver, cfg, redis_url).items():
            (folder / f"{name}.toml").write_text(text)
        self.pids: dict[str, int] = {}
        for name in ("server", "site-2"):
            self.pids[name] = procs.start(f"{driver}-{name}",
                                          [py, "-m", "cellnet", "run", "-c", str(folder / f"{name}.toml"), "-q"]).pid
        if redis_proc is not None:
            self.pids["redis"] = redis_proc.pid
        advance(f"{driver}: linking cells")
        wlog = open(folder / f"{driver}-client.log", "wb")
        self.worker = subprocess.Popen(
            [py, "-m", "cellnet.benchmarks._worker", "cells", str(folder / "site-1.toml"),
             str(folder / "site-3.toml"), "--seed", str(cfg.seed), "--ready-budget", str(cfg.ready_timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=wlog, start_new_session=True,
        )
        wlog.close()
        procs.procs.append((f"{driver}-client", self.worker, folder / f"{driver}-client.log"))
        self.pids["client"] = self.worker.pid
        self.reader = LineReader(self.worker.stdout)
        self.ready = self.reader.json(cfg.ready_timeout + 30, f"{driver}: linking")["ready"]

    def measure(self, topo: str, size: int, conc: int, rep: int) -> dict[str, Any]:
        """One echo measurement (``conc`` requests outstanding, capped by
        ``max_inflight``): its record, with the peak RSS of every process."""
        cfg, procs, worker = self.cfg, self.procs, self.worker
        assert worker.stdin is not None
        eff = min(conc, max(1, cfg.max_inflight // size))
        procs.check_alive()
        reset = all([reset_peak(pid) for pid in self.pids.values()])  # noqa: C419 (reset every one)
        task = {"topology": topo, "size": size, "concurrency": eff,
                "duration": cfg.duration, "min_count": max(cfg.min_count, eff),
                "max_count": cfg.max_count, "timeout": cfg.timeout,
                "warmup": cfg.warmup if size <= MIB else 0}
        worker.stdin.write((json.dumps(task) + "\n").encode())
        worker.stdin.flush()
        res = self.reader.json(cfg.timeout * 2 + 60, f"{self.driver} {topo} {size}")
        rss = {name: vm_hwm_kib(pid) for name, pid in self.pids.items() if name != "client"}
        rss["client"] = res.pop("client_peak_rss_kib", None)
        return {
            "driver": self.driver, "topology": topo, "size": size, "concurrency": conc,
            "effective_concurrency": eff, "repetition": rep,
            "route_ok": res.get("route") == EXPECTED_ROUTES[topo],
            "peak_rss_kib": rss, "peak_rss_reset": reset, **res,
        }

    def quit(self) -> None:
        self.procs.quit_worker(self.worker)


def run_driver(driver: str, cfg: BenchConfig, folder: Path, advance: Callable[[str], None],
               baselines: list[dict[str, Any]], measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure one driver; results are appended to the two lists; returns the group's record."""
    group: dict[str, Any] = {"driver": driver}
    procs = Procs(folder)
    redis_cm = private_redis() if driver == "redis" else contextlib.nullcontext(None)
    try:
        with redis_cm as redis, procs.guard(group):  # our cells stop before the redis-server they use
            if cfg.baselines:
                run_baselines(driver, cfg, procs, redis[0] if redis else None, advance, baselines)
            session = CellSession(driver, cfg, folder, procs, redis, advance)
            group.update(pids=dict(session.pids), ready_s=session.ready["ready_s"],
                         routes=session.ready["routes"])
            for rep in range(cfg.repetitions):
                for topo in cfg.topologies:
                    for size in cfg.sizes:
                        for conc in cfg.concurrency:
                            advance(f"{driver} {topo} {fmt_size(size)} x{conc} rep {rep + 1}")
                            measurements.append(session.measure(topo, size, conc, rep))
            session.quit()
    except Exception as exc:  # the private redis-server
        procs.record_failure(group, exc)
    return group


