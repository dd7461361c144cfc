"""The gRPC driver (grpc://, grpcs://) on loopback, with real gRPC servers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest

grpc = pytest.importorskip("grpc")

import cellnet.drivers.grpc as grpc_driver  # noqa: E402
from cellnet.testing import driver_conformance  # noqa: E402
from cellnet import Cell  # noqa: E402
from cellnet.codec import PREFIX_SIZE, Frame, FrameLimits, Kind, encode_frame  # noqa: E402
from cellnet.driver import Link, Listener, LinkOptions  # noqa: E402
from cellnet.drivers.grpc import (  # noqa: E402
    METHOD,
    GrpcDriver,
    Keepalive,
    channel_options,
    message_limit,
    parse_grpc_url,
    server_options,
)
from cellnet.errors import (  # noqa: E402
    ConfigError,
    ConnectError,
    FrameError,
    FrameTooLarge,
    LinkBroken,
    LinkClosed,
)
from cellnet.pki import CertificateAuthority  # noqa: E402
from cellnet.registry import DriverRegistry  # noqa: E402
from cellnet.tls import TlsSettings  # noqa: E402

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024
BIG = LinkOptions(limits=FrameLimits(max_payload=16 * MiB + 64 * 1024))


def msg(n: int, payload: bytes = b"") -> Frame:
    return Frame(Kind.MESSAGE, {"n": n}, payload)


async def echo(link: Link) -> None:
    async for frame in link:
        await link.send(frame)


async def sink(link: Link) -> None:
    async for _ in link:
        pass


@dataclass
class Served:
    """A listener plus the links it accepted."""

    listener: Listener
    links: asyncio.Queue[Link]

    @property
    def url(self) -> str:
        return self.listener.url


async def serve(
    driver: GrpcDriver,
    url: str = "grpc://127.0.0.1:0",
    options: LinkOptions = LinkOptions(),
    handler: Callable[[Link], Awaitable[None]] | None = None,
) -> Served:
    links: asyncio.Queue[Link] = asyncio.Queue()

    async def on_link(link: Link) -> None:
        links.put_nowait(link)
        if handler is None:
            await asyncio.Event().wait()  # keep the link open until closed
        else:
            await handler(link)

    return Served(await driver.listen(url, on_link, options), links)


@pytest.fixture
async def driver() -> AsyncIterator[GrpcDriver]:
    yield GrpcDriver()


# -- the module and its options -------------------------------------------------


def test_imports_the_grpc_library_not_itself() -> None:
    assert grpc_driver.grpc is grpc
    assert grpc_driver.grpc.__name__ == "grpc"
    assert hasattr(grpc_driver.grpc, "aio")
    assert DriverRegistry().for_url("grpcs://h:1").__class__ is GrpcDriver


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("grpc://127.0.0.1:8002", ("grpc", "127.0.0.1", 8002)),
        ("GRPCS://Server.Example.org:443", ("grpcs", "server.example.org", 443)),
        ("grpc://[::1]:0", ("grpc", "::1", 0)),
        ("grpc://host:1/", ("grpc", "host", 1)),
    ],
)
def test_parse_url(url: str, expected: tuple[str, str, int]) -> None:
    assert parse_grpc_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["grpc://host", "grpc://:80", "grpc://host:99999", "grpc://host:1/path", "grpc://h:1?x=1", "tcp://h:1", "grpc://u@h:1"],
)
def test_bad_url(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_grpc_url(url)


def test_message_limits_come_from_the_frame_limits() -> None:
    options = LinkOptions(limits=FrameLimits(max_header=1000, max_payload=32 * MiB))
    expected = PREFIX_SIZE + 1000 + 32 * MiB
    for args in (channel_options(options, Keepalive()), server_options(options, Keepalive())):
        d = dict(args)
        assert d["grpc.max_send_message_length"] == expected
        assert d["grpc.max_receive_message_length"] == expected
    huge = LinkOptions(limits=FrameLimits(max_payload=8 * 1024 * MiB))
    assert message_limit(huge.limits) == 2**31 - 1


def test_keepalive_settings_are_consistent() -> None:
    keepalive = Keepalive()
    client = dict(channel_options(LinkOptions(), keepalive))
    server = dict(server_options(LinkOptions(), keepalive))
    assert client["grpc.keepalive_time_ms"] == 30_000
    assert server["grpc.http2.min_ping_interval_without_data_ms"] == 15_000
    assert server["grpc.http2.min_ping_interval_without_data_ms"] < client["grpc.keepalive_time_ms"]
    assert server["grpc.keepalive_permit_without_calls"] == 1
    assert client["grpc.http2.max_pings_without_data"] == 0
    assert server["grpc.so_reuseport"] == 0
    with pytest.raises(ConfigError):
        Keepalive(time=0)


# -- links ------------------------------------------------------------------------


async def test_port_zero_reports_the_bound_port_and_echoes(driver: GrpcDriver) -> None:
    served = await serve(driver, handler=echo)
    try:
        scheme, host, port = parse_grpc_url(served.url)
        assert (scheme, host) == ("grpc", "127.0.0.1") and port > 0
        link = await driver.dial(served.url, LinkOptions())
        frames = aiter(link)
        for n in range(200):
            await link.send(msg(n, bytes([n % 256]) * n))
        for n in range(200):
            frame = await anext(frames)
            assert frame.header == {"n": n} and frame.payload == bytes([n % 256]) * n
        assert link.remote == served.url
        # Every dial has a connection of its own.
        other = await driver.dial(served.url, LinkOptions())
        first, second = served.links.get_nowait(), await asyncio.wait_for(served.links.get(), 5)
        assert first.remote != second.remote
        await other.aclose()
        await link.aclose()
    finally:
        await served.listener.aclose()


async def test_ipv6_loopback(driver: GrpcDriver) -> None:
    try:
        served = await serve(driver, "grpc://[::1]:0", handler=echo)
    except ConnectError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert served.url.startswith("grpc://[::1]:")
        link = await driver.dial(served.url, LinkOptions())
        await link.send(msg(1, b"six"))
        assert (await anext(aiter(link))).payload == b"six"
        await link.aclose()
    finally:
        await served.listener.aclose()


async def test_a_port_in_use_is_refused(driver: GrpcDriver) -> None:
    served = await serve(driver)
    try:
        with pytest.raises(ConnectError, match="cannot listen"):
            await serve(driver, served.url)
    finally:
        await served.listener.aclose()


async def test_frames_above_grpc_default_limit_both_ways(driver: GrpcDriver) -> None:
    served = await serve(driver, options=BIG, handler=echo)
    try:
        link = await driver.dial(served.url, BIG)
        frames = aiter(link)
        for size in (4 * MiB - 1, 4 * MiB + 1, 16 * MiB):
            payload = bytes([size % 251]) * size
            await link.send(msg(size, payload))
            frame = await anext(frames)
            assert frame.header == {"n": size} and len(frame.payload) == size
            assert frame.payload == payload
        await link.aclose()
    finally:
        await served.listener.aclose()


async def test_over_limit_send_is_refused_and_the_link_stays(driver: GrpcDriver) -> None:
    options = LinkOptions(limits=FrameLimits(max_header=512, max_payload=1000))
    served = await serve(driver, options=options, handler=echo)
    try:
        link = await driver.dial(served.url, options)
        with pytest.raises(FrameTooLarge, match="payload of 1001 bytes"):
            await link.send(msg(1, b"x" * 1001))
        with pytest.raises(FrameTooLarge, match="header"):
            await link.send(Frame(Kind.MESSAGE, {"h": "x" * 600}))
        await link.send(msg(2, b"x" * 1000))
        assert (await anext(aiter(link))).payload == b"x" * 1000
        await link.aclose()
    finally:
        await served.listener.aclose()


async def test_peer_over_our_limit_is_refused_before_reading(driver: GrpcDriver) -> None:
    small = LinkOptions(limits=FrameLimits(max_payload=1 * MiB))
    # A dialer with larger limits than the listener: the listener refuses.
    served = await serve(driver, options=small)
    try:
        link = await driver.dial(served.url, BIG)
        accepted = await asyncio.wait_for(served.links.get(), 5)
        await link.send(msg(1, b"y" * (2 * MiB)))
        with pytest.raises(LinkBroken):
            await anext(aiter(accepted))
        with pytest.raises(LinkBroken, match="larger than max"):
            await anext(aiter(link))
        await link.aclose()
    finally:
        await served.listener.aclose()
    # A listener with larger limits than the dialer: the dialer refuses.
    served = await serve(driver, options=BIG)
    try:
        link = await driver.dial(served.url, small)
        accepted = await asyncio.wait_for(served.links.get(), 5)
        try:
            await accepted.send(msg(1, b"y" * (2 * MiB)))
        except LinkBroken:
            pass  # the dialer may refuse the message before it is all written
        with pytest.raises(FrameTooLarge, match="larger than max"):
            await anext(aiter(link))
        with pytest.raises(LinkBroken):
            await anext(aiter(accepted))
        await link.aclose()
    finally:
        await served.listener.aclose()


async def test_garbage_message_is_a_frame_error(driver: GrpcDriver) -> None:
    served = await serve(driver)
    try:
        host_port = served.url.removeprefix("grpc://")
        async with grpc.aio.insecure_channel(host_port) as channel:
            call = channel.stream_stream(METHOD)()
            await call.write(b"XX" + bytes(30))
            accepted = await asyncio.wait_for(served.links.get(), 5)
            with pytest.raises(FrameError, match="bad magic"):
                await anext(aiter(accepted))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            # A truncated frame is refused as well.
            call = channel.stream_stream(METHOD)()
            await call.write(encode_frame(msg(1, b"abc"))[:-1])
            accepted = await asyncio.wait_for(served.links.get(), 5)
            with pytest.raises(FrameError, match="length mismatch"):
                await anext(aiter(accepted))
        # The listener still serves good links.
        link = await driver.dial(served.url, LinkOptions())
        await link.send(msg(1))
        assert (await anext(aiter(await asyncio.wait_for(served.links.get(), 5)))).header == {"n": 1}
        await link.aclose()
    finally:
        await served.listener.aclose()


async def test_dial_fails_fast_when_nothing_listens(driver: GrpcDriver) -> None:
    served = await serve(driver)
    url = served.url
    await served.listener.aclose()
    started = time.monotonic()
    with pytest.raises(ConnectError, match="UNAVAILABLE"):
        await driver.dial(url, LinkOptions(connect_timeout=5))
    assert time.monotonic() - started < 2


async def test_dial_to_a_non_cellnet_grpc_server_fails() -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        with pytest.raises(ConnectError, match="not a cellnet gRPC listener"):
            await GrpcDriver().dial(f"grpc://127.0.0.1:{port}", LinkOptions())
    finally:
        await server.stop(0)


async def test_dial_times_out_against_a_silent_peer() -> None:
    # A TCP server that accepts and never speaks HTTP/2.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        with pytest.raises(ConnectError, match="timed out"):
            await GrpcDriver().dial(f"grpc://127.0.0.1:{port}", LinkOptions(connect_timeout=0.5))
        assert time.monotonic() - started < 3
    finally:
        server.close()


async def test_closed_by_us_vs_broken_by_peer(driver: GrpcDriver) -> None:
    served = await serve(driver)
    try:
        # The dialer closes: it sees LinkClosed, the listener's end LinkBroken.
        link = await driver.dial(served.url, LinkOptions())
        await link.send(msg(1, b"last words"))
        accepted = await asyncio.wait_for(served.links.get(), 5)
        await link.aclose()
        await link.aclose()  # idempotent
        assert link.closed
        with pytest.raises(LinkClosed):
            await link.send(msg(2))
        assert [f async for f in link] == []
        frames = aiter(accepted)
        assert (await anext(frames)).payload == b"last words"
        with pytest.raises(LinkBroken):
            await anext(frames)
        with pytest.raises(LinkBroken):
            await accepted.send(msg(3))

        # The listener's end closes: the dialer sees LinkBroken after the
        # frames sent before the close.
        link = await driver.dial(served.url, LinkOptions())
        accepted = await asyncio.wait_for(served.links.get(), 5)
        await accepted.send(msg(4, b"bye"))
        await accepted.aclose()
        with pytest.raises(LinkClosed):
            await accepted.send(msg(5))
        frames = aiter(link)
        assert (await anext(frames)).payload == b"bye"
        with pytest.raises(LinkBroken, match="peer closed"):
            await anext(frames)
        with pytest.raises(LinkBroken):
            await link.send(msg(6))
        await link.aclose()
    finally:
        await served.listener.aclose()


async def test_listener_close_breaks_links_and_stops_accepting(driver: GrpcDriver) -> None:
    served = await serve(driver)
    link = await driver.dial(served.url, LinkOptions())
    accepted = await asyncio.wait_for(served.links.get(), 5)
    started = time.monotonic()
    await served.listener.aclose()
    await served.listener.aclose()
    assert time.monotonic() - started < 2
    with pytest.raises(LinkBroken):
        await asyncio.wait_for(anext(aiter(link)), 5)
    with pytest.raises(LinkBroken):
        await asyncio.wait_for(anext(aiter(accepted)), 5)
    await link.aclose()
    with pytest.raises(ConnectError):
        await driver.dial(served.url, LinkOptions())


async def test_slow_receiver_makes_send_wait(driver: GrpcDriver) -> None:
    served = await serve(driver)  # accepts, never reads
    try:
        link = await driver.dial(served.url, LinkOptions())
        sent = 0
        frame = msg(0, b"z" * (256 * 1024))

        async def pump() -> None:
            nonlocal sent
            while True:
                await link.send(frame)
                sent += len(frame.payload)

        task = asyncio.create_task(pump())
        previous = -1
        while previous != sent:  # wait until sending stalls
            previous = sent
            await asyncio.sleep(0.3)
        task.cancel()
        # Bounded: HTTP/2 windows + the read-ahead, far below what a
        # queue-growing sender would push in the same time.
        assert 0 < sent <= 16 * MiB
        # Cancelling the waiting send did not break the link; the receiver
        # gets every frame in order once it reads.
        accepted = await asyncio.wait_for(served.links.get(), 5)
        after = asyncio.create_task(link.send(msg(1, b"after")))  # waits too
        received = 0
        async for got in accepted:
            if got.header == {"n": 1}:
                break
            received += len(got.payload)
        assert got.payload == b"after"
        assert received >= sent
        await after
        await link.aclose()
    finally:
        await served.listener.aclose()


async def test_concurrent_senders_keep_frames_whole(driver: GrpcDriver) -> None:
    served = await serve(driver)
    try:
        link = await driver.dial(served.url, LinkOptions())
        accepted = await asyncio.wait_for(served.links.get(), 5)

        async def sender(k: int) -> None:
            for n in range(50):
                await link.send(Frame(Kind.MESSAGE, {"k": k, "n": n}, bytes([k]) * (1000 * k)))

        await asyncio.gather(*(sender(k) for k in range(1, 6)))
        seen: dict[int, int] = {}
        frames = aiter(accepted)
        for _ in range(250):
            frame = await anext(frames)
            k, n = frame.header["k"], frame.header["n"]
            assert n == seen.get(k, -1) + 1 and frame.payload == bytes([k]) * (1000 * k)
            seen[k] = n
        await link.aclose()
    finally:
        await served.listener.aclose()


# -- keepalive ----------------------------------------------------------------------


async def test_idle_link_survives_keepalive_pings() -> None:
    # gRPC clients ping at most once a second, so 1 s is the shortest period.
    fast = Keepalive(time=1.0, timeout=2.0)
    # Control: a listener with gRPC's stock ping policy (5 minutes) sends
    # GOAWAY too_many_pings to the same dialer: proves the pings happen.
    strict = Keepalive(time=1.0, timeout=2.0, min_ping_interval=300.0)
    dialer = GrpcDriver(fast)
    good = await serve(GrpcDriver(fast), handler=echo)
    bad = await serve(GrpcDriver(strict), handler=echo)
    try:
        links = [await dialer.dial(good.url, LinkOptions()), await dialer.dial(bad.url, LinkOptions())]
        for link in links:
            await link.send(msg(0))
            assert (await anext(aiter(link))).header == {"n": 0}

        async def idle(link: Link) -> str:
            try:
                await asyncio.wait_for(anext(aiter(link)), 6.5)
            except asyncio.TimeoutError:
                return "idle"
            except LinkBroken as exc:
                return str(exc)
            return "frame"

        good_result, bad_result = await asyncio.gather(*(idle(link) for link in links))
        assert good_result == "idle"
        assert "ping" in bad_result.lower()
        await links[0].send(msg(1))
        assert (await anext(aiter(links[0]))).header == {"n": 1}
        for link in links:
            await link.aclose()
    finally:
        await good.listener.aclose()
        await bad.listener.aclose()


# -- TLS ----------------------------------------------------------------------------


@dataclass
class Kit:
    server: TlsSettings
    client: TlsSettings
    no_cert: TlsSettings
    foreign_client: TlsSettings
    distrusting: TlsSettings
    wrong_host: TlsSettings
    server_only: TlsSettings


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    folder = tmp_path_factory.mktemp("grpc-tls")
    ca = CertificateAuthority.create("grpc test CA")
    other = CertificateAuthority.create("other CA")
    ca_pem = ca.write(folder / "ca.pem")
    other_pem = other.write(folder / "other.pem")

    def member(stem: str, authority: CertificateAuthority, hosts: list[str], trusts: Path | None) -> TlsSettings:
        cert, key = authority.issue(stem, hosts).write(folder, stem)
        return TlsSettings(trusts, cert, key)

    server = member("server", ca, ["127.0.0.1", "localhost"], ca_pem)
    return Kit(
        server=server,
        client=member("site-1", ca, [], ca_pem),
        no_cert=TlsSettings(ca_pem),
        foreign_client=member("foreign", other, [], ca_pem),
        distrusting=member("distrusting", ca, [], other_pem),
        wrong_host=member("wrong-host", ca, ["server.example.org"], ca_pem),
        server_only=TlsSettings(None, server.cert, server.key),
    )


async def test_mutual_tls_and_refusals(kit: Kit, driver: GrpcDriver) -> None:
    served = await serve(driver, "grpcs://127.0.0.1:0", LinkOptions(tls=kit.server), handler=echo)
    try:
        assert served.url.startswith("grpcs://127.0.0.1:")
        for bad, reason in [
            (kit.no_cert, "no client certificate"),
            (kit.foreign_client, "certificate from another CA"),
            (kit.distrusting, "trusts another CA"),
        ]:
            with pytest.raises(ConnectError):
                await driver.dial(served.url, LinkOptions(tls=bad, connect_timeout=3))
        with pytest.raises(ConnectError):
            await driver.dial(served.url.replace("grpcs", "grpc"), LinkOptions(connect_timeout=3))
        # Good clients still get through, with the IP SAN checked for 127.0.0.1.
        link = await driver.dial(served.url, LinkOptions(tls=kit.client))
        await link.send(msg(1, b"secret"))
        assert (await anext(aiter(link))).payload == b"secret"
        await link.aclose()
    finally:
        await served.listener.aclose()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_server_certificate_must_name_the_host(kit: Kit, driver: GrpcDriver, host: str) -> None:
    served = await serve(driver, f"grpcs://{host}:0", LinkOptions(tls=kit.wrong_host), handler=echo)
    try:
        with pytest.raises(ConnectError, match="(?i)hostname verification"):
            await driver.dial(served.url, LinkOptions(tls=kit.client))
    finally:
        await served.listener.aclose()
    served = await serve(driver, f"grpcs://{host}:0", LinkOptions(tls=kit.server), handler=echo)
    try:
        link = await driver.dial(served.url, LinkOptions(tls=kit.client))
        await link.send(msg(1))
        assert (await anext(aiter(link))).header == {"n": 1}
        await link.aclose()
    finally:
        await served.listener.aclose()


async def test_server_only_tls_accepts_anonymous_clients(kit: Kit, driver: GrpcDriver) -> None:
    served = await serve(driver, "grpcs://127.0.0.1:0", LinkOptions(tls=kit.server_only), handler=echo)
    try:
        link = await driver.dial(served.url, LinkOptions(tls=kit.no_cert))
        await link.send(msg(1))
        assert (await anext(aiter(link))).header == {"n": 1}
        await link.aclose()
    finally:
        await served.listener.aclose()


async def test_tls_listener_needs_a_certificate(kit: Kit, driver: GrpcDriver, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls.cert"):
        await serve(driver, "grpcs://127.0.0.1:0", LinkOptions())
    with pytest.raises(ConfigError, match="tls.cert"):
        await serve(driver, "grpcs://127.0.0.1:0", LinkOptions(tls=kit.no_cert))
    missing = TlsSettings(kit.no_cert.ca, tmp_path / "nope.pem", tmp_path / "nope.key")
    with pytest.raises(ConfigError, match="no such file"):
        await serve(driver, "grpcs://127.0.0.1:0", LinkOptions(tls=missing))


# -- cells over gRPC ------------------------------------------------------------------


async def test_cells_relay_over_grpc() -> None:
    async with await Cell("server", listen=["grpc://127.0.0.1:0"]).start() as server:
        url = server.listen_addresses[0]
        assert url.startswith("grpc://127.0.0.1:") and not url.endswith(":0")
        async with Cell("site-1", parent=url) as site1, Cell("site-2", parent=url) as site2:
            await site1.start(wait_parent=5)
            await site2.start(wait_parent=5)
            reply = await site1.request("site-2", "cellnet", "echo", b"r" * 70_000, timeout=5)
            assert reply.payload == b"r" * 70_000
            assert reply.meta["route"] == ["site-1", "server", "site-2"]
            reply = await site2.request("server", "cellnet", "echo", b"direct", timeout=5)
            assert reply.payload == b"direct"
            assert reply.meta["route"] == ["site-2", "server"]


TestGrpcConformance = driver_conformance(GrpcDriver, "grpc://127.0.0.1:0")
TestGrpcsConformance = driver_conformance(GrpcDriver, "grpcs://127.0.0.1:0", tls=True)
