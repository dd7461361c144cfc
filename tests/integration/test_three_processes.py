"""Three cells in three processes over TCP on loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellnet.cell import Cell
from cellnet.config import Timeouts
from cellnet.errors import LinkLost, Unreachable
from tests.helpers import Proc, cellnet_cmd, free_port, until_reachable, wait_port, write_config

SLOW_CELL = Path(__file__).with_name("slow_cell.py")
FAST = Timeouts(backoff_initial=0.05, backoff_max=0.2)


class Topology:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.procs: dict[str, Proc] = {}
        write_config(tmp / "server.toml", f'[cell]\nname = "server"\nlisten = ["{self.url}"]\n')
        for site in ("site-1", "site-2"):
            write_config(
                tmp / f"{site}.toml",
                f'[cell]\nname = "{site}"\nparent = "{self.url}"\n'
                "[timeouts]\nbackoff_initial = 0.05\nbackoff_max = 0.5\n",
            )

    def start_server(self) -> Proc:
        proc = Proc(cellnet_cmd("run", "-c", str(self.tmp / "server.toml")), self.tmp / "server.log")
        self.procs["server"] = proc
        wait_port(self.port, proc=proc.popen)
        return proc

    def start_slow_site(self, name: str) -> Proc:
        proc = Proc([sys.executable, str(SLOW_CELL), str(self.tmp / f"{name}.toml")], self.tmp / f"{name}.log")
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@pytest.fixture
def topo(tmp_path: Path) -> Iterator[Topology]:
    t = Topology(tmp_path)
    try:
        yield t
    finally:
        t.stop()


def test_ping_is_relayed_by_the_server(topo: Topology) -> None:
    topo.start_server()
    topo.start_slow_site("site-2")
    # The ping tool joins as site-1 (no site-1 is running) and pings site-2.
    deadline = time.monotonic() + 15
    while True:
        out = subprocess.run(
            cellnet_cmd("ping", "site-2", "-c", str(topo.tmp / "site-1.toml"), "--count", "5", "--json"),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["route"] == ["site-1", "server", "site-2"]
    assert result["count"] == 5 and result["size"] == 100
    assert 0 < result["rtt_min_us"] <= result["rtt_median_us"] <= result["rtt_p99_us"]
    # The human form prints the same route.
    text = subprocess.run(
        cellnet_cmd("ping", "site-2", "-c", str(topo.tmp / "site-1.toml"), "-n", "2", "--size", "1KiB"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert text.returncode == 0, text.stderr
    assert "route: site-1 -> server -> site-2" in text.stdout


def test_ping_fails_clearly_for_an_unknown_cell(topo: Topology) -> None:
    topo.start_server()
    out = subprocess.run(
        cellnet_cmd("ping", "site-9", "-c", str(topo.tmp / "site-1.toml"), "-n", "1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0
    assert "Unreachable" in out.stderr and "site-9" in out.stderr
    out = subprocess.run(
        cellnet_cmd("ping", "site-9", "-c", str(topo.tmp / "site-1.toml"), "-n", "1", "--json"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert json.loads(out.stdout) == {
        "target": "site-9", "error": "Unreachable", "message": json.loads(out.stdout)["message"]
    }
    assert "site-9" in json.loads(out.stdout)["message"]


async def test_killed_site_fails_pending_requests_fast(topo: Topology) -> None:
    topo.start_server()
    site2 = topo.start_slow_site("site-2")
    async with Cell("site-1", parent=topo.url, timeouts=FAST) as site1:
        await site1.wait_parent(10)
        await until_reachable(site1, "site-2")
        pending = asyncio.create_task(site1.request("site-2", "test", "sleep", b"30", timeout=60))
        await asyncio.sleep(0.3)  # let the request reach site-2's handler
        assert not pending.done()
        site2.kill()
        t0 = time.monotonic()
        with pytest.raises(Unreachable, match="site-2"):
            await pending
        assert time.monotonic() - t0 < 5.0  # at once, not at the 60 s budget
        # The server and site-1 carry on.
        assert (await site1.request("server", "cellnet", "echo", b"ok")).payload == b"ok"


async def test_clients_reconnect_after_server_restart(topo: Topology) -> None:
    server = topo.start_server()
    topo.start_slow_site("site-2")
    async with Cell("site-1", parent=topo.url, timeouts=FAST) as site1:
        await site1.wait_parent(10)
        await until_reachable(site1, "site-2")
        server.kill()
        server.popen.wait(5)
        with pytest.raises((Unreachable, LinkLost)):
            await site1.request("site-2", "cellnet", "echo", b"", timeout=2)
        topo.start_server()
        await until_reachable(site1, "site-2", timeout=20)
        reply = await site1.request("site-2", "cellnet", "echo", b"again")
        assert reply.meta["route"] == ["site-1", "server", "site-2"]
