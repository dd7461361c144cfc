"""The TCP driver: ``tcp://host:port``.

URL grammar
    ``tcp://HOST:PORT`` where HOST is a name, an IPv4 address or a bracketed
    IPv6 address (``tcp://[::1]:8002``). Listening on port 0 binds a free
    port; the listener's ``url`` reports it.

Behaviour
    One TCP connection per link, ``TCP_NODELAY`` set, frames written with the
    codec's fixed prefix. Reading checks each prefix against the configured
    limits before the body is read, so a lying peer cannot make us allocate.
    ``send`` waits (back-pressure) once more than ``LinkOptions.write_buffer``
    bytes are queued in the kernel-side transport.

Capabilities
    stream-oriented, needs an open port on the listener, no TLS yet.

Errors
    ``ConnectError`` when a dial fails, ``LinkBroken`` when the peer resets or
    closes, ``LinkClosed`` after ``aclose``, ``FrameError`` on bad bytes.
"""

from __future__ import annotations

import asyncio
import socket
from typing import AsyncIterator
from urllib.parse import urlsplit

from cellnet.codec import PREFIX_SIZE, Frame, decode_body, encode_parts, parse_prefix
from cellnet.driver import Capabilities, Driver, Link, Listener, LinkOptions, OnLink
from cellnet.errors import ConfigError, ConnectError, LinkBroken, LinkClosed

_SMALL = 64 * 1024
_READ_LIMIT = 1024 * 1024


def parse_tcp_url(url: str) -> tuple[str, int]:
    """Split ``tcp://host:port`` into (host, port)."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "tcp":
        raise ConfigError(f"{url!r}: expected a tcp:// URL")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"{url!r}: expected tcp://HOST:PORT")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{url!r}: a tcp:// URL takes no path or query")
    return parts.hostname, port


def format_tcp_url(host: str, port: int) -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


class TcpLink(Link):
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, options: LinkOptions
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._options = options
        self._closed = False
        self._broken: str | None = None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = writer.get_extra_info("peername")
        self.remote = f"tcp://{peer[0]}:{peer[1]}" if peer else "tcp://?"

    @property
    def closed(self) -> bool:
        return self._closed or self._broken is not None

    async def send(self, frame: Frame) -> None:
        if self._closed:
            raise LinkClosed(f"link to {self.remote} is closed")
        if self._broken is not None:
            raise LinkBroken(f"link to {self.remote} is broken: {self._broken}")
        head, payload = encode_parts(frame)
        writer = self._writer
        if writer.is_closing():
            self._broken = "connection closing"
            raise LinkBroken(f"link to {self.remote} is broken: connection closing")
        if len(payload) <= _SMALL:
            writer.write(head + payload if payload else head)
        else:
            writer.write(head)
            writer.write(payload)
        transport = writer.transport
        if transport.get_write_buffer_size() > self._options.write_buffer:
            try:
                await writer.drain()
            except (ConnectionError, OSError) as exc:
                self._broken = str(exc) or type(exc).__name__
                raise LinkBroken(f"link to {self.remote} is broken: {self._broken}") from None

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        reader = self._reader
        limits = self._options.limits
        while True:
            try:
                prefix_bytes = await reader.readexactly(PREFIX_SIZE)
            except asyncio.IncompleteReadError as exc:
                if self._closed:
                    return
                reason = "peer closed the connection" if not exc.partial else "truncated frame prefix"
                self._broken = reason
                raise LinkBroken(f"link to {self.remote}: {reason}") from None
            except (ConnectionError, OSError) as exc:
                if self._closed:
                    return
                self._broken = str(exc) or type(exc).__name__
                raise LinkBroken(f"link to {self.remote}: {self._broken}") from None
            prefix = parse_prefix(prefix_bytes, limits)
            try:
                body = await reader.readexactly(prefix.body_len) if prefix.body_len else b""
            except asyncio.IncompleteReadError:
                if self._closed:
                    return
                self._broken = "truncated frame body"
                raise LinkBroken(f"link to {self.remote}: truncated frame body") from None
            except (ConnectionError, OSError) as exc:
                if self._closed:
                    return
                self._broken = str(exc) or type(exc).__name__
                raise LinkBroken(f"link to {self.remote}: {self._broken}") from None
            yield decode_body(prefix, body)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        except (Exception, asyncio.CancelledError):
            # The peer may already be gone; closing must never raise.
            self._writer.transport.abort()


class TcpListener(Listener):
    def __init__(self, server: asyncio.base_events.Server, url: str) -> None:
        self._server = server
        self.url = url

    async def aclose(self) -> None:
        self._server.close()
        try:
            await asyncio.wait_for(self._server.wait_closed(), 2.0)
        except (Exception, asyncio.CancelledError):
            pass


class TcpDriver(Driver):
    schemes = ("tcp",)
    capabilities = Capabilities(needs_listen_port=True, tls=False, message_oriented=False)

    async def dial(self, url: str, options: LinkOptions) -> Link:
        host, port = parse_tcp_url(url)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=_READ_LIMIT),
                options.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectError(f"{url}: connect timed out after {options.connect_timeout} s") from None
        except OSError as exc:
            raise ConnectError(f"{url}: {exc.strerror or exc}") from None
        return TcpLink(reader, writer, options)

    async def listen(self, url: str, on_link: OnLink, options: LinkOptions) -> Listener:
        host, port = parse_tcp_url(url)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            link = TcpLink(reader, writer, options)
            try:
                await on_link(link)
            finally:
                await link.aclose()

        try:
            server = await asyncio.start_server(handle, host, port, limit=_READ_LIMIT)
        except OSError as exc:
            raise ConnectError(f"cannot listen on {url}: {exc.strerror or exc}") from None
        sockname = server.sockets[0].getsockname()
        return TcpListener(server, format_tcp_url(sockname[0], sockname[1]))
