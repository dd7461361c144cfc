"""The gRPC driver: ``grpc://HOST:PORT``, and gRPC over TLS: ``grpcs://HOST:PORT``.

Needs the ``grpc`` extra (``pip install "cellnet[grpc]"``, grpcio >= 1.60).

URL grammar
    ``grpc://HOST:PORT`` where HOST is a name, an IPv4 address or a bracketed
    IPv6 address (``grpc://[::1]:8002``); no path, no query. Listening on
    port 0 binds a free port; the listener's ``url`` reports it.
    ``grpcs://HOST:PORT`` is the same inside TLS.

Wire
    One bidirectional streaming RPC per link, method ``/cellnet.Link/Connect``,
    served by a generic handler with bytes in and bytes out (no protobuf).
    Each gRPC message is one encoded cellnet frame (:mod:`cellnet.codec`).
    The listener answers every call with its response headers at once; a dial
    returns only after they arrived, so a returned link is known to reach a
    cellnet listener. Each dial opens its own channel and connection (no
    subchannel sharing between links), so links fail independently.

Limits
    ``grpc.max_send_message_length`` and ``grpc.max_receive_message_length``
    are set on both the server and the channel to the largest encoded frame
    ``LinkOptions.limits`` allows (18-byte prefix + ``max_header`` +
    ``max_payload``, capped at gRPC's maximum of 2 GiB - 1), never gRPC's
    4 MiB default. gRPC checks an incoming message's declared length before
    buffering it, and the codec checks the frame prefix before decoding. A
    frame over the limit is refused by ``send`` with ``FrameTooLarge`` and
    the link stays usable.

Keepalive (:class:`Keepalive`, defaults in seconds)
    ===================================================  ======================
    ``grpc.keepalive_time_ms`` (dialer and listener)     ``time`` = 30
    ``grpc.keepalive_timeout_ms`` (dialer and listener)  ``timeout`` = 10
    ``grpc.keepalive_permit_without_calls``              1
    ``grpc.http2.max_pings_without_data`` (dialer)       0 (no cap)
    ``grpc.http2.min_ping_interval_without_data_ms``
    (listener)                                           ``time / 2`` = 15
    ``grpc.http2.max_ping_strikes`` (listener)           2
    ===================================================  ======================

    A dialer pings every ``time`` seconds; the listener accepts pings as
    often as every ``time / 2`` seconds, so an idle link never collects ping
    strikes and never gets the ``GOAWAY too_many_pings`` that gRPC's server
    default (5 minutes) gives clients that ping more often than that. A ping
    not answered within ``timeout`` breaks the link. gRPC clients never ping
    more often than once a second, whatever ``time`` says. The
    :class:`GrpcDriver` takes a :class:`Keepalive`; dialers and listeners of
    one federation must agree (``time`` of every dialer >= the listener's
    ``min_ping_interval``).

Back-pressure
    ``send`` writes one message at a time and waits until gRPC has accepted
    it into HTTP/2 flow control, so a slow receiver makes the sender wait;
    bytes in flight are bounded by the HTTP/2 windows (a few MiB with gRPC's
    bandwidth probing) plus one frame. The receiving side reads ahead at most
    128 frames or 4 MiB (plus the frame being read) before it stops reading,
    and flow control then reaches back to the sender. Cancelling a waiting
    ``send`` does not break the link: the frame still goes out, in order.

TLS
    ``grpcs://`` takes the cell's ``[tls]`` settings (:mod:`cellnet.tls`): a
    listener needs a certificate and key, and with a CA it requires client
    certificates signed by it (mutual TLS). A dialer verifies the server's
    certificate against the CA (gRPC's bundled roots when none is set) and
    checks HOST, a name or an IP address, against its subjectAltName; with a
    certificate and key it presents them.

Other channel behaviour
    Listeners bind without ``SO_REUSEPORT`` (a port in use is an error, not
    a shared port). Channels honour gRPC's proxy variables (``grpc_proxy``,
    ``https_proxy``, ``no_proxy``) like any gRPC client.

Capabilities
    message-oriented, needs an open port on the listener, TLS.

Errors
    ``ConnectError`` when a dial fails (nothing listening, TLS refused, not a
    cellnet listener, timeout) or a listener cannot bind; ``LinkBroken`` when
    the stream ends, is cancelled or the connection drops (UNAVAILABLE);
    ``LinkClosed`` after our own ``aclose``; ``FrameError`` (``FrameTooLarge``)
    when the peer sends a bad or oversized frame; ``ConfigError`` for a bad URL
    or missing TLS files.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import grpc
import grpc.aio

from cellnet.codec import PREFIX_SIZE, Frame, FrameLimits, decode_frame, encode_parts
from cellnet.driver import Capabilities, Driver, Link, Listener, LinkOptions, OnLink
from cellnet.errors import (
    CellnetError,
    ConfigError,
    ConnectError,
    FrameError,
    FrameTooLarge,
    LinkBroken,
    LinkClosed,
)
from cellnet.tls import TlsSettings

log = logging.getLogger("cellnet.drivers.grpc")

SERVICE = "cellnet.Link"
METHOD = f"/{SERVICE}/Connect"
# Response header a cellnet listener sends first; a dial checks for it.
_MARKER = "cellnet-link"

#: gRPC's message length options are C ints
GRPC_MAX_MESSAGE = 2**31 - 1
# Frames (and their payload bytes) read ahead of the consumer before reading
# pauses; HTTP/2 flow control then slows the sender.
_MAX_QUEUED = 128
_MAX_QUEUED_BYTES = 4 * 1024 * 1024
# A write that took longer than this (seconds) was held by flow control.
_HELD = 0.05
# How long aclose lets queued frames and the half-close reach the peer.
_CLOSE_GRACE = 0.25
# How long a closing listener lets running calls finish before cancelling.
_STOP_GRACE = 0.25


@dataclass(frozen=True, slots=True)
class Keepalive:
    """HTTP/2 keepalive pings, in seconds (see the module docs)."""

    #: a ping is sent after this long without activity (dialer and listener)
    time: float = 30.0
    #: a ping not acknowledged within this breaks the connection
    timeout: float = 10.0
    #: the shortest interval between a dialer's pings the listener accepts;
    #: ``None``: ``time / 2``
    min_ping_interval: float | None = None
    #: pings that come too early before the listener sends GOAWAY
    max_ping_strikes: int = 2

    def __post_init__(self) -> None:
        if self.time <= 0 or self.timeout <= 0:
            raise ConfigError("grpc keepalive: time and timeout must be > 0")
        if self.min_ping_interval is not None and self.min_ping_interval < 0:
            raise ConfigError("grpc keepalive: min_ping_interval must be >= 0")
        if self.max_ping_strikes < 0:
            raise ConfigError("grpc keepalive: max_ping_strikes must be >= 0")

    @property
    def accepted_interval(self) -> float:
        return self.time / 2 if self.min_ping_interval is None else self.min_ping_interval


# -- URLs and options ----------------------------------------------------------


def parse_grpc_url(url: str) -> tuple[str, str, int]:
    """Split ``grpc://host:port`` (or ``grpcs://``) into (scheme, host, port)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in GrpcDriver.schemes:
        raise ConfigError(f"{url!r}: expected a grpc:// or grpcs:// URL")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"{url!r}: expected {scheme}://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"{url!r}: a {scheme}:// URL takes no user, path or query")
    return scheme, parts.hostname, port


