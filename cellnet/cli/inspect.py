"""``cellnet status`` and ``cellnet route``: ask live cells over the bus.

Both join the bus as the config's cell (as ``<name>-cli-<pid>`` when that
cell is live, which is the usual case) and send a request to the system
channel of the cell they ask about (see :mod:`cellnet.introspect`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer

from ..sizes import format_size
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..cell import SYSTEM_CHANNEL
from ..config import Config
from ..errors import CellnetError, ConfigError
from ..introspect import STATUS_TOPIC, TRACE_TOPIC
from ..names import validate_name
from .common import ConfigOption, err_console, fail, join, load, setup_logging

console = Console(soft_wrap=True)


async def _ask(config: Config, target: str, topic: str, payload: bytes, timeout: float) -> tuple[dict[str, Any], str | None]:
    cell, note = await join(config)
    try:
        if note is None and target == config.name:
            # We joined under the config's own name: no such cell is live.
            raise CellnetError(f"cell {config.name} is not running (this tool took its name on the bus)")
        reply = await cell.request(target, SYSTEM_CHANNEL, topic, payload, timeout=timeout)
        return json.loads(bytes(reply.payload)), note
    finally:
        await cell.aclose()


def _names(*names: str) -> None:
    try:
        for name in names:
            validate_name(name)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


def status_command(
    config: Path = ConfigOption,
    cell: str | None = typer.Option(None, "--cell", help="Ask this cell instead of the config's own."),
    timeout: float = typer.Option(5.0, "--timeout", "-t", min=0.001, help="Seconds to wait for the answer."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True),
) -> None:
    """Show a live cell's links, peers, transports and message counters."""
    setup_logging(verbose)
    cfg = load(config)
    target = cell or cfg.name
    _names(target)
    try:
        data, note = asyncio.run(_ask(cfg, target, STATUS_TOPIC, b"", timeout))
    except CellnetError as exc:
        raise fail(f"status of {target} failed: {type(exc).__name__}: {exc}") from None
    if as_json:
        typer.echo(json.dumps(data))
        return
    if note:
        err_console.print(escape(note), highlight=False)
    parent = data.get("parent")
    up = f"parent {parent} via {data.get('parent_url')}" if parent else "no parent link"
    listen = ", ".join(data.get("listen") or []) or "no listener"
    console.print(f"[bold]{escape(data['name'])}[/] up {data.get('uptime_s', 0):.0f} s; {escape(up)}; {escape(listen)}", highlight=False)
    table = Table("peer", "role", "path", "transport", "url", "sent", "received")
    for link in data.get("links", []):
        table.add_row(
            link["peer"], link["role"], link["path"], str(link["transport"]), link["url"],
            str(link["sent"]), str(link["received"]),
        )
    console.print(table)
    counters = data.get("counters", {})
    console.print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counters.items()), highlight=False)
    transfers = data.get("transfers") or []
    if transfers:
        table = Table("transfer", "direction", "peer", "done", "size")
        for row in transfers:
            size = row.get("size")
            done = row.get("done", 0)
            share = f" ({100 * done / size:.0f}%)" if size else ""
            table.add_row(
                str(row["id"])[:12], row["direction"], row["peer"], format_size(done) + share,
                format_size(size) if size is not None else "?",
            )
        console.print(table)


def route_command(
    src: str = typer.Argument(..., help="The cell the message starts from."),
    dst: str = typer.Argument(..., help="The cell it goes to."),
    config: Path = ConfigOption,
    timeout: float = typer.Option(5.0, "--timeout", "-t", min=0.001, help="Seconds to wait for the answer."),
    as_json: bool = typer.Option(False, "--json", help="Print the route as JSON."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True),
) -> None:
    """Show the path a message from SRC to DST takes, as recorded by each hop."""
    setup_logging(verbose)
    cfg = load(config)
    _names(src, dst)
    try:
        data, note = asyncio.run(_ask(cfg, src, TRACE_TOPIC, dst.encode(), timeout))
    except CellnetError as exc:
        raise fail(f"route {src} -> {dst} failed: {type(exc).__name__}: {exc}") from None
    if "error" in data:
        raise fail(f"route {src} -> {dst} failed: {data['error']}")
    if as_json:
        typer.echo(json.dumps(data))
        return
    if note:
        err_console.print(escape(note), highlight=False)
    typer.echo(f"route: {' -> '.join(data['route'])}")
    typer.echo(f"back:  {' -> '.join(data['back'])}")
    typer.echo(f"rtt:   {data['rtt_us'] / 1000:.3f} ms")
