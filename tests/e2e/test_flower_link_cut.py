"""The main job survives a cut link: the link between site-1 and the server
goes through a proxy that is shut for 5 seconds in the middle of round 2.
The run completes with the same per-round metrics as a direct run (the
bridge's reliable requests wait for the link; the SuperNode sees slow calls,
never a lost or repeated one)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cellnet.bridge.flower.federation import FederationResult, run_federation
from cellnet.bridge.flower.metrics import RoundStarted
from tests.proxy import FaultProxy

APP = Path(__file__).resolve().parents[2] / "examples" / "flower-digits"
CLIENTS = 2
ROUNDS = 3
CUT_SECONDS = 5.0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[FederationResult, FederationResult, FaultProxy]:
    base = tmp_path_factory.mktemp("flower-cut")
    proxies: list[FaultProxy] = []
    cuts: list[asyncio.Task[None]] = []

    def through_proxy(name: str, url: str) -> str:
        if name != "site-1":
            return url
        proxy = FaultProxy(int(url.rsplit(":", 1)[1]))
        proxies.append(proxy)
        asyncio.get_running_loop().create_task(proxy.open())
        return f"tcp://127.0.0.1:{proxy.port}"

    async def cut_link() -> None:
        await asyncio.sleep(1.0)  # well inside the round
        await proxies[0].shut()
        await asyncio.sleep(CUT_SECONDS)
        await proxies[0].open()

    def on_event(event: object) -> None:
        if isinstance(event, RoundStarted) and event.round == 2 and not cuts:
            cuts.append(asyncio.get_running_loop().create_task(cut_link()))

    async def both() -> tuple[FederationResult, FederationResult]:
        direct, cut = await asyncio.gather(
            run_federation(APP, clients=CLIENTS, rounds=ROUNDS, workdir=base / "direct"),
            run_federation(
                APP, clients=CLIENTS, rounds=ROUNDS, mode="bus", workdir=base / "cut",
                site_parent=through_proxy, on_event=on_event,
            ),
        )
        await asyncio.gather(*cuts)
        for proxy in proxies:
            await proxy.shut()
        return direct, cut

    direct, cut = asyncio.run(both())
    assert cuts, "round 2 never started"
    return direct, cut, proxies[0]


@pytest.mark.e2e
def test_cut_link_gives_the_direct_run_metrics(runs: tuple[FederationResult, FederationResult, FaultProxy]) -> None:
    direct, cut, proxy = runs
    assert cut.metrics.finished and cut.metrics.error is None
    assert [r.to_dict() for r in cut.metrics.rounds] == [r.to_dict() for r in direct.metrics.rounds]
    # site-1 really lost its link and linked again through the proxy.
    assert proxy.connections >= 2
    log = (cut.run_dir / "logs" / "cell-site-1.log").read_text()  # type: ignore[operator]
    assert "link to server ended" in log
    assert cut.leftover_pids == []