def format_grpc_url(host: str, port: int, scheme: str = "grpc") -> str:
    return f"{scheme}://{_hostport(host, port)}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _peer_url(peer: str, scheme: str) -> str:
    """``ipv4:1.2.3.4:5`` / ``ipv6:[::1]:5`` (gRPC's peer string) -> a URL."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6") and address:
        return f"{scheme}://{address}"
    return f"{scheme}://{peer or '?'}"


def message_limit(limits: FrameLimits) -> int:
    """The largest encoded frame ``limits`` allow, as a gRPC message length."""
    return min(PREFIX_SIZE + limits.max_header + limits.max_payload, GRPC_MAX_MESSAGE)


def _common_options(options: LinkOptions, keepalive: Keepalive) -> list[tuple[str, Any]]:
    limit = message_limit(options.limits)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", max(1, round(keepalive.time * 1000))),
        ("grpc.keepalive_timeout_ms", max(1, round(keepalive.timeout * 1000))),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def channel_options(options: LinkOptions, keepalive: Keepalive) -> list[tuple[str, Any]]:
    """The channel arguments of a dialer."""
    return _common_options(options, keepalive) + [
        ("grpc.http2.max_pings_without_data", 0),
        # One connection per link: links must not share fate or flow control.
        ("grpc.use_local_subchannel_pool", 1),
        # A link is one long call; a replay by gRPC would duplicate frames.
        ("grpc.enable_retries", 0),
    ]


def server_options(options: LinkOptions, keepalive: Keepalive) -> list[tuple[str, Any]]:
    """The server arguments of a listener."""
    return _common_options(options, keepalive) + [
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            round(keepalive.accepted_interval * 1000),
        ),
        ("grpc.http2.max_ping_strikes", keepalive.max_ping_strikes),
        ("grpc.so_reuseport", 0),
    ]


def _server_credentials(url: str, tls: TlsSettings | None) -> grpc.ServerCredentials:
    if tls is None or tls.cert is None:
        raise ConfigError(f"{url}: a grpcs:// listener needs tls.cert and tls.key")
    tls.server_context()  # checks the files and that key and cert match
    ca, cert, key = tls.read()
    assert cert is not None and key is not None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _channel_credentials(tls: TlsSettings | None) -> grpc.ChannelCredentials:
    if tls is None:
        return grpc.ssl_channel_credentials()
    tls.client_context()  # checks the files and that key and cert match
    ca, cert, key = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _rpc_reason(code: grpc.StatusCode | None, details: str | None) -> str:
    name = code.name if code is not None else "UNKNOWN"
    return f"{name}: {details}" if details else name


def _cancelling() -> bool:
    """Whether the running task itself is being cancelled (vs. gRPC raising
    CancelledError for a call that was cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# -- links -----------------------------------------------------------------------


class _GrpcLink(Link):
    """What client and server links share: the bounded read-ahead, the
    serialized writes and the error state. Subclasses provide the I/O."""

    _scheme: str

    def __init__(self, remote: str, options: LinkOptions) -> None:
        self.remote = remote
        self._limits = options.limits
        self._max_message = message_limit(options.limits)
        self._loop = asyncio.get_running_loop()
        self._frames_q: deque[Frame] = deque()
        self._queued_bytes = 0
        self._closed = False
        self._error: Exception | None = None
        self._consumer: asyncio.Future[None] | None = None
        self._space: asyncio.Future[None] | None = None
        self._send_lock = asyncio.Lock()
        self._writing: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None

    # -- subclass hooks

    async def _read_message(self) -> bytes | object:
        raise NotImplementedError

    async def _write_message(self, data: bytes) -> None:
        raise NotImplementedError

    def _on_error(self, error: Exception) -> None:
        """The link broke or the peer sent bad input: end the call."""

    def _translate(self, exc: BaseException, *, reading: bool) -> Exception:
        return LinkBroken(f"link to {self.remote} is broken: {exc or type(exc).__name__}")

    # -- state

    @property
    def closed(self) -> bool:
        return self._closed or self._error is not None

    def _start_reader(self) -> None:
        self._reader = self._loop.create_task(self._read_loop())

    def _fail(self, error: Exception) -> None:
        if self._closed or self._error is not None:
            return
        self._error = error
        self._wake(self._consumer)
        self._wake(self._space)
        self._on_error(error)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _broken(self) -> Exception:
        error = self._error
        if isinstance(error, FrameError):
            return LinkBroken(f"link to {self.remote} was closed after bad input: {error}")
        return LinkBroken(str(error)) if error is not None else LinkBroken(f"link to {self.remote} is broken")

    # -- receiving

    async def _read_loop(self) -> None:
        queue = self._frames_q
        try:
            while not self._closed and self._error is None:
                if len(queue) >= _MAX_QUEUED or self._queued_bytes >= _MAX_QUEUED_BYTES:
                    self._space = self._loop.create_future()
                    try:
                        await self._space
                    finally:
                        self._space = None
                    continue
                data = await self._read_message()
                if data is grpc.aio.EOF:
                    self._fail(LinkBroken(f"link to {self.remote} is broken: peer closed the link"))
                    return
                assert isinstance(data, bytes)
                try:
                    frame = decode_frame(data, self._limits)
                except FrameError as exc:
                    log.warning("link to %s: bad frame, closing: %s", self.remote, exc)
                    self._fail(exc)
                    return
                queue.append(frame)
                self._queued_bytes += len(frame.payload)
                self._wake(self._consumer)
        except asyncio.CancelledError:
            if self._closed or _cancelling():
                raise
            self._fail(self._translate(asyncio.CancelledError(), reading=True))
        except Exception as exc:
            if not self._closed:
                self._fail(self._translate(exc, reading=True))

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        queue = self._frames_q
        while True:
            while queue:
                frame = queue.popleft()
                self._queued_bytes -= len(frame.payload)
                if self._space is not None and (
                    len(queue) <= _MAX_QUEUED // 2 and self._queued_bytes <= _MAX_QUEUED_BYTES // 2
                ):
                    self._wake(self._space)
                yield frame
            if self._closed:
                return
            error = self._error
            if error is not None:
                if isinstance(error, FrameError):
                    raise type(error)(str(error))
                raise LinkBroken(str(error))
            self._consumer = self._loop.create_future()
            try:
                await self._consumer
            finally:
                self._consumer = None

    # -- sending

    def _encode(self, frame: Frame) -> bytes:
        head, payload = encode_parts(frame)
        limits = self._limits
        if len(head) - PREFIX_SIZE > limits.max_header:
            raise FrameTooLarge(
                f"frame header of {len(head) - PREFIX_SIZE} bytes exceeds the limit of {limits.max_header}"
            )
        if len(payload) > limits.max_payload:
            raise FrameTooLarge(
                f"frame payload of {len(payload)} bytes exceeds the limit of {limits.max_payload}"
            )
        size = len(head) + len(payload)
        if size > self._max_message:
            raise FrameTooLarge(
                f"frame of {size} bytes exceeds gRPC's message limit of {self._max_message}"
            )
        return head + payload if payload else head

    def _check_usable(self) -> None:
        if self._closed:
            raise LinkClosed(f"link to {self.remote} is closed")
        if self._error is not None:
            raise self._broken()

    async def send(self, frame: Frame) -> None:
        self._check_usable()
        data = self._encode(frame)
        async with self._send_lock:
            previous = self._writing
            if previous is not None and not previous.done():
                # A cancelled send left its write running: keep the order.
                await asyncio.wait((previous,))
            self._check_usable()
            started = self._loop.time()
            write = self._loop.create_task(self._write_message(data))
            write.add_done_callback(self._write_done)
            self._writing = write
            try:
                # Shielded: cancelling this send must not cancel the call.
                await asyncio.shield(write)
            except asyncio.CancelledError:
                if _cancelling() or not write.done():
                    raise
                self._write_failed(asyncio.CancelledError())
            except Exception as exc:
                self._write_failed(exc)
            reader = self._reader
            if self._loop.time() - started > _HELD and reader is not None and not reader.done():
                # This write was held by flow control; gRPC may release it
                # when the peer ends the call (the data is then discarded).
                # Give the end of the call a moment to show.
                await asyncio.wait((reader,), timeout=_HELD)
            if (self._ended() or self._error is not None) and not self._closed:
                # gRPC completes a write on a call that has ended without
                # sending it: the frame cannot have been delivered.
                self._fail(LinkBroken(f"link to {self.remote} is broken: the peer ended the call"))
                raise self._broken()

    def _ended(self) -> bool:
        """Whether the call is over (writes no longer reach the peer)."""
        return False

    def _write_done(self, write: asyncio.Task[None]) -> None:
        # Also retrieves the error of a write whose send was cancelled.
        if write.cancelled():
            if not self._closed:
                self._fail(self._translate(asyncio.CancelledError(), reading=False))
            return
        exc = write.exception()
        if exc is not None and not self._closed:
            self._fail(self._translate(exc, reading=False))

    def _write_failed(self, exc: BaseException) -> None:
        if self._closed:
            raise LinkClosed(f"link to {self.remote} is closed") from None
        self._fail(self._translate(exc, reading=False))
        raise self._broken() from None

    # -- closing

    async def _stop_tasks(self) -> None:
        tasks = [t for t in (self._reader, self._writing) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_GRACE)

    def _mark_closed(self) -> bool:
        """Set the closed state; False if it already was."""
        if self._closed:
            return False
        self._closed = True
        self._wake(self._consumer)
        self._wake(self._space)
        return True


class GrpcClientLink(_GrpcLink):
    """The dialer's end: a channel with one streaming call."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        call: grpc.aio.StreamStreamCall,
        url: str,
        options: LinkOptions,
    ) -> None:
        super().__init__(url, options)
        self._channel = channel
        self._call = call
        self._start_reader()

    async def _read_message(self) -> bytes | object:
        return await self._call.read()

    async def _write_message(self, data: bytes) -> None:
        await self._call.write(data)

    def _ended(self) -> bool:
        return self._call.done()

    def _on_error(self, error: Exception) -> None:
        if isinstance(error, FrameError):
            self._call.cancel()

    def _translate(self, exc: BaseException, *, reading: bool) -> Exception:
        if isinstance(exc, grpc.aio.AioRpcError):
            code = exc.code()
            details = exc.details() or ""
            if reading and code is grpc.StatusCode.RESOURCE_EXHAUSTED and "CLIENT:" in details:
                # gRPC refused a message over our limit before buffering it
                # ("SERVER:" would mean the listener refused one of ours).
                return FrameTooLarge(f"link to {self.remote}: {details}")
            return LinkBroken(f"link to {self.remote} is broken: {_rpc_reason(code, exc.details())}")
        if isinstance(exc, asyncio.CancelledError):
            return LinkBroken(f"link to {self.remote} is broken: the call was cancelled")
        return super()._translate(exc, reading=reading)

    async def aclose(self) -> None:
        if not self._mark_closed():
            return
        call = self._call
        try:
            if not call.done():
                # Half-close after the frames already written, then give
                # the listener a moment to end the call in order.
                await asyncio.wait_for(self._finish_writing(), _CLOSE_GRACE)
                reader = self._reader
                if reader is not None and not reader.done():
                    await asyncio.wait((reader,), timeout=_CLOSE_GRACE)
        except (Exception, asyncio.TimeoutError):
            pass
        finally:
            call.cancel()
            await self._stop_tasks()
            try:
                await self._channel.close()
            except Exception:  # pragma: no cover - close reports nothing useful
                pass

    async def _finish_writing(self) -> None:
        writing = self._writing
        if writing is not None and not writing.done():
            await asyncio.wait((writing,))
        await self._call.done_writing()


class GrpcServerLink(_GrpcLink):
    """The listener's end: one accepted call, ended when the link ends."""

    def __init__(self, context: grpc.aio.ServicerContext, scheme: str, options: LinkOptions) -> None:
        super().__init__(_peer_url(context.peer(), scheme), options)
        self._context = context
        self.finished = asyncio.Event()
        self._start_reader()

    async def _read_message(self) -> bytes | object:
        return await self._context.read()

    async def _write_message(self, data: bytes) -> None:
        await self._context.write(data)

    def _on_error(self, error: Exception) -> None:
        self.finished.set()

    def _translate(self, exc: BaseException, *, reading: bool) -> Exception:
        if isinstance(exc, asyncio.CancelledError) or self._context.cancelled():
            return LinkBroken(f"link to {self.remote} is broken: the peer cancelled the call")
        if isinstance(exc, grpc.aio.AioRpcError):
            return LinkBroken(f"link to {self.remote} is broken: {_rpc_reason(exc.code(), exc.details())}")
        return super()._translate(exc, reading=reading)

    def status(self) -> tuple[grpc.StatusCode, str] | None:
        """The status to end the call with, when the link failed."""
        error = self._error
        if isinstance(error, FrameError) and not self._closed:
            return grpc.StatusCode.INVALID_ARGUMENT, str(error)
        return None

    def peer_gone(self, reason: str) -> None:
        self._fail(LinkBroken(f"link to {self.remote} is broken: {reason}"))

    async def aclose(self) -> None:
        if not self._mark_closed():
            return
        writing = self._writing
        if writing is not None and not writing.done():
            await asyncio.wait((writing,), timeout=_CLOSE_GRACE)
        # Returning from the handler ends the call with OK after the frames
        # already written; the reader then sees the end of the call.
        self.finished.set()
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.wait((reader,), timeout=_CLOSE_GRACE)


# -- listener and driver ----------------------------------------------------------


class GrpcListener(Listener):
    def __init__(self, server: grpc.aio.Server, url: str, tasks: set[asyncio.Task[None]]) -> None:
        self._server = server
        self._tasks = tasks
        self._closed = False
        self.url = url

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._server.stop(_STOP_GRACE)
        except (Exception, asyncio.CancelledError):
            pass


class GrpcDriver(Driver):
    schemes = ("grpc", "grpcs")
    capabilities = Capabilities(needs_listen_port=True, tls=True, message_oriented=True)

    def __init__(self, keepalive: Keepalive | None = None) -> None:
        self.keepalive = keepalive or Keepalive()

    def check_url(self, url: str) -> None:
        parse_grpc_url(url)

    async def dial(self, url: str, options: LinkOptions) -> Link:
        scheme, host, port = parse_grpc_url(url)
        target = _hostport(host, port)
        args = channel_options(options, self.keepalive)
        if scheme == "grpcs":
            channel = grpc.aio.secure_channel(target, _channel_credentials(options.tls), options=args)
        else:
            channel = grpc.aio.insecure_channel(target, options=args)
        call: grpc.aio.StreamStreamCall | None = None
        try:
            call = channel.stream_stream(METHOD)()
            try:
                # The listener sends its headers as soon as it accepts.
                metadata = await asyncio.wait_for(call.initial_metadata(), options.connect_timeout)
            except asyncio.TimeoutError:
                raise ConnectError(f"{url}: connect timed out after {options.connect_timeout:g} s") from None
            except grpc.aio.AioRpcError as exc:
                raise ConnectError(f"{url}: {_dial_reason(exc.code(), exc.details())}") from None
            if metadata is None or not any(key == _MARKER for key, _ in metadata):
                # Another gRPC server answers an unknown method with
                # trailers only: its status says what it is.
                try:
                    code = await asyncio.wait_for(call.code(), options.connect_timeout)
                    details = await call.details()
                except asyncio.TimeoutError:
                    code, details = None, "no cellnet link marker in the response headers"
                raise ConnectError(f"{url}: {_dial_reason(code, details)}")
        except BaseException:
            if call is not None:
                call.cancel()
            await channel.close()
            raise
        return GrpcClientLink(channel, call, url, options)

    async def listen(self, url: str, on_link: OnLink, options: LinkOptions) -> Listener:
        scheme, host, port = parse_grpc_url(url)
        credentials = _server_credentials(url, options.tls) if scheme == "grpcs" else None
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        async def serve(link: GrpcServerLink) -> None:
            try:
                await on_link(link)
            except CellnetError as exc:
                log.debug("link from %s ended: %s", link.remote, exc)
            except Exception:
                log.exception("link handler for %s failed", link.remote)
            finally:
                await link.aclose()

        async def connect(_requests: object, context: grpc.aio.ServicerContext) -> None:
            await context.send_initial_metadata(((_MARKER, "1"),))
            link = GrpcServerLink(context, scheme, options)
            task = loop.create_task(serve(link))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            try:
                await link.finished.wait()
            except asyncio.CancelledError:
                # gRPC cancels the handler when the client or connection goes.
                link.peer_gone("the peer cancelled the call or the connection dropped")
                raise
            status = link.status()
            if status is not None:
                context.set_code(status[0])
                context.set_details(status[1])

        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Connect": grpc.stream_stream_rpc_method_handler(connect)}
        )
        server = grpc.aio.server(options=server_options(options, self.keepalive))
        server.add_generic_rpc_handlers((handler,))
        address = _hostport(host, port)
        try:
            if credentials is None:
                bound = server.add_insecure_port(address)
            else:
                bound = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ConnectError(f"cannot listen on {url}: {exc}") from None
        if not bound:  # older grpcio returns 0 instead of raising
            raise ConnectError(f"cannot listen on {url}: the address cannot be bound")
        await server.start()
        return GrpcListener(server, format_grpc_url(host, bound, scheme), tasks)


def _dial_reason(code: grpc.StatusCode | None, details: str | None) -> str:
    if code is None or code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.OK):
        return f"not a cellnet gRPC listener ({_rpc_reason(code, details)})"
    return _rpc_reason(code, details)


__all__ = [
    "GRPC_MAX_MESSAGE",
    "GrpcClientLink",
    "GrpcDriver",
    "GrpcListener",
    "GrpcServerLink",
    "Keepalive",
    "METHOD",
    "channel_options",
    "format_grpc_url",
    "message_limit",
    "parse_grpc_url",
    "server_options",
]
