"""Hostile and broken peers on a live TCP cell: the cell and its other links keep working."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from cellnet.cell import Cell
from cellnet.codec import MAGIC, PREFIX, VERSION, Frame, Kind, encode_frame
from cellnet.config import Limits, Timeouts
from cellnet.drivers.tcp import parse_tcp_url
from cellnet.errors import NameInUse

HELLO = {"version": 1, "max": 1 << 20}


@pytest.fixture
async def server_and_site() -> AsyncIterator[tuple[Cell, Cell]]:
    timeouts = Timeouts(heartbeat_interval=0.1, heartbeat_timeout=0.5, handshake=0.5)
    server = await Cell("server", listen=["tcp://127.0.0.1:0"], timeouts=timeouts, limits=Limits(max_message=1 << 20)).start()
    site = await Cell("site-1", parent=server.listen_addresses[0], timeouts=timeouts).start(wait_parent=5)
    yield server, site
    await site.aclose()
    await server.aclose()


async def _raw(server: Cell) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = parse_tcp_url(server.listen_addresses[0])
    return await asyncio.open_connection(host, port)


async def _closed_by_peer(reader: asyncio.StreamReader, timeout: float = 3.0) -> bool:
    try:
        while await asyncio.wait_for(reader.read(65536), timeout):
            pass
        return True
    except (ConnectionError, asyncio.IncompleteReadError):
        return True


async def _still_works(site: Cell) -> None:
    reply = await site.request("server", "cellnet", "echo", b"alive", timeout=5)
    assert reply.payload == b"alive"


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00" * 64,
        PREFIX.pack(b"XX", VERSION, 1, 0, 0, 0),
        PREFIX.pack(MAGIC, 99, 1, 0, 0, 0),
        PREFIX.pack(MAGIC, VERSION, 1, 0, 0, 1 << 62),  # claims 4 EiB
        PREFIX.pack(MAGIC, VERSION, 1, 0, 1 << 31, 0),  # header far over the limit
        PREFIX.pack(MAGIC, VERSION, 1, 0, 4, 0) + b"\xc1\xc1\xc1\xc1",  # header not msgpack
        encode_frame(Frame(Kind.MESSAGE, {"d": "server"})),  # a message before the handshake
    ],
    ids=["http", "zeros", "magic", "version", "huge-payload", "huge-header", "bad-header", "no-handshake"],
)
async def test_garbage_closes_only_that_connection(
    server_and_site: tuple[Cell, Cell], garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    server, site = server_and_site
    caplog.set_level(logging.WARNING, logger="cellnet")
    reader, writer = await _raw(server)
    writer.write(garbage)
    await writer.drain()
    assert await _closed_by_peer(reader)
    writer.close()
    assert any("refused a link" in r.getMessage() for r in caplog.records)
    await _still_works(site)


async def test_garbage_after_handshake_closes_the_link(server_and_site: tuple[Cell, Cell]) -> None:
    server, site = server_and_site
    reader, writer = await _raw(server)
    writer.write(encode_frame(Frame(Kind.HELLO, {"name": "rogue", **HELLO})))
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(encode_frame(Frame(Kind.MESSAGE, {"d": ["not", "a", "name"], "t": 1, "h": []})))
    writer.write(b"more garbage")
    await writer.drain()
    assert await _closed_by_peer(reader)
    deadline = time.monotonic() + 2
    while "rogue" in server.peers and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert "rogue" not in server.peers
    await _still_works(site)


async def test_lying_name_is_refused_and_live_link_kept(server_and_site: tuple[Cell, Cell]) -> None:
    server, site = server_and_site
    impostor = Cell("site-1", parent=server.listen_addresses[0])
    with pytest.raises(NameInUse):
        await impostor.start(wait_parent=5)
    await impostor.aclose()
    await _still_works(site)
    reader, writer = await _raw(server)
    writer.write(encode_frame(Frame(Kind.HELLO, {"name": "bad name!", **HELLO})))
    await writer.drain()
    assert await _closed_by_peer(reader)
    await _still_works(site)


async def test_silent_peer_is_detected_by_heartbeat(server_and_site: tuple[Cell, Cell]) -> None:
    server, site = server_and_site
    reader, writer = await _raw(server)
    writer.write(encode_frame(Frame(Kind.HELLO, {"name": "silent", **HELLO})))
    await writer.drain()
    deadline = time.monotonic() + 3
    while "silent" not in server.peers and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert "silent" in server.peers
    t0 = time.monotonic()
    assert await _closed_by_peer(reader, timeout=5)  # we never send heartbeats
    # The server closes gracefully (its FIN first, then a short wait for
    # ours, which never comes), then forgets the peer.
    while "silent" in server.peers and time.monotonic() - t0 < 3:
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0  # heartbeat_timeout is 0.5 s
    assert "silent" not in server.peers
    # The well-behaved site was idle just as long but heartbeats kept it linked.
    assert "site-1" in server.peers
    await _still_works(site)


async def test_oversized_request_rejected_at_sender(server_and_site: tuple[Cell, Cell]) -> None:
    from cellnet.errors import MessageTooLarge

    server, site = server_and_site
    with pytest.raises(MessageTooLarge) as info:
        await site.request("server", "cellnet", "echo", b"x" * ((1 << 20) + 1))
    assert info.value.limit == 1 << 20 and info.value.where == "server"
    await _still_works(site)
