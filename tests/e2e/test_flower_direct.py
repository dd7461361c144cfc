"""Run ``examples/flower-digits`` on a real local Flower federation, directly.

The two full runs happen at the same time: determinism must not depend on
timing, and it halves the wall time (Flower polls every 3 s, so a run is
mostly waiting). Two short runs that must fail share the same event loop.

The first tests need no Flower processes: the runner's input checks, the
config files it writes, and the process group on plain Python processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cellnet.bridge.flower import app as flower_app
from cellnet.bridge.flower.app import load_app, resolve_run_config
from cellnet.bridge.flower.errors import (
    FlowerNotInstalled,
    InvalidRunConfig,
    NotAFlowerApp,
    PortInUse,
    ProcessFailed,
    RunFailed,
    StartupTimeout,
)
from cellnet.bridge.flower import federation
from cellnet.bridge.flower.federation import (
    FederationEvent,
    FederationResult,
    Stage,
    run_federation,
)
from cellnet.bridge.flower.metrics import RoundFinished, RunMetrics, RunStarted
from cellnet.bridge.flower.procs import PortAllocator, ProcessGroup, tagged_processes

APP = Path(__file__).resolve().parents[2] / "examples" / "flower-digits"
CLIENTS = 2
ROUNDS = 3


# -- no Flower processes -------------------------------------------------------


def test_folder_without_pyproject_is_not_an_app(tmp_path: Path) -> None:
    with pytest.raises(NotAFlowerApp, match="no pyproject.toml"):
        load_app(tmp_path)


def test_pyproject_without_flower_section_is_not_an_app(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    with pytest.raises(NotAFlowerApp, match=r"\[tool.flwr.app\]"):
        load_app(tmp_path)


def test_example_app_and_run_config() -> None:
    app = load_app(APP)
    assert app.name == "digits-app"
    assert app.config["num-server-rounds"] == 3
    overrides = resolve_run_config(app, clients=4, rounds=5, run_config=["hidden-units=0"])
    # min-nodes follows the number of clients unless given.
    assert overrides == {"hidden-units": 0, "num-server-rounds": 5, "min-nodes": 4}
    assert flower_app.format_run_config({"a": 1, "b": "x y", "c": 0.5, "d": True}) == [
        "--run-config", "a=1",
        "--run-config", 'b="x y"',
        "--run-config", "c=0.5",
        "--run-config", "d=true",
    ]
    with pytest.raises(InvalidRunConfig, match="no-such-key"):
        resolve_run_config(app, clients=2, rounds=None, run_config={"no-such-key": 1})
    with pytest.raises(InvalidRunConfig, match="KEY=VALUE"):
        flower_app.parse_run_config_items(["novalue"])
    assert flower_app.parse_run_config_items(["a=1", "b=text", 'c="q"', "d=2.5"]) == {
        "a": 1, "b": "text", "c": "q", "d": 2.5,
    }


def test_missing_flower_is_reported_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = flower_app.importlib.util.find_spec
    monkeypatch.setattr(
        flower_app.importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a)
    )
    with pytest.raises(FlowerNotInstalled, match=r'pip install "cellnet\[flower\]"'):
        asyncio.run(run_federation(APP, clients=1))


def test_bus_mode_cell_configs_are_valid(tmp_path: Path) -> None:
    from cellnet.config import load_config

    server = tmp_path / "server.toml"
    server.write_text(federation.server_cell_config("tcp://127.0.0.1:7001", 7000))
    assert server.read_text() == (
        '[cell]\nname = "server"\nlisten = ["tcp://127.0.0.1:7001"]\n'
        '[flower]\nsuperlink = "127.0.0.1:7000"\n'
    )
    site = tmp_path / "site-1.toml"
    site.write_text(federation.site_cell_config("site-1", "tcp://127.0.0.1:7001", 7002))
    assert site.read_text() == (
        '[cell]\nname = "site-1"\nparent = "tcp://127.0.0.1:7001"\n'
        '[flower]\nlisten = "127.0.0.1:7002"\n'
    )
    assert load_config(server).cell.is_server
    assert load_config(site).flower is not None


STUBBORN_CHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
STUBBORN_PARENT = f"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", {STUBBORN_CHILD!r}], start_new_session=True)
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("started", flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
async def test_group_stops_a_tree_that_ignores_sigterm(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, stop_timeout=0.5)
    async with group:
        proc = group.start("stubborn", [sys.executable, "-c", STUBBORN_PARENT])

        async def tree_up() -> bool:
            return len(tagged_processes(group.tag)) == 3

        await group.wait_until(proc, tree_up, what="running its children", timeout=20)
    assert group.leftovers == []
    assert tagged_processes(group.tag) == []


async def test_port_taken_meanwhile_is_retried_on_another(tmp_path: Path) -> None:
    ports = PortAllocator()
    holder = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    taken = holder.sockets[0].getsockname()[1]
    server = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1"]
    try:
        async with ProcessGroup(tmp_path) as group:
            proc, port = await group.start_listening(
                "http", lambda p: [*server, str(p)], ports, port=taken, timeout=20
            )
            assert port != taken and proc.running()
            # A server that insists on the taken port fails with its log.
            with pytest.raises(PortInUse) as info:
                await group.start_listening(
                    "stuck", lambda p: [*server, str(taken)], ports, timeout=20, attempts=2
                )
            assert "already in use" in info.value.log_tail.lower()
    finally:
        holder.close()


async def test_death_during_startup_raises_with_the_log_tail(tmp_path: Path) -> None:
    async with ProcessGroup(tmp_path) as group:
        proc = group.start("dies", [sys.executable, "-c", "print('cannot start'); raise SystemExit(3)"])
        with pytest.raises(ProcessFailed, match="code 3") as info:
            await group.wait_port(proc, PortAllocator().take(), timeout=20)
        assert "cannot start" in info.value.log_tail
        quiet = group.start("quiet", [sys.executable, "-c", "import time; time.sleep(60)"])
        with pytest.raises(StartupTimeout):
            await group.wait_port(quiet, PortAllocator().take(), timeout=0.5)


# -- real federations ----------------------------------------------------------


@dataclass
class Runs:
    first: FederationResult
    second: FederationResult
    events: list[FederationEvent]
    workdirs: list[Path]
    out: Path
    serverapp_failure: BaseException | None
    supernode_crash: BaseException | None


def _kill_supernode_once(workdir: Path) -> Callable[[FederationEvent], None]:
    """An event callback that SIGKILLs supernode-1 as soon as the run starts."""
    home = f"FLWR_HOME={workdir / 'home' / 'supernode-1'}".encode()

    def on_event(event: FederationEvent) -> None:
        if not isinstance(event, RunStarted):
            return
        for pid in _pids_with_env(home):
            os.killpg(os.getpgid(pid), signal.SIGKILL)

    return on_event


def _pids_with_env(entry: bytes) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e == entry or e.startswith(entry + b"/") for e in environ):
            pids.append(int(name))
    return pids


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("flower-direct")
    workdirs = [base / name for name in ("run-a", "run-b", "fails", "crash")]
    out = base / "metrics.json"
    events: list[FederationEvent] = []

    async def all_runs() -> list[object]:
        return await asyncio.gather(
            run_federation(
                APP, clients=CLIENTS, rounds=ROUNDS, workdir=workdirs[0], out=out,
                on_event=events.append,
            ),
            run_federation(APP, clients=CLIENTS, rounds=ROUNDS, workdir=workdirs[1]),
            # int("x") in the ServerApp: flwr run still exits with 0.
            run_federation(APP, clients=1, rounds=1, workdir=workdirs[2], run_config={"seed": "x"}),
            run_federation(
                APP, clients=2, rounds=1, workdir=workdirs[3],
                on_event=_kill_supernode_once(workdirs[3]),
            ),
            return_exceptions=True,
        )

    first, second, failure, crash = asyncio.run(all_runs())
    for result in (first, second):
        if isinstance(result, BaseException):
            raise result
    assert isinstance(first, FederationResult) and isinstance(second, FederationResult)
    return Runs(
        first, second, events, workdirs, out,
        failure if isinstance(failure, BaseException) else None,
        crash if isinstance(crash, BaseException) else None,
    )


@pytest.mark.e2e
def test_three_rounds_of_metrics(runs: Runs) -> None:
    metrics = runs.first.metrics
    assert metrics.num_rounds == ROUNDS and metrics.finished and metrics.error is None
    assert [r.round for r in metrics.rounds] == [1, 2, 3]
    for r in metrics.rounds:
        assert r.train is not None and "train_loss" in r.train
        assert r.evaluate is not None and {"eval_loss", "eval_acc"} <= set(r.evaluate)
        assert r.central is not None and {"central_loss", "central_acc"} <= set(r.central)
        assert all(p.received == CLIENTS and p.failed == 0 for p in r.replies.values())
    assert runs.first.mode == "direct" and runs.first.clients == CLIENTS
    assert runs.first.run_config == {"num-server-rounds": ROUNDS, "min-nodes": CLIENTS}


@pytest.mark.e2e
def test_model_learns(runs: Runs) -> None:
    metrics = runs.first.metrics
    losses = [r.train["train_loss"] for r in metrics.rounds if r.train]
    assert losses == sorted(losses, reverse=True)
    final = metrics.rounds[-1]
    # Ten classes: chance is 0.1. This model reaches about 0.9 in 3 rounds.
    assert final.evaluate is not None and final.evaluate["eval_acc"] > 0.8
    assert final.central is not None and final.central["central_acc"] > 0.8
    assert metrics.initial_central is not None
    assert metrics.initial_central["central_acc"] < 0.3


@pytest.mark.e2e
def test_direct_runs_are_bit_identical(runs: Runs) -> None:
    a, b = runs.first.metrics, runs.second.metrics
    assert a.run_id != b.run_id
    assert a.initial_central == b.initial_central
    assert [r.to_dict() for r in a.rounds] == [r.to_dict() for r in b.rounds]


@pytest.mark.e2e
def test_no_process_is_left_behind(runs: Runs) -> None:
    assert runs.first.leftover_pids == [] and runs.second.leftover_pids == []
    for workdir in runs.workdirs:
        home = f"FLWR_HOME={workdir / 'home'}".encode()
        assert _pids_with_env(home) == [], f"processes of {workdir} still running"
        assert (workdir / "logs" / "superlink.log").exists()


@pytest.mark.e2e
def test_progress_events_and_json_report(runs: Runs) -> None:
    stages = [e.name for e in runs.events if isinstance(e, Stage)]
    assert stages[0] == "superlink" and stages[-1] == "run"
    finished = [e.metrics.round for e in runs.events if isinstance(e, RoundFinished)]
    assert finished == [1, 2, 3]

    report = json.loads(runs.out.read_text())
    assert report["schema"] == "cellnet.flower.metrics/1"
    assert report["app"] == "digits-app" and report["mode"] == "direct"
    assert report["clients"] == CLIENTS and report["flwr_version"].startswith("1.42")
    assert report["wall_time_s"] > 0
    assert RunMetrics.from_dict(report) == runs.first.metrics


@pytest.mark.e2e
def test_serverapp_failure_raises_run_failed(runs: Runs) -> None:
    error = runs.serverapp_failure
    assert isinstance(error, RunFailed), error
    assert "ServerApp failed" in str(error)
    assert "invalid literal for int()" in error.log_tail


@pytest.mark.e2e
def test_supernode_crash_raises_process_failed(runs: Runs) -> None:
    error = runs.supernode_crash
    assert isinstance(error, ProcessFailed), error
    assert error.name == "supernode-1"
    assert "logs and configs of this run" in "".join(getattr(error, "__notes__", []))
