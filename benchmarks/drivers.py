"""Driver benchmark: every transport through real cell processes, beside its raw library.

``python -m cellnet.benchmarks.drivers [--drivers tcp,grpc,http,redis] [--quick] [--json FILE]``

For each driver it writes TOML configs to a temporary folder and starts, as
separate OS processes with ``cellnet run -c CONFIG``, a server cell listening
on a free loopback port (for ``redis``: a private ``redis-server`` on a free
port, persistence off, and a listen URL serving the server's inbox) and two
site cells, ``site-1`` and ``site-2``, that dial it. This process then joins
through the same parent URL as its own cell, ``bench-client``, waits (a retry
loop of echo requests, no fixed sleep) until ``server`` and ``site-2`` answer,
and measures with the library API (``Cell.request`` to the echo handler every
cell has):

* ``client->server``: ``bench-client -> server`` (one link);
* ``site->site``: ``bench-client -> server -> site-2``, relayed by the server
  cell, as between two sites.

Per driver and topology: 100 B RTT median and p99, 1 KiB requests per second
sequentially and with 32 requests outstanding, and 1 MiB and 16 MiB MB/s
(payload bytes counted once each way, as ``cellnet ping`` counts them:
``2 * size * count / time``). Each driver's library is measured raw in the
same run, before its cells start (tcp: :mod:`raw_echo`, grpc:
:mod:`raw_grpc_echo`, http: :mod:`raw_websocket_echo`, redis:
:mod:`raw_redis_echo` on the same private Redis), for 100 B RTT and 1 MiB
MB/s, and the table gives the 100 B median RTT of both topologies over the
raw one. As a cross-check, ``cellnet ping site-2 -c site-1.toml --json`` (which
joins as ``site-1-cli-<pid>`` since site-1 is live) is run once per driver.

Every process it starts is stopped by its PID at the end, also after a
failure or Ctrl-C. A driver that fails is reported and the others still run.
It prints a Markdown table at the end; ``--json FILE`` writes every figure
with the machine's details. ``--quick`` uses small counts (a smoke test).
Note the processes share the machine's cores: the relayed topology keeps
three busy processes (client, server, site-2), the raw baselines two (three
with Redis).

The full matrix (payload sizes up to 64 MiB, concurrency, direct links
between sites, peak RSS, repetitions, plots) is ``cellnet bench``
(:mod:`cellnet.benchmarks.harness`), which reuses this module's process and
Redis helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from ._redis import private_redis, redis_binary
from .procs import BenchError, Interrupts, Procs, free_port, run_json, tail
from ._stats import percentile

DRIVERS = ("tcp", "grpc", "http", "redis")
RAW_MODULE = {
    "tcp": "raw_echo",
    "grpc": "raw_grpc_echo",
    "http": "raw_websocket_echo",
    "redis": "raw_redis_echo",
}
TOPOLOGIES = (("client->server", "server"), ("site->site", "site-2"))
KIB, MIB = 1024, 1024 * 1024
CONCURRENCY = 32
CLIENT_NAME = "bench-client"


@dataclass(frozen=True)
class Counts:
    rtt_warmup: int
    rtt: int
    kib_seq: int
    kib_conc: int
    mib: int
    mib16: int
    raw_rtt: int
    raw_mib: int
    ping: int


FULL = Counts(rtt_warmup=200, rtt=2000, kib_seq=2000, kib_conc=4000, mib=50, mib16=8,
              raw_rtt=2000, raw_mib=50, ping=1000)
QUICK = Counts(rtt_warmup=20, rtt=200, kib_seq=200, kib_conc=320, mib=5, mib16=2,
               raw_rtt=200, raw_mib=5, ping=100)


# -- configs --------------------------------------------------------------------


def toml_config(name: str, *, listen: str | None = None, parent: str | None = None) -> str:
    lines = ["[cell]", f'name = "{name}"']
    if listen:
        lines.append(f'listen = ["{listen}"]')
    if parent:
        lines.append(f'parent = "{parent}"')
    # A 16 MiB echo relayed over a slow driver must not hit the request budget.
    lines += ["", "[timeouts]", "request = 120.0", ""]
    return "\n".join(lines)


def urls(driver: str, redis_url: str | None) -> tuple[str, str]:
    """The server's listen URL and the URL clients dial."""
    if driver == "redis":
        assert redis_url is not None
        url = f"{redis_url}?ns=bench-{os.getpid()}&cell=server"
        return url, url
    port = free_port()
    if driver == "tcp":
        url = f"tcp://127.0.0.1:{port}"
    elif driver == "grpc":
        url = f"grpc://127.0.0.1:{port}"
    elif driver == "http":
        url = f"http://127.0.0.1:{port}/cellnet"
    else:
        raise BenchError(f"unknown driver {driver}")
    return url, url


