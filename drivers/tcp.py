"""The TCP driver: ``tcp://host:port``, and TCP with TLS: ``tls://host:port``.

URL grammar
    ``tcp://HOST:PORT`` where HOST is a name, an IPv4 address or a bracketed
    IPv6 address (``tcp://[::1]:8002``). Listening on port 0 binds a free
    port; the listener's ``url`` reports it. ``tls://HOST:PORT`` is the same
    inside TLS.

TLS
    ``tls://`` takes the cell's ``[tls]`` settings (:mod:`cellnet.tls`): a
    listener needs a certificate and key, and with a CA it requires client
    certificates (mutual TLS); a dialer verifies the server's certificate
    and checks HOST against its subjectAltName (names and IP addresses).

Behaviour
    One TCP connection per link, ``TCP_NODELAY`` set, frames written with the
    codec's fixed prefix. Reading checks each prefix against the configured
    limits before the body is read, so a lying peer cannot make us allocate
    more than one checked frame. Bytes are read into buffers the decoder
    hands out (``asyncio.BufferedProtocol``): the body of a large frame goes
    from the socket into its own buffer and on to the consumer, uncopied.
    ``send`` waits (back-pressure) once more than ``LinkOptions.write_buffer``
    bytes are queued in the kernel-side transport.

Capabilities
    stream-oriented, needs an open port on the listener, TLS.

Errors
    ``ConnectError`` when a dial fails, ``LinkBroken`` when the peer resets or
    closes, ``LinkClosed`` after ``aclose``, ``FrameError`` on bad bytes.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import AsyncIterator, Callable, cast
from urllib.parse import urlsplit

from collections import deque

from cellnet.codec import BufferedFrameDecoder, Frame, encode_parts
from cellnet.driver import Capabilities, Driver, Link, Listener, LinkOptions, OnLink, Receiver
from cellnet.errors import ConfigError, ConnectError, FrameError, LinkBroken, LinkClosed
from cellnet.tls import TlsSettings

_SMALL = 64 * 1024
# Decoded frames (and their payload bytes) waiting for the consumer before
# reading pauses: TCP flow control then slows the sender.
_MAX_QUEUED = 256
_MAX_QUEUED_BYTES = 8 * 1024 * 1024
# Closing lets queued bytes drain first: at most this long in all, and not
# past this long without progress.
_FLUSH_MAX = 2.0
_FLUSH_STALL = 0.2


def parse_tcp_url(url: str) -> tuple[str, int]:
    """Split ``tcp://host:port`` (or ``tls://``) into (host, port)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in TcpDriver.schemes:
        raise ConfigError(f"{url!r}: expected a tcp:// or tls:// URL")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"{url!r}: expected {parts.scheme}://HOST:PORT")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{url!r}: a {parts.scheme}:// URL takes no path or query")
    return parts.hostname, port


def format_tcp_url(host: str, port: int, scheme: str = "tcp") -> str:
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _ssl_context(url: str, options: LinkOptions, *, server: bool) -> ssl.SSLContext | None:
    if urlsplit(url).scheme.lower() != "tls":
        return None
    tls = options.tls or TlsSettings()
    return tls.server_context() if server else tls.client_context()


