"""Payload sources for streamed messages.

A message payload may be given as bytes (``bytes``, ``bytearray``,
``memoryview``), as a file path (any :class:`os.PathLike`, e.g.
:class:`pathlib.Path`), or as an async iterable of byte chunks (an async
generator, or an incoming :class:`~cellnet.stream.Stream` to pass a payload
on as it arrives). :func:`open_source` turns each into a :class:`Source`,
which the sender reads chunk by chunk.

A source must be able to go back to the last offset the receiver
acknowledged, because a transfer resumes from there after a broken link:

* bytes are sliced (no copy);
* files are read with ``pread`` at any offset, off the event loop;
* an async iterable cannot rewind, so the chunks it produced are kept until
  the receiver acknowledges them. The credit window bounds how many that is.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Union

Bytes = Union[bytes, bytearray, memoryview]
#: What ``Cell.request``, ``send`` and a handler's ``Reply`` accept as payload.
PayloadLike = Union[bytes, bytearray, memoryview, os.PathLike, AsyncIterable[Bytes]]


def is_bytes(payload: object) -> bool:
    return isinstance(payload, (bytes, bytearray, memoryview))


class Source:
    """Chunks of one payload, readable from any offset not yet released.

    ``size`` is the total length when known up front (``None`` for an
    iterable of unknown length). ``read(offset, n)`` returns up to ``n``
    bytes at ``offset``, or ``b""`` at the end. ``release(offset)`` says the
    receiver has everything before ``offset``: it is never read again.
    """

    size: int | None = None

    async def read(self, offset: int, n: int) -> Bytes:
        raise NotImplementedError

    def release(self, offset: int) -> None:
        """Data before ``offset`` will not be read again."""

    async def aclose(self) -> None:
        """Release files or iterators held."""


class BytesSource(Source):
    def __init__(self, data: Bytes) -> None:
        self._view = memoryview(data).cast("B")
        self.size = self._view.nbytes

    async def read(self, offset: int, n: int) -> Bytes:
        return self._view[offset : offset + n]


class FileSource(Source):
    """A file read with ``os.pread`` in a worker thread."""

    def __init__(self, path: os.PathLike | str) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise FileNotFoundError(f"cannot read {self.path}: {exc.strerror}") from None
        self.size = os.fstat(self._fd).st_size

    async def read(self, offset: int, n: int) -> Bytes:
        if self._fd < 0:
            raise ValueError(f"{self.path} is closed")
        n = min(n, (self.size or 0) - offset)
        if n <= 0:
            return b""
        data = await asyncio.to_thread(os.pread, self._fd, n, offset)
        if len(data) < n:
            raise OSError(f"{self.path} shrank while it was being sent")
        return data

    async def aclose(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class IterSource(Source):
    """An async iterable of chunks; unacknowledged chunks are kept for resume."""

    def __init__(self, chunks: AsyncIterable[Bytes], size: int | None = None) -> None:
        self._iter: AsyncIterator[Bytes] = aiter(chunks)
        self.size = size
        self._kept: deque[tuple[int, memoryview]] = deque()  # (offset, data), in order
        self._start = 0  # offset of the first kept byte
        self._end = 0  # offset after the last byte produced
        self._done = False

    async def read(self, offset: int, n: int) -> Bytes:
        if offset < self._start:
            raise ValueError(f"offset {offset} was released (kept from {self._start})")
        if offset < self._end:
            for start, data in self._kept:
                if start <= offset < start + len(data):
                    skip = offset - start
                    return data[skip : skip + n]
        while offset >= self._end and not self._done:
            try:
                item = await anext(self._iter)
            except StopAsyncIteration:
                self._done = True
                break
            if not is_bytes(item):
                raise TypeError(f"payload chunks must be bytes, got {type(item).__name__}")
            view = memoryview(item).cast("B")
            if not view.nbytes:
                continue
            self._kept.append((self._end, view))
            self._end += view.nbytes
        if offset >= self._end:
            return b""
        start, data = self._kept[-1]
        skip = offset - start
        return data[skip : skip + n]

    def release(self, offset: int) -> None:
        kept = self._kept
        while kept and kept[0][0] + len(kept[0][1]) <= offset:
            kept.popleft()
        self._start = max(self._start, offset)

    async def aclose(self) -> None:
        self._kept.clear()
        close = getattr(self._iter, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception:  # a generator that fails while closing: nothing to do
                pass


def open_source(payload: PayloadLike, size: int | None = None) -> Source:
    """The :class:`Source` for a payload given in any accepted form."""
    if is_bytes(payload):
        return BytesSource(payload)  # type: ignore[arg-type]
    if isinstance(payload, os.PathLike):
        return FileSource(payload)
    if hasattr(payload, "__aiter__"):
        return IterSource(payload, size if size is not None else getattr(payload, "size", None))
    raise TypeError(
        "payload must be bytes, bytearray, memoryview, a file path (os.PathLike) "
        f"or an async iterable of bytes, not {type(payload).__name__}"
    )
