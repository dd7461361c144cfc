"""Run a Flower app on a local federation, directly or over the bus.

:func:`run_federation` starts everything a federation needs on this machine,
submits the app, streams its progress and stops everything again::

    direct:  flwr run ──► SuperLink ◄── SuperNode x N

    bus:     flwr run ──► SuperLink ◄── server cell ◄══ bus ══► client cell i ◄── SuperNode i
                                       (superlink=)            (listen = LGS port)

In bus mode the SuperNodes never see the SuperLink: each talks to the local
Fleet server of its client cell (``site-1`` .. ``site-N``), and the server
cell forwards the calls to the SuperLink. Start order, each step waiting for
the previous one to be ready (a port that accepts connections, never a fixed
sleep): SuperLink, server cell, client cells, SuperNodes.

Every process gets its own ``FLWR_HOME`` and log file under the run folder;
the app is copied there before submission (``flwr run`` may rewrite a
``pyproject.toml``). Whatever happens (an error, Ctrl-C, SIGTERM through
:func:`run_federation_sync`), all processes and their children are stopped
before the call returns. Run folder layout::

    RUN/app/                   copy of the app that is submitted
    RUN/logs/<process>.log     superlink, supernode-1.., cell-server, cell-site-1.., flwr-run
    RUN/home/<process>/        FLWR_HOME of each Flower process (home/cli: the flwr CLI)
    RUN/server.toml, RUN/site-<i>.toml    cell configs (bus mode)

The app's run config is resolved as :mod:`~.app` describes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar

from .app import (
    FlowerInstall,
    RunConfigValue,
    find_flower,
    format_run_config,
    load_app,
    resolve_run_config,
)
from .errors import InvalidRunConfig, RunFailed
from .metrics import SCHEMA, RunMetrics, StreamEvent, StreamParser
from .procs import LOCALHOST, ManagedProcess, PortAllocator, ProcessGroup

#: drivers whose cells meet at a broker that the run starts (no listen port)
BROKERED = frozenset({"redis"})
#: the Redis key namespace of a local federation's bus
BUS_NAMESPACE = "cellnet-flower"
#: what ``cellnet run`` prints once its cell is started
CELL_READY = " running ("

_log = logging.getLogger(__name__)

Mode: TypeAlias = Literal["direct", "bus"]
CONNECTION = "local-deploy"
"""Name of the connection written into the flwr CLI's ``config.toml``."""

DEFAULT_FLOWER_ENV: Mapping[str, str] = {
    # A local test federation has no business phoning home.
    "FLWR_TELEMETRY_ENABLED": "0",
    # SuperExec polls for new tasks every second by default; each round has a
    # train and an evaluate task per node, so this shortens every round.
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
}
"""Environment for Flower processes; values already in ``os.environ`` win."""

_REGISTERED = "SuperNode ID:"
"""SuperNode log line written once it registered with the SuperLink (flwr 1.42)."""

_COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
)


# -- outputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """Progress of the federation itself (processes starting, run submitted)."""

    name: str
    detail: str = ""


FederationEvent: TypeAlias = StreamEvent | Stage
EventCallback: TypeAlias = Callable[[FederationEvent], None]