# -- in-process measurements ----------------------------------------------------------


async def _echo(cell: Any, target: str, payload: bytes, timeout: float) -> Any:
    from cellnet.cell import ECHO_TOPIC, SYSTEM_CHANNEL

    return await cell.request(target, SYSTEM_CHANNEL, ECHO_TOPIC, payload, timeout=timeout)


async def _rtts(cell: Any, target: str, size: int, count: int, warmup: int, timeout: float) -> list[float]:
    payload = os.urandom(size)
    for _ in range(warmup):
        await _echo(cell, target, payload, timeout)
    rtts = []
    for _ in range(count):
        t0 = time.perf_counter()
        reply = await _echo(cell, target, payload, timeout)
        rtts.append(time.perf_counter() - t0)
        if len(reply.payload) != size:
            raise BenchError(f"{target} echoed {len(reply.payload)} bytes, sent {size}")
    if bytes(reply.payload) != payload:
        raise BenchError(f"{target} echoed different bytes")
    return rtts


async def _concurrent_rate(cell: Any, target: str, size: int, total: int, conc: int, timeout: float) -> float:
    payload = os.urandom(size)
    per = max(1, total // conc)

    async def worker() -> None:
        for _ in range(per):
            reply = await _echo(cell, target, payload, timeout)
            if len(reply.payload) != size:
                raise BenchError(f"{target} echoed {len(reply.payload)} bytes, sent {size}")

    await asyncio.gather(*(worker() for _ in range(min(conc, 4))))  # warm-up
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return per * conc / (time.perf_counter() - t0)


async def _wait_ready(cell: Any, targets: list[str], procs: Procs, budget: float) -> float:
    """Retry echo requests until every target answers; return the seconds it took."""
    from cellnet.errors import CellnetError

    t0 = time.monotonic()
    deadline = t0 + budget
    while True:
        procs.check_alive()
        try:
            await cell.wait_parent(min(1.0, max(0.01, deadline - time.monotonic())))
            for target in targets:
                await _echo(cell, target, b"ready?", 1.0)
            return time.monotonic() - t0
        except CellnetError as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"cells not linked within {budget:g} s: {type(exc).__name__}: {exc}") from None
            await asyncio.sleep(0.05)


