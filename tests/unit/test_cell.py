"""Cell semantics on the in-memory driver: no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cellnet.cell import Cell, Reply
from cellnet.config import Limits, Timeouts
from cellnet.drivers.memory import MemoryDriver, MemoryNetwork
from cellnet.errors import (
    CellClosed,
    LinkLost,
    MessageTooLarge,
    NameInUse,
    NoHandler,
    RemoteError,
    RequestTimeout,
    Unreachable,
)
from cellnet.message import Message

FAST = Timeouts(backoff_initial=0.01, backoff_max=0.05, connect=1.0, handshake=1.0)


class Bus:
    def __init__(self) -> None:
        self.net = MemoryNetwork()
        self.drivers = {"memory": MemoryDriver(self.net)}
        self.cells: list[Cell] = []

    async def cell(self, name: str, *, parent: str | None = "memory://server", listen: tuple[str, ...] = (), **kw: object) -> Cell:
        cell = Cell(name, parent=parent, listen=listen, drivers=self.drivers, timeouts=kw.pop("timeouts", FAST), **kw)  # type: ignore[arg-type]
        self.cells.append(cell)
        await cell.start(wait_parent=2.0 if parent else None)
        return cell

    async def server(self, **kw: object) -> Cell:
        return await self.cell("server", parent=None, listen=("memory://server",), **kw)


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    b = Bus()
    yield b
    for cell in reversed(b.cells):
        await cell.aclose()


async def test_relayed_request_records_route(bus: Bus) -> None:
    await bus.server()
    site1 = await bus.cell("site-1")
    await bus.cell("site-2")
    reply = await site1.request("site-2", "cellnet", "echo", b"hello")
    assert reply.payload == b"hello"
    assert reply.meta["route"] == ["site-1", "server", "site-2"]
    assert reply.hops == ("site-2", "server", "site-1")


async def test_handler_gets_payload_meta_and_returns_reply(bus: Bus) -> None:
    await bus.server()
    site1 = await bus.cell("site-1")
    site2 = await bus.cell("site-2")

    @site2.on("math", "add")
    async def add(msg: Message) -> Reply:
        return Reply(str(sum(msg.meta["xs"])).encode(), {"by": "site-2"})

    reply = await site1.request("site-2", "math", "add", meta={"xs": [1, 2, 3]})
    assert reply.payload == b"6" and reply.meta == {"by": "site-2"}
    assert reply.src == "site-2" and reply.reply_to is not None


async def test_typed_errors(bus: Bus) -> None:
    await bus.server()
    site1 = await bus.cell("site-1")
    site2 = await bus.cell("site-2")

    @site2.on("boom")
    async def boom(msg: Message) -> bytes:
        raise ValueError("bad input")

    @site2.on("slow")
    async def slow(msg: Message) -> bytes:
        await asyncio.sleep(5)
        return b""

    with pytest.raises(NoHandler):
        await site1.request("site-2", "nothing", "here")
    with pytest.raises(RemoteError, match="ValueError: bad input"):
        await site1.request("site-2", "boom", "x")
    with pytest.raises(Unreachable, match="site-9"):
        await site1.request("site-9", "cellnet", "echo")
    with pytest.raises(RequestTimeout):
        await site1.request("site-2", "slow", "x", timeout=0.05)


async def test_fire_and_forget_and_broadcast(bus: Bus) -> None:
    server = await bus.server()
    sites = [await bus.cell(f"site-{i}") for i in (1, 2, 3)]
    got: asyncio.Queue[Message] = asyncio.Queue()

    @sites[2].on("events")
    async def events(msg: Message) -> None:
        await got.put(msg)

    await sites[0].send("site-3", "events", "tick", b"1")
    msg = await asyncio.wait_for(got.get(), 2)
    assert msg.payload == b"1" and msg.hops == ("site-1", "server", "site-3")

    results = await server.broadcast(None, "cellnet", "echo", b"x")
    assert sorted(results) == ["site-1", "site-2", "site-3"]
    assert all(isinstance(r, Message) and r.payload == b"x" for r in results.values())
    results = await sites[0].broadcast(["site-2", "site-9"], "cellnet", "echo", b"y")
    assert isinstance(results["site-2"], Message)
    assert isinstance(results["site-9"], Unreachable)


async def test_local_request(bus: Bus) -> None:
    server = await bus.server()
    reply = await server.request("server", "cellnet", "echo", b"me")
    assert reply.payload == b"me"


async def test_too_large_at_sender_and_at_a_smaller_hop(bus: Bus) -> None:
    await bus.server()
    site1 = await bus.cell("site-1", limits=Limits(max_message=1000))
    await bus.cell("site-2", limits=Limits(max_message=100))
    with pytest.raises(MessageTooLarge) as info:
        await site1.request("site-2", "cellnet", "echo", b"x" * 1001)
    assert (info.value.size, info.value.limit) == (1001, 1000)
    # site-2 accepts at most 100 bytes: the server answers for it.
    with pytest.raises(MessageTooLarge) as info:
        await site1.request("site-2", "cellnet", "echo", b"x" * 500)
    assert info.value.limit == 100 and info.value.where == "site-2"
    assert (await site1.request("site-2", "cellnet", "echo", b"x" * 100)).payload == b"x" * 100


async def test_name_in_use_is_refused_and_live_link_kept(bus: Bus) -> None:
    await bus.server()
    site1 = await bus.cell("site-1")
    impostor = Cell("site-1", parent="memory://server", drivers=bus.drivers, timeouts=FAST)
    bus.cells.append(impostor)
    with pytest.raises(NameInUse):
        await impostor.start(wait_parent=2.0)
    assert (await site1.request("server", "cellnet", "echo", b"still here")).payload == b"still here"


async def test_pending_request_fails_fast_when_its_link_breaks(bus: Bus) -> None:
    await bus.server()
    site1 = await bus.cell("site-1")
    site2 = await bus.cell("site-2")
    started = asyncio.Event()

    @site2.on("slow")
    async def slow(msg: Message) -> bytes:
        started.set()
        await asyncio.sleep(30)
        return b""

    pending = asyncio.create_task(site1.request("site-2", "slow", "x", timeout=30))
    await started.wait()
    # site-2 vanishes: the server answers for it at once.
    bus.net.break_links("client")  # every accepted link at the server
    with pytest.raises((Unreachable, LinkLost)):
        await asyncio.wait_for(pending, 2.0)


async def test_own_link_break_fails_with_link_lost(bus: Bus) -> None:
    server = await bus.server()
    site1 = await bus.cell("site-1")
    started = asyncio.Event()

    @server.on("slow")
    async def slow(msg: Message) -> bytes:
        started.set()
        await asyncio.sleep(30)
        return b""

    pending = asyncio.create_task(site1.request("server", "slow", "x", timeout=30))
    await started.wait()
    bus.net.break_links("memory://server")
    with pytest.raises(LinkLost):
        await asyncio.wait_for(pending, 2.0)


async def test_reliable_request_survives_a_break_and_runs_once(bus: Bus) -> None:
    server = await bus.server()
    site1 = await bus.cell("site-1")
    runs = 0
    release = asyncio.Event()
    started = asyncio.Event()

    @server.on("once")
    async def once(msg: Message) -> bytes:
        nonlocal runs
        runs += 1
        started.set()
        await release.wait()
        return b"done"

    pending = asyncio.create_task(site1.request("server", "once", "x", timeout=5, reliable=True))
    await started.wait()
    bus.net.break_links("memory://server")  # the reply path is gone
    await asyncio.sleep(0.1)  # the site reconnects and re-sends: "in progress"
    release.set()
    reply = await asyncio.wait_for(pending, 5)
    assert reply.payload == b"done"
    assert runs == 1


async def test_reconnects_after_server_restart(bus: Bus) -> None:
    server = await bus.server()
    site1 = await bus.cell("site-1")
    await server.aclose()
    with pytest.raises((Unreachable, LinkLost)):
        await site1.request("server", "cellnet", "echo", b"", timeout=0.5)
    bus.cells.remove(server)
    await bus.server()
    await site1.wait_parent(2.0)
    assert (await site1.request("server", "cellnet", "echo", b"back")).payload == b"back"


async def test_closed_cell_raises(bus: Bus) -> None:
    server = await bus.server()
    await server.aclose()
    with pytest.raises(CellClosed):
        await server.request("server", "cellnet", "echo")
