"""Helpers shared by the raw echo baselines (``raw_*_echo``) and ``drivers``.

* :func:`percentile` and :func:`summarize`: the figures every raw baseline
  prints as JSON (RTT min/median/p99 in microseconds and MB/s);
* :func:`spawned_server`: an asyncio echo server in a spawned child process
  that reports its port over a pipe;
* :func:`echo_parser`: the ``--size``/``--count`` command line they share, and
  :func:`size_arg` and :func:`positive_int`, the argument types of its options
  (a bad value is a usage error: exit code 2, one line, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import multiprocessing.connection
import statistics
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: ``serve(conn, *args)``: start a server, ``conn.send(port)``, then run forever.
ServeFn = Callable[..., Awaitable[None]]


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of an ascending list.

    The smallest value with at least ``q`` % of the values at or below it:
    the value at rank ``ceil(q / 100 * n)`` (1-based), never interpolated.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    n = len(sorted_values)
    rank = math.ceil(q * n / 100)
    return sorted_values[min(n, max(1, rank)) - 1]


def summarize(rtts: list[float], size: int) -> dict[str, float]:
    """Summarize round-trip times (seconds) of ``size``-byte echoes.

    Returns ``size``, ``count`` (the number of RTTs), ``rtt_min_us``,
    ``rtt_median_us`` and ``rtt_p99_us`` (nearest rank) in microseconds, and
    ``mb_per_s``: payload bytes counted once each way over the summed RTTs,
    ``2 * size * count / sum(rtts) / 1e6``. ``rtts`` is not modified.
    """
    if not rtts:
        raise ValueError("no round trips to summarize")
    ordered = sorted(rtts)
    return {
        "size": size,
        "count": len(ordered),
        "rtt_min_us": ordered[0] * 1e6,
        "rtt_median_us": statistics.median(ordered) * 1e6,
        "rtt_p99_us": percentile(ordered, 99) * 1e6,
        "mb_per_s": 2 * size * len(ordered) / sum(ordered) / 1e6,
    }


def _run_server(serve: ServeFn, conn: multiprocessing.connection.Connection, *args: Any) -> None:
    """The child process's entry point: run ``serve(conn, *args)`` in a fresh event loop."""
    asyncio.run(serve(conn, *args))


@contextmanager
def spawned_server(serve: ServeFn, *args: Any) -> Iterator[int]:
    """Run ``serve(conn, *args)`` in a spawned child process; yield the port it sends.

    ``serve`` must be a module-level coroutine function (it is pickled by
    name) that starts a server, sends its port with ``conn.send(port)`` and
    then runs until killed. The child is killed and joined on exit, also
    after an error or Ctrl-C. If it dies before sending a port, ``EOFError``
    is raised instead of waiting forever.
    """
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("spawn").Process(
        target=_run_server, args=(serve, child, *args), daemon=True
    )
    proc.start()
    child.close()  # the child holds its own copy; ours would hide its death from recv()
    try:
        yield parent.recv()
    finally:
        proc.kill()
        proc.join()
        parent.close()


#: the largest ``--size``: under every baseline's frame limit (4-byte length prefix, gRPC's 2 GiB)
MAX_SIZE = 1 << 30


def size_arg(text: str) -> int:
    """An argparse type: a payload size of 1 byte to 1 GiB, with or without a unit (``100``, ``64KiB``, ``1.5MiB``)."""
    from cellnet.errors import ConfigError
    from cellnet.sizes import parse_size

    try:
        size = parse_size(text)
    except ConfigError:
        size = -1
    if not 1 <= size <= MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected a size from 1 byte to 1 GiB, like 100, 64KiB or 1.5MiB, got {text!r}")
    return size


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def echo_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with ``--size`` (bytes, units allowed, default 100) and ``--count`` (round trips, default 2000).

    Its description is the first line of ``doc`` (the calling module's ``__doc__``).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--size", type=size_arg, default=100, help="payload bytes: 100, 64KiB, 1.5MiB... (default 100)")
    parser.add_argument("--count", type=positive_int, default=2000, help="messages to measure (default 2000)")
    return parser