async def measure_cells(parent_url: str, procs: Procs, counts: Counts, out: dict[str, Any]) -> None:
    """Measure both topologies; figures go into ``out`` as they come."""
    from cellnet import Cell
    from cellnet.config import Timeouts

    cell = Cell(CLIENT_NAME, parent=parent_url, timeouts=Timeouts(request=120.0, backoff_max=0.5))
    try:
        await cell.start()
        out["ready_s"] = await _wait_ready(cell, ["server", "site-1", "site-2"], procs, 60.0)
        for topo, target in TOPOLOGIES:
            r: dict[str, Any] = {"target": target}
            out[topo] = r
            first = await _echo(cell, target, b"route", 10)
            r["route"] = [str(x) for x in first.meta.get("route", [])] or list(first.hops)
            rtts = sorted(await _rtts(cell, target, 100, counts.rtt, counts.rtt_warmup, 10))
            r["rtt100_median_us"] = statistics.median(rtts) * 1e6
            r["rtt100_p99_us"] = percentile(rtts, 99) * 1e6
            r["rtt100_min_us"] = rtts[0] * 1e6
            r["rtt100_vs_raw"] = (
                r["rtt100_median_us"] / out["raw"]["rtt100_median_us"] if "raw" in out else None
            )
            seq = await _rtts(cell, target, KIB, counts.kib_seq, counts.rtt_warmup // 4, 10)
            r["kib_seq_msgs_per_s"] = len(seq) / sum(seq)
            r["kib_conc_msgs_per_s"] = await _concurrent_rate(cell, target, KIB, counts.kib_conc, CONCURRENCY, 30)
            r["concurrency"] = CONCURRENCY
            for key, size, n in (("mib1", MIB, counts.mib), ("mib16", 16 * MIB, counts.mib16)):
                t = await _rtts(cell, target, size, n, 1, 120)
                r[f"{key}_mb_per_s"] = 2 * size * n / sum(t) / 1e6
                r[f"{key}_rtt_median_ms"] = statistics.median(t) * 1e3
                r[f"{key}_count"] = n
            procs.check_alive()
    finally:
        await cell.aclose()


class _ListHandler(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{time.strftime('%H:%M:%S')} {record.levelname} {record.name}: {record.getMessage()}")


# -- one driver ------------------------------------------------------------------------


def bench_driver(driver: str, folder: Path, counts: Counts, log: Any, result: dict[str, Any]) -> None:
    """Measure one driver into ``result``; an error is recorded there, Ctrl-C propagates."""
    result.update(driver=driver, loadavg_before=_loadavg())
    procs = Procs(folder)
    py = sys.executable
    redis_cm = private_redis() if driver == "redis" else contextlib.nullcontext(None)
    try:
        with redis_cm as redis:
            redis_url = redis[0] if redis else None
            # 1. the raw library baseline, alone on the machine (plus Redis).
            raw_args = [py, "-m", f"cellnet.benchmarks.{RAW_MODULE[driver]}"]
            if redis_url:
                raw_args += ["--url", redis_url]
            raw: dict[str, Any] = {"module": RAW_MODULE[driver]}
            log(f"[{driver}] raw {RAW_MODULE[driver]} ...")
            # SIGINT lets the raw script's finally kill its own echo child.
            r100 = run_json(procs, f"{driver}-raw-100", raw_args + ["--size", "100", "--count", str(counts.raw_rtt)],
                            120, signal.SIGINT)
            r1m = run_json(procs, f"{driver}-raw-1mib", raw_args + ["--size", str(MIB), "--count", str(counts.raw_mib)],
                           120, signal.SIGINT)
            raw.update(rtt100_median_us=r100["rtt_median_us"], rtt100_p99_us=r100["rtt_p99_us"],
                       rtt100_min_us=r100["rtt_min_us"], mib1_mb_per_s=r1m["mb_per_s"])
            result["raw"] = raw

            # 2. the cells.
            listen, parent = urls(driver, redis_url)
            configs = {
                "server": toml_config("server", listen=listen),
                "site-1": toml_config("site-1", parent=parent),
                "site-2": toml_config("site-2", parent=parent),
            }
            for name, text in configs.items():
                (folder / f"{name}.toml").write_text(text)
            for name in configs:
                procs.start(f"{driver}-{name}", [py, "-m", "cellnet", "run", "-c", str(folder / f"{name}.toml"), "-q"])
            result["listen"] = listen
            log(f"[{driver}] cells started; measuring ...")
            t0 = time.monotonic()
            # The client cell's own warnings go into the results, not to the terminal.
            records: list[str] = []
            handler = _ListHandler(records)
            logging.getLogger("cellnet").addHandler(handler)
            try:
                asyncio.run(measure_cells(parent, procs, counts, result))
            finally:
                logging.getLogger("cellnet").removeHandler(handler)
                if records:
                    result["client_log"] = records
            result["cells_s"] = time.monotonic() - t0

            # 3. cross-check with the CLI, from site-1's config.
            log(f"[{driver}] cellnet ping cross-check ...")
            try:
                result["ping_cli"] = run_json(
                    procs, f"{driver}-ping",
                    [py, "-m", "cellnet", "ping", "site-2", "-c", str(folder / "site-1.toml"),
                     "--count", str(counts.ping), "--size", "100", "--warmup", "50", "--json"],
                    120,
                )
            except BenchError as exc:
                result["ping_cli_error"] = str(exc)
            procs.check_alive()
            for label, _p, lg in procs.procs:
                # Warnings and errors of the cells, less the expected one: the
                # CLI first tried the name site-1, which is taken.
                lines = [ln for ln in tail(lg, 200).splitlines()
                         if any(w in ln for w in ("Traceback", "ERROR", "WARNING", "Error"))
                         and "'site-1' is already linked" not in ln]
                if lines:
                    result.setdefault("log_notes", {})[label] = lines[-20:]
    except Exception as exc:  # reported; the other drivers still run
        result["error"] = f"{type(exc).__name__}: {exc}"
        for label, _p, lg in procs.procs:
            result.setdefault("logs", {})[label] = tail(lg, 30)
    finally:
        result["loadavg_after"] = _loadavg()
        notes = procs.stop_all()
        if notes:
            result["stop_notes"] = notes


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# -- reporting --------------------------------------------------------------------------


def _f(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(results: list[dict[str, Any]], quick: bool) -> str:
    head = ("| driver | path | 100 B RTT median (ms) | 100 B RTT p99 (ms) | 1 KiB msg/s seq | "
            f"1 KiB msg/s x{CONCURRENCY} | 1 MiB MB/s | 16 MiB MB/s | 100 B RTT / raw |")
    rows = [head, "|" + "---|" * 9]
    for res in results:
        d = res["driver"]
        raw = res.get("raw")
        if raw:
            rows.append(f"| {d} | raw {raw['module']} | {raw['rtt100_median_us'] / 1e3:.3f} | "
                        f"{raw['rtt100_p99_us'] / 1e3:.3f} | - | - | {raw['mib1_mb_per_s']:.0f} | - | 1.00 |")
        for topo, _t in TOPOLOGIES:
            r = res.get(topo)
            if not r or "rtt100_median_us" not in r:
                continue
            ms = lambda k: _f(r.get(k) / 1e3 if r.get(k) is not None else None, ".3f")  # noqa: E731
            rows.append(
                f"| {d} | {topo} | {ms('rtt100_median_us')} | {ms('rtt100_p99_us')} | "
                f"{_f(r.get('kib_seq_msgs_per_s'), '.0f')} | {_f(r.get('kib_conc_msgs_per_s'), '.0f')} | "
                f"{_f(r.get('mib1_mb_per_s'), '.0f')} | {_f(r.get('mib16_mb_per_s'), '.0f')} | "
                f"{_f(r.get('rtt100_vs_raw'), '.2f')} |"
            )
        if "error" in res:
            error = res["error"].splitlines()[0][:160].replace("|", "/")
            rows.append(f"| {d} | FAILED | {error} | | | | | | |")
    text = "\n".join(rows)
    pings = [(r["driver"], r["ping_cli"]) for r in results if "ping_cli" in r]
    if pings:
        text += ("\n\n`cellnet ping site-2 -c site-1.toml --size 100` cross-check "
                 "(joins as site-1-cli-PID):\n\n| driver | route | count | RTT median (ms) | p99 (ms) |\n|---|---|---|---|---|\n")
        text += "\n".join(
            f"| {d} | {' -> '.join(p.get('route', []))} | {p['count']} | {p['rtt_median_us'] / 1e3:.3f} | "
            f"{p['rtt_p99_us'] / 1e3:.3f} |" for d, p in pings
        )
    loads = [f"{r['driver']} {r['loadavg_before'][0]:.1f}->{r['loadavg_after'][0]:.1f}"
             for r in results if r.get("loadavg_before") and r.get("loadavg_after")]
    if loads:
        text += f"\n\n1-min load average before->after each driver ({os.cpu_count()} CPUs): {', '.join(loads)}"
    if quick:
        text += "\n\n(--quick: small counts, figures are rough)"
    return text


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(AttributeError, OSError):
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    versions = {}
    for pkg in ("cellnet", "grpcio", "aiohttp", "redis", "msgpack"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    info["packages"] = versions
    with contextlib.suppress(Exception):

        out = subprocess.run([str(redis_binary()), "--version"], capture_output=True, text=True, timeout=5)
        info["redis_server"] = out.stdout.strip()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--drivers", default=",".join(DRIVERS),
                        help=f"comma-separated, from {','.join(DRIVERS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument("--json", dest="json_file", type=Path, help="write every figure to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs)")
    args = parser.parse_args(argv)
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    unknown = [d for d in drivers if d not in DRIVERS]
    if unknown:
        parser.error(f"unknown drivers {unknown}; choose from {','.join(DRIVERS)}")
    counts = QUICK if args.quick else FULL

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    folder = Path(tempfile.mkdtemp(prefix="cellnet-bench-"))
    results: list[dict[str, Any]] = []
    started = time.time()
    # SIGTERM unwinds like Ctrl-C so every child is stopped.
    with Interrupts() as signals:
        try:
            for driver in drivers:
                t0 = time.monotonic()
                sub = folder / driver
                sub.mkdir()
                res: dict[str, Any] = {"driver": driver}
                try:
                    bench_driver(driver, sub, counts, log, res)
                except KeyboardInterrupt:
                    log(f"[{driver}] interrupted")
                    res["error"] = "interrupted"
                    results.append(res)
                    break
                res["seconds"] = time.monotonic() - t0
                if "error" in res:
                    log(f"[{driver}] FAILED after {res['seconds']:.1f} s: {res['error']}")
                    for label, text in res.get("logs", {}).items():
                        log(f"  --- {label} log tail:\n{text}")
                else:
                    log(f"[{driver}] done in {res['seconds']:.1f} s")
                results.append(res)
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                log(f"configs and logs kept in {folder}")
    interrupted = signals.exit_code is not None
    table = markdown(results, args.quick)
    print(table, flush=True)
    if args.json_file:
        doc = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "quick": args.quick,
            "counts": counts.__dict__,
            "machine": machine_info(),
            "results": results,
            "interrupted": interrupted,
        }
        args.json_file.write_text(json.dumps(doc, indent=2))
        log(f"wrote {args.json_file}")
    if signals.exit_code is not None:
        return signals.exit_code
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
