"""The TCP driver (tcp://, tls://) and the in-memory driver against the conformance suite."""

from __future__ import annotations

from cellnet.drivers.memory import MemoryDriver
from cellnet.drivers.tcp import TcpDriver
from cellnet.testing import driver_conformance

TestTcpConformance = driver_conformance(TcpDriver, "tcp://127.0.0.1:0")
TestTlsConformance = driver_conformance(TcpDriver, "tls://127.0.0.1:0", tls=True)
TestMemoryConformance = driver_conformance(MemoryDriver, "memory://conformance")


async def test_close_delivers_what_was_queued_while_the_peer_keeps_sending() -> None:
    """Closing a socket with unread input resets the connection and drops what
    it still holds; aclose() drains its queue while reading (and dropping)
    what arrives, so the frames sent before it still reach the peer."""
    import asyncio

    from cellnet.codec import Frame, Kind
    from cellnet.driver import LinkOptions
    from cellnet.errors import LinkBroken

    driver = TcpDriver()
    accepted: asyncio.Queue = asyncio.Queue()

    async def on_link(link: object) -> None:
        await accepted.put(link)
        await asyncio.sleep(3600)

    listener = await driver.listen("tcp://127.0.0.1:0", on_link, LinkOptions())
    try:
        closer = await driver.dial(listener.url, LinkOptions())
        await closer.send(Frame(Kind.MESSAGE, {"seq": -1}))
        peer = await asyncio.wait_for(accepted.get(), 5)
        stop = asyncio.Event()

        async def chatter() -> None:  # the closer never reads these
            while not stop.is_set():
                try:
                    await peer.send(Frame(Kind.MESSAGE, {"noise": 1}, b"n" * 65536))
                except LinkBroken:
                    return
                await asyncio.sleep(0)

        noise = asyncio.ensure_future(chatter())
        await asyncio.sleep(0.2)  # unread input piles up at the closer
        block = b"d" * (256 * 1024)
        for seq in range(32):  # 8 MiB: more than the socket buffers take at once
            await closer.send(Frame(Kind.MESSAGE, {"seq": seq}, block))
        got: list[int] = []

        async def drain() -> None:
            try:
                async for frame in peer:
                    if "seq" in frame.header and frame.header["seq"] >= 0:
                        got.append(frame.header["seq"])
            except LinkBroken:
                pass

        reader = asyncio.ensure_future(drain())
        await asyncio.wait_for(closer.aclose(), 5)
        await asyncio.wait_for(reader, 10)
        stop.set()
        await noise
        assert got == list(range(32))
    finally:
        await listener.aclose()


async def test_a_stream_cut_mid_frame_is_a_broken_link() -> None:
    """A peer that closes (a FIN, as a killed process with nothing unread
    sends) after half a frame broke the link: LinkBroken, not FrameError.
    The frames before the cut are still delivered."""
    import asyncio

    from cellnet.codec import Frame, Kind, encode_frame
    from cellnet.driver import LinkOptions
    from cellnet.errors import LinkBroken

    driver = TcpDriver()
    outcome: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    async def on_link(link: object) -> None:
        got = []
        try:
            async for frame in link:  # type: ignore[attr-defined]
                got.append(frame.header["seq"])
        except Exception as exc:
            outcome.set_result((got, exc))
            return
        outcome.set_result((got, None))

    listener = await driver.listen("tcp://127.0.0.1:0", on_link, LinkOptions())
    try:
        host, port = listener.url.removeprefix("tcp://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        whole = encode_frame(Frame(Kind.MESSAGE, {"seq": 0}, b"x" * 1000))
        cut = encode_frame(Frame(Kind.MESSAGE, {"seq": 1}, b"y" * 1000))
        writer.write(whole + cut[: len(cut) // 2])
        await writer.drain()
        writer.write_eof()
        got, exc = await asyncio.wait_for(outcome, 5)
        writer.close()
        assert got == [0]
        assert isinstance(exc, LinkBroken), repr(exc)
        assert "in the middle of a frame" in str(exc)
    finally:
        await listener.aclose()
