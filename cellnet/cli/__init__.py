"""The ``cellnet`` command line.

Every command that joins the bus takes ``-c CELL.toml``. Sub-commands live in
their own modules; this one only assembles them.
"""

from __future__ import annotations

import typer

from . import files, inspect, ping, run

app = typer.Typer(
    name="cellnet",
    help="A cell-addressed message bus for federated systems.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("run")(run.run_command)
app.command("ping")(ping.ping_command)
app.command("status")(inspect.status_command)
app.command("route")(inspect.route_command)
app.command("send-file")(files.send_file_command)
app.command("receive")(files.receive_command)


def _add_flower() -> None:
    # The Flower commands import nothing optional until they run.
    from . import flower

    app.add_typer(flower.app, name="flower")


_add_flower()


def _add_bench() -> None:
    # The benchmark harness (benchmarks/, installed as cellnet.benchmarks).
    from ..benchmarks.harness import bench_command

    app.command("bench")(bench_command)


_add_bench()


def main() -> None:
    app()
