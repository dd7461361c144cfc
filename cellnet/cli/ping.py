"""``cellnet ping TARGET -c CELL.toml``: echo requests, the route and timings."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import AsyncIterator

import typer

from ..cell import ECHO_TOPIC, SYSTEM_CHANNEL
from ..cell import Cell
from ..config import Config
from ..errors import CellnetError, ConfigError, RequestTimeout
from ..files import transfer_budget
from ..names import validate_name
from ..sizes import format_size, parse_size
from rich.markup import escape

from .common import ConfigOption, err_console, fail, join, load, setup_logging

#: the default budget per request, and the rate a large ping is given time for
DEFAULT_TIMEOUT = 10.0
LARGE_RATE = 20e6  # bytes per second

@dataclass(frozen=True)
class PingResult:
    source: str
    target: str
    route: list[str]
    count: int
    size: int
    rtt_min_us: float
    rtt_median_us: float
    rtt_p99_us: float
    mb_per_s: float
    #: the parent URL the tool was linked through (the active transport)
    via: str | None = None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


class Pattern:
    """The payload of a large ping, made and checked chunk by chunk.

    A random block whose length is a prime (the largest below 1 MiB),
    repeated: every slice is a view of the block, so sending costs no copy
    and no memory however large the ping, and each echoed chunk is compared
    with the slice at its offset. A chunk that comes back shifted, twice or
    out of order does not line up with the pattern, as no chunk size is a
    multiple of the period.
    """

    PERIOD = 1_048_573

    def __init__(self) -> None:
        block = os.urandom(self.PERIOD)
        self._twice = memoryview(block + block)

    def _slice(self, offset: int, n: int) -> memoryview:
        start = offset % self.PERIOD
        return self._twice[start : start + min(n, self.PERIOD)]

    async def chunks(self, size: int) -> AsyncIterator[memoryview]:
        """``size`` bytes of the pattern, in views of up to one period."""
        offset = 0
        while offset < size:
            view = self._slice(offset, size - offset)
            offset += len(view)
            yield view

    def matches(self, offset: int, data: bytes | memoryview) -> bool:
        """Whether ``data`` is the pattern at ``offset``."""
        data = bytes(data)  # bytes compare with memcmp; a memoryview compares item by item
        pos = 0
        while pos < len(data):
            expected = self._slice(offset + pos, len(data) - pos)
            if data[pos : pos + len(expected)] != expected.tobytes():
                return False
            pos += len(expected)
        return True


async def _echo_streamed(cell: Cell, target: str, pattern: Pattern, size: int, timeout: float) -> list[str]:
    """One echo of ``size`` pattern bytes, sent and read back chunk by chunk.

    Neither side holds the payload: it is generated as it is sent and the
    echo is compared as it comes back, so memory stays at about one credit
    window whatever the size. ``timeout`` covers the echo's last byte.
    """
    try:
        async with asyncio.timeout(timeout):
            reply = await cell.request(
                target, SYSTEM_CHANNEL, ECHO_TOPIC, pattern.chunks(size),
                size=size, timeout=timeout, stream_reply=True,
            )
            stream = reply.stream
            assert stream is not None  # stream_reply=True
            got = 0
            async for chunk in stream:
                if got + len(chunk) > size or not pattern.matches(got, chunk):
                    stream.abandon()
                    raise CellnetError(f"{target} echoed bytes that differ from those sent at offset {got}")
                got += len(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the echo of {format_size(size)} from {target} took over {timeout:g} s") from None
    if got != size:
        raise CellnetError(f"{target} echoed {got} of the {size} bytes sent")
    return [str(x) for x in reply.meta.get("route", [])]


async def ping(
    config: Config, target: str, *, count: int, size: int, timeout: float, warmup: int = 0
) -> tuple[PingResult, str | None]:
    """Echo ``size`` bytes off ``target`` ``count`` times (after ``warmup``).

    A payload up to ``limits.chunk`` travels in one message and is compared
    whole. A larger one is streamed both ways (see :class:`Pattern`), so a
    ping of gigabytes needs no more memory than one of megabytes.
    """
    cell, note = await join(config)
    try:
        if size > config.limits.chunk:
            return await _ping_streamed(cell, target, count, size, timeout, warmup), note
        payload = os.urandom(size)
        route: list[str] = []
        for _ in range(warmup):
            await cell.request(target, SYSTEM_CHANNEL, ECHO_TOPIC, payload, timeout=timeout)
        rtts: list[float] = []
        for _ in range(count):
            t0 = time.perf_counter()
            reply = await cell.request(target, SYSTEM_CHANNEL, ECHO_TOPIC, payload, timeout=timeout)
            rtts.append(time.perf_counter() - t0)
            if len(reply.payload) != size or reply.payload != payload:
                raise CellnetError(f"{target} echoed {len(reply.payload)} bytes that differ from the {size} sent")
            route = [str(x) for x in reply.meta.get("route", [])]
        return _result(cell, target, route, size, rtts), note
    finally:
        await cell.aclose()


async def _ping_streamed(
    cell: Cell, target: str, count: int, size: int, timeout: float, warmup: int
) -> PingResult:
    pattern = Pattern()
    for _ in range(warmup):
        await _echo_streamed(cell, target, pattern, size, timeout)
    rtts: list[float] = []
    route: list[str] = []
    for _ in range(count):
        t0 = time.perf_counter()
        route = await _echo_streamed(cell, target, pattern, size, timeout)
        rtts.append(time.perf_counter() - t0)
    return _result(cell, target, route, size, rtts)


def _result(cell: Cell, target: str, route: list[str], size: int, rtts: list[float]) -> PingResult:
    rtts = sorted(rtts)
    total = sum(rtts)
    return PingResult(
        source=cell.name,
        target=target,
        route=route,
        count=len(rtts),
        size=size,
        rtt_min_us=rtts[0] * 1e6,
        rtt_median_us=statistics.median(rtts) * 1e6,
        rtt_p99_us=percentile(rtts, 99) * 1e6,
        mb_per_s=(2 * size * len(rtts) / total / 1e6) if total > 0 else 0.0,
        via=cell.parent_url,
    )


def default_timeout(size: int, chunk: int) -> float:
    """The budget per request when none is given: the fixed default, or for
    a streamed payload enough time to move it at :data:`LARGE_RATE`."""
    if size <= chunk:
        return DEFAULT_TIMEOUT
    return transfer_budget(size, DEFAULT_TIMEOUT, LARGE_RATE)


def ping_command(
    target: str = typer.Argument(..., help="Name of the cell to ping, e.g. site-2."),
    config: Path = ConfigOption,
    count: int = typer.Option(10, "--count", "-n", min=1, help="Number of echo requests."),
    size: str = typer.Option(
        "100", "--size", "-s",
        help="Payload size: bytes or units (64KiB, 1MiB, 2GiB). Above the chunk size"
        " (limits.chunk) the payload is streamed both ways with bounded memory.",
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", "-t", min=0.001, show_default=False,
        help=f"Budget per request, seconds (default: {DEFAULT_TIMEOUT:g}; for a streamed"
        f" payload at least size / {LARGE_RATE / 1e6:g} MB/s).",
    ),
    warmup: int = typer.Option(0, "--warmup", min=0, help="Unmeasured requests first."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True),
) -> None:
    """Send echo requests to TARGET; print the route and RTT min/median/p99 and MB/s."""
    setup_logging(verbose)
    cfg = load(config)
    try:
        validate_name(target)
        nbytes = parse_size(size, key="--size")
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    if timeout is None:
        timeout = default_timeout(nbytes, cfg.limits.chunk)
    try:
        result, note = asyncio.run(
            ping(cfg, target, count=count, size=nbytes, timeout=timeout, warmup=warmup)
        )
    except CellnetError as exc:
        if as_json:
            typer.echo(json.dumps({"target": target, "error": type(exc).__name__, "message": str(exc)}))
        raise fail(f"ping {target} failed: {type(exc).__name__}: {exc}") from None
    if as_json:
        data = asdict(result)
        if note:
            data["note"] = note
        typer.echo(json.dumps(data))
        return
    if note:
        err_console.print(escape(note), highlight=False)
    typer.echo(f"route: {' -> '.join(result.route)}")
    if result.via:
        typer.echo(f"via: {result.via}")
    typer.echo(
        f"{result.count} x {format_size(result.size)}: rtt min/median/p99 = "
        f"{result.rtt_min_us / 1000:.3f}/{result.rtt_median_us / 1000:.3f}/"
        f"{result.rtt_p99_us / 1000:.3f} ms, {result.mb_per_s:.1f} MB/s"
    )
