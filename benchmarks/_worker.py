"""The measuring processes of the benchmark harness (:mod:`cellnet.benchmarks.harness`).

Not meant to be run by hand. Two modes, each printing one JSON object per line
on stdout (logs go to stderr):

``python -m cellnet.benchmarks._worker cells SITE-1.toml SITE-3.toml --seed N``
    Joins the bus as two client cells built from the configs: ``site-1``
    (no direct policy; used for ``client-server`` and ``relayed``) and
    ``site-3`` (``[policy] direct`` and a ``listen`` URL; used for
    ``direct``). It waits until ``server`` and ``site-2`` answer echo
    requests and until the route ``site-3 -> site-2`` has become direct,
    prints ``{"ready": ...}`` and then reads one task per line on stdin
    (``{"topology", "size", "concurrency", "duration", "min_count",
    "max_count", "warmup", "timeout"}``), answers each with one result line,
    and stops at ``quit`` or the end of stdin. The harness reads the peak RSS
    of every process between two tasks, so a task starts only when asked.

``python -m cellnet.benchmarks._worker raw MODULE --sizes 100,1024 --counts 2000,500 [--url URL]
[--concurrency 1,32 --max-inflight BYTES]``
    Runs ``cellnet.benchmarks.MODULE.measure(size, count)`` (a raw
    baseline) for each size in one process and prints one line per size.
    With ``--concurrency`` (modules whose ``measure`` takes ``concurrency``:
    ``raw_echo``) it prints one line per size and level, each level capped
    like the bus's (``min(level, max(1, max_inflight // size))``, recorded as
    ``effective_concurrency``), so the raw figures at 32 outstanding
    requests sit next to the bus's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ._stats import percentile

#: topology -> (the client cell that measures, the echo target, the expected route)
TOPOLOGY_PATHS = {
    "client-server": ("site-1", "server", ["site-1", "server"]),
    "relayed": ("site-1", "site-2", ["site-1", "server", "site-2"]),
    "direct": ("site-3", "site-2", ["site-3", "site-2"]),
}


#: ``Random.randbytes`` takes at most 2**31 - 1 bits at once (256 MiB - 1 byte)
_RANDBYTES_MAX = 64 << 20


def payload_for(seed: int, size: int) -> bytes | bytearray:
    """The seeded payload of ``size`` bytes (the same in every run with that
    seed). Up to 64 MiB one call; larger ones are filled in place 64 MiB at a
    time, so the process holds the payload once."""
    rng = random.Random(f"{seed}:{size}")
    if size <= _RANDBYTES_MAX:
        return rng.randbytes(size)
    out = bytearray(size)
    for start in range(0, size, _RANDBYTES_MAX):
        end = min(size, start + _RANDBYTES_MAX)
        out[start:end] = rng.randbytes(end - start)
    return out


def vm_hwm_kib(pid: int | str = "self") -> int | None:
    """Peak resident set size (``VmHWM``) of a process in KiB, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- cells mode -----------------------------------------------------------------


async def _echo(cell: Any, target: str, payload: bytes, timeout: float) -> Any:
    from cellnet.cell import ECHO_TOPIC, SYSTEM_CHANNEL

    return await cell.request(target, SYSTEM_CHANNEL, ECHO_TOPIC, payload, timeout=timeout)


def _route(reply: Any) -> list[str]:
    return [str(x) for x in reply.meta.get("route", [])]


async def _until_ready(cells: dict[str, Any], budget: float) -> dict[str, Any]:
    """Wait until every path answers and the direct route is direct; return the routes seen."""
    from cellnet.errors import CellnetError

    t0 = time.monotonic()
    deadline = t0 + budget
    routes: dict[str, list[str]] = {}
    last_error = ""
    while time.monotonic() < deadline:
        try:
            for topo, (src, target, expected) in TOPOLOGY_PATHS.items():
                if src not in cells:
                    continue
                reply = await _echo(cells[src], target, b"ready?", 2.0)
                routes[topo] = _route(reply)
            direct_ok = "site-3" not in cells or routes.get("direct") == TOPOLOGY_PATHS["direct"][2]
            if direct_ok:
                return {"ready_s": time.monotonic() - t0, "routes": routes}
            last_error = f"route site-3 -> site-2 is still {routes.get('direct')}"
        except CellnetError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.05)
    raise SystemExit(f"cells not ready within {budget:g} s: {last_error}")