class _FrameProtocol(asyncio.BufferedProtocol):
    """Bytes from the socket -> frames in a bounded deque.

    Reading pauses while more than ``_MAX_QUEUED`` frames wait for the
    consumer, so a slow consumer pushes back on the sender through TCP.
    """

    def __init__(
        self, options: LinkOptions, on_made: Callable[[_FrameProtocol], None] | None = None
    ) -> None:
        self._on_made = on_made
        self._decoder = BufferedFrameDecoder(options.limits)
        self._queued_bytes = 0
        self.frames: deque[Frame] = deque()
        self.transport: asyncio.Transport | None = None
        self.error: BaseException | None = None
        self.lost = False
        self._reader: asyncio.Future[None] | None = None
        self._drainers: list[asyncio.Future[None]] = []
        self._write_paused = False
        self._read_paused = False
        self._loop = asyncio.get_running_loop()
        #: set: frames go to it from buffer_updated (see Link.set_receiver)
        self.receiver: Receiver | None = None
        #: the receiver held delivery: frames queue until resume()
        self.held = False
        #: closed by us: incoming bytes are read and dropped
        self.discard = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance check: other event loops (uvloop) have their own
        # transport classes with the same methods.
        self.transport = cast(asyncio.Transport, transport)
        if self._on_made is not None:
            self._on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self.error is not None:
            return
        frames, error = self._decoder.buffer_updated(nbytes)
        if self.discard:
            return  # closed by us: read on until the peer closes, keep nothing
        receiver = self.receiver
        if frames and receiver is not None and not self.held and not self.frames:
            # The fast path: hand each frame over here, no task wake-up.
            for i, frame in enumerate(frames):
                if not receiver(frame):
                    self.held = True
                    frames = frames[i + 1 :]
                    break
            else:
                frames = []
        if error is not None:
            # Frames completed before the bad bytes are delivered first.
            self.frames.extend(frames)
            self.error = error
            assert self.transport is not None
            self.transport.abort()
            self._wake()
            return
        if frames:
            self.frames.extend(frames)
            self._queued_bytes += sum(len(f.payload) for f in frames)
            if (
                len(self.frames) > _MAX_QUEUED or self._queued_bytes > _MAX_QUEUED_BYTES
            ) and not self._read_paused and self.transport:
                self._read_paused = True
                self.transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None and self.error is None:
            self.error = exc
        elif self.error is None and not self._decoder.at_boundary():
            # A cut stream (a peer killed mid-send closes with a FIN when it
            # had nothing unread) is a broken link, not bad input.
            self.error = ConnectionResetError("peer closed the connection in the middle of a frame")
        self._wake()
        for fut in self._drainers:
            if not fut.done():
                fut.set_result(None)
        self._drainers.clear()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        for fut in self._drainers:
            if not fut.done():
                fut.set_result(None)
        self._drainers.clear()

    def _wake(self) -> None:
        waiter = self._reader
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_frames(self) -> None:
        self._reader = self._loop.create_future()
        try:
            await self._reader
        finally:
            self._reader = None

    def resume(self) -> None:
        """Deliver the frames queued while the receiver held delivery."""
        self.held = False
        frames, receiver = self.frames, self.receiver
        while frames and receiver is not None and not self.held:
            frame = frames.popleft()
            self.consumed(frame)
            if not receiver(frame):
                self.held = True
            receiver = self.receiver

    def consumed(self, frame: Frame) -> None:
        self._queued_bytes -= len(frame.payload)
        if (
            self._read_paused
            and len(self.frames) <= _MAX_QUEUED // 2
            and self._queued_bytes <= _MAX_QUEUED_BYTES // 2
            and self.transport
        ):
            self._read_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        if self._write_paused and not self.lost:
            fut = self._loop.create_future()
            self._drainers.append(fut)
            await fut


