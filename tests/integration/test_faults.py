"""Faults with real processes: the server cell killed and restarted during a
stream of reliable requests, and a link through a proxy that delays and cuts
connections."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellnet import Cell
from cellnet.config import Timeouts
from cellnet.errors import RequestTimeout
from tests.helpers import Proc, cellnet_cmd, free_port, until_reachable, wait_port, write_config
from tests.proxy import FaultProxy

pytestmark = pytest.mark.timeout(120)

SLOW_CELL = Path(__file__).with_name("slow_cell.py")
FAST = Timeouts(backoff_initial=0.05, backoff_max=0.3, connect=2.0, heartbeat_interval=0.5, heartbeat_timeout=2.0)


class Bus:
    """A server cell and site-2 (with counting handlers) as processes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[Proc] = []
        write_config(tmp / "server.toml", f'[cell]\nname = "server"\nlisten = ["{self.url}"]\n')
        write_config(
            tmp / "site-2.toml",
            f'[cell]\nname = "site-2"\nparent = "{self.url}"\n'
            "[timeouts]\nbackoff_initial = 0.05\nbackoff_max = 0.3\n"
            "heartbeat_interval = 0.5\nheartbeat_timeout = 2.0\n",
        )

    def start_server(self) -> Proc:
        proc = Proc(cellnet_cmd("run", "-c", str(self.tmp / "server.toml")), self.tmp / "server.log")
        self.procs.append(proc)
        wait_port(self.port, proc=proc.popen)
        return proc

    def start_site(self) -> None:
        self.procs.append(Proc([sys.executable, str(SLOW_CELL), str(self.tmp / "site-2.toml")], self.tmp / "site-2.log"))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    b = Bus(tmp_path)
    try:
        yield b
    finally:
        b.stop()


async def counts(cell: Cell) -> dict[str, int]:
    reply = await cell.request("site-2", "test", "counts", timeout=10, reliable=True)
    return json.loads(bytes(reply.payload))


async def test_server_killed_and_restarted_during_reliable_requests(bus: Bus) -> None:
    bus.start_server()
    bus.start_site()
    total, in_flight = 150, 10
    async with Cell("site-1", parent=bus.url, timeouts=FAST) as site1:
        await site1.wait_parent(10)
        await until_reachable(site1, "site-2")
        done = 0

        async def one(i: int) -> bytes:
            nonlocal done
            reply = await site1.request("site-2", "test", "count", f"job-{i}".encode(), timeout=30, reliable=True)
            done += 1
            return bytes(reply.payload)

        async def restart_midway() -> None:
            while done < total // 3:
                await asyncio.sleep(0.01)
            server = bus.procs[0]
            server.kill()  # SIGKILL
            server.popen.wait(5)
            await asyncio.sleep(0.5)
            bus.procs.remove(server)
            bus.start_server()

        gate = asyncio.Semaphore(in_flight)

        async def limited(i: int) -> bytes:
            async with gate:
                return await one(i)

        restarter = asyncio.ensure_future(restart_midway())
        replies = await asyncio.gather(*(limited(i) for i in range(total)))
        await restarter
        # Every request completed, and the handler ran exactly once for each:
        # a re-sent copy got the cached reply, never a second run.
        assert len(replies) == total
        assert all(reply == b"1" for reply in replies), replies
        ran = await counts(site1)
        assert ran == {f"job-{i}": 1 for i in range(total)}


async def test_link_through_a_proxy_that_delays_and_cuts(bus: Bus) -> None:
    bus.start_server()
    bus.start_site()
    proxy = FaultProxy(bus.port, delay=0.02)
    await proxy.open()
    async with Cell("site-1", parent=f"tcp://127.0.0.1:{proxy.port}", timeouts=FAST) as site1:
        await site1.wait_parent(10)
        await until_reachable(site1, "site-2")
        outcomes: list[str] = []

        async def cutter() -> None:
            for _ in range(4):
                await asyncio.sleep(0.7)
                proxy.cut()

        cuts = asyncio.ensure_future(cutter())
        started = time.monotonic()
        for i in range(40):
            t0 = time.monotonic()
            try:
                await site1.request("site-2", "test", "count", f"req-{i}".encode(), timeout=3, reliable=True)
                outcomes.append("ok")
            except RequestTimeout as exc:
                outcomes.append("timeout")
                assert "3" in str(exc)
            # Within the budget, or a clear timeout right at it.
            assert time.monotonic() - t0 < 3 + 1.0
        await cuts
        assert proxy.connections >= 3  # the link was cut and came back
        assert outcomes.count("ok") >= 30, outcomes
        assert time.monotonic() - started < 60
        ran = await counts(site1)
        assert all(n == 1 for n in ran.values()), ran