async def _measure(cell: Any, target: str, payload: bytes, task: dict[str, Any]) -> dict[str, Any]:
    size = len(payload)
    conc = int(task["concurrency"])
    timeout = float(task["timeout"])
    min_count, max_count = int(task["min_count"]), int(task["max_count"])
    # Warm-up, then one verified echo that records the route.
    for _ in range(int(task["warmup"])):
        await _echo(cell, target, payload, timeout)
    first = await _echo(cell, target, payload, timeout)
    if bytes(first.payload) != payload:
        raise RuntimeError(f"{target} echoed different bytes ({len(first.payload)} of {size})")
    route = _route(first)

    rtts: list[float] = []
    issued = 0
    stop_at = 0.0

    async def one_stream() -> None:
        nonlocal issued
        while issued < max_count and (issued < min_count or time.perf_counter() < stop_at):
            issued += 1
            t = time.perf_counter()
            reply = await _echo(cell, target, payload, timeout)
            rtts.append(time.perf_counter() - t)
            if len(reply.payload) != size:
                raise RuntimeError(f"{target} echoed {len(reply.payload)} bytes, sent {size}")

    t0 = time.perf_counter()
    stop_at = t0 + float(task["duration"])
    await asyncio.gather(*(one_stream() for _ in range(conc)))
    elapsed = time.perf_counter() - t0
    rtts.sort()
    msgs = len(rtts) / elapsed
    return {
        "route": route,
        "count": len(rtts),
        "elapsed_s": elapsed,
        "rtt_min_us": rtts[0] * 1e6,
        "rtt_median_us": statistics.median(rtts) * 1e6,
        "rtt_mean_us": statistics.fmean(rtts) * 1e6,
        "rtt_p99_us": percentile(rtts, 99) * 1e6,
        "rtt_max_us": rtts[-1] * 1e6,
        "msgs_per_s": msgs,
        # payload bytes counted once each way, as ``cellnet ping`` counts them
        "mb_per_s": 2 * size * msgs / 1e6,
    }


async def run_cells(config_paths: list[Path], seed: int, ready_budget: float) -> None:
    from cellnet import Cell
    from cellnet.config import load_config

    cells: dict[str, Any] = {}
    try:
        for path in config_paths:
            cfg = load_config(path)
            cell = Cell.from_config(cfg)
            await cell.start()
            cells[cell.name] = cell
        emit({"ready": await _until_ready(cells, ready_budget)})
        loop = asyncio.get_running_loop()
        payloads: dict[int, bytes] = {}
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                break
            task = json.loads(line)
            src, target, _expected = TOPOLOGY_PATHS[task["topology"]]
            size = int(task["size"])
            if size not in payloads:
                payloads.clear()  # keep one payload: 64 MiB each
                payloads[size] = payload_for(seed, size)
            try:
                result = await _measure(cells[src], target, payloads[size], task)
            except Exception as exc:  # reported; the harness goes on
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["client_peak_rss_kib"] = vm_hwm_kib()
            emit(result)
    finally:
        for cell in cells.values():
            await cell.aclose()


# -- raw mode --------------------------------------------------------------------


def concurrent_count(count: int, concurrency: int) -> int:
    """Round trips of a raw run at ``concurrency``: at least 8 rounds of the outstanding requests."""
    return count if concurrency <= 1 else max(count, 8 * concurrency)


def run_raw(module: str, sizes: list[int], counts: list[int], url: str | None,
            levels: list[int] | None = None, max_inflight: int | None = None) -> None:
    mod = importlib.import_module(f"cellnet.benchmarks.{module}")
    for level in levels or [1]:
        for size, count in zip(sizes, counts):
            eff = min(level, max(1, max_inflight // size)) if max_inflight else level
            kwargs: dict[str, Any] = {"url": url} if url else {}
            if levels:
                kwargs["concurrency"] = eff
            n = concurrent_count(count, eff)
            try:
                result = dict(mod.measure(size, n, warmup=min(50, max(1, count // 10)), **kwargs))
            except Exception as exc:
                result = {"size": size, "error": f"{type(exc).__name__}: {exc}"}
            result.update(module=module, concurrency=level, effective_concurrency=eff)
            emit(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measuring process of the benchmark harness")
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("cells")
    c.add_argument("configs", nargs="+", type=Path)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--ready-budget", type=float, default=60.0)
    r = sub.add_parser("raw")
    r.add_argument("module")
    r.add_argument("--sizes", required=True)
    r.add_argument("--counts", required=True)
    r.add_argument("--url", default=None)
    r.add_argument("--concurrency", default=None, help="levels of outstanding requests, e.g. 1,32")
    r.add_argument("--max-inflight", type=int, default=None, help="cap on outstanding payload bytes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.mode == "cells":
        asyncio.run(run_cells(args.configs, args.seed, args.ready_budget))
    else:
        levels = [int(c) for c in args.concurrency.split(",")] if args.concurrency else None
        run_raw(args.module, [int(s) for s in args.sizes.split(",")],
                [int(s) for s in args.counts.split(",")], args.url, levels, args.max_inflight)
    return 0


if __name__ == "__main__":
    sys.exit(main())
