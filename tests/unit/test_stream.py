"""Stream.save in memory: batched writes, short writes, accounting, checksum and cleanup."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from cellnet import stream as stream_mod
from cellnet.errors import ChecksumMismatch, TransferFailed
from cellnet.stream import SAVE_BATCH_BYTES, SAVE_BATCH_CHUNKS, Stream, _write_chunks

MIB = 1 << 20


def blob(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def shapes() -> dict[str, list[bytes | memoryview]]:
    data = blob(3 * MIB + 12345)
    mixed: list[bytes | memoryview] = []
    pos, rng = 0, random.Random(7)
    while pos < len(data):
        n = rng.choice([0, 1, 7, 4096, 65536, 300_001, MIB])
        piece = data[pos : pos + n]
        mixed.append(memoryview(bytearray(piece)) if rng.random() < 0.5 else piece)
        pos += n
    backing = bytearray(blob(5 * MIB, seed=2))
    return {
        "nothing": [],
        "one empty": [b""],
        "empties": [b"", b"", b""],
        "one byte": [b"x"],
        "one chunk": [blob(1000)],
        "exactly a batch": [blob(MIB, seed=i) for i in range(SAVE_BATCH_CHUNKS)],
        "more than a batch": [blob(100_000, seed=i) for i in range(3 * SAVE_BATCH_CHUNKS + 5)],
        "empties between": [b"a", b"", b"bc", b"", b"", memoryview(b"def"), b""],
        "mixed sizes and views": mixed,
        "views into one buffer": [memoryview(backing)[i : i + 700_000] for i in range(0, len(backing), 700_000)],
        "larger than the byte bound": [blob(SAVE_BATCH_BYTES + 3, seed=3), b"tail", blob(SAVE_BATCH_BYTES, seed=4)],
    }


SHAPES = shapes()


def joined(chunks: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def filled(chunks: list[bytes | memoryview], **kw: object) -> Stream:
    s = Stream(sum(len(c) for c in chunks), **kw)  # type: ignore[arg-type]
    for c in chunks:
        s._push(c)
    return s


def no_partials(folder: Path) -> bool:
    return not any(p.name.endswith(".partial") for p in folder.iterdir())


@pytest.mark.parametrize("name", list(SHAPES))
async def test_save_writes_every_byte_when_buffered(tmp_path: Path, name: str) -> None:
    chunks = SHAPES[name]
    s = filled(chunks, checksum=True)
    s._finish(hashlib.sha256(joined(chunks)).hexdigest())
    target = tmp_path / "out.bin"
    assert await s.save(target) == target
    assert target.read_bytes() == joined(chunks)
    assert no_partials(tmp_path) and s.done


@pytest.mark.parametrize("name", ["empties between", "mixed sizes and views", "more than a batch"])
async def test_save_writes_every_byte_when_chunks_trickle_in(tmp_path: Path, name: str) -> None:
    chunks = SHAPES[name]
    s = Stream(None)
    target = tmp_path / "out.bin"
    task = asyncio.create_task(s.save(target))
    for i, c in enumerate(chunks):
        s._push(c)
        if i % 3 == 0:  # sometimes let save take what is there, sometimes let chunks pile up
            await asyncio.sleep(0.001)
    s._finish()
    await task
    assert target.read_bytes() == joined(chunks)


@pytest.fixture
def write_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The chunk sizes of every ``_write_chunks`` call Stream.save makes."""
    calls: list[list[int]] = []
    real = stream_mod._write_chunks

    def recording(fd: int, chunks: list[bytes | memoryview]) -> None:
        calls.append([len(c) for c in chunks])
        real(fd, chunks)

    monkeypatch.setattr(stream_mod, "_write_chunks", recording)
    return calls


async def test_buffered_chunks_are_written_in_one_call(tmp_path: Path, write_calls: list[list[int]]) -> None:
    chunks = [blob(1000, seed=i) for i in range(SAVE_BATCH_CHUNKS)]
    s = filled(chunks)
    s._finish()
    await s.save(tmp_path / "out.bin")
    assert write_calls == [[1000] * SAVE_BATCH_CHUNKS]
    assert (tmp_path / "out.bin").read_bytes() == joined(chunks)


