"""Chunked transfers on the in-memory driver: flow control, resume, limits."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cellnet.cell import Cell, Reply
from cellnet.config import Limits, Timeouts
from cellnet.drivers.memory import MemoryDriver, MemoryNetwork
from cellnet.errors import (
    ChecksumMismatch,
    ConfigError,
    MessageTooLarge,
    NoHandler,
    RequestTimeout,
    TransferFailed,
)
from cellnet.message import Message
from cellnet.payload import IterSource
from cellnet.stream import Stream

CHUNK = 16 * 1024
WINDOW = 64 * 1024
SMALL = Limits(chunk=CHUNK, window=WINDOW)
FAST = Timeouts(
    backoff_initial=0.01, backoff_max=0.05, connect=1.0, handshake=1.0, transfer_resume=2.0
)


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


async def chunks_of(data: bytes, step: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), step):
        yield data[i : i + step]
        await asyncio.sleep(0)


class Bus:
    def __init__(self) -> None:
        self.net = MemoryNetwork()
        self.drivers = {"memory": MemoryDriver(self.net)}
        self.cells: list[Cell] = []

    async def cell(self, name: str, *, parent: str | None = "memory://server", **kw: object) -> Cell:
        kw.setdefault("limits", SMALL)
        kw.setdefault("timeouts", FAST)
        listen = ("memory://server",) if parent is None else ()
        cell = Cell(name, parent=parent, listen=listen, drivers=self.drivers, **kw)  # type: ignore[arg-type]
        self.cells.append(cell)
        await cell.start(wait_parent=2.0 if parent else None)
        return cell


@pytest.fixture
async def bus() -> AsyncIterator[Bus]:
    b = Bus()
    yield b
    for cell in reversed(b.cells):
        await cell.aclose()


async def three(bus: Bus, **site2: object) -> tuple[Cell, Cell, Cell]:
    server = await bus.cell("server", parent=None)
    return server, await bus.cell("site-1"), await bus.cell("site-2", **site2)


async def test_large_payload_is_relayed_in_chunks_and_arrives_whole(bus: Bus) -> None:
    server, site1, site2 = await three(bus)
    seen: list[Message] = []

    @site2.on("app", "sum")
    async def digest(msg: Message) -> bytes:
        seen.append(msg)
        return hashlib.sha256(msg.payload).hexdigest().encode()

    data = blob(10 * CHUNK + 123)
    relayed_before = server.counters.relayed
    reply = await site1.request("site-2", "app", "sum", data, meta={"k": 1}, timeout=10)
    assert reply.payload.decode() == hashlib.sha256(data).hexdigest()
    assert seen[0].meta == {"k": 1} and seen[0].hops == ("site-1", "server", "site-2")
    assert seen[0].stream is None  # a plain handler gets bytes
    # At least one frame per chunk went through the relay: it never had it whole.
    assert server.counters.relayed - relayed_before >= 11


async def test_stream_handler_saves_to_a_file_with_checksum_and_progress(bus: Bus, tmp_path: Path) -> None:
    _, site1, site2 = await three(bus)
    source = tmp_path / "model.bin"
    data = blob(7 * CHUNK + 5)
    source.write_bytes(data)
    received_progress: list[int] = []

    @site2.on("files", stream=True)
    async def save(msg: Message) -> bytes:
        assert msg.stream is not None and msg.stream.size == len(data)
        await msg.stream.save(
            tmp_path / "out" / msg.meta["name"], progress=lambda done, total: received_progress.append(done)
        )
        return msg.stream.sha256.encode() if msg.stream.sha256 else b""

    (tmp_path / "out").mkdir()
    sent_progress: list[tuple[int, int | None]] = []
    reply = await site1.request(
        "site-2", "files", "put", source, meta={"name": "model.bin"}, checksum=True,
        progress=lambda done, total: sent_progress.append((done, total)), timeout=10,
    )
    assert reply.payload.decode() == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out" / "model.bin").read_bytes() == data
    assert not (tmp_path / "out" / "model.bin.partial").exists()
    assert sent_progress[-1] == (len(data), len(data))
    assert [d for d, _ in sent_progress] == sorted(d for d, _ in sent_progress)
    assert received_progress[-1] == len(data)


async def test_unknown_size_iterable_and_streamed_reply(bus: Bus) -> None:
    _, site1, _ = await three(bus)
    data = blob(9 * CHUNK + 77, seed=2)
    reply = await site1.request(
        "site-2", "cellnet", "echo", chunks_of(data, 5000), stream_reply=True, timeout=10
    )
    assert reply.stream is not None and reply.stream.chunked
    got = bytearray()
    pieces = 0
    async for piece in reply.stream:
        got += piece
        pieces += 1
    assert bytes(got) == data and pieces > 1
    assert reply.meta["route"] == ["site-1", "server", "site-2"]


async def test_receiver_buffers_at_most_one_window(bus: Bus) -> None:
    _, site1, site2 = await three(bus)
    most = 0
    total = 0

    @site2.on("slow", stream=True)
    async def slow(msg: Message) -> bytes:
        nonlocal most, total
        assert msg.stream is not None
        async for piece in msg.stream:
            most = max(most, msg.stream.buffered + len(piece))
            total += len(piece)
            await asyncio.sleep(0.001)
        return b"ok"

    await site1.request("site-2", "slow", "x", blob(40 * CHUNK), timeout=20)
    assert total == 40 * CHUNK
    assert 0 < most <= WINDOW


async def test_iterable_source_keeps_at_most_the_unacknowledged_window() -> None:
    data = blob(20 * CHUNK)
    source = IterSource(chunks_of(data, CHUNK))
    offset = 0
    kept_most = 0
    while True:
        piece = await source.read(offset, CHUNK)
        if not piece:
            break
        offset += len(piece)
        if offset >= WINDOW:
            source.release(offset - WINDOW)  # the receiver acknowledges one window behind
        kept_most = max(kept_most, sum(len(v) for _, v in source._kept))
    assert offset == len(data)
    assert kept_most <= WINDOW + CHUNK
    # A rewind inside the kept range replays the same bytes.
    assert bytes(await source.read(offset - CHUNK, CHUNK)) == data[-CHUNK:]
    with pytest.raises(ValueError):
        await source.read(0, CHUNK)  # released


async def test_sizes_over_the_limit_fail_at_the_sender_or_come_back_from_a_hop(bus: Bus) -> None:
    _, site1, site2 = await three(bus, limits=Limits(chunk=CHUNK, window=WINDOW, max_message=20 * CHUNK))

    @site2.on("sink", stream=True)
    async def sink(msg: Message) -> None:
        assert msg.stream is not None
        async for _ in msg.stream:
            pass

    with pytest.raises(MessageTooLarge) as info:
        await site1.request("site-2", "cellnet", "echo", chunks_of(b"", 1), size=SMALL.max_message + 1)
    assert info.value.where == "sender"
    # site-2 takes at most 20 chunks: the relay refuses the announced size for it.
    with pytest.raises(MessageTooLarge) as info:
        await site1.request("site-2", "cellnet", "echo", blob(21 * CHUNK), timeout=5)
    assert info.value.where == "site-2" and info.value.limit == 20 * CHUNK
    # Unknown size: site-2 itself stops it once it grows past the limit.
    with pytest.raises(MessageTooLarge):
        await site1.send("site-2", "sink", "x", chunks_of(blob(25 * CHUNK), CHUNK), timeout=5)
    # The links survive all three.
    assert (await site1.request("site-2", "cellnet", "echo", b"ok")).payload == b"ok"


async def test_no_handler_for_a_streamed_request(bus: Bus) -> None:
    _, site1, _ = await three(bus)
    with pytest.raises(NoHandler):
        await site1.request("site-2", "nobody", "home", blob(3 * CHUNK), timeout=5)


async def test_transfer_resumes_after_the_relay_links_break_and_runs_once(bus: Bus) -> None:
    _, site1, site2 = await three(bus)
    runs = 0
    halfway = asyncio.Event()

    @site2.on("big", stream=True)
    async def big(msg: Message) -> bytes:
        nonlocal runs
        runs += 1
        assert msg.stream is not None
        got = bytearray()
        async for piece in msg.stream:
            got += piece
            if len(got) > 30 * CHUNK:
                halfway.set()
            await asyncio.sleep(0.0005)
        return hashlib.sha256(got).hexdigest().encode()

    data = blob(80 * CHUNK, seed=3)
    pending = asyncio.create_task(site1.request("site-2", "big", "x", data, timeout=20))
    await asyncio.wait_for(halfway.wait(), 10)
    assert bus.net.break_links("client") >= 2  # both sites lose the relay mid-transfer
    reply = await asyncio.wait_for(pending, 20)
    assert reply.payload.decode() == hashlib.sha256(data).hexdigest()
    assert runs == 1


async def test_transfer_that_cannot_resume_fails_on_both_ends(bus: Bus, tmp_path: Path) -> None:
    _, site1, site2 = await three(bus)
    failed: list[BaseException] = []
    started = asyncio.Event()

    @site2.on("files", stream=True)
    async def save(msg: Message) -> bytes:
        assert msg.stream is not None
        started.set()
        try:
            await msg.stream.save(tmp_path / "half.bin")
        except TransferFailed as exc:
            failed.append(exc)
            raise
        return b""

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"z" * CHUNK
            await asyncio.sleep(0.001)

    pending = asyncio.create_task(site1.send("site-2", "files", "x", endless()))
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.05)
    await site1.aclose()  # the sender is gone for good
    with pytest.raises((TransferFailed, asyncio.CancelledError, Exception)):
        await pending
    for _ in range(60):
        if failed:
            break
        await asyncio.sleep(0.1)
    assert failed and isinstance(failed[0], TransferFailed)
    assert not (tmp_path / "half.bin").exists() and not (tmp_path / "half.bin.partial").exists()


async def test_silent_receiver_fails_the_sender_within_the_resume_budget(bus: Bus) -> None:
    _, site1, site2 = await three(bus)
    started = asyncio.Event()

    @site2.on("files", stream=True)
    async def hang(msg: Message) -> bytes:
        started.set()
        await asyncio.sleep(60)
        return b""

    pending = asyncio.create_task(site1.send("site-2", "files", "x", blob(200 * CHUNK)))
    await asyncio.wait_for(started.wait(), 5)
    await site2.aclose()
    bus.cells.remove(site2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(TransferFailed):
        await asyncio.wait_for(pending, 10)
    assert loop.time() - t0 < FAST.transfer_resume + 3


async def test_small_requests_pass_a_large_transfer(bus: Bus) -> None:
    _, site1, site2 = await three(bus)

    @site2.on("slow", stream=True)
    async def slow(msg: Message) -> bytes:
        assert msg.stream is not None
        async for _ in msg.stream:
            await asyncio.sleep(0.002)
        return b"done"

    big = asyncio.create_task(site1.request("site-2", "slow", "x", blob(200 * CHUNK), timeout=30))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    for _ in range(5):
        t0 = loop.time()
        assert (await site1.request("site-2", "cellnet", "echo", b"ping", timeout=5)).payload == b"ping"
        assert loop.time() - t0 < 0.2
    assert not big.done()
    assert (await big).payload == b"done"


async def test_handler_that_answers_early_stops_the_upload(bus: Bus) -> None:
    _, site1, site2 = await three(bus)

    @site2.on("peek", stream=True)
    async def peek(msg: Message) -> bytes:
        assert msg.stream is not None
        first = await anext(aiter(msg.stream))
        return bytes(first[:4])

    data = blob(500 * CHUNK)
    reply = await asyncio.wait_for(site1.request("site-2", "peek", "x", data, timeout=10), 10)
    assert reply.payload == data[:4]
    await asyncio.sleep(0.1)
    assert site1._transfers.active == (0, 0)
    assert site2._transfers.active == (0, 0)


async def test_large_reply_from_a_file(bus: Bus, tmp_path: Path) -> None:
    _, site1, site2 = await three(bus)
    data = blob(12 * CHUNK + 1, seed=4)
    (tmp_path / "r.bin").write_bytes(data)

    @site2.on("get")
    async def get(msg: Message) -> Reply:
        return Reply(tmp_path / "r.bin", {"name": "r.bin"})

    reply = await site1.request("site-2", "get", "x", timeout=10)
    assert reply.payload == data and reply.meta == {"name": "r.bin"}


async def test_checksum_mismatch_is_detected() -> None:
    stream = Stream(3, checksum=True)
    stream._push(b"abc")
    stream._finish("0" * 64)
    with pytest.raises(ChecksumMismatch):
        await stream.read()


async def test_budget_bounds_a_streamed_request(bus: Bus) -> None:
    _, site1, site2 = await three(bus)

    @site2.on("slow", stream=True)
    async def slow(msg: Message) -> bytes:
        await asyncio.sleep(30)
        return b""

    with pytest.raises(RequestTimeout):
        await site1.request("site-2", "slow", "x", blob(100 * CHUNK), timeout=0.5)


def test_chunk_and_window_are_checked() -> None:
    with pytest.raises(ConfigError):
        Cell("a", listen=["memory://x"], limits=Limits(chunk=100), drivers={"memory": MemoryDriver()})
    with pytest.raises(ConfigError):
        Cell("a", listen=["memory://x"], limits=Limits(chunk=CHUNK, window=CHUNK - 1),
             drivers={"memory": MemoryDriver()})


async def test_send_of_a_large_payload_returns_once_delivered(bus: Bus) -> None:
    _, site1, site2 = await three(bus)
    got: list[bytes] = []

    @site2.on("drop")
    async def drop(msg: Message) -> None:
        got.append(msg.payload)

    data = os.urandom(5 * CHUNK)
    await site1.send("site-2", "drop", "x", data)
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.01)
    assert got == [data]


async def test_a_lying_sender_loses_its_transfer_not_the_links(bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    from cellnet.codec import Frame, Kind
    from cellnet.message import MsgType, Status

    _, site1, site2 = await three(bus)
    got: list[bytes] = []

    @site2.on("sink", stream=True)
    async def sink(msg: Message) -> None:
        assert msg.stream is not None
        try:
            got.append(await msg.stream.read())
        except TransferFailed:
            got.append(b"failed")

    credits: list[dict[str, object]] = []
    original = site1._transfers.on_credit
    site1._transfers.on_credit = lambda frame: (credits.append(dict(frame.header)), original(frame))  # type: ignore[method-assign]
    link = site1._links["server"]

    def frame(**fields: object) -> Frame:
        header = {"t": int(MsgType.CHUNK), "i": "x1", "s": "site-1", "d": "site-2", "h": ["site-1"]}
        header.update(fields)
        return Frame(Kind.MESSAGE, header, fields.pop("payload", b""))  # type: ignore[arg-type]

    # An envelope that is not a map, then one of a type that cannot be streamed.
    await link.send_frame(frame(q=1, env=5, k=0))
    await link.send_frame(frame(i="x2", q=1, env={"t": int(MsgType.CREDIT)}, k=0))
    # A well-formed open, then data far past the credit it was granted.
    await link.send_frame(frame(i="x3", q=1, env={"t": int(MsgType.SEND), "c": "sink", "o": "x"}, k=0, z=10 * WINDOW))
    await asyncio.sleep(0.05)
    await link.send_frame(Frame(Kind.MESSAGE, {
        "t": int(MsgType.CHUNK), "i": "x3", "s": "site-1", "d": "site-2", "h": ["site-1"], "k": 0, "e": 0,
    }, b"y" * (WINDOW + 1)))
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0.02)
    assert got == [b"failed"]
    assert any(c.get("i") == "x3" and c.get("x") == int(Status.TRANSFER_FAILED) for c in credits)
    assert sum("dropped a malformed message" in r.getMessage() for r in caplog.records) == 2
    # Every link is still up and carries traffic.
    assert (await site1.request("site-2", "cellnet", "echo", b"still here")).payload == b"still here"
    assert site1._links["server"] is link


async def test_status_lists_transfers_in_progress(bus: Bus) -> None:
    from cellnet.introspect import status

    _, site1, site2 = await three(bus)
    release = asyncio.Event()
    reading = asyncio.Event()

    @site2.on("slow", stream=True)
    async def slow(msg: Message) -> bytes:
        assert msg.stream is not None
        async for _ in msg.stream:
            reading.set()
            await release.wait()
        return b""

    pending = asyncio.create_task(site1.request("site-2", "slow", "x", blob(20 * CHUNK), timeout=10))
    await asyncio.wait_for(reading.wait(), 5)
    (out,) = status(site1)["transfers"]
    (inc,) = status(site2)["transfers"]
    assert out["direction"] == "out" and out["peer"] == "site-2" and out["size"] == 20 * CHUNK
    assert inc["direction"] == "in" and inc["peer"] == "site-1" and inc["id"] == out["id"]
    assert 0 < inc["done"] <= WINDOW and out["done"] <= inc["done"]
    release.set()
    await pending
    assert status(site1)["transfers"] == [] and status(site2)["transfers"] == []


async def test_closing_right_after_a_streamed_reply_still_acknowledges_it(bus: Bus) -> None:
    _, site1, site2 = await three(bus)
    reply = await site1.request("site-2", "cellnet", "echo", blob(8 * CHUNK), stream_reply=True, timeout=5)
    assert reply.stream is not None
    assert len(await reply.stream.read()) == 8 * CHUNK
    await site1.aclose()
    for _ in range(50):
        if site2._transfers.active == (0, 0):
            break
        await asyncio.sleep(0.02)
    assert site2._transfers.active == (0, 0)


def failures_of(cell: Cell, topic: str, started: asyncio.Event | None = None) -> list[BaseException]:
    """A stream handler on ``cell`` that reads what comes; the TransferFailed
    errors its reads raise are appended to the list returned."""
    failed: list[BaseException] = []

    @cell.on(topic, stream=True)
    async def sink(msg: Message) -> None:
        assert msg.stream is not None
        try:
            async for _ in msg.stream:
                if started is not None:
                    started.set()
        except TransferFailed as exc:
            failed.append(exc)

    return failed


async def told_soon(failed: list[BaseException], t0: float) -> None:
    """Wait for the first failure; it must come well before transfer_resume."""
    loop = asyncio.get_running_loop()
    while not failed and loop.time() - t0 < FAST.transfer_resume:
        await asyncio.sleep(0.02)
    assert failed, "the receiver was not told"
    assert loop.time() - t0 < FAST.transfer_resume / 2  # told, not timed out


async def test_a_failing_source_fails_the_receiver_at_once(bus: Bus) -> None:
    _, site1, site2 = await three(bus)
    failed = failures_of(site2, "sink")

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"a" * CHUNK
        raise OSError("disk went away")

    t0 = asyncio.get_running_loop().time()
    with pytest.raises(OSError, match="disk went away"):
        await site1.send("site-2", "sink", "x", broken())
    await told_soon(failed, t0)
    assert "disk went away" in str(failed[0])


async def test_a_streamed_payload_to_an_absent_cell_fails_at_once(bus: Bus, tmp_path: Path) -> None:
    from cellnet.errors import Unreachable

    _, site1, _ = await three(bus)
    (tmp_path / "f.bin").write_bytes(b"tiny")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(Unreachable):
        await site1.request("site-9", "files", "put", tmp_path / "f.bin", timeout=20)
    with pytest.raises(Unreachable):
        await site1.send("site-9", "files", "put", blob(3 * CHUNK))
    assert loop.time() - t0 < 2


async def test_closing_the_sending_cell_fails_the_receiver_at_once(bus: Bus) -> None:
    _, site1, site2 = await three(bus)
    got_some = asyncio.Event()
    failed = failures_of(site2, "sink", got_some)

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"a" * CHUNK
            await asyncio.sleep(0.01)

    upload = asyncio.ensure_future(site1.send("site-2", "sink", "x", endless()))
    await asyncio.wait_for(got_some.wait(), 2)
    t0 = asyncio.get_running_loop().time()
    await site1.aclose()  # e.g. Ctrl-C in the sending process
    await told_soon(failed, t0)
    assert "the sending cell site-1 closed" in str(failed[0])
    with pytest.raises(TransferFailed):
        await upload


async def test_a_cell_receives_at_most_max_transfers_at_once(bus: Bus) -> None:
    _, site1, site2 = await three(bus, limits=Limits(chunk=CHUNK, window=WINDOW, max_transfers=2))
    release = asyncio.Event()
    started = 0

    @site2.on("slow", stream=True)
    async def slow(msg: Message) -> bytes:
        nonlocal started
        assert msg.stream is not None
        started += 1
        await release.wait()  # holds its transfer open without reading
        return str(len(await msg.stream.read())).encode()

    payload = blob(4 * WINDOW)
    first = [asyncio.ensure_future(site1.request("site-2", "slow", "x", payload, timeout=10)) for _ in range(2)]
    for _ in range(100):
        if started == 2:
            break
        await asyncio.sleep(0.01)
    assert started == 2
    with pytest.raises(TransferFailed, match=r"site-2 is receiving 2 transfers, its limit \(limits.max_transfers\)"):
        await site1.request("site-2", "slow", "x", payload, timeout=5)
    assert started == 2  # the refused one never reached the handler
    release.set()
    for task in first:
        assert (await task).payload == str(len(payload)).encode()
    # Room again once they are done.
    assert (await site1.request("site-2", "slow", "x", payload, timeout=5)).payload == str(len(payload)).encode()
