"""``cellnet run -c CELL.toml``: run one cell until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Callable

import typer

from ..cell import Cell
from ..config import Config
from ..errors import CellnetError, NameInUse
from rich.markup import escape

from .common import ConfigOption, err_console, fail, load, setup_logging


def run_command(
    config: Path = ConfigOption,
    verbose: int = typer.Option(
        1, "--verbose", "-v", count=True, show_default=False,
        help="Log detail: links and reconnects are shown by default; -vv adds debug output.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    """Run the cell described by the config file until interrupted."""
    setup_logging(0 if quiet else verbose)
    cfg = load(config)
    try:
        asyncio.run(serve(cfg))
    except CellnetError as exc:
        raise fail(str(exc)) from None


async def serve(cfg: Config, setup: Callable[[Cell], None] | None = None) -> None:
    """Start the cell (and any application in its config), wait for a signal, stop.

    ``setup(cell)`` runs before the cell starts, to register handlers (as
    ``cellnet receive`` does) before any message can arrive.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cell = Cell.from_config(cfg)
    if setup is not None:
        setup(cell)
    async with contextlib.AsyncExitStack() as stack:
        await cell.start()
        stack.push_async_callback(cell.aclose)
        if cfg.flower is not None:
            from ..bridge.flower.service import start_bridge

            bridge = await start_bridge(cell, cfg.flower)
            stack.push_async_callback(bridge.aclose)
        where = ", ".join(cell.listen_addresses) or "no listener"
        up = f"parent {', '.join(cfg.cell.parent)}" if cfg.cell.parent else "no parent"
        err_console.print(f"cell [bold]{cell.name}[/] running ({escape(where)}; {escape(up)}); Ctrl-C to stop", highlight=False)
        watch = asyncio.ensure_future(_watch_name(cell, cfg, stop)) if cfg.cell.parent else None
        await stop.wait()
        taken = watch.result() if watch is not None and watch.done() else None
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        err_console.print(f"cell {cell.name} stopping", highlight=False)
    if taken is not None:
        raise taken


async def _watch_name(cell: Cell, cfg: Config, stop: asyncio.Event) -> NameInUse | None:
    """Stop the cell if its parent keeps refusing its name: another cell of
    that name is running. It refuses for a while after a restart too, until
    it notices the cell's previous run is gone (heartbeat_timeout), so only
    a refusal that outlasts that counts."""
    grace = cfg.timeouts.heartbeat_timeout + cfg.timeouts.connect
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline:
        if cell.parent is not None:
            return None
        await asyncio.sleep(0.1)
    refused = cell.name_refused
    if cell.parent is None and refused is not None:
        stop.set()
        return NameInUse(f"{refused}; still after {grace:g} s: is another {cell.name} running?")
    return None
