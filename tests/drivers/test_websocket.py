"""The HTTP/WebSocket driver: URLs, the HTTP face of the listener, a reverse
proxy at a path, large frames, limits, back-pressure, TLS and real cells."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cellnet.testing import driver_conformance
from cellnet.drivers.websocket import (
    DEFAULT_PATH,
    WebSocketDriver,
    WebSocketUrl,
    parse_websocket_url,
)

from cellnet import Cell
from cellnet.codec import Frame, FrameLimits, Kind
from cellnet.driver import Link, LinkOptions
from cellnet.errors import (
    ConfigError,
    ConnectError,
    FrameError,
    FrameTooLarge,
    LinkBroken,
    LinkClosed,
)
from cellnet.tls import TlsSettings

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024
DRIVER = WebSocketDriver()
BIG = LinkOptions(limits=FrameLimits(max_payload=32 * MiB))


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@dataclass
class Pair:
    url: str
    client: Link
    server: Link


@asynccontextmanager
async def pair(
    url: str = "http://127.0.0.1:0",
    listen: LinkOptions = BIG,
    dial: LinkOptions = BIG,
    dial_url: str | None = None,
) -> AsyncIterator[Pair]:
    """A listener and one dialed link; the accepted link stays open until the end."""
    accepted: asyncio.Queue[Link] = asyncio.Queue()
    release = asyncio.Event()

    async def on_link(link: Link) -> None:
        await accepted.put(link)
        await release.wait()

    listener = await DRIVER.listen(url, on_link, listen)
    client = await DRIVER.dial(dial_url or listener.url, dial)
    server = await asyncio.wait_for(accepted.get(), 5)
    try:
        yield Pair(listener.url, client, server)
    finally:
        await client.aclose()
        await server.aclose()
        release.set()
        await listener.aclose()


async def _next(link: Link, timeout: float = 10.0) -> Frame:
    return await asyncio.wait_for(anext(aiter(link)), timeout)


def _frame(nbytes: int, **header: object) -> Frame:
    return Frame(Kind.MESSAGE, dict(header), bytes(range(256)) * (nbytes // 256) + b"z" * (nbytes % 256))


# -- URLs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8002", WebSocketUrl("http", "127.0.0.1", 8002, DEFAULT_PATH)),
        ("http://127.0.0.1:8002/", WebSocketUrl("http", "127.0.0.1", 8002, DEFAULT_PATH)),
        ("ws://host.example.org:81/bus", WebSocketUrl("ws", "host.example.org", 81, "/bus")),
        ("https://proxy.org/fl/cellnet", WebSocketUrl("https", "proxy.org", 443, "/fl/cellnet")),
        ("wss://proxy.example.org/fl/x/", WebSocketUrl("wss", "proxy.example.org", 443, "/fl/x/")),
        ("http://server", WebSocketUrl("http", "server", 80, DEFAULT_PATH)),
        ("HTTP://[::1]:0/a-b_c.d~e", WebSocketUrl("http", "::1", 0, "/a-b_c.d~e")),
        ("wss://[2001:db8::7]:8443", WebSocketUrl("wss", "2001:db8::7", 8443, DEFAULT_PATH)),
    ],
)
def test_parse_url(url: str, expected: WebSocketUrl) -> None:
    assert parse_websocket_url(url) == expected


def test_url_round_trip_and_upgrade_scheme() -> None:
    url = parse_websocket_url("wss://[::1]:9443/fl/cellnet")
    assert str(url) == "wss://[::1]:9443/fl/cellnet"
    assert url.http_url == "https://[::1]:9443/fl/cellnet"
    assert url.secure
    plain = parse_websocket_url("ws://h:1")
    assert (plain.http_url, plain.secure) == ("http://h:1/cellnet", False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tcp://127.0.0.1:1", "expected an http://"),
        ("http://:8002", "expected http://HOST"),
        ("http://h:99999", "port must be a number"),
        ("http://h:port", "port must be a number"),
        ("http://h:1/p?x=1", "no query"),
        ("http://h:1/p#frag", "no query or fragment"),
        ("http://user:secret@h:1/p", "no user info"),
        ("http://h:1/{name}", "may hold letters"),
        ("http://h:1/a%20b", "may hold letters"),
        ("http://h:1//twice", "may hold letters"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_websocket_url(url)


async def test_port_zero_reports_bound_port_and_path() -> None:
    async def on_link(link: Link) -> None:
        await link.aclose()

    listener = await DRIVER.listen("ws://127.0.0.1:0/internal/bus", on_link, LinkOptions())
    try:
        url = parse_websocket_url(listener.url)
        assert (url.scheme, url.host, url.path) == ("ws", "127.0.0.1", "/internal/bus")
        assert url.port > 0
        link = await DRIVER.dial(listener.url, LinkOptions())
        await link.aclose()
    finally:
        await listener.aclose()


@pytest.mark.skipif(not _ipv6(), reason="no IPv6 loopback")
async def test_ipv6_listener() -> None:
    async with pair("http://[::1]:0") as p:
        assert p.url.startswith("http://[::1]:") and p.url.endswith("/cellnet")
        await p.client.send(_frame(10, n=1))
        assert (await _next(p.server)).header == {"n": 1}
        assert p.server.remote.startswith("http://[::1]:")


# -- frames ---------------------------------------------------------------------


async def test_frames_both_ways_including_above_aiohttps_default() -> None:
    sizes = [0, 1, 125, 126, 65535, 65536, 4 * MiB - 1, 4 * MiB + 1, 9 * MiB]
    async with pair() as p:
        for size in sizes:
            frame = _frame(size, size=size, name="site-1")
            await p.client.send(frame)
            got = await _next(p.server)
            assert (got.kind, got.header, got.payload) == (Kind.MESSAGE, frame.header, frame.payload)
            await p.server.send(got)
            back = await _next(p.client)
            assert back.payload == frame.payload


async def test_order_with_concurrent_senders() -> None:
    async with pair() as p:

        async def sender(who: int) -> None:
            for i in range(50):
                await p.client.send(Frame(Kind.MESSAGE, {"who": who, "i": i}, b"x" * (i * 997)))

        await asyncio.gather(*(sender(w) for w in range(4)))
        seen: dict[int, list[int]] = {w: [] for w in range(4)}
        for _ in range(200):
            frame = await _next(p.server)
            seen[frame.header["who"]].append(frame.header["i"])
            assert frame.payload == b"x" * (frame.header["i"] * 997)
        assert seen == {w: list(range(50)) for w in range(4)}


# -- the HTTP face -------------------------------------------------------------


async def test_plain_http_get_gets_426_and_other_paths_404() -> None:
    async with pair("http://127.0.0.1:0/fl/cellnet") as p:
        base = p.url.removesuffix("/fl/cellnet")
        async with aiohttp.ClientSession() as http:
            async with http.get(p.url) as resp:
                assert resp.status == 426
                assert resp.headers["Upgrade"] == "websocket"
                assert "cellnet WebSocket endpoint" in await resp.text()
            async with http.get(base + "/elsewhere") as resp:
                assert resp.status == 404
            async with http.post(p.url, data=b"x") as resp:
                assert resp.status == 405
        # The link in use was not disturbed.
        await p.client.send(_frame(3, ok=True))
        assert (await _next(p.server)).header == {"ok": True}


async def test_dialing_a_wrong_path_is_a_connect_error_naming_404() -> None:
    async with pair("http://127.0.0.1:0/right") as p:
        with pytest.raises(ConnectError, match="no WebSocket endpoint at /wrong.*404"):
            await DRIVER.dial(p.url.replace("/right", "/wrong"), LinkOptions())


async def test_dial_refused_and_timed_out_are_connect_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` now.
    with pytest.raises(ConnectError, match=f"http://127.0.0.1:{port}/cellnet"):
        await DRIVER.dial(f"http://127.0.0.1:{port}", LinkOptions(connect_timeout=2))

    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accept, never answer the upgrade

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ConnectError, match="timed out after 0.3 s"):
            await DRIVER.dial(f"ws://127.0.0.1:{port}", LinkOptions(connect_timeout=0.3))
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


# -- a reverse proxy at a path --------------------------------------------------


@asynccontextmanager
async def reverse_proxy(upstream: str, path: str) -> AsyncIterator[str]:
    """A tiny WebSocket reverse proxy: ``path`` on a new port -> ``upstream``."""
    sessions: list[aiohttp.ClientSession] = []

    async def forward(request: web.Request) -> web.WebSocketResponse:
        downstream = web.WebSocketResponse(max_msg_size=0, compress=False)
        await downstream.prepare(request)
        session = aiohttp.ClientSession()
        sessions.append(session)
        async with session.ws_connect(upstream, max_msg_size=0, compress=0) as up:

            async def pump(src: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
                           dst: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> None:
                async for msg in src:
                    if msg.type is aiohttp.WSMsgType.BINARY:
                        await dst.send_bytes(msg.data)
                await dst.close()

            await asyncio.gather(pump(downstream, up), pump(up, downstream))
        return downstream

    app = web.Application()
    app.router.add_get(path, forward)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{path}"
    finally:
        await runner.cleanup()
        for session in sessions:
            await session.close()


async def test_through_a_reverse_proxy_at_a_path() -> None:
    accepted: asyncio.Queue[Link] = asyncio.Queue()
    release = asyncio.Event()

    async def on_link(link: Link) -> None:
        await accepted.put(link)
        await release.wait()

    listener = await DRIVER.listen("http://127.0.0.1:0/internal/cellnet", on_link, BIG)
    try:
        async with reverse_proxy(listener.url, "/fl/cellnet") as public:
            assert public.endswith("/fl/cellnet")
            client = await DRIVER.dial(public, BIG)
            server = await asyncio.wait_for(accepted.get(), 5)
            for size in (100, 3 * MiB, 6 * MiB):
                frame = _frame(size, size=size)
                await client.send(frame)
                got = await _next(server)
                assert (got.header, got.payload) == (frame.header, frame.payload)
                await server.send(Frame(Kind.MESSAGE, {"echo": size}, got.payload))
                back = await _next(client)
                assert (back.header, back.payload) == ({"echo": size}, frame.payload)
            await client.aclose()
            # The proxy passes the close on: the listener's side sees the peer go.
            with pytest.raises(LinkBroken):
                await _next(server)
    finally:
        release.set()
        await listener.aclose()


# -- closing, breaking, limits, bad input ---------------------------------------


async def test_closed_by_us_vs_broken_by_peer() -> None:
    async with pair() as p:
        await p.client.aclose()
        await p.client.aclose()  # idempotent
        assert p.client.closed
        with pytest.raises(LinkClosed):
            await p.client.send(_frame(1))
        assert [f async for f in p.client] == []  # ends quietly
        with pytest.raises(LinkBroken, match="close code 1000"):
            await _next(p.server)
        with pytest.raises(LinkBroken):
            await p.server.send(_frame(1))


async def test_over_limit_frames() -> None:
    small = LinkOptions(limits=FrameLimits(max_payload=MiB))
    async with pair(listen=small, dial=BIG) as p:
        # Our own limit: refused before sending; the link stays usable.
        async with pair(listen=BIG, dial=small) as q:
            with pytest.raises(FrameTooLarge, match="exceeds the limit"):
                await q.client.send(_frame(MiB + 1))
            await q.client.send(_frame(MiB))
            assert len((await _next(q.server)).payload) == MiB
        # The peer's limit: it refuses the message before buffering it and
        # closes with 1009, which the sender sees as a broken link.
        await p.client.send(_frame(2 * MiB))
        with pytest.raises(FrameTooLarge):
            await _next(p.server)
        with pytest.raises(LinkBroken, match="size limit.*1009"):
            await _next(p.client)
        with pytest.raises(LinkBroken):
            await p.client.send(_frame(1))


async def test_just_over_the_payload_limit_inside_aiohttps_allowance() -> None:
    # aiohttp's limit leaves room for the prefix and max header, so a payload
    # just over max_payload passes aiohttp and the codec refuses it.
    async with pair(listen=LinkOptions(limits=FrameLimits(max_payload=1000)), dial=BIG) as p:
        await p.client.send(_frame(1001))
        with pytest.raises(FrameTooLarge, match="1001 bytes exceeds the limit of 1000"):
            await _next(p.server)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("text", "text message"),
        (b"CN\x01", "truncated frame"),
        (b"XX" + bytes(40), "bad magic"),
    ],
)
async def test_bad_messages_are_frame_errors(message: str | bytes, error: str) -> None:
    got: asyncio.Queue[BaseException | None] = asyncio.Queue()

    async def on_link(link: Link) -> None:
        try:
            async for _ in link:
                pass
            await got.put(None)
        except BaseException as exc:
            await got.put(exc)

    listener = await DRIVER.listen("http://127.0.0.1:0", on_link, LinkOptions())
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(listener.url) as ws:
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_bytes(message)
                closing = await asyncio.wait_for(ws.receive(), 5)
                assert closing.type is aiohttp.WSMsgType.CLOSE
                assert closing.data == (1003 if isinstance(message, str) else 1002)
                exc = await asyncio.wait_for(got.get(), 5)
                assert isinstance(exc, FrameError) and error in str(exc)
        # The listener keeps serving.
        link = await DRIVER.dial(listener.url, LinkOptions())
        await link.aclose()
    finally:
        await listener.aclose()


async def test_slow_receiver_makes_send_wait() -> None:
    frame = _frame(MiB)
    async with pair() as p:
        sent = 0
        blocked = False
        while sent < 200:  # 200 MiB: far beyond any socket buffer
            try:
                await asyncio.wait_for(p.client.send(frame), 0.5)
            except TimeoutError:
                blocked = True
                break
            sent += 1
        assert blocked, "send never waited for the receiver"
        # kernel socket buffers (up to tcp_wmem + tcp_rmem max) and aiohttp's
        # bounded read-ahead hold what was sent; nothing grows without bound
        assert sent < 64
        # Everything that was accepted arrives, in order and intact.
        for _ in range(sent):
            assert (await _next(p.server)).payload == frame.payload


async def test_listener_close_stops_accepting_but_keeps_links() -> None:
    ended = asyncio.Event()

    async def on_link(link: Link) -> None:
        try:
            async for f in link:
                await link.send(f)
        finally:
            ended.set()

    listener = await DRIVER.listen("http://127.0.0.1:0", on_link, LinkOptions())
    client = await DRIVER.dial(listener.url, LinkOptions())
    await listener.aclose()
    with pytest.raises(ConnectError):
        await DRIVER.dial(listener.url, LinkOptions(connect_timeout=2))
    await client.send(_frame(5, still="up"))
    assert (await _next(client)).header == {"still": "up"}
    await client.aclose()
    await asyncio.wait_for(ended.wait(), 5)


# -- TLS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsSettings]:
    from cellnet.pki import CertificateAuthority

    folder: Path = tmp_path_factory.mktemp("kit")
    ca = CertificateAuthority.create("test federation")
    other = CertificateAuthority.create("someone else")
    ca_pem = ca.write(folder / "ca.pem")
    other_pem = other.write(folder / "other-ca.pem")

    def kit(stem: str, authority: CertificateAuthority, hosts: list[str]) -> TlsSettings:
        cert, key = authority.issue(stem, hosts).write(folder, stem)
        return TlsSettings(ca_pem, cert, key)

    return {
        "server": kit("server", ca, ["127.0.0.1"]),
        "site": kit("site-1", ca, []),
        "rogue": kit("rogue", other, []),
        "wrong-host": kit("wrong-host", ca, ["server.example.org"]),
        "no-cert": TlsSettings(ca_pem),
        "trusts-other": TlsSettings(other_pem),
    }


async def test_mutual_tls_over_wss(tls_kit: dict[str, TlsSettings]) -> None:
    server = LinkOptions(limits=BIG.limits, tls=tls_kit["server"])
    site = LinkOptions(limits=BIG.limits, tls=tls_kit["site"])
    async with pair("wss://127.0.0.1:0", listen=server, dial=site) as p:
        assert p.url.startswith("wss://127.0.0.1:")
        await p.client.send(_frame(5 * MiB, secure=True))
        assert (await _next(p.server)).payload == _frame(5 * MiB).payload
        for who in ("no-cert", "rogue"):
            with pytest.raises(ConnectError):
                await DRIVER.dial(p.url, LinkOptions(tls=tls_kit[who], connect_timeout=3))
        # A client that trusts another CA refuses the server.
        with pytest.raises(ConnectError, match="(?i)certificate"):
            await DRIVER.dial(p.url, LinkOptions(tls=tls_kit["trusts-other"], connect_timeout=3))
        with pytest.raises(ConnectError):
            await DRIVER.dial(p.url.replace("wss://", "ws://"), LinkOptions(connect_timeout=3))
        # The listener still serves a good client.
        again = await DRIVER.dial(p.url, site)
        await again.aclose()


async def test_server_certificate_must_name_the_host(tls_kit: dict[str, TlsSettings]) -> None:
    accepted = asyncio.Event()

    async def on_link(link: Link) -> None:
        accepted.set()

    listener = await DRIVER.listen("https://127.0.0.1:0", on_link, LinkOptions(tls=tls_kit["wrong-host"]))
    try:
        with pytest.raises(ConnectError, match="(?i)certificate"):
            await DRIVER.dial(listener.url, LinkOptions(tls=tls_kit["site"], connect_timeout=3))
        assert not accepted.is_set()
    finally:
        await listener.aclose()


async def test_tls_listener_needs_a_certificate(tls_kit: dict[str, TlsSettings]) -> None:
    async def on_link(link: Link) -> None: ...

    with pytest.raises(ConfigError, match="needs tls.cert and tls.key"):
        await DRIVER.listen("wss://127.0.0.1:0", on_link, LinkOptions(tls=tls_kit["no-cert"]))


# -- real cells -----------------------------------------------------------------


async def test_cells_relay_over_http() -> None:
    async with await Cell("server", listen=["http://127.0.0.1:0"]).start() as server:
        url = server.listen_addresses[0]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/cellnet")
        async with Cell("site-1", parent=url) as site1, Cell("site-2", parent=url) as site2:
            await site1.start(wait_parent=5)
            await site2.start(wait_parent=5)
            reply = await site1.request("site-2", "cellnet", "echo", b"x" * 70_000, timeout=5)
            assert reply.payload == b"x" * 70_000
            assert reply.meta["route"] == ["site-1", "server", "site-2"]
            direct = await site2.request("server", "cellnet", "echo", b"hi", timeout=5)
            assert direct.payload == b"hi"
            assert direct.meta["route"] == ["site-2", "server"]


class _WebSocketPeerClose:
    """The one place the WebSocket driver departs from the suite, and why.

    When the listener's end closes while the dialer's send waits on
    back-pressure, the listener's aiohttp runs the WebSocket close
    handshake: it reads (and discards) what arrives until the dialer's close
    reply or its timeout. Those reads release the waiting send, which then
    returns although its frame was discarded, as a TCP write returns when
    the kernel took the bytes. What must hold, and is checked here: the send
    does not hang, and the link reports LinkBroken to the next send and to
    its iteration.
    """

    @pytest.mark.parametrize("closer", ["peer", "us"])
    async def test_waiting_send_is_released_by_close(self, env, tmp_path, closer):  # type: ignore[no-untyped-def]
        if closer == "us":
            return await super().test_waiting_send_is_released_by_close(env, tmp_path, closer)  # type: ignore[misc]
        async with self._harness(env, tmp_path) as h:  # type: ignore[attr-defined]
            p = await h.pair()
            _, pending = await self._fill_until_blocked(h, p.dialer, "dialer")  # type: ignore[attr-defined]
            await h.step(p.accepted.aclose(), "the listener's link aclose()")
            result = await h.outcome(pending, "a dialer's send waiting on back-pressure when the listener closed")
            assert result is None or isinstance(result, LinkBroken), result
            await h.expect_error(
                p.dialer_reader.recv(), LinkBroken, "the dialer's iteration after the listener closed", "peer closed"
            )
            await h.expect_error(
                p.dialer.send(Frame(Kind.MESSAGE, {}, b"late")), LinkBroken,
                "a send after the listener closed", "the peer broke the link",
            )


class TestHttpConformance(_WebSocketPeerClose, driver_conformance(WebSocketDriver, "http://127.0.0.1:0")):  # type: ignore[misc]
    pass


class TestHttpsConformance(  # type: ignore[misc]
    _WebSocketPeerClose, driver_conformance(WebSocketDriver, "https://127.0.0.1:0/cellnet", tls=True)
):
    pass
