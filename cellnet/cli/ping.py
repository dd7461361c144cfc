"""``cellnet ping TARGET -c CELL.toml``: echo requests, the route and timings."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import typer

from ..cell import ECHO_TOPIC, SYSTEM_CHANNEL
from ..config import Config
from ..errors import CellnetError, ConfigError
from ..names import validate_name
from ..sizes import format_size, parse_size
from rich.markup import escape

from .common import ConfigOption, err_console, fail, join, load, setup_logging


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


async def ping(
    config: Config, target: str, *, count: int, size: int, timeout: float, warmup: int = 0
) -> tuple[PingResult, str | None]:
    cell, note = await join(config)
    try:
        payload = os.urandom(size) if size <= 16 * 1024 * 1024 else bytes(size)
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
        rtts.sort()
        total = sum(rtts)
        result = PingResult(
            source=cell.name,
            target=target,
            route=route,
            count=count,
            size=size,
            rtt_min_us=rtts[0] * 1e6,
            rtt_median_us=statistics.median(rtts) * 1e6,
            rtt_p99_us=percentile(rtts, 99) * 1e6,
            mb_per_s=(2 * size * count / total / 1e6) if total > 0 else 0.0,
            via=cell.parent_url,
        )
        return result, note
    finally:
        await cell.aclose()


def ping_command(
    target: str = typer.Argument(..., help="Name of the cell to ping, e.g. site-2."),
    config: Path = ConfigOption,
    count: int = typer.Option(10, "--count", "-n", min=1, help="Number of echo requests."),
    size: str = typer.Option("100", "--size", "-s", help="Payload size: bytes or units (64KiB, 1MiB)."),
    timeout: float = typer.Option(10.0, "--timeout", "-t", min=0.001, help="Budget per request, seconds."),
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
