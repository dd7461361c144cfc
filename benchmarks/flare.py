"""The comparison with NVIDIA FLARE's CellNet (``nvflare.fuel.f3.cellnet``).

``cellnet bench`` runs it when ``nvflare`` is importable (``pip install
"cellnet[compare]"``) and the ``compare`` key is true; without ``nvflare`` it
says the comparison is skipped. It measures FLARE's cells the way the harness
measures ours, so the two sit in one table (:func:`comparison_rows`).

Why these choices
    * Processes: FLARE's ``server`` cell and the client cell ``site-2`` each
      run in their own process (``python -m cellnet.benchmarks.flare cell``);
      one measuring process (``... flare measure``) holds the client cells
      ``site-1`` and ``site-3``, as :mod:`cellnet.benchmarks._worker` does
      for ours. Every cell uses FLARE's TCP driver
      (``tcp://127.0.0.1:PORT``) in insecure mode (``secure=False``, no
      credentials). Client cells are root cells that dial the server's
      ``root_url``.
    * Topologies: ``client-server`` is ``site-1 -> server``; ``relayed`` is
      ``site-1 -> server -> site-2``; ``direct`` is ``site-3 -> site-2``
      over FLARE's ad-hoc connection: with ``allow_adhoc_conns`` (here the
      ``NVFLARE_ALLOW_ADHOC_CONNS`` variable of the measuring process) the
      sending client cell whose name sorts after the target's opens a
      listener and names it in its first relayed request, and the target
      dials it; later messages go over that link. ``site-1`` has ad-hoc
      connections turned off (its ``ConnectorManager.adhoc_allowed``) and
      ``site-2`` never offers a listener, so the relayed path stays relayed.
      The echo handler returns the request's recorded route, which is
      checked like ours.
    * API: ``Cell.send_request(channel, topic, target, Message, timeout)``
      on an application channel, which FLARE sends with its streaming layer
      (``send_blob``: chunked, windowed, reassembled at the receiver), as
      every FLARE application channel does. That is the path to compare with
      our streaming. Every measurement also runs on the single-frame path
      (``mode = "frame"``: a channel FLARE excludes from streaming,
      ``CellChannel.SERVER_MAIN``, sent by ``CoreCell`` as one message):
      FLARE's fastest path for small messages, and for large ones the mode
      that holds the whole payload in memory at every hop
      (``compare_frame = false`` leaves it out of the large transfers).
    * Concurrency: ``send_request`` blocks its thread, so N outstanding
      requests are N threads, each sending one request after another.

Measurements
    Echo (``kind = "echo"``): the same loop as ours (warm-up, one verified
    echo whose route is recorded, then ``concurrency`` requests outstanding
    for ``duration`` seconds): RTT median/p99, msg/s, MB/s (payload once each
    way). Large (``kind = "sink"``): one request of ``size`` bytes from
    ``site-1`` to the receiver (``server`` or, relayed, ``site-2``) that
    answers with the byte count; MB/s = size / wall time, as
    :mod:`cellnet.benchmarks.large` counts ours. The harness resets and reads
    the peak RSS (VmHWM) of server and site-2 around every measurement.

Not meant to be run by hand; :func:`run_flare` starts the processes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ._stats import percentile
from ._worker import emit, payload_for, reset_peak, vm_hwm_kib
from .procs import Procs, free_port

#: the application channel of the echo and sink handlers (streamed by FLARE)
CHANNEL = "cellnet_bench"
ECHO, SINK = "echo", "sink"
#: FLARE's two ways of sending a request: streamed (application channels) and single-frame
MODES = ("stream", "frame")
ROUTE_HEADER = "cellnet_bench.route"
TOPOLOGY_PATHS = {
    "client-server": ("site-1", "server", ["site-1", "server"]),
    "relayed": ("site-1", "site-2", ["site-1", "server", "site-2"]),
    "direct": ("site-3", "site-2", ["site-3", "site-2"]),
}
#: topology -> the receiving cell of a one-way transfer
SINK_TARGETS = {"client-server": "server", "relayed": "site-2"}


def available() -> bool:
    return importlib.util.find_spec("nvflare") is not None


def version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("nvflare")
    except metadata.PackageNotFoundError:
        return None


# -- inside FLARE's processes --------------------------------------------------------


def _frame_channel() -> str:
    """A channel ``Cell`` excludes from streaming: its requests travel as one frame."""
    from nvflare.fuel.f3.cellnet.defs import CellChannel

    return CellChannel.SERVER_MAIN


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("nvflare", "Cell", "CoreCell", "StreamCell", "ConnectorManager", "Communicator"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _make_cell(name: str, url: str, adhoc: bool) -> Any:
    from nvflare.fuel.f3.cellnet.cell import Cell
    from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey, ReturnCode
    from nvflare.fuel.f3.message import Message

    cell = Cell(fqcn=name, root_url=url, secure=False, credentials={}, create_internal_listener=False)
    # ad-hoc (direct) connections are a process-wide setting; turn them off per cell
    cell.core_cell.connector_manager.adhoc_allowed = adhoc

    def echo(request: Message) -> Message:
        route = [str(hop[0]) for hop in request.get_header(MessageHeaderKey.ROUTE, []) or []]
        return Message({MessageHeaderKey.RETURN_CODE: ReturnCode.OK, ROUTE_HEADER: route}, request.payload)

    def sink(request: Message) -> Message:
        n = len(request.payload) if request.payload is not None else 0
        route = [str(hop[0]) for hop in request.get_header(MessageHeaderKey.ROUTE, []) or []]
        return Message({MessageHeaderKey.RETURN_CODE: ReturnCode.OK, ROUTE_HEADER: route}, str(n).encode())

    for channel in (CHANNEL, _frame_channel()):
        cell.register_request_cb(channel=channel, topic=ECHO, cb=echo)
        cell.register_request_cb(channel=channel, topic=SINK, cb=sink)
    cell.start()
    return cell


def run_cell(name: str, url: str) -> int:
    """A server or client cell that answers echo and sink requests until it is signalled to stop."""
    _make_cell(name, url, adhoc=False)
    emit({"ready": name, "pid": os.getpid()})
    threading.Event().wait()
    return 0


def _request(cell: Any, target: str, topic: str, payload: bytes, mode: str, timeout: float) -> Any:
    from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey, ReturnCode
    from nvflare.fuel.f3.message import Message

    channel = CHANNEL if mode == "stream" else _frame_channel()
    reply = cell.send_request(channel=channel, topic=topic, target=target, request=Message({}, payload),
                              timeout=timeout)
    rc = reply.get_header(MessageHeaderKey.RETURN_CODE)
    if rc != ReturnCode.OK:
        raise RuntimeError(f"{target} answered {rc}: {reply.get_header(MessageHeaderKey.ERROR, '')}")
    return reply


def _route(reply: Any) -> list[str]:
    return [str(x) for x in reply.get_header(ROUTE_HEADER, []) or []]


def _until_ready(cells: dict[str, Any], budget: float) -> dict[str, Any]:
    t0 = time.monotonic()
    routes: dict[str, list[str]] = {}
    last = ""
    while time.monotonic() - t0 < budget:
        try:
            for topo, (src, target, _expected) in TOPOLOGY_PATHS.items():
                routes[topo] = _route(_request(cells[src], target, ECHO, b"ready?", "stream", 2.0))
            if routes["direct"] == TOPOLOGY_PATHS["direct"][2]:
                return {"ready_s": time.monotonic() - t0, "routes": routes}
            last = f"route site-3 -> site-2 is still {routes['direct']}"
        except Exception as exc:  # not linked yet
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise SystemExit(f"FLARE cells not ready within {budget:g} s: {last}")


def _measure_echo(cell: Any, target: str, payload: bytes, task: dict[str, Any]) -> dict[str, Any]:
    size, mode = len(payload), str(task.get("mode", "stream"))
    conc, timeout = int(task["concurrency"]), float(task["timeout"])
    min_count, max_count = int(task["min_count"]), int(task["max_count"])
    for _ in range(int(task["warmup"])):
        _request(cell, target, ECHO, payload, mode, timeout)
    first = _request(cell, target, ECHO, payload, mode, timeout)
    if bytes(first.payload) != payload:
        raise RuntimeError(f"{target} echoed different bytes ({len(first.payload)} of {size})")
    rtts: list[float] = []
    lock = threading.Lock()
    issued = [0]
    stop_at = time.perf_counter() + float(task["duration"])

    def one_stream() -> None:
        while True:
            with lock:
                if issued[0] >= max_count or (issued[0] >= min_count and time.perf_counter() >= stop_at):
                    return
                issued[0] += 1
            t = time.perf_counter()
            reply = _request(cell, target, ECHO, payload, mode, timeout)
            rtt = time.perf_counter() - t
            if len(reply.payload) != size:
                raise RuntimeError(f"{target} echoed {len(reply.payload)} bytes, sent {size}")
            with lock:
                rtts.append(rtt)

    t0 = time.perf_counter()
    stop_at = t0 + float(task["duration"])
    if conc == 1:
        one_stream()
    else:
        with ThreadPoolExecutor(conc) as pool:
            for f in [pool.submit(one_stream) for _ in range(conc)]:
                f.result()
    elapsed = time.perf_counter() - t0
    rtts.sort()
    msgs = len(rtts) / elapsed
    return {
        "route": _route(first), "count": len(rtts), "elapsed_s": elapsed,
        "rtt_min_us": rtts[0] * 1e6, "rtt_median_us": statistics.median(rtts) * 1e6,
        "rtt_mean_us": statistics.fmean(rtts) * 1e6, "rtt_p99_us": percentile(rtts, 99) * 1e6,
        "rtt_max_us": rtts[-1] * 1e6, "msgs_per_s": msgs, "mb_per_s": 2 * size * msgs / 1e6,
    }


def _measure_sink(cell: Any, target: str, payload: bytes, task: dict[str, Any]) -> dict[str, Any]:
    mode = str(task.get("mode", "stream"))
    t0 = time.perf_counter()
    reply = _request(cell, target, SINK, payload, mode, float(task["timeout"]))
    elapsed = time.perf_counter() - t0
    received = int(bytes(reply.payload))
    if received != len(payload):
        raise RuntimeError(f"{target} received {received} bytes, sent {len(payload)}")
    return {"route": _route(reply), "bytes": received, "elapsed_s": elapsed, "mb_per_s": received / elapsed / 1e6}


def run_measure(url: str, seed: int, budget: float) -> int:
    """The measuring process: cells site-1 and site-3, tasks from stdin, one JSON line per result."""
    cells = {"site-1": _make_cell("site-1", url, adhoc=False), "site-3": _make_cell("site-3", url, adhoc=True)}
    try:
        emit({"ready": _until_ready(cells, budget)})
        payload = b""
        for line in sys.stdin:
            if line.strip() == "quit":
                break
            task = json.loads(line)
            size = int(task["size"])
            if len(payload) != size:
                payload = b""  # at most one payload held: 512 MiB each
                payload = bytes(payload_for(seed, size))  # FLARE sends bytes
            try:
                if task["kind"] == "echo":
                    src, target, _expected = TOPOLOGY_PATHS[task["topology"]]
                    result = _measure_echo(cells[src], target, payload, task)
                else:
                    result = _measure_sink(cells["site-1"], SINK_TARGETS[task["topology"]], payload, task)
            except Exception as exc:  # reported; the harness goes on
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["client_peak_rss_kib"] = vm_hwm_kib()
            emit(result)
    finally:
        for cell in cells.values():
            with contextlib.suppress(Exception):
                cell.stop()
    return 0


# -- in the harness -------------------------------------------------------------------


def run_flare(cfg: Any, folder: Path, advance: Callable[[str], None],
              ours: Callable[[str, int, int, int], dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """Run FLARE's side of the comparison with the harness's ``BenchConfig``; return its record.

    The record has ``echo`` and ``large`` lists of measurements (one per
    repetition) and, on failure, ``error`` and the processes' ``logs``.
    ``ours(topology, size, concurrency, repetition)``, if given, measures
    the same echo on our cells right after FLARE's (its records go to
    ``ours_echo``): taking turns, both sides see the same machine, which on
    a shared one drifts by a quarter over minutes.
    """
    from .bench_config import EXPECTED_ROUTES, MIB
    from .sessions import LineReader

    group: dict[str, Any] = {"version": version(), "echo": [], "large": [], "ours_echo": []}
    procs = Procs(folder)
    py = sys.executable
    url = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ)
    env["NVFLARE_ALLOW_ADHOC_CONNS"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    with procs.guard(group):  # SIGTERM at the end: FLARE's threads need no clean shutdown here
        pids: dict[str, int] = {}
        for name in ("server", "site-2"):
            log = open(folder / f"flare-{name}.log", "wb")
            proc = subprocess.Popen([py, "-m", "cellnet.benchmarks.flare", "cell", name, "--url", url],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env)
            log.close()
            procs.procs.append((f"flare-{name}", proc, folder / f"flare-{name}.log"))
            pids[name] = proc.pid
            if name == "server":
                time.sleep(0.5)  # let the server listen before the clients dial
        advance("FLARE: linking cells")
        wlog = open(folder / "flare-client.log", "wb")
        worker = subprocess.Popen([py, "-m", "cellnet.benchmarks.flare", "measure", "--url", url,
                                   "--seed", str(cfg.seed), "--ready-budget", str(cfg.ready_timeout)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=wlog,
                                  start_new_session=True, env=env)
        wlog.close()
        procs.procs.append(("flare-client", worker, folder / "flare-client.log"))
        group["pids"] = dict(pids, client=worker.pid)
        reader = LineReader(worker.stdout)
        ready = reader.json(cfg.ready_timeout + 30, "FLARE: linking")["ready"]
        group.update(ready_s=ready["ready_s"], routes=ready["routes"])
        assert worker.stdin is not None

        def task(t: dict[str, Any], what: str) -> dict[str, Any]:
            procs.check_alive()
            reset = all([reset_peak(pid) for pid in pids.values()])  # noqa: C419 (reset every one)
            worker.stdin.write((json.dumps(t) + "\n").encode())
            worker.stdin.flush()
            res = reader.json(cfg.timeout * 2 + 60, what)
            rss = {name: vm_hwm_kib(pid) for name, pid in pids.items()}
            rss["client"] = res.pop("client_peak_rss_kib", None)
            return {"peak_rss_kib": rss, "peak_rss_reset": reset, **res}

        for rep in range(cfg.repetitions):
            for topo in cfg.topologies:
                for size in cfg.compare_sizes:
                    for conc in cfg.concurrency:
                        eff = min(conc, max(1, cfg.max_inflight // size))
                        for mode in MODES:
                            advance(f"FLARE {topo} {size} B x{conc} {mode} rep {rep + 1}")
                            res = task({"kind": "echo", "mode": mode, "topology": topo, "size": size,
                                        "concurrency": eff, "duration": cfg.duration,
                                        "min_count": max(cfg.min_count, eff), "max_count": cfg.max_count,
                                        "timeout": cfg.timeout, "warmup": cfg.warmup if size <= MIB else 0},
                                       f"FLARE {topo} {size} {mode}")
                            group["echo"].append({"topology": topo, "size": size, "concurrency": conc,
                                                  "effective_concurrency": eff, "repetition": rep, "mode": mode,
                                                  "route_ok": res.get("route") == EXPECTED_ROUTES[topo], **res})
                        if ours is not None:
                            advance(f"cellnet {topo} {size} B x{conc} rep {rep + 1} (beside FLARE)")
                            mine = ours(topo, size, conc, rep)  # None: our side failed (recorded there)
                            if mine is not None:
                                group["ours_echo"].append(mine)
            for size in cfg.compare_large:
                for mode in MODES if cfg.compare_frame else ("stream",):
                    for topo in ("relayed",):
                        advance(f"FLARE {topo} {size} B one-way ({mode}) rep {rep + 1}")
                        res = task({"kind": "sink", "mode": mode, "topology": topo, "size": size,
                                    "timeout": cfg.timeout}, f"FLARE {topo} {size} {mode}")
                        group["large"].append({"topology": topo, "size": size, "mode": mode, "repetition": rep,
                                               "route_ok": res.get("route") == EXPECTED_ROUTES[topo], **res})
        procs.quit_worker(worker)
    return group


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="FLARE's processes of the cellnet benchmark comparison")
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("cell")
    c.add_argument("name")
    c.add_argument("--url", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--url", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--ready-budget", type=float, default=60.0)
    args = parser.parse_args(argv)
    _quiet_logs()
    if args.mode == "cell":
        return run_cell(args.name, args.url)
    return run_measure(args.url, args.seed, args.ready_budget)


if __name__ == "__main__":
    sys.exit(main())
