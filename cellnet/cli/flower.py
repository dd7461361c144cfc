"""``cellnet flower ...``: run Flower apps over the bus."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import err_console, setup_logging

#: transports a local federation can run on (plain, on loopback)
LOCAL_DRIVERS = ("tcp", "grpc", "http", "redis")

app = typer.Typer(help="Run unmodified Flower apps over the bus.", no_args_is_help=True)


@app.command("run")
def run_command(
    app_dir: Path = typer.Argument(..., help="Folder of a Flower app (its pyproject.toml has [tool.flwr.app])."),
    clients: int = typer.Option(2, "--clients", "-n", min=1, help="Number of SuperNodes (client cells)."),
    rounds: int | None = typer.Option(None, "--rounds", "-r", min=1, help="Rounds (sets num-server-rounds)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the round metrics as JSON here."),
    direct: bool = typer.Option(False, "--direct", help="Bypass the bus: SuperNodes talk to the SuperLink directly."),
    driver: str = typer.Option(
        "tcp",
        "--driver",
        help="Bus transport: tcp, grpc, http (WebSocket) or redis (starts a private redis-server).",
    ),
    run_config: list[str] = typer.Option([], "--run-config", help="Extra run config, KEY=VALUE (repeatable)."),
    workdir: Path | None = typer.Option(None, "--workdir", help="Keep logs and configs here (default: a temp folder)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True),
) -> None:
    """Run a Flower app on a local federation: SuperLink, N SuperNodes, and the bus between them."""
    setup_logging(verbose)
    if driver not in LOCAL_DRIVERS:
        err_console.print(
            f"[bold red]error:[/] --driver {driver!r}: expected one of {', '.join(LOCAL_DRIVERS)}",
            highlight=False,
        )
        raise typer.Exit(2)
    from .flower_run import run_app

    try:
        code = run_app(
            app_dir,
            clients=clients,
            rounds=rounds,
            out=out,
            mode="direct" if direct else "bus",
            driver=driver,
            run_config=run_config,
            workdir=workdir,
        )
    except KeyboardInterrupt:
        err_console.print("interrupted; everything was stopped")
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)
