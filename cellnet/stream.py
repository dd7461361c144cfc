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
from pathlib import Path
from typing import AsyncIterator, Callable

from .errors import ChecksumMismatch, MessageTooLarge, TransferFailed

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
        """
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        if progress is not None:
            self.on_progress(progress)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            async for chunk in self:
                await asyncio.to_thread(_write_all, fd, chunk)
            await asyncio.to_thread(os.fsync, fd)
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            self.abandon()
            raise
        os.close(fd)
        os.replace(partial, target)
        return target

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


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
