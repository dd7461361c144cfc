"""Direct links on the in-memory driver: upgrade, one link per pair, policy,
a dial that fails, fallback to the relay and a new upgrade."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from cellnet.cell import Cell
from cellnet.config import Policy, Timeouts
from cellnet.drivers.memory import MemoryDriver, MemoryNetwork
from cellnet.errors import ConnectError
from cellnet.introspect import status

FAST = Timeouts(
    backoff_initial=0.01, backoff_max=0.05, connect=1.0, handshake=1.0, direct_retry=0.1, direct_retry_max=0.4
)
SITES = Policy(direct=("site-*", "alpha"))


class Bus:
    def __init__(self) -> None:
        self.net = MemoryNetwork()
        self.drivers = {"memory": MemoryDriver(self.net)}
        self.cells: list[Cell] = []

    async def cell(self, name: str, policy: Policy = SITES, listen: bool = True, **kw: object) -> Cell:
        cell = Cell(
            name,
            parent="memory://server",
            listen=(f"memory://{name}",) if listen else (),
            drivers=self.drivers,
            timeouts=FAST,
            policy=policy,
            **kw,  # type: ignore[arg-type]
        )
        self.cells.append(cell)
        await cell.start(wait_parent=2.0)
        return cell

    async def server(self) -> Cell:
        cell = Cell("server", listen=("memory://server",), drivers=self.drivers, timeouts=FAST)
        self.cells.append(cell)
        return await cell.start()


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    b = Bus()
    await b.server()
    yield b
    for cell in reversed(b.cells):
        await cell.aclose()


async def route(a: Cell, b: Cell) -> list[str]:
    reply = await a.request(b.name, "cellnet", "echo", b"x", timeout=2)
    return list(reply.meta["route"])


async def until_direct(a: Cell, b: Cell, timeout: float = 2.0) -> None:
    async def poll() -> None:
        while await route(a, b) != [a.name, b.name]:
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


def peers(cell: Cell) -> list[str]:
    return sorted(cell.peers)


@pytest.mark.parametrize("names", [("site-1", "site-2"), ("alpha", "site-1"), ("site-1", "alpha")])
async def test_upgrade_to_one_direct_link_whatever_the_name_order(bus: Bus, names: tuple[str, str]) -> None:
    a, b = await bus.cell(names[0]), await bus.cell(names[1])
    assert await route(a, b) == [a.name, "server", b.name]  # the first message is relayed
    await until_direct(a, b)
    assert peers(a) == sorted(["server", b.name]) and peers(b) == sorted(["server", a.name])
    assert await route(b, a) == [b.name, a.name]
    roles = {link["peer"]: link["role"] for link in status(a)["links"]}
    assert roles == {"server": "parent", b.name: "direct"}
    assert {link["peer"]: link["role"] for link in status(b)["links"]}[a.name] == "direct"


async def test_simultaneous_offers_give_one_link(bus: Bus) -> None:
    a, b = await bus.cell("site-1"), await bus.cell("site-2")
    for _ in range(3):
        await asyncio.gather(route(a, b), route(b, a))
    await until_direct(a, b)
    await until_direct(b, a)
    assert peers(a) == ["server", "site-2"] and peers(b) == ["server", "site-1"]
    # No extra link was left half-open on the memory network either.
    assert len([link for link in bus.net._links if not link.closed]) == 6


async def test_one_side_without_listener_is_dialed_the_other_way(bus: Bus) -> None:
    a = await bus.cell("site-1", listen=False)
    b = await bus.cell("site-2")
    await route(a, b)
    await until_direct(a, b)
    b2 = await bus.cell("site-3", listen=False)
    for _ in range(5):
        assert await route(b2, a) == ["site-3", "server", "site-1"]  # neither can be dialed
        await asyncio.sleep(0.05)


async def test_policy_of_the_other_side_keeps_traffic_relayed(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    a = await bus.cell("site-1")
    b = await bus.cell("site-2", policy=Policy())
    with caplog.at_level(logging.INFO, logger="cellnet.direct"):
        for _ in range(10):
            assert await route(a, b) == ["site-1", "server", "site-2"]
            await asyncio.sleep(0.02)
    refusals = [r for r in caplog.records if "no direct link to site-2" in r.getMessage()]
    assert len(refusals) == 1 and "policy" in refusals[0].getMessage()


async def test_a_link_the_policy_does_not_allow_is_refused(bus: Bus) -> None:
    a = await bus.cell("site-1", policy=Policy(direct=("site-2",)))
    intruder = Cell("mallory", parent="memory://site-1", drivers=bus.drivers, timeouts=FAST)
    bus.cells.append(intruder)
    await intruder.start()
    with pytest.raises(ConnectError, match="policy does not allow"):
        await intruder.wait_parent(0.5)
    assert "mallory" not in a.peers


async def test_failed_dial_stays_relayed_and_is_logged_once(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    a = await bus.cell("site-1")
    # site-2 tells others to dial an address nobody listens on (a firewall).
    b = await bus.cell("site-2", advertise=("memory://behind-a-firewall",))
    c = await bus.cell("site-3", listen=False)
    with caplog.at_level(logging.INFO, logger="cellnet.direct"):
        for _ in range(20):
            assert await route(c, b) == ["site-3", "server", "site-2"]
            await asyncio.sleep(0.02)
    failures = [r for r in caplog.records if "traffic stays relayed" in r.getMessage()]
    # Logged once on each side of the failed attempt, not once per message.
    assert 1 <= len(failures) <= 2, [r.getMessage() for r in failures]
    assert await route(a, b) == ["site-1", "server", "site-2"]  # a listens: b would dial a
    await until_direct(a, b)


async def test_broken_direct_link_falls_back_and_upgrades_again(bus: Bus) -> None:
    a, b = await bus.cell("site-1"), await bus.cell("site-2")
    await route(a, b)
    await until_direct(a, b)
    served = 0

    @b.on("jobs", "count")
    async def count(msg):  # type: ignore[no-untyped-def]
        nonlocal served
        served += 1
        return b"ok"

    async def stream() -> int:
        ok = 0
        for _ in range(60):
            reply = await a.request("site-2", "jobs", "count", b"", timeout=3, reliable=True)
            ok += reply.payload == b"ok"
            await asyncio.sleep(0.01)
        return ok

    task = asyncio.ensure_future(stream())
    await asyncio.sleep(0.1)
    direct = a._links["site-2"]
    assert a.is_direct(direct)
    direct.link.break_()  # type: ignore[attr-defined]  # a network failure on the direct link
    assert await asyncio.wait_for(task, 10) == 60
    assert served == 60  # each request ran once: none lost, none repeated
    await until_direct(a, b)  # upgraded again after the retry delay