async def test_batches_are_bounded_by_count(tmp_path: Path, write_calls: list[list[int]]) -> None:
    s = filled([b"x" * 10] * (2 * SAVE_BATCH_CHUNKS + 3))
    s._finish()
    await s.save(tmp_path / "out.bin")
    assert [len(c) for c in write_calls] == [SAVE_BATCH_CHUNKS, SAVE_BATCH_CHUNKS, 3]


async def test_batches_are_bounded_by_bytes(tmp_path: Path, write_calls: list[list[int]]) -> None:
    third = SAVE_BATCH_BYTES // 3
    big = SAVE_BATCH_BYTES + 1
    sizes = [third, third, third, 1, third, big, 5, 5]
    s = filled([b"y" * n for n in sizes])
    s._finish()
    await s.save(tmp_path / "out.bin")
    # third*3 + 1 <= the bound, a fourth third is not; an oversized chunk goes alone
    assert write_calls == [[third, third, third, 1], [third], [big], [5, 5]]
    for call in write_calls:
        assert len(call) == 1 or sum(call) <= SAVE_BATCH_BYTES
    assert os.path.getsize(tmp_path / "out.bin") == sum(sizes)


async def test_save_takes_only_what_is_buffered(tmp_path: Path, write_calls: list[list[int]]) -> None:
    s = Stream(None)
    task = asyncio.create_task(s.save(tmp_path / "out.bin"))
    s._push(b"a")
    while not write_calls:  # the first chunk goes out alone: nothing else was there
        await asyncio.sleep(0.001)
    s._push(b"bb")
    s._push(b"ccc")
    s._finish()
    await task
    assert write_calls == [[1], [2, 3]]
    assert (tmp_path / "out.bin").read_bytes() == b"abbccc"


