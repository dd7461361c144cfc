"""Pieces shared by the CLI commands: logging, config loading, joining the bus."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.markup import escape

from ..cell import Cell
from ..config import Config, load_config
from ..errors import CellnetError, ConfigError, NameInUse

err_console = Console(stderr=True, soft_wrap=True)

ConfigOption = typer.Option(..., "--config", "-c", help="The cell's config file (TOML or JSON).")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


def _dialable(url: str, name: str) -> str:
    """A cell's listen URL made dialable from this host: a wildcard address
    becomes loopback, and a Redis inbox URL names the cell to reach."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in ("0.0.0.0", "::", ""):
        netloc = parts.netloc.replace(host, "127.0.0.1" if host != "::" else "[::1]", 1)
        parts = parts._replace(netloc=netloc)
    if parts.scheme.lower() in ("redis", "rediss"):
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "cell"]
        parts = parts._replace(query=urlencode([*query, ("cell", name)]))
    return urlunsplit(parts)


async def join(config: Config, *, timeout: float | None = None) -> tuple[Cell, str | None]:
    """Join the bus as the config's cell for a short-lived tool.

    A client config joins through its parent; if a cell of that name is live
    already, the tool joins as ``<name>-cli-<pid>`` instead. A server config
    (no parent) joins the live server as ``<name>-cli-<pid>`` through its own
    listen URL. Returns the cell and a note to show, if any.
    """
    wait = timeout if timeout is not None else config.timeouts.connect
    alias = f"{config.name}-cli-{os.getpid()}"
    tls = config.tls.settings() if config.tls is not None else None
    if config.cell.parent:
        cell = Cell(
            config.name,
            parent=config.cell.parent,
            limits=config.limits,
            timeouts=config.timeouts,
            policy=config.policy,
            tls=tls,
        )
        # A live cell of that name refuses ours: expected here, so the
        # cell's warning about it is not shown; the note says what happened.
        cell_log = logging.getLogger("cellnet.cell")
        level = cell_log.level
        cell_log.setLevel(max(level, logging.ERROR))
        try:
            await cell.start(wait_parent=wait)
            return cell, None
        except NameInUse:
            await cell.aclose()
        finally:
            cell_log.setLevel(level)
        parents = config.cell.parent
        note = f"cell {config.name} is live; joined as {alias}"
    else:
        parents = tuple(_dialable(u, config.name) for u in config.cell.listen)
        note = f"joined the live cell {config.name} as {alias}"
    cell = Cell(
        alias, parent=parents, limits=config.limits, timeouts=config.timeouts, policy=config.policy, tls=tls
    )
    try:
        await cell.start(wait_parent=wait)
    except CellnetError:
        await cell.aclose()
        raise
    return cell, note
