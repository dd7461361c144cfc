"""The in-memory driver: ``memory://NAME``, for unit tests only.

Links are pairs of bounded queues inside one event loop; no sockets. A
:class:`MemoryNetwork` is the namespace listeners register in, so tests stay
isolated: give each test its own network and pass the driver to the cells::

    net = MemoryNetwork()
    drivers = {"memory": MemoryDriver(net)}
    server = Cell("server", listen=["memory://server"], drivers=drivers)

Frames are handed over as objects (not re-encoded), but header and payload
sizes are still checked against the receiver's limits, so tests see the same
errors as on a wire. Each inbox is bounded (frames and bytes): a sender waits
while its peer's inbox is full.
``MemoryNetwork.break_link`` simulates a peer that vanished.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import AsyncIterator
from urllib.parse import urlsplit

from cellnet.codec import PREFIX_SIZE, Frame, encode_parts
from cellnet.driver import Capabilities, Driver, Link, Listener, LinkOptions, OnLink
from cellnet.errors import ConfigError, ConnectError, FrameTooLarge, LinkBroken, LinkClosed

_QUEUE_BYTES = 4 * 1024 * 1024


class MemoryLink(Link):
    """One end of an in-memory link: a bounded inbox (frames and bytes)."""

    def __init__(self, options: LinkOptions, remote: str, queue_size: int) -> None:
        self._inbox: deque[Frame] = deque()
        self._inbox_bytes = 0
        self._queue_size = queue_size
        self._peer: MemoryLink | None = None
        self._options = options
        self._closed = False
        self._broken: str | None = None  # the reason, once broken
        # Tasks waiting for this end's inbox or state to change.
        self._waiters: list[asyncio.Future[None]] = []
        self.remote = remote

    @property
    def closed(self) -> bool:
        return self._closed or self._broken is not None

    def _full(self) -> bool:
        return len(self._inbox) >= self._queue_size or (
            self._inbox_bytes >= _QUEUE_BYTES and bool(self._inbox)
        )

    def _poke(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _waiter(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    def _check_sendable(self) -> MemoryLink:
        if self._closed:
            raise LinkClosed(f"link to {self.remote} is closed")
        peer = self._peer
        if self._broken is not None or peer is None or peer.closed:
            raise LinkBroken(f"link to {self.remote} is broken: {self._broken or 'peer closed the connection'}")
        return peer

    async def send(self, frame: Frame) -> None:
        peer = self._check_sendable()
        limits = peer._options.limits
        if len(frame.payload) > limits.max_payload:
            raise FrameTooLarge(
                f"frame payload of {len(frame.payload)} bytes exceeds the limit of {limits.max_payload}"
            )
        head, _ = encode_parts(frame)
        if len(head) - PREFIX_SIZE > limits.max_header:
            raise FrameTooLarge(
                f"frame header of {len(head) - PREFIX_SIZE} bytes exceeds the limit of {limits.max_header}"
            )
        while peer._full():
            # Back-pressure: wait until the peer reads, or either end goes.
            waiters = (peer._waiter(), self._waiter())
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in waiters:
                    fut.cancel()
            peer = self._check_sendable()
        peer._inbox.append(frame)
        peer._inbox_bytes += len(frame.payload)
        peer._poke()

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        while True:
            if self._closed:
                return
            if self._inbox:
                frame = self._inbox.popleft()
                self._inbox_bytes -= len(frame.payload)
                self._poke()  # a sender waiting for room
                yield frame
                continue
            if self._broken is not None:
                raise LinkBroken(f"link to {self.remote} is broken: {self._broken}")
            await self._waiter()

    def _lose(self, reason: str) -> None:
        if not self.closed:
            self._broken = reason
        self._poke()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.clear()
        self._inbox_bytes = 0
        self._poke()
        if self._peer is not None:
            self._peer._lose("peer closed the connection")

    def break_(self) -> None:
        """Simulate a network failure seen by both ends."""
        self._lose("connection reset")
        if self._peer is not None:
            self._peer._lose("connection reset")


class MemoryListener(Listener):
    def __init__(self, network: MemoryNetwork, key: str, url: str) -> None:
        self._network = network
        self._key = key
        self.url = url

    async def aclose(self) -> None:
        self._network._listeners.pop(self._key, None)


class MemoryNetwork:
    """A namespace of in-memory listeners."""

    def __init__(self, queue_size: int = 64) -> None:
        self._listeners: dict[str, tuple[OnLink, LinkOptions]] = {}
        self._links: list[MemoryLink] = []
        self._queue_size = queue_size
        self._counter = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def break_links(self, remote_contains: str) -> int:
        """Break every live link whose remote name contains the text."""
        n = 0
        for link in list(self._links):
            if not link.closed and remote_contains in link.remote:
                link.break_()
                n += 1
        return n


def _key(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "memory" or not parts.netloc:
        raise ConfigError(f"{url!r}: expected memory://NAME")
    return parts.netloc


class MemoryDriver(Driver):
    schemes = ("memory",)
    capabilities = Capabilities(needs_listen_port=False, message_oriented=True, cross_process=False)

    def __init__(self, network: MemoryNetwork | None = None) -> None:
        self.network = network or MemoryNetwork()

    def check_url(self, url: str) -> None:
        _key(url)

    async def dial(self, url: str, options: LinkOptions) -> Link:
        key = _key(url)
        net = self.network
        entry = net._listeners.get(key)
        if entry is None:
            raise ConnectError(f"{url}: connection refused")
        on_link, server_options = entry
        n = next(net._counter)
        client = MemoryLink(options, remote=url, queue_size=net._queue_size)
        server = MemoryLink(server_options, remote=f"memory://client-{n}", queue_size=net._queue_size)
        client._peer, server._peer = server, client
        net._links += [client, server]

        async def serve() -> None:
            try:
                await on_link(server)
            finally:
                await server.aclose()

        task = asyncio.get_running_loop().create_task(serve())
        net._tasks.add(task)
        task.add_done_callback(net._tasks.discard)
        return client

    async def listen(self, url: str, on_link: OnLink, options: LinkOptions) -> Listener:
        key = _key(url)
        if key in self.network._listeners:
            raise ConnectError(f"cannot listen on {url}: address in use")
        self.network._listeners[key] = (on_link, options)
        return MemoryListener(self.network, key, url)
