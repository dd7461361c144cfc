"""The body of ``cellnet flower run``: progress and results on the terminal.

Kept apart from :mod:`cellnet.cli.flower` so that ``cellnet --help`` does not
import the bridge (and its optional dependencies).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import err_console

console = Console(soft_wrap=True)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _metrics_text(metrics: dict[str, object] | None) -> str:
    if not metrics:
        return ""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())


def run_app(
    app_dir: Path,
    *,
    clients: int,
    rounds: int | None,
    out: Path | None,
    mode: Literal["direct", "bus"],
    driver: str,
    run_config: list[str],
    workdir: Path | None,
) -> int:
    """Run the federation; print progress and the final metrics. Returns the exit code."""
    try:
        from cellnet.bridge.flower.errors import FlowerBridgeError
        from cellnet.bridge.flower.federation import Stage, run_federation_sync
        from cellnet.bridge.flower.metrics import RoundFinished, RoundStarted, RunStarted, ServerAppFailed
    except ImportError as exc:
        err_console.print(
            "[bold red]error:[/] "
            + escape(
                f"the Flower bridge needs extra packages ({exc.name} is missing); "
                'install them with: pip install "cellnet[flower]"'
            ),
            highlight=False,
        )
        return 2

    from cellnet.bridge.flower.app import load_app

    try:
        load_app(app_dir)  # a folder that is no Flower app fails before anything starts
    except FlowerBridgeError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return 2
    how = "directly (no bus)" if mode == "direct" else f"over the bus ({driver} on loopback)"
    console.print(f"[bold]cellnet flower run[/] {escape(str(app_dir))} with {clients} clients, {how}", highlight=False)

    def on_event(event: object) -> None:
        if isinstance(event, Stage):
            console.print(f"  [dim]{event.name}[/] {escape(event.detail)}", highlight=False)
        elif isinstance(event, RunStarted):
            console.print(f"  run {event.run_id} started", highlight=False)
        elif isinstance(event, RoundStarted):
            console.print(f"[bold]round {event.round}/{event.total}[/]", highlight=False)
        elif isinstance(event, RoundFinished):
            m = event.metrics
            for phase, values in (("train", m.train), ("evaluate", m.evaluate), ("central", m.central)):
                if values:
                    console.print(f"  {phase:<8} {escape(_metrics_text(values))}", highlight=False)
        elif isinstance(event, ServerAppFailed):
            err_console.print(f"[red]ServerApp:[/] {escape(event.line)}", highlight=False)

    try:
        result = run_federation_sync(
            app_dir,
            clients=clients,
            rounds=rounds,
            mode=mode,
            driver=driver,
            run_config=run_config,
            out=out,
            workdir=workdir,
            on_event=on_event,
        )
    except FlowerBridgeError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        for note in getattr(exc, "__notes__", []):
            err_console.print(f"  {escape(str(note))}", highlight=False)
        return 1

    metrics = result.metrics
    if metrics.error:
        err_console.print(f"[bold red]the run failed:[/] {escape(str(metrics.error))}", highlight=False)
        return 1
    table = Table(title=f"{result.app}: {len(metrics.rounds)} rounds, {result.clients} clients, {result.mode}")
    table.add_column("round", justify="right")
    keys: list[tuple[str, str]] = []
    for r in metrics.rounds:
        for phase, values in (("train", r.train), ("evaluate", r.evaluate), ("central", r.central)):
            for k in values or {}:
                if (phase, k) not in keys:
                    keys.append((phase, k))
    for _, k in keys:
        table.add_column(k, justify="right")
    for r in metrics.rounds:
        row = [str(r.round)]
        for phase, k in keys:
            values = {"train": r.train, "evaluate": r.evaluate, "central": r.central}[phase] or {}
            row.append(_fmt(values.get(k, "")))
        table.add_row(*row)
    console.print(table)
    console.print(f"wall time {result.wall_time_s:.1f} s", highlight=False)
    if out is not None:
        console.print(f"metrics written to {escape(str(out))}", highlight=False)
    if result.leftover_pids:
        err_console.print(f"[yellow]warning:[/] processes left behind: {result.leftover_pids}")
    return 0
