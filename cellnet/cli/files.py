"""``cellnet send-file PATH TARGET`` and ``cellnet receive DIR``: files over the bus.

Both are thin wrappers of :mod:`cellnet.files`: ``receive`` runs the config's
cell like ``cellnet run`` and serves a folder; ``send-file`` joins the bus like
``cellnet ping`` and puts one file into the folder some cell serves.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ..config import Config
from ..errors import CellnetError, ConfigError, NoHandler
from ..files import MIN_RATE, FolderInUse, SentFile, send_file, serve_files
from ..names import validate_name
from ..sizes import format_size
from .common import ConfigOption, err_console, fail, join, load, setup_logging
from .run import serve


def send_file_command(
    path: Path = typer.Argument(..., help="The file to send.", show_default=False),
    target: str = typer.Argument(..., help="The cell that receives it (runs `cellnet receive`)."),
    config: Path = ConfigOption,
    name: str | None = typer.Option(
        None, "--name", help="Name to store the file under (default: its own name)."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", "-t", min=0.001,
        help=f"Budget for the whole transfer, seconds (default: the config's request timeout,"
        f" or longer for a large file: size / {MIN_RATE / 1e6:g} MB/s).",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True),
) -> None:
    """Send the file PATH to the folder TARGET serves; show progress, print its SHA-256.

    Exits 0 when TARGET holds the file and the hash it verified equals the
    local one, 1 when the transfer failed or was refused, 2 for a missing
    file or a bad config.
    """
    setup_logging(verbose)
    cfg = load(config)
    try:
        validate_name(target)
    except ConfigError as exc:
        raise fail(str(exc), 2) from None
    if not path.is_file():
        raise fail(f"{path}: {'not a file' if path.exists() else 'no such file'}", 2)
    if not os.access(path, os.R_OK):
        raise fail(f"{path}: not readable", 2)
    shown = name or path.name  # the name it is stored under
    try:
        result, note = asyncio.run(_send(cfg, target, path, name=name, timeout=timeout))
    except KeyboardInterrupt:
        # The transfer was cancelled: the receiver was told and drops what it got.
        err_console.print(f"interrupted: {escape(shown)} was not sent; {escape(target)} discards the part it got",
                          highlight=False)
        raise typer.Exit(130) from None
    except FileNotFoundError as exc:  # removed after the checks above
        raise fail(str(exc), 2) from None
    except (CellnetError, OSError) as exc:  # OSError: reading the file failed (it shrank, say)
        if as_json:
            typer.echo(json.dumps({"target": target, "error": type(exc).__name__, "message": str(exc)}))
        hint = f" (is `cellnet receive` running on {target}?)" if isinstance(exc, NoHandler) else ""
        raise fail(f"send-file {shown} to {target} failed: {type(exc).__name__}: {exc}{hint}") from None
    if note:
        err_console.print(escape(note), highlight=False)
    if as_json:
        typer.echo(json.dumps(asdict(result)))
        return
    typer.echo(f"name: {result.name}")
    typer.echo(f"size: {result.size} bytes ({format_size(result.size)})")
    typer.echo(f"sha256: {result.sha256} (verified by {result.target})")
    typer.echo(f"route: {' -> '.join(result.route)}")
    typer.echo(f"{format_size(result.size)} in {result.seconds:.2f} s, {result.mb_per_s:.1f} MB/s")


async def _send(
    cfg: Config, target: str, path: Path, *, name: str | None, timeout: float | None
) -> tuple[SentFile, str | None]:
    size = path.stat().st_size
    cell, note = await join(cfg)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),  # MiB/GiB, as the summary prints sizes
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,  # no bar in logs or pipes
    )
    try:
        with bar:
            task = bar.add_task(escape(f"{name or path.name} -> {target}"), total=size)

            def progress(done: int, total: int | None) -> None:
                bar.update(task, completed=done)

            result = await send_file(cell, target, path, name=name, timeout=timeout, progress=progress)
        return result, note
    finally:
        await cell.aclose()


def receive_command(
    folder: Path = typer.Argument(..., help="Folder to save files into (created if missing).", show_default=False),
    config: Path = ConfigOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a file of the same name."),
    verbose: int = typer.Option(
        1, "--verbose", "-v", count=True, show_default=False,
        help="Log detail: each received file is shown by default; -vv adds debug output.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    """Run the cell of the config and save the files other cells send it into FOLDER.

    A name with a folder in it, a hidden name or, without --overwrite, the
    name of an existing file is refused: the sender's send-file fails.
    """
    setup_logging(0 if quiet else verbose)
    cfg = load(config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"{folder}: cannot use it as a folder: {exc.strerror or exc}", 2) from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise fail(f"{folder}: not a writable folder", 2)
    err_console.print(
        f"saving files sent to {cfg.name} into {escape(str(folder.resolve()))}"
        + (" (overwriting)" if overwrite else ""),
        highlight=False,
    )
    try:
        asyncio.run(serve(cfg, setup=lambda cell: serve_files(cell, folder, overwrite=overwrite)))
    except FolderInUse as exc:
        raise fail(str(exc), 2) from None
    except CellnetError as exc:
        raise fail(str(exc)) from None
