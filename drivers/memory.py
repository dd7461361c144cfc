"""The in-memory driver: ``memory://NAME``, for unit tests only.

Links are pairs of bounded queues inside one event loop; no sockets. A
:class:`MemoryNetwork` is the namespace listeners register in, so tests stay
isolated: give each test its own network and pass the driver to the cells::

    net = MemoryNetwork()
    drivers = {"memory": MemoryDriver(net)}
    server = Cell("server", listen=["memory://server"], drivers=drivers)

Frames are handed over as objects (not re-encoded), but payload sizes are
still checked against the limits so tests see the same errors as on a wire.
``MemoryNetwork.break_link`` simulates a peer that vanished.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator
from urllib.parse import urlsplit

from cellnet.codec import Frame
from cellnet.driver import Capabilities, Driver, Link, Listener, LinkOptions, OnLink
from cellnet.errors import ConfigError, ConnectError, FrameTooLarge, LinkBroken, LinkClosed

_CLOSE = object()
_BREAK = object()


class MemoryLink(Link):
    def __init__(self, inbox: asyncio.Queue[object], options: LinkOptions, remote: str) -> None:
        self._inbox = inbox
        self._peer: MemoryLink | None = None
        self._options = options
        self._closed = False
        self._broken = False
        self.remote = remote

    @property
    def closed(self) -> bool:
        return self._closed or self._broken

    async def send(self, frame: Frame) -> None:
        if self._closed:
            raise LinkClosed(f"link to {self.remote} is closed")
        peer = self._peer
        if self._broken or peer is None or peer._closed or peer._broken:
            raise LinkBroken(f"link to {self.remote} is broken")
        if len(frame.payload) > peer._options.limits.max_payload:
            raise FrameTooLarge(
                f"frame payload of {len(frame.payload)} bytes exceeds the limit of "
                f"{peer._options.limits.max_payload}"
            )
        await peer._inbox.put(frame)

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        while True:
            item = await self._inbox.get()
            if item is _CLOSE:
                if self._closed:
                    return
                self._broken = True
                raise LinkBroken(f"link to {self.remote}: peer closed the connection")
            if item is _BREAK:
                self._broken = True
                raise LinkBroken(f"link to {self.remote}: connection reset")
            assert isinstance(item, Frame)
            yield item

    def _signal(self, item: object) -> None:
        try:
            self._inbox.put_nowait(item)
        except asyncio.QueueFull:
            # Make room: the reader will stop at the signal anyway.
            self._inbox.get_nowait()
            self._inbox.put_nowait(item)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._signal(_CLOSE)
        if self._peer is not None and not self._peer.closed:
            self._peer._signal(_CLOSE)

    def break_(self) -> None:
        """Simulate a network failure seen by both ends."""
        self._broken = True
        self._signal(_BREAK)
        if self._peer is not None:
            self._peer._broken = True
            self._peer._signal(_BREAK)


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
    capabilities = Capabilities(needs_listen_port=False, message_oriented=True)

    def __init__(self, network: MemoryNetwork | None = None) -> None:
        self.network = network or MemoryNetwork()

    async def dial(self, url: str, options: LinkOptions) -> Link:
        key = _key(url)
        net = self.network
        entry = net._listeners.get(key)
        if entry is None:
            raise ConnectError(f"{url}: connection refused")
        on_link, server_options = entry
        n = next(net._counter)
        client = MemoryLink(asyncio.Queue(net._queue_size), options, remote=url)
        server = MemoryLink(asyncio.Queue(net._queue_size), server_options, remote=f"memory://client-{n}")
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
