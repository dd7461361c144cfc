"""The processes of the large-message benchmark (:mod:`cellnet.benchmarks.large`):
each runs one cell from a config; the receivers answer on one stream handler
per sink, and the sender also takes transfers to measure, one line of JSON
on stdin each, and answers with one line of JSON on stdout.

``python -m cellnet.benchmarks.large worker CONFIG --files DIR [--sender]
[--seed N] [--block BYTES] [--blocks N] [--ready-budget S]``; not meant to
be run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .large import CHANNEL, MIB, PATHS, TOPICS


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _register_sinks(cell: Any, files: Path) -> None:
    """The stream handlers every worker cell has, one per sink: ``file`` saves the
    payload into a file and answers its size; ``discard`` only counts the bytes."""

    @cell.on(CHANNEL, TOPICS["discard"], stream=True)
    async def discard(msg: Any) -> bytes:
        # Like raw_stream's sink: read every chunk, keep nothing but the count.
        n = 0
        async for chunk in msg.stream:
            n += len(chunk)
        return json.dumps({"bytes": n, "chunked": bool(msg.stream.chunked)}).encode()

    @cell.on(CHANNEL, TOPICS["file"], stream=True)
    async def sink(msg: Any) -> bytes:
        path = files / f"{cell.name}-{uuid.uuid4().hex}.bin"
        t0 = time.perf_counter()
        await msg.stream.save(path)
        save_s = time.perf_counter() - t0
        # Not deleted here: the benchmark checks the file's size first, and
        # deleting a large file would add to the measured time.
        return json.dumps({"bytes": path.stat().st_size, "file": str(path), "save_s": save_s,
                           "chunked": bool(msg.stream.chunked)}).encode()


async def _blocks(pool: list[bytes], size: int) -> AsyncIterator[bytes]:
    full, rest = divmod(size, len(pool[0]))
    for i in range(full):
        yield pool[i % len(pool)]
    if rest:
        yield pool[full % len(pool)][:rest]


async def _wait_ready(cell: Any, budget: float) -> dict[str, list[str]]:
    """Wait until both receivers answer echoes; return the routes they record."""
    from cellnet.cell import ECHO_TOPIC, SYSTEM_CHANNEL
    from cellnet.errors import CellnetError

    deadline = time.monotonic() + budget
    last = ""
    while time.monotonic() < deadline:
        try:
            routes = {}
            for topo, (receiver, _relay) in PATHS.items():
                reply = await cell.request(receiver, SYSTEM_CHANNEL, ECHO_TOPIC, b"ready?", timeout=2.0)
                routes[topo] = [str(x) for x in reply.meta.get("route", [])]
            return routes
        except CellnetError as exc:
            last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.05)
    raise SystemExit(f"cells not ready within {budget:g} s: {last}")


async def run_worker(config: Path, files: Path, sender: bool, seed: int, block: int, blocks: int,
                     ready_budget: float) -> None:
    """One cell of the benchmark. The sender takes tasks on stdin; the others run until SIGTERM."""
    from cellnet import Cell
    from cellnet.config import load_config

    cell = Cell.from_config(load_config(config))
    _register_sinks(cell, files)
    await cell.start()
    try:
        if not sender:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            emit({"ready": True, "pid": os.getpid()})
            await stop.wait()
            return
        # Generated before any measurement: part of the baseline, not of the peak.
        pool = [random.Random(f"{seed}:{i}").randbytes(block) for i in range(blocks)]
        emit({"ready": {"routes": await _wait_ready(cell, ready_budget)}})
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.strip() == "quit":
                break
            task = json.loads(line)
            size = int(task["size"])
            receiver, _relay = PATHS[task["topology"]]
            try:
                t0 = time.perf_counter()
                reply = await cell.request(receiver, CHANNEL, TOPICS[task["sink"]], _blocks(pool, size),
                                           size=size, timeout=float(task["timeout"]))
                elapsed = time.perf_counter() - t0
                result: dict[str, Any] = {"elapsed_s": elapsed, "mb_per_s": size / elapsed / 1e6,
                                          **json.loads(bytes(reply.payload))}
            except Exception as exc:  # reported; the benchmark goes on
                result = {"error": f"{type(exc).__name__}: {exc}"}
            emit(result)
    finally:
        await cell.aclose()


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cellnet.benchmarks.large worker",
                                     description="one cell of the large-message benchmark")
    parser.add_argument("config", type=Path)
    parser.add_argument("--files", type=Path, required=True)
    parser.add_argument("--sender", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--block", type=int, default=MIB)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--ready-budget", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run_worker(args.config, args.files, args.sender, args.seed, args.block, args.blocks,
                           args.ready_budget))
    return 0
