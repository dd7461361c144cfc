"""A TCP forwarder for fault tests: it can delay bytes, throttle them, cut
its connections, shut (refuse new connections), and black-hole (swallow
everything without closing), as a flaky or slow network or a firewall would."""

from __future__ import annotations

import asyncio

from tests.helpers import free_port


class FaultProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``.

    ``rate`` (bytes per second, each direction, per connection) throttles
    the bytes it forwards: they are written in small slices with sleeps in
    between. ``None`` forwards as fast as it can.
    """

    def __init__(self, target_port: int, delay: float = 0.0, rate: float | None = None) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay = delay
        self.rate = rate
        self.connections = 0
        #: bytes forwarded (both directions)
        self.forwarded = 0
        self.blackholed = False
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def cut(self) -> None:
        """Cut every connection it carries (new ones are still accepted)."""
        for writer in list(self._conns):
            writer.transport.abort()
        self._conns.clear()

    def blackhole(self, on: bool = True) -> None:
        """Swallow every byte from now on, in both directions, without closing
        anything (a peer that went silent, or a network that drops
        everything). New connections are accepted and swallowed too."""
        self.blackholed = on

    async def shut(self) -> None:
        """Refuse new connections and cut the ones it carries."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.cut()

    async def _write(self, dst: asyncio.StreamWriter, data: bytes) -> None:
        rate = self.rate
        if not rate:
            dst.write(data)
            await dst.drain()
            self.forwarded += len(data)
            return
        step = max(512, int(rate / 50))  # about 50 slices a second
        view = memoryview(data)
        while view:
            if self.blackholed:
                return
            piece, view = view[:step], view[step:]
            dst.write(piece)
            await dst.drain()
            self.forwarded += len(piece)
            await asyncio.sleep(len(piece) / rate)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blackholed:
            self._conns.add(writer)
            try:
                while await reader.read(65536):
                    pass
            except (OSError, asyncio.CancelledError):
                pass
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._conns |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if self.blackholed:
                        continue  # swallowed: nothing forwarded, nothing closed
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    await self._write(dst, data)
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                if not self.blackholed:  # a black hole does not pass a close on either
                    dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