@dataclass
class FederationResult:
    """What a federation run produced. :meth:`to_dict` is the ``--out`` document."""

    app: str
    mode: Mode
    driver: str | None
    clients: int
    run_config: dict[str, RunConfigValue]
    flwr_version: str
    wall_time_s: float
    metrics: RunMetrics
    run_dir: Path | None = None
    """The run folder if it was kept (a given ``workdir``, or ``keep_workdir``)."""
    leftover_pids: list[int] = field(default_factory=list)
    """Processes that survived the stop (should be empty)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "app": self.app,
            "mode": self.mode,
            "driver": self.driver,
            "clients": self.clients,
            "run_config": self.run_config,
            "flwr_version": self.flwr_version,
            "wall_time_s": round(self.wall_time_s, 3),
            **self.metrics.to_dict(),
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


# -- the runner ------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    root: Path

    @property
    def app(self) -> Path:
        return self.root / "app"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def home(self, name: str) -> Path:
        return self.root / "home" / name


async def run_federation(
    app_dir: str | Path,
    *,
    clients: int = 2,
    rounds: int | None = None,
    mode: Mode = "direct",
    run_config: Mapping[str, RunConfigValue] | Sequence[str] | None = None,
    out: Path | None = None,
    workdir: Path | None = None,
    keep_workdir: bool = False,
    driver: str = "tcp",
    site_parent: Callable[[str, str], str] | None = None,
    on_event: EventCallback | None = None,
    startup_timeout: float = 90.0,
    run_timeout: float = 3600.0,
    python: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> FederationResult:
    """Run ``app_dir`` on ``clients`` local SuperNodes and return its round metrics.

    ``mode="bus"`` routes the SuperNodes through cells (``python -m cellnet
    run``) using the ``driver`` URL scheme; ``"direct"`` connects them to the
    SuperLink. ``run_config`` overrides keys of ``[tool.flwr.app.config]``
    (a mapping, or ``KEY=VALUE`` strings). ``on_event`` receives
    :class:`Stage` and :mod:`~.metrics` events as they happen. ``out`` gets
    the JSON document described in :mod:`~.metrics`. ``site_parent(name,
    url)`` may replace the parent URL a client cell dials (for example to
    route one site through a proxy in tests); it is called once per site.

    The run folder is ``workdir`` if given (kept), else a temporary folder
    that is removed after a successful run unless ``keep_workdir``; after a
    failure it is kept and its path is added to the error as a note.

    Raises :class:`~.errors.NotAFlowerApp`, :class:`~.errors.InvalidRunConfig`,
    :class:`~.errors.FlowerNotInstalled`, :class:`~.errors.ProcessFailed` (a
    process died or did not start; with its log tail) and
    :class:`~.errors.RunFailed`.
    """
    started = time.monotonic()
    app = load_app(app_dir)
    if clients < 1:
        raise InvalidRunConfig(f"clients must be >= 1, got {clients}")
    if mode not in ("direct", "bus"):
        raise InvalidRunConfig(f"mode must be 'direct' or 'bus', got {mode!r}")
    overrides = resolve_run_config(app, clients=clients, rounds=rounds, run_config=run_config)
    flower = find_flower(python)
    emit = on_event or (lambda event: None)

    owned = workdir is None
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="cellnet-flower-"))
    root.mkdir(parents=True, exist_ok=True)
    layout = _Layout(root.resolve())
    flower_env = {k: os.environ.get(k, v) for k, v in DEFAULT_FLOWER_ENV.items()}
    flower_env.update(env or {})

    try:
        procs = ProcessGroup(layout.logs, env=flower_env, python=python)
        async with procs:
            runner = _Runner(procs, flower, layout, emit, startup_timeout, python, site_parent)
            app_copy = runner.copy_app(app.path)
            superlink_port = await runner.start_superlink()
            if mode == "bus":
                fleet = await runner.start_cells(clients, superlink_port, driver)
            else:
                fleet = [f"{LOCALHOST}:{superlink_port}"] * clients
            await runner.start_supernodes(fleet)
            runner.write_cli_config(superlink_port)
            metrics = await runner.run_app(app_copy, overrides, run_timeout)
        leftovers = procs.leftovers
        if leftovers:
            _log.warning("processes still running after the stop: %s", leftovers)
    except BaseException as exc:
        exc.add_note(f"logs and configs of this run: {layout.root}")
        raise

    kept = not owned or keep_workdir
    if not kept:
        shutil.rmtree(layout.root, ignore_errors=True)
    result = FederationResult(
        app=app.name,
        mode=mode,
        driver=driver if mode == "bus" else None,
        clients=clients,
        run_config=overrides,
        flwr_version=flower.version,
        wall_time_s=time.monotonic() - started,
        metrics=metrics,
        run_dir=layout.root if kept else None,
        leftover_pids=leftovers,
    )
    if out is not None:
        result.write_json(Path(out))
    return result


def run_federation_sync(app_dir: str | Path, **kwargs: Any) -> FederationResult:
    """Blocking :func:`run_federation` that cleans up on Ctrl-C and SIGTERM.

    Ctrl-C raises ``KeyboardInterrupt``, SIGTERM ``SystemExit(143)`` and
    SIGHUP ``SystemExit(129)``, in every case after every process was
    stopped.
    """
    return asyncio.run(_with_sigterm(run_federation(app_dir, **kwargs)))


_T = TypeVar("_T")


#: signals that stop a run cleanly: SIGTERM, and SIGHUP (the terminal or
#: SSH session closed; the children run in sessions of their own and would
#: never hear of it)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


async def _with_sigterm(work: Awaitable[_T]) -> _T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if task is not None:
            task.cancel()

    installed: list[int] = []
    for sig in _STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or no such signal on this platform
    try:
        return await work
    except asyncio.CancelledError:
        if received:
            raise SystemExit(128 + received[0]) from None
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


class _Runner:
    """The steps of one federation run, sharing its process group and ports."""

    def __init__(
        self,
        procs: ProcessGroup,
        flower: FlowerInstall,
        layout: _Layout,
        emit: EventCallback,
        startup_timeout: float,
        python: str | Path | None,
        site_parent: Callable[[str, str], str] | None = None,
    ) -> None:
        self.site_parent = site_parent
        self.procs = procs
        self.flower = flower
        self.layout = layout
        self.emit = emit
        self.timeout = startup_timeout
        self.python = str(python or sys.executable)
        self.ports = PortAllocator(LOCALHOST)
        self.cli_home = layout.home("cli")

    def copy_app(self, source: Path) -> Path:
        target = self.layout.app
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=_COPY_IGNORE)
        return target

    async def start_superlink(self) -> int:
        self.emit(Stage("superlink", "starting"))

        def argv(port: int) -> list[str]:
            return [
                self.flower.command("flower-superlink"),
                "--insecure",
                "--host",
                LOCALHOST,
                "--port",
                str(port),
                # Apps run in this environment: never `uv sync` at run time.
                "--disable-runtime-dependency-installation",
            ]

        _, port = await self.procs.start_listening(
            "superlink",
            argv,
            self.ports,
            flwr_home=self.layout.home("superlink"),
            timeout=self.timeout,
        )
        self.emit(Stage("superlink", f"ready on {LOCALHOST}:{port}"))
        return port

    async def start_cells(self, clients: int, superlink_port: int, driver: str) -> list[str]:
        """Start the server cell and the client cells; return each SuperNode's Fleet address."""
        root = self.layout.root

        def cell(config: Path) -> list[str]:
            return [self.python, "-m", "cellnet", "run", "-c", str(config)]

        def server_argv(listen: str) -> list[str]:
            path = root / "server.toml"
            path.write_text(server_cell_config(listen, superlink_port), encoding="utf-8")
            return cell(path)

        self.emit(Stage("cells", "starting the server cell"))
        if driver in BROKERED:
            # Cells meet at a broker: start a private one; the server cell
            # opens no port, so its readiness is its start-up line.
            broker = await self.start_redis()
            listen, parent = f"{broker}?ns={BUS_NAMESPACE}", f"{broker}?ns={BUS_NAMESPACE}&cell=server"
            proc = self.procs.start("cell-server", server_argv(listen))
            await self.procs.wait_until(
                proc, lambda: _log_says(proc.log_path, CELL_READY), what="running", timeout=self.timeout
            )
        else:
            _, bus_port = await self.procs.start_listening(
                "cell-server",
                lambda port: server_argv(f"{driver}://{LOCALHOST}:{port}"),
                self.ports,
                timeout=self.timeout,
            )
            parent = f"{driver}://{LOCALHOST}:{bus_port}"

        async def start_site(index: int) -> str:
            name = f"site-{index}"
            dial = self.site_parent(name, parent) if self.site_parent is not None else parent

            def site_argv(port: int) -> list[str]:
                path = root / f"{name}.toml"
                path.write_text(site_cell_config(name, dial, port), encoding="utf-8")
                return cell(path)

            _, lgs_port = await self.procs.start_listening(
                f"cell-{name}", site_argv, self.ports, timeout=self.timeout
            )
            return f"{LOCALHOST}:{lgs_port}"

        self.emit(Stage("cells", f"starting {clients} client cells"))
        fleet = await _all([start_site(i) for i in range(1, clients + 1)])
        self.emit(Stage("cells", f"ready: client cells dial {parent}"))
        return fleet

    async def start_redis(self) -> str:
        """Start a private redis-server for the ``redis`` driver; return its URL."""
        from cellnet.drivers.redis_server import HOW_TO_INSTALL, find_redis_server, private_server_args

        binary = find_redis_server()
        if binary is None:
            raise InvalidRunConfig(f"--driver redis: {HOW_TO_INSTALL}")
        folder = self.layout.root / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        _, port = await self.procs.start_listening(
            "redis-server", lambda port: private_server_args(binary, port, folder), self.ports, timeout=self.timeout
        )
        self.emit(Stage("cells", f"redis-server ready on {LOCALHOST}:{port}"))
        return f"redis://{LOCALHOST}:{port}/0"

    async def start_supernodes(self, fleet: Sequence[str]) -> None:
        clients = len(fleet)
        self.emit(Stage("supernodes", f"starting {clients}"))

        async def start(index: int, address: str) -> None:
            log_path = self.layout.logs / f"supernode-{index + 1}.log"

            async def registered_check() -> bool:
                return _log_contains(log_path, _REGISTERED)

            def argv(port: int) -> list[str]:
                return [
                    self.flower.command("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    address,
                    # The SuperNode's own runtime API; unique per SuperNode.
                    "--port",
                    str(port),
                    "--node-config",
                    f"partition-id={index} num-partitions={clients}",
                ]

            await self.procs.start_listening(
                f"supernode-{index + 1}",
                argv,
                self.ports,
                flwr_home=self.layout.home(f"supernode-{index + 1}"),
                timeout=self.timeout,
                ready=("registered with the SuperLink", registered_check),
            )

        await _all([start(i, address) for i, address in enumerate(fleet)])
        self.emit(Stage("supernodes", f"{clients} registered"))

    def write_cli_config(self, superlink_port: int) -> None:
        self.cli_home.mkdir(parents=True, exist_ok=True)
        (self.cli_home / "config.toml").write_text(
            cli_config(f"{LOCALHOST}:{superlink_port}"), encoding="utf-8"
        )

    async def run_app(
        self, app_copy: Path, overrides: Mapping[str, RunConfigValue], timeout: float
    ) -> RunMetrics:
        """Submit the app with ``flwr run --stream`` and parse its output as it comes."""
        argv = [
            self.flower.command("flwr"),
            "run",
            str(app_copy),
            CONNECTION,
            "--stream",
            *format_run_config(overrides),
        ]
        self.emit(Stage("run", "submitting the app"))
        watched = self.procs.processes
        proc = self.procs.start("flwr-run", argv, flwr_home=self.cli_home, cwd=self.layout.root)
        parser = StreamParser()
        try:
            async with asyncio.timeout(timeout):
                async for line in _follow(proc, lambda: self.procs.check_running(watched)):
                    for event in parser.feed(line):
                        self.emit(event)
        except TimeoutError:
            raise RunFailed(
                f"the run did not finish within {timeout:.0f} s", proc.log_tail()
            ) from None
        for event in parser.close():
            self.emit(event)
        metrics = parser.metrics
        if proc.returncode != 0:
            raise RunFailed(f"flwr run exited with code {proc.returncode}", proc.log_tail())
        # `flwr run --stream` exits with 0 even when the ServerApp failed.
        if metrics.error is not None:
            raise RunFailed(f"the ServerApp failed: {metrics.error}", proc.log_tail())
        if not metrics.finished:
            # No strategy summary (e.g. a custom loop): ask the SuperLink.
            status = await self.run_status(metrics.run_id)
            if status is None or not status.endswith(":completed"):
                raise RunFailed(
                    f"the run ended with status {status or 'unknown'}", proc.log_tail()
                )
        self.emit(Stage("run", "finished"))
        return metrics

    async def run_status(self, run_id: str | None) -> str | None:
        """The SuperLink's status of a run, e.g. ``finished:completed``."""
        if run_id is None:
            return None
        argv = [
            self.flower.command("flwr"), "list", CONNECTION,
            "--run-id", run_id, "--format", "json",
        ]
        proc = self.procs.start("flwr-list", argv, flwr_home=self.cli_home)
        await self.procs.wait_exit(proc, timeout=60.0)
        text = proc.log_path.read_text(encoding="utf-8", errors="replace")
        try:
            # The log starts with our "$ command" line; the JSON follows.
            data = json.loads(text[text.index("{", text.index("\n")) :])
            runs = data.get("runs", [])
            return str(runs[0]["status"]) if runs else None
        except (ValueError, KeyError, IndexError, TypeError):
            return None


# -- config files ----------------------------------------------------------------


def cli_config(address: str) -> str:
    """The flwr CLI's ``$FLWR_HOME/config.toml`` with one insecure connection."""
    return (
        "[superlink]\n"
        f'default = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "{address}"\n'
        "insecure = true\n"
    )


def server_cell_config(listen: str, superlink_port: int) -> str:
    """Config of the server cell: listens for client cells on ``listen``,
    forwards to the SuperLink."""
    return (
        "[cell]\n"
        'name = "server"\n'
        f'listen = ["{listen}"]\n'
        "[flower]\n"
        f'superlink = "{LOCALHOST}:{superlink_port}"\n'
    )


def site_cell_config(name: str, parent: str, lgs_port: int) -> str:
    """Config of a client cell: joins the server at ``parent``, serves a
    Fleet API to its SuperNode."""
    return (
        "[cell]\n"
        f'name = "{name}"\n'
        f'parent = "{parent}"\n'
        "[flower]\n"
        f'listen = "{LOCALHOST}:{lgs_port}"\n'
    )


async def _log_says(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except FileNotFoundError:
        return False


# -- helpers ---------------------------------------------------------------------


async def _all(coros: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run concurrently; on the first failure cancel the rest and raise it as is."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_as_coroutine(c)) for c in coros]
    except BaseExceptionGroup as eg:
        first = eg.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


async def _as_coroutine(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _log_contains(path: Path, needle: str) -> bool:
    try:
        return needle.encode() in path.read_bytes()
    except OSError:
        return False


async def _follow(
    proc: ManagedProcess, check: Callable[[], None], poll: float = 0.1
) -> AsyncIterator[str]:
    """Yield the lines ``proc`` writes to its log until it exits.

    ``check`` runs between polls, so a failure elsewhere (a SuperNode dying)
    ends the wait with its error instead of a hang.
    """
    pending = b""
    with proc.log_path.open("rb") as log:
        while True:
            chunk = log.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace")
                continue
            if not proc.running():
                rest = log.read()
                pending += rest
                if not rest:
                    break
                continue
            check()
            await asyncio.sleep(poll)
    if pending:
        yield pending.decode("utf-8", errors="replace")


__all__ = [
    "CONNECTION",
    "DEFAULT_FLOWER_ENV",
    "FederationEvent",
    "FederationResult",
    "Mode",
    "Stage",
    "cli_config",
    "run_federation",
    "run_federation_sync",
    "server_cell_config",
    "site_cell_config",
]
