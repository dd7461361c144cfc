"""Cells on the TCP driver inside another event loop (uvloop): applications
that run on uvloop (web servers often do) can embed a cell.

uvloop has its own transport classes, so nothing may assume asyncio's.
"""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from cellnet.cell import Cell
from cellnet.config import Limits

uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")

MiB = 1024 * 1024


async def _three_cells() -> dict[str, object]:
    limits = Limits(chunk=MiB, window=4 * MiB)
    server = Cell("server", listen=("tcp://127.0.0.1:0",), limits=limits)
    await server.start()
    url = server.listen_addresses[0]
    sites = [Cell(name, parent=url, limits=limits) for name in ("site-1", "site-2")]
    try:
        for site in sites:
            await site.start(wait_parent=5.0)
        received: dict[str, object] = {}

        @sites[1].on("data", "sink", stream=True)
        async def sink(msg: object) -> bytes:
            digest = hashlib.sha256()
            async for chunk in msg.stream:  # type: ignore[attr-defined]
                digest.update(chunk)
            received["chunked"] = msg.stream.chunked  # type: ignore[attr-defined]
            return digest.hexdigest().encode()

        echo = await sites[0].request("site-2", "cellnet", "echo", b"x" * 100, timeout=5.0)
        payload = bytes(range(256)) * (9 * MiB // 256)  # 9 MiB: more than two windows, in chunks
        reply = await sites[0].request("site-2", "data", "sink", payload, timeout=30.0)
        return {
            "loop": type(asyncio.get_running_loop()).__module__,
            "echo": echo.payload,
            "route": echo.meta.get("route"),
            "digest": reply.payload.decode(),
            "want": hashlib.sha256(payload).hexdigest(),
            "chunked": received.get("chunked"),
        }
    finally:
        for cell in (*reversed(sites), server):
            await cell.aclose()


def test_relayed_echo_and_streamed_payload_on_uvloop() -> None:
    got = uvloop.run(_three_cells())
    assert got["loop"].startswith("uvloop")
    assert got["echo"] == b"x" * 100
    assert got["route"] == ["site-1", "server", "site-2"]
    assert got["chunked"] is True
    assert got["digest"] == got["want"]
