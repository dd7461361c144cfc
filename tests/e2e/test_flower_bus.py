"""Run ``examples/flower-digits`` over the bus and compare it with a direct run.

Three federations run at the same time (Flower polls every 3 s, so a run is
mostly waiting):

* the app directly, SuperNodes to SuperLink;
* the same app with the same seeds over the bus (TCP on loopback): every
  Fleet call crosses a client cell, the server cell and back;
* one round of the same app with a model of about 24 MB over the bus.

The first two must give bit-identical metrics in every round.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from cellnet.bridge.flower.federation import FederationResult, run_federation

APP = Path(__file__).resolve().parents[2] / "examples" / "flower-digits"
CLIENTS = 2
ROUNDS = 3
WIDE = 80_000
"""Hidden units of the large model: 64*W + W + W*10 + 10 float32 parameters."""

MB = 1_000_000


def model_bytes(hidden_units: int) -> int:
    """Bytes of float32 parameters of the digits MLP (see the app's task.py)."""
    return 4 * (64 * hidden_units + hidden_units + hidden_units * 10 + 10)


@dataclass
class Runs:
    direct: FederationResult
    bus: FederationResult
    large: FederationResult
    workdirs: dict[str, Path]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("flower-bus")
    workdirs = {name: base / name for name in ("direct", "bus", "large")}

    async def all_runs() -> tuple[FederationResult, ...]:
        return await asyncio.gather(
            run_federation(APP, clients=CLIENTS, rounds=ROUNDS, workdir=workdirs["direct"]),
            run_federation(
                APP, clients=CLIENTS, rounds=ROUNDS, mode="bus", workdir=workdirs["bus"]
            ),
            run_federation(
                APP, clients=CLIENTS, rounds=1, mode="bus", workdir=workdirs["large"],
                run_config={"hidden-units": WIDE, "local-epochs": 1},
            ),
        )

    direct, bus, large = asyncio.run(all_runs())
    return Runs(direct, bus, large, workdirs)


def carried(log: Path) -> tuple[int, float, float]:
    """(calls, MB out, MB in) from a cell's closing ``bridge carried`` log line."""
    text = log.read_text(encoding="utf-8", errors="replace")
    found = re.findall(r"bridge carried (\d+) calls, ([\d.]+) MB out, ([\d.]+) MB in", text)
    assert found, f"no bridge summary in {log}:\n{text[-2000:]}"
    calls, out, into = found[-1]
    return int(calls), float(out), float(into)


@pytest.mark.e2e
def test_bus_run_equals_direct_run(runs: Runs) -> None:
    direct, bus = runs.direct.metrics, runs.bus.metrics
    assert runs.bus.mode == "bus" and runs.bus.driver == "tcp"
    assert bus.finished and bus.error is None and len(bus.rounds) == ROUNDS
    assert bus.initial_central == direct.initial_central
    assert [r.to_dict() for r in bus.rounds] == [r.to_dict() for r in direct.rounds]
    assert bus.rounds[-1].evaluate is not None and bus.rounds[-1].evaluate["eval_acc"] > 0.8


@pytest.mark.e2e
def test_fleet_calls_crossed_the_bus(runs: Runs) -> None:
    logs = runs.workdirs["bus"] / "logs"
    server_calls = carried(logs / "cell-server.log")[0]
    site_calls = [carried(logs / f"cell-site-{i}.log")[0] for i in range(1, CLIENTS + 1)]
    # Every SuperNode registered, pulled, pushed through its own cell; the
    # server cell replayed each call (it may see retries, never fewer).
    assert all(calls > 10 for calls in site_calls), site_calls
    assert server_calls >= sum(site_calls)
    # Each SuperNode was pointed at its own cell's local server, never at
    # the SuperLink (the first log line is the command that was started).
    superlink_port = first_line_arg(logs / "superlink.log", "--port")
    for i in range(1, CLIENTS + 1):
        address = first_line_arg(logs / f"supernode-{i}.log", "--superlink")
        site = (runs.workdirs["bus"] / f"site-{i}.toml").read_text()
        assert f'listen = "{address}"' in site
        assert not address.endswith(f":{superlink_port}")


def first_line_arg(log: Path, option: str) -> str:
    argv = log.read_text(encoding="utf-8").splitlines()[0].split()
    return argv[argv.index(option) + 1]


@pytest.mark.e2e
def test_large_model_crosses_the_bus(runs: Runs) -> None:
    size = model_bytes(WIDE)
    assert size > 20 * MB
    metrics = runs.large.metrics
    assert metrics.finished and metrics.error is None and len(metrics.rounds) == 1
    assert runs.large.run_config["hidden-units"] == WIDE
    assert metrics.rounds[0].evaluate is not None
    assert metrics.rounds[0].evaluate["eval_acc"] > 0.5
    logs = runs.workdirs["large"] / "logs"
    for i in range(1, CLIENTS + 1):
        _, out_mb, in_mb = carried(logs / f"cell-site-{i}.log")
        # Each site pulled the global model twice (train, evaluate) and
        # pushed its update once.
        # (The log rounds to 0.1 MB.)
        assert in_mb * MB >= 2 * size - 0.1 * MB, (i, in_mb)
        assert out_mb * MB >= size - 0.1 * MB, (i, out_mb)


@pytest.mark.e2e
def test_nothing_left_running(runs: Runs) -> None:
    for result in (runs.direct, runs.bus, runs.large):
        assert result.leftover_pids == []