class TcpLink(Link):
    def __init__(
        self, transport: asyncio.Transport, protocol: _FrameProtocol, scheme: str = "tcp"
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closed = False
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        self.remote = format_tcp_url(peer[0], peer[1], scheme) if peer else f"{scheme}://?"

    @property
    def closed(self) -> bool:
        return self._closed or self._protocol.lost

    def _broken(self) -> LinkBroken:
        error = self._protocol.error
        reason = (str(error) or type(error).__name__) if error else "peer closed the connection"
        return LinkBroken(f"link to {self.remote} is broken: {reason}")

    async def send(self, frame: Frame) -> None:
        if self._closed:
            raise LinkClosed(f"link to {self.remote} is closed")
        protocol = self._protocol
        if protocol.lost or self._transport.is_closing():
            raise self._broken()
        head, payload = encode_parts(frame)
        transport = self._transport
        if len(payload) <= _SMALL:
            transport.write(head + payload if payload else head)
        else:
            transport.write(head)
            transport.write(payload)
        if protocol._write_paused:
            await protocol.drain()
            if protocol.lost and not self._closed:
                raise self._broken()

    def send_nowait(self, frame: Frame) -> bool:
        protocol = self._protocol
        if self._closed or protocol.lost or protocol._write_paused or self._transport.is_closing():
            return False  # send() waits, or raises the precise error
        head, payload = encode_parts(frame)
        if len(payload) <= _SMALL:
            self._transport.write(head + payload if payload else head)
        else:
            self._transport.write(head)
            self._transport.write(payload)
        return True

    def set_receiver(self, receiver: Receiver) -> bool:
        protocol = self._protocol
        protocol.receiver = receiver
        protocol.resume()  # frames that came before the receiver was set
        return True

    def resume_receiving(self) -> None:
        self._protocol.resume()

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        protocol = self._protocol
        frames = protocol.frames
        while True:
            while frames and protocol.receiver is None:
                frame = frames.popleft()
                protocol.consumed(frame)
                yield frame
            if self._closed:
                return
            if protocol.lost:
                if isinstance(protocol.error, FrameError):
                    raise protocol.error
                raise self._broken()
            await protocol.wait_frames()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        transport = self._transport
        if transport.is_closing():
            return
        protocol = self._protocol
        # Queued bytes (a goodbye, a transfer's abort) leave first, while we
        # go on reading and dropping what arrives: closing a socket with
        # unread input resets the connection and throws away what it holds.
        # A peer that takes nothing for _FLUSH_STALL s is cut.
        protocol.discard = True
        protocol.frames.clear()
        if protocol._read_paused:
            protocol._read_paused = False
            transport.resume_reading()
        loop = asyncio.get_running_loop()
        start = progress_at = loop.time()
        left = transport.get_write_buffer_size()
        while left and not protocol.lost:
            now = loop.time()
            if now - progress_at > _FLUSH_STALL or now - start > _FLUSH_MAX:
                transport.abort()
                return
            await asyncio.sleep(0.01)
            size = transport.get_write_buffer_size()
            if size < left:
                progress_at = loop.time()
            left = size
        if transport.can_write_eof():
            # Our FIN goes after the queue; the peer closes in turn. Reading
            # goes on meanwhile, so the close does not become a reset.
            transport.write_eof()
        else:
            transport.close()  # TLS: close_notify after the queue
        for _ in range(20):
            if protocol.lost:
                return
            await asyncio.sleep(0.01)
        transport.abort()


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
    schemes = ("tcp", "tls")
    capabilities = Capabilities(needs_listen_port=True, tls=True, message_oriented=False)

    def check_url(self, url: str) -> None:
        parse_tcp_url(url)

    async def dial(self, url: str, options: LinkOptions) -> Link:
        host, port = parse_tcp_url(url)
        scheme = urlsplit(url).scheme.lower()
        context = _ssl_context(url, options, server=False)
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _FrameProtocol(options),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                ),
                options.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectError(f"{url}: connect timed out after {options.connect_timeout} s") from None
        except ssl.SSLError as exc:
            raise ConnectError(f"{url}: TLS handshake failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectError(f"{url}: {exc.strerror or exc}") from None
        return TcpLink(transport, protocol, scheme)  # type: ignore[arg-type]

    async def listen(self, url: str, on_link: OnLink, options: LinkOptions) -> Listener:
        host, port = parse_tcp_url(url)
        scheme = urlsplit(url).scheme.lower()
        context = _ssl_context(url, options, server=True)

        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        async def serve(link: TcpLink) -> None:
            try:
                await on_link(link)
            finally:
                await link.aclose()

        def made(protocol: _FrameProtocol) -> None:
            assert protocol.transport is not None
            task = loop.create_task(serve(TcpLink(protocol.transport, protocol, scheme)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def factory() -> _FrameProtocol:
            return _FrameProtocol(options, made)

        try:
            server = await loop.create_server(
                factory,
                host,
                port,
                ssl=context,
                ssl_handshake_timeout=options.connect_timeout if context else None,
            )
        except OSError as exc:
            raise ConnectError(f"cannot listen on {url}: {exc.strerror or exc}") from None
        sockname = server.sockets[0].getsockname()
        return TcpListener(server, format_tcp_url(sockname[0], sockname[1], scheme))