class ShortWriter:
    """A fake writev that writes at most ``steps[i]`` bytes on call i (cycled)."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = steps
        self.out = bytearray()
        self.buffers: list[int] = []

    def __call__(self, fd: int, buffers: list[memoryview]) -> int:
        self.buffers.append(len(buffers))
        assert len(self.buffers) < 10_000, "the write loop does not advance"
        limit = self.steps[(len(self.buffers) - 1) % len(self.steps)]
        data = b"".join(bytes(b) for b in buffers)[:limit]
        self.out += data
        return len(data)


@pytest.mark.parametrize(
    "steps",
    [[1], [2], [3, 1, 4, 1, 5], [10], [11], [9, 1], [16], [100], [7, 1_000_000, 1]],
)
def test_write_chunks_resumes_after_short_writes(steps: list[int]) -> None:
    chunks: list[bytes | memoryview] = [b"0123", b"", memoryview(b"456789"), b"a", b"bcdefghij", b"kl"]
    fake = ShortWriter(steps)
    _write_chunks(-1, chunks, writev=fake)
    assert bytes(fake.out) == joined(chunks)


def test_write_chunks_resumes_after_random_short_writes() -> None:
    rng = random.Random(3)
    for _ in range(200):
        chunks: list[bytes | memoryview] = [rng.randbytes(rng.choice([0, 1, 2, 5, 17, 64])) for _ in range(rng.randint(0, 12))]
        fake = ShortWriter([rng.randint(1, 40) for _ in range(5)])
        _write_chunks(-1, chunks, writev=fake, iov_max=rng.randint(1, 5))
        assert bytes(fake.out) == joined(chunks)


def test_write_chunks_respects_iov_max() -> None:
    chunks: list[bytes | memoryview] = [bytes([i % 256]) * 3 for i in range(10)]
    fake = ShortWriter([1_000])
    _write_chunks(-1, chunks, writev=fake, iov_max=4)
    assert fake.buffers == [4, 4, 2] and bytes(fake.out) == joined(chunks)
    fake = ShortWriter([5])  # short writes and the cap together
    _write_chunks(-1, chunks, writev=fake, iov_max=4)
    assert max(fake.buffers) <= 4 and bytes(fake.out) == joined(chunks)


def test_write_chunks_with_the_real_writev(tmp_path: Path) -> None:
    chunks: list[bytes | memoryview] = [blob(i % 50, seed=i) for i in range(5000)]  # more than IOV_MAX
    for iov_max in (None, 3):
        path = tmp_path / f"out-{iov_max}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            _write_chunks(fd, chunks, iov_max=iov_max)
        finally:
            os.close(fd)
        assert path.read_bytes() == joined(chunks)


def test_write_chunks_fails_when_nothing_is_written() -> None:
    with pytest.raises(OSError):
        _write_chunks(-1, [b"abc"], writev=lambda fd, bufs: 0)


async def test_progress_and_consumed_are_exact_per_chunk(tmp_path: Path) -> None:
    sizes = [5, 0, 3, 100_000, 1, 0, 7, *([1000] * 20)]
    total = sum(sizes)
    credits: list[int] = []
    s = Stream(total, on_consumed=credits.append)
    for n in sizes:
        s._push(b"z" * n)
    s._finish()
    seen: list[tuple[int, int | None]] = []
    await s.save(tmp_path / "out.bin", progress=lambda done, size: seen.append((done, size)))
    running = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    assert seen == [(done, total) for done in running]
    assert credits == sizes
    assert s.consumed == s.received == total and s.buffered == 0


async def test_checksum_mismatch_removes_the_partial_file(tmp_path: Path) -> None:
    s = filled([b"abc", b"def"], checksum=True)
    s._finish(hashlib.sha256(b"abcdeX").hexdigest())
    target = tmp_path / "out.bin"
    with pytest.raises(ChecksumMismatch):
        await s.save(target)
    assert list(tmp_path.iterdir()) == []


async def test_failure_mid_stream_removes_the_partial_file(tmp_path: Path) -> None:
    abandoned: list[bool] = []
    s = Stream(None, on_abandon=lambda: abandoned.append(True))
    target = tmp_path / "out.bin"
    task = asyncio.create_task(s.save(target))
    for i in range(20):
        s._push(blob(10_000, seed=i))
    while s.consumed < 200_000:
        await asyncio.sleep(0.001)
    assert (tmp_path / "out.bin.partial").exists()
    s._fail(TransferFailed("the sender went away"))
    with pytest.raises(TransferFailed):
        await task
    assert list(tmp_path.iterdir()) == []
    assert abandoned == []  # the stream had already failed: nothing to tell the sender


async def test_write_error_removes_the_partial_file_and_abandons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = stream_mod._write_chunks

    def failing(fd: int, chunks: list[bytes | memoryview]) -> None:
        calls.append(len(chunks))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(fd, chunks)

    monkeypatch.setattr(stream_mod, "_write_chunks", failing)
    abandoned: list[bool] = []
    s = Stream(None, on_abandon=lambda: abandoned.append(True))
    task = asyncio.create_task(s.save(tmp_path / "out.bin"))
    s._push(b"first")
    while not calls:
        await asyncio.sleep(0.001)
    s._push(b"second")
    with pytest.raises(OSError, match="No space"):
        await task
    assert list(tmp_path.iterdir()) == [] and abandoned == [True]


async def test_a_cancelled_save_closes_the_file_only_after_its_running_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    started = threading.Event()
    real = stream_mod._write_chunks

    def slow(fd: int, chunks: list[bytes | memoryview], **kw: object) -> None:
        events.append("write starts")
        started.set()
        time.sleep(0.3)  # the save is cancelled meanwhile
        real(fd, chunks)
        events.append("write ends")

    real_close = stream_mod._File._close

    def close(self: object) -> None:
        events.append("close")
        real_close(self)  # type: ignore[arg-type]

    monkeypatch.setattr(stream_mod, "_write_chunks", slow)
    monkeypatch.setattr(stream_mod._File, "_close", close)
    s = Stream(None)
    s._push(b"x" * 1000)  # and no end: the save would wait for more
    target = tmp_path / "out.bin"
    save = asyncio.ensure_future(s.save(target))
    await asyncio.to_thread(started.wait, 5)
    save.cancel()
    with pytest.raises(asyncio.CancelledError):
        await save
    assert events == ["write starts", "write ends", "close"]
    assert not target.exists() and not (tmp_path / "out.bin.partial").exists()
