"""The receiving end of a payload that arrives in chunks.

A handler registered with ``cell.on(channel, topic, stream=True)`` gets the
message with ``msg.stream`` set to a :class:`Stream`; a request made with
``stream_reply=True`` returns its reply the same way. Read it one of three
ways::

    async for chunk in msg.stream:          # chunks as they arrive
        ...
    data = await msg.stream.read()          # the whole payload as bytes
    path = await msg.stream.save(folder / "model.bin")   # straight into a file

Memory stays bounded: the sender may only send as far as the receiver has
granted credit, and credit is granted as the reader consumes chunks, so at
most about one window (``limits.window``) waits here, however large the
payload is.

A stream that cannot be completed (the sender went away and did not resume
in time, or the content hash does not match) raises
:class:`~cellnet.errors.TransferFailed` from the reader; :meth:`Stream.save`
then removes what it wrote, so no half-written file is left looking complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AsyncIterator, Callable

from .errors import ChecksumMismatch, MessageTooLarge, TransferFailed

#: ``Stream.save`` writes up to this many chunks already buffered in one call...
SAVE_BATCH_CHUNKS = 8
#: ...and up to this many bytes (a single chunk may be larger).
SAVE_BATCH_BYTES = 8 << 20

#: ``progress(done, total)``: bytes done so far and the total (None if unknown).
Progress = Callable[[int, "int | None"], None]


class Stream:
    """An incoming payload, readable once, chunk by chunk.

    ``size`` is the total announced by the sender (``None`` when it streams
    a payload of unknown length); ``received`` counts the bytes arrived so
    far and ``consumed`` those handed to the reader.
    """

    def __init__(
        self,
        size: int | None,
        *,
        on_consumed: Callable[[int], None] | None = None,
        on_abandon: Callable[[], None] | None = None,
        checksum: bool = False,
        chunked: bool = True,
    ) -> None:
        self.size = size
        self.received = 0
        self.consumed = 0
        #: whether the payload came in chunks (False: it came in one frame)
        self.chunked = chunked
        self._chunks: deque[bytes | memoryview] = deque()
        self._wake = asyncio.Event()
        self._eof = False
        self._error: BaseException | None = None
        self._on_consumed = on_consumed
        self._on_abandon = on_abandon
        self._hash = hashlib.sha256() if checksum else None
        self._expected_hash: str | None = None
        self._progress: list[Progress] = []
        self._reading = False

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> Stream:
        """A complete stream holding ``data`` (a payload that came in one frame)."""
        stream = cls(len(data), chunked=False)
        stream._push(data)
        stream._finish()
        return stream

    # -- the reader's side ---------------------------------------------------

    @property
    def done(self) -> bool:
        """True once every byte has been read, or the stream failed."""
        return (self._eof and not self._chunks) or self._error is not None

    @property
    def sha256(self) -> str | None:
        """The content hash the sender announced (hex), once the stream ended."""
        return self._expected_hash

    def on_progress(self, callback: Progress) -> None:
        """Call ``callback(consumed, size)`` as the reader consumes chunks."""
        self._progress.append(callback)

    def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes | memoryview]:
        if self._reading:
            raise RuntimeError("a stream can be read only once")
        self._reading = True
        while True:
            chunk = await self._next()
            if chunk is None:
                return
            yield chunk

    async def _next(self) -> bytes | memoryview | None:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                self._verify()
                return None
            self._wake.clear()
            await self._wake.wait()
        if self._error is not None:
            raise self._error
        return self._take()

    def _take(self) -> bytes | memoryview:
        """Hand the next buffered chunk to the reader and account for it: the
        one place a chunk is consumed (``consumed``, hash, credit, progress).
        The caller has checked that a chunk is buffered."""
        chunk = self._chunks.popleft()
        n = len(chunk)
        self.consumed += n
        if self._hash is not None:
            self._hash.update(chunk)
        if self._on_consumed is not None:
            self._on_consumed(n)
        for callback in self._progress:
            callback(self.consumed, self.size)
        return chunk

    def _verify(self) -> None:
        if self._hash is None or self._expected_hash is None:
            return
        got = self._hash.hexdigest()
        if got != self._expected_hash:
            self._error = ChecksumMismatch(
                f"content hash mismatch: sender {self._expected_hash}, received {got}"
            )
            raise self._error

    async def read(self, limit: int | None = None) -> bytes:
        """Read the whole payload into memory. With ``limit``, raise
        :class:`~cellnet.errors.MessageTooLarge` past that many bytes."""
        if limit is not None and self.size is not None and self.size > limit:
            self.abandon()
            raise MessageTooLarge(self.size, limit, where="reader")
        buf = bytearray()
        async for chunk in self:
            buf += chunk
            if limit is not None and len(buf) > limit:
                self.abandon()
                raise MessageTooLarge(len(buf), limit, where="reader")
        return bytes(buf)

    async def save(self, path: str | os.PathLike, *, progress: Progress | None = None) -> Path:
        """Write the payload into the file ``path`` and return its path.

        Bytes go to ``<path>.partial`` first; it is renamed to ``path`` only
        once the stream is complete and its hash (when the sender sent one)
        matches. On any failure the partial file is removed and the error
        raised.

        The chunks already buffered when a write starts are written together
        (one ``writev`` in a worker thread, at most ``SAVE_BATCH_CHUNKS``
        chunks and ``SAVE_BATCH_BYTES`` bytes), so a fast sender costs fewer
        thread hand-offs. They count as consumed (credit, progress) when taken
        for the batch, so ``save`` holds at most that much beyond the window.
        """
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        if progress is not None:
            self.on_progress(progress)
        file = _File(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        # One thread does every file operation, in order: a write still
        # running when the save is cancelled finishes before the file is
        # closed (closing first could let it write into another file that
        # got the same descriptor number).
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellnet-save")

        def run(fn: Callable[..., object], *args: object) -> asyncio.Future[object]:
            return asyncio.wrap_future(worker.submit(fn, *args))

        try:
            async for chunk in self:
                # One call per batch, not per chunk: the chunks that arrived
                # while the last batch was written go in one writev.
                await run(file.write, self._batch(chunk))
            await run(file.sync_and_close)
        except BaseException:
            self.abandon()
            await asyncio.shield(run(file.discard, partial))
            raise
        finally:
            worker.shutdown(wait=False)
        os.replace(partial, target)
        return target

    def _batch(self, first: bytes | memoryview) -> list[bytes | memoryview]:
        """``first`` and the chunks already buffered behind it, taken without
        waiting: at most ``SAVE_BATCH_CHUNKS`` chunks and ``SAVE_BATCH_BYTES``
        bytes (``first`` alone may be larger). Taking a chunk grants its credit
        back to the sender, so the bound is what ``save`` may hold on top of a
        window."""
        batch = [first]
        nbytes = len(first)
        while self._chunks and self._error is None and len(batch) < SAVE_BATCH_CHUNKS:
            n = len(self._chunks[0])
            if nbytes + n > SAVE_BATCH_BYTES:
                break
            batch.append(self._take())
            nbytes += n
        return batch

    def abandon(self) -> None:
        """Stop reading: the sender is told to stop and buffered chunks are dropped."""
        if self.done:
            return
        self._chunks.clear()
        self._error = TransferFailed("the reader stopped reading the stream")
        self._wake.set()
        if self._on_abandon is not None:
            self._on_abandon()

    # -- the transfer's side ---------------------------------------------------

    def _push(self, chunk: bytes | memoryview) -> None:
        if self._error is not None:
            return
        self._chunks.append(chunk)
        self.received += len(chunk)
        self._wake.set()

    def _finish(self, sha256: str | None = None) -> None:
        self._expected_hash = sha256
        self._eof = True
        self._wake.set()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._eof:
            self._error = error
            self._chunks.clear()
            self._wake.set()

    @property
    def buffered(self) -> int:
        """Bytes arrived but not yet read."""
        return self.received - self.consumed


def _iov_max() -> int:
    """Buffers one ``writev`` call may take (``IOV_MAX``; 1024 if unknown)."""
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):
        return 1024
    return n if n > 0 else 1024


_IOV_MAX = _iov_max()


def _write_chunks(
    fd: int,
    chunks: list[bytes | memoryview],
    *,
    writev: Callable[[int, list[memoryview]], int] | None = None,
    iov_max: int | None = None,
) -> None:
    """Write ``chunks`` to ``fd`` in order, with as few ``writev`` calls as
    the kernel allows: a short write (it may stop anywhere, inside a buffer
    or between two) continues from the first byte not written, and no call
    gets more than ``iov_max`` buffers. ``writev`` and ``iov_max`` are for
    tests (default: :func:`os.writev`, ``IOV_MAX``)."""
    if writev is None:
        writev = getattr(os, "writev", None)
        if writev is None:  # no writev on this platform (Windows)
            for chunk in chunks:
                _write_all(fd, chunk)
            return
    limit = _IOV_MAX if iov_max is None else iov_max
    views = [v.cast("B") for v in map(memoryview, chunks) if v.nbytes]
    i = 0
    while i < len(views):
        n = writev(fd, views[i:i + limit])
        if n <= 0:
            raise OSError(f"writev wrote {n} bytes of {sum(v.nbytes for v in views[i:])}")
        # Skip the buffers written whole, then the written head of the next.
        while n and i < len(views):
            size = views[i].nbytes
            if n >= size:
                n -= size
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


class _File:
    """The file :meth:`Stream.save` writes; its methods run in one worker thread."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def write(self, chunks: list[bytes | memoryview]) -> None:
        assert self.fd is not None
        _write_chunks(self.fd, chunks)

    def sync_and_close(self) -> None:
        assert self.fd is not None
        os.fsync(self.fd)
        self._close()

    def discard(self, path: Path) -> None:
        """Close the file if it is open (once only: the number may be reused) and remove it."""
        try:
            self._close()
        except OSError:
            pass
        path.unlink(missing_ok=True)

    def _close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
