"""The HTTP/WebSocket driver: ``http://``, ``https://``, ``ws://``, ``wss://``.

Cells reach each other through one WebSocket per link, so a server cell can
sit behind an ordinary HTTP reverse proxy or a load balancer on port 443.
Needs the ``http`` extra (``pip install "cellnet[http]"``, which installs
aiohttp).

URL grammar
    ``SCHEME://HOST[:PORT][/PATH]``

    * SCHEME is ``http`` or ``ws`` (plain) or ``https`` or ``wss`` (TLS);
      the two spellings of each are the same thing.
    * HOST is a name, an IPv4 address or a bracketed IPv6 address
      (``http://[::1]:8002``).
    * PORT defaults to 80 (plain) or 443 (TLS). Listening on port 0 binds a
      free port; the listener's ``url`` reports it.
    * PATH is where the WebSocket endpoint lives, ``/cellnet`` when the URL
      has none (or just ``/``). Letters, digits and ``-._~/`` only. A server
      behind a reverse proxy listens on its own path, say
      ``http://127.0.0.1:8002/cellnet``, and clients dial the proxy's, say
      ``https://proxy.example.org/fl/cellnet``.

    No query, fragment or user info.

Listener
    An aiohttp web application that serves the WebSocket on PATH. A plain
    HTTP ``GET`` on PATH (no WebSocket upgrade) gets ``426 Upgrade
    Required`` with a short text; other paths get ``404``. Closing the
    listener stops accepting; links already accepted stay with their owners
    (as on TCP) and the application is torn down when the last one ends.

TLS
    ``https://``/``wss://`` take the cell's ``[tls]`` settings
    (:mod:`cellnet.tls`): a listener needs a certificate and key, and with a
    CA it requires client certificates (mutual TLS); a dialer verifies the
    server's certificate and checks HOST against its subjectAltName (names
    and IP addresses). Behind a TLS-terminating proxy, the proxy holds the
    public certificate and the listener may be plain ``http://``.

Behaviour
    One frame is one binary WebSocket message (the codec's prefix, header
    and payload). Both ends set aiohttp's message limit from
    ``LinkOptions.limits`` (prefix + max header + max payload), never
    aiohttp's 4 MiB default, and refuse an oversized message from its
    WebSocket length field before buffering it. Compression is off (cellnet
    payloads are usually already compact, and deflate costs CPU per byte).
    aiohttp's own heartbeat is off: cellnet's link layer sends heartbeats,
    and a WebSocket ping queued behind a large frame to a slow reader would
    otherwise kill a healthy, busy link; pings from the peer or a proxy are
    answered. ``send`` waits while the socket's write buffer is full, and at
    most one frame per link is being written at a time; the receive side
    stops reading the socket while about 128 KiB plus one message waits for
    the consumer, so TCP flow control slows the sender.

Capabilities
    message-oriented, needs an open port on the listener (or a proxy in
    front of it), TLS.

Errors
    ``ConnectError`` when a dial fails (refused, timed out, TLS or
    certificate failure, no WebSocket endpoint at PATH: the HTTP status is
    in the message); ``LinkBroken`` when the peer or network ends the link
    (the WebSocket close code is in the message, 1009 meaning the peer
    refused one of our frames as too large); ``LinkClosed`` after
    ``aclose``; ``FrameTooLarge`` from ``send`` for a frame over our own
    limits (the link stays usable) and from iteration when the peer sends
    one; ``FrameError`` when the peer sends malformed or text messages.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from cellnet.codec import PREFIX_SIZE, Frame, FrameLimits, decode_frame, encode_parts
from cellnet.driver import Capabilities, Driver, Link, LinkOptions, Listener, OnLink
from cellnet.errors import (
    ConfigError,
    ConnectError,
    FrameError,
    FrameTooLarge,
    LinkBroken,
    LinkClosed,
    ProtocolError,
    TransportError,
)
from cellnet.tls import TlsSettings

log = logging.getLogger(__name__)

DEFAULT_PATH = "/cellnet"
_SECURE = {"https": True, "wss": True, "http": False, "ws": False}
_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+/?$")
#: longest wait for the peer's half of the closing handshake
_CLOSE_TIMEOUT = 0.5
# Below this many bytes in the socket's write buffer a send does not wait.
_DIRECT_WRITE = 64 * 1024
# A send that took longer than this (seconds) was held by back-pressure.
_HELD = 0.05
_CLOSE_REASONS: dict[int, str] = {
    WSCloseCode.OK: "peer closed the link",
    WSCloseCode.GOING_AWAY: "peer is going away",
    WSCloseCode.MESSAGE_TOO_BIG: "peer refused a frame over its size limit",
    WSCloseCode.PROTOCOL_ERROR: "peer reported a protocol error",
    WSCloseCode.UNSUPPORTED_DATA: "peer refused our data",
    WSCloseCode.ABNORMAL_CLOSURE: "connection lost",
}


# -- URLs --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebSocketUrl:
    """A parsed ``http(s)://`` or ``ws(s)://`` URL; ``str()`` gives it back."""

    scheme: str
    host: str
    port: int
    path: str = DEFAULT_PATH

    @property
    def secure(self) -> bool:
        return _SECURE[self.scheme]

    @property
    def http_url(self) -> str:
        """The URL for the HTTP upgrade request (``http``/``https``)."""
        return self._format("https" if self.secure else "http")

    def __str__(self) -> str:
        return self._format(self.scheme)

    def _format(self, scheme: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path}"


def parse_websocket_url(url: str) -> WebSocketUrl:
    """Parse and check a WebSocket URL (see the module docs for the grammar)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SECURE:
        raise ConfigError(f"{url!r}: expected an http://, https://, ws:// or wss:// URL")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{url!r}: the port must be a number from 0 to 65535") from None
    if not parts.hostname:
        raise ConfigError(f"{url!r}: expected {scheme}://HOST[:PORT][/PATH]")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{url!r}: a {scheme}:// URL takes no user info")
    if parts.query or parts.fragment:
        raise ConfigError(f"{url!r}: a {scheme}:// URL takes no query or fragment")
    path = parts.path
    if path in ("", "/"):
        path = DEFAULT_PATH
    elif not _PATH.match(path):
        raise ConfigError(
            f"{url!r}: the path {path!r} may hold letters, digits and -._~ between slashes only"
        )
    if port is None:
        port = 443 if _SECURE[scheme] else 80
    return WebSocketUrl(scheme, parts.hostname, port, path)


def _describe_close(code: int | None, reason: object) -> str:
    if code is None:
        return "connection lost"
    text = _CLOSE_REASONS.get(code, "peer closed the link")
    if isinstance(reason, str) and reason:
        text = f"{text}: {reason}"
    return f"{text} (close code {int(code)})"


def _max_msg_size(limits: FrameLimits) -> int:
    """aiohttp's per-message limit: the largest frame our limits allow."""
    return PREFIX_SIZE + limits.max_header + limits.max_payload


def _tls_settings(options: LinkOptions) -> TlsSettings:
    return options.tls or TlsSettings()


# -- links -------------------------------------------------------------------


class WebSocketLink(Link):
    """One WebSocket carrying frames; wraps an aiohttp client or server socket."""

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
        transport: asyncio.BaseTransport | None,
        remote: str,
        limits: FrameLimits,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._session = session
        self._limits = limits
        self._send_lock = asyncio.Lock()
        self._closed = False
        self._done = False  # aclose has finished
        #: sends waiting for room in the socket's buffer (released by aclose)
        self._holding: set[asyncio.Future[None]] = set()
        #: why the link broke, once it has
        self._error: str | None = None
        self.remote = remote

    @property
    def closed(self) -> bool:
        if self._closed or self._error is not None or self._ws.closed:
            return True
        transport = self._transport
        return transport is not None and transport.is_closing()

    def _broken(self) -> LinkBroken:
        if self._error is None:
            self._error = self._close_reason()
        return LinkBroken(f"link to {self.remote} is broken: {self._error}")

    def _close_reason(self) -> str:
        exc = self._ws.exception()
        if exc is not None:
            return str(exc) or type(exc).__name__
        return _describe_close(self._ws.close_code, None)

    def _check_size(self, head: bytes, payload: bytes | bytearray | memoryview) -> None:
        limits = self._limits
        if len(payload) > limits.max_payload:
            raise FrameTooLarge(
                f"frame payload of {len(payload)} bytes exceeds the limit of {limits.max_payload}"
            )
        if len(head) - PREFIX_SIZE > limits.max_header:
            raise FrameTooLarge(
                f"frame header of {len(head) - PREFIX_SIZE} bytes exceeds the limit of "
                f"{limits.max_header}"
            )

    async def send(self, frame: Frame) -> None:
        if self._closed:
            raise LinkClosed(f"link to {self.remote} is closed")
        if self.closed:
            raise self._broken()
        head, payload = encode_parts(frame)
        self._check_size(head, payload)
        data = head + payload if payload else head
        # One writer at a time: aiohttp's drain waiter is shared, so a
        # cancelled sender would otherwise cancel the others' waits; and
        # bytes in flight stay at one frame plus the transport's buffer.
        async with self._send_lock:
            if self._closed:
                raise LinkClosed(f"link to {self.remote} is closed")
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                if self._write_buffered() + len(data) <= _DIRECT_WRITE:
                    # Room in the socket's buffer: aiohttp will not wait.
                    await self._ws.send_bytes(data)
                else:
                    await self._send_held(data)
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                if self._closed:
                    raise LinkClosed(f"link to {self.remote} is closed") from None
                if self._error is None:
                    self._error = str(exc) or type(exc).__name__
                raise self._broken() from None
            if loop.time() - started > _HELD and not self.closed:
                # A send held by back-pressure may be released by a peer
                # that is closing and discards what it reads: give the end
                # of the connection a moment to show.
                await asyncio.sleep(_HELD)
        if self._closed:
            raise LinkClosed(f"link to {self.remote} was closed while sending")
        if self.closed:
            raise self._broken()

    def _write_buffered(self) -> int:
        transport = self._transport
        if transport is None or transport.is_closing():
            return 0
        return transport.get_write_buffer_size()  # type: ignore[attr-defined, no-any-return]

    async def _send_held(self, data: bytes) -> None:
        """Send while the socket's buffer is full; ``aclose`` releases it."""
        sending = asyncio.ensure_future(self._ws.send_bytes(data))
        self._holding.add(sending)
        try:
            await sending
        except asyncio.CancelledError:
            if self._closed and sending.cancelled():
                raise LinkClosed(f"link to {self.remote} was closed while sending") from None
            raise
        finally:
            self._holding.discard(sending)

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        ws = self._ws
        limits = self._limits
        binary = WSMsgType.BINARY
        while True:
            msg = await ws.receive()
            if msg.type is binary:
                try:
                    frame = decode_frame(msg.data, limits)
                except FrameTooLarge as exc:
                    await self._refuse(WSCloseCode.MESSAGE_TOO_BIG, exc)
                    raise
                except FrameError as exc:
                    await self._refuse(WSCloseCode.PROTOCOL_ERROR, exc)
                    raise
                yield frame
                continue
            if self._closed:
                return
            if msg.type is WSMsgType.TEXT:
                error = FrameError(f"{self.remote} sent a text message; cellnet frames are binary")
                await self._refuse(WSCloseCode.UNSUPPORTED_DATA, error)
                raise error
            if msg.type is WSMsgType.ERROR:
                raise self._read_error(msg.data)
            # CLOSE, CLOSING or CLOSED: the peer or the network ended it
            if self._error is None:
                self._error = self._end_reason(msg)
            raise self._broken()

    def _end_reason(self, msg: aiohttp.WSMessage) -> str:
        if msg.type is WSMsgType.CLOSE:
            return _describe_close(msg.data, msg.extra)
        cause = self._ws.exception()
        if cause is not None:
            return str(cause) or type(cause).__name__
        return "the connection ended without a WebSocket close"

    def _read_error(self, exc: BaseException) -> Exception:
        code = getattr(exc, "code", None)
        if code == WSCloseCode.MESSAGE_TOO_BIG:
            self._error = f"refused an oversized message: {exc}"
            return FrameTooLarge(f"{self.remote} sent a message over the size limit: {exc}")
        if isinstance(exc, aiohttp.WebSocketError):
            self._error = f"bad WebSocket data: {exc}"
            return FrameError(f"{self.remote} broke the WebSocket protocol: {exc}")
        self._error = str(exc) or type(exc).__name__
        return self._broken()

    async def _refuse(self, code: int, exc: Exception) -> None:
        """Close the link because the peer sent something we cannot accept."""
        self._error = str(exc)
        log.warning("closing link to %s: %s", self.remote, exc)
        await self._shutdown(code, str(exc).encode()[:120])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._holding:
            # A frame is half written: no close handshake is possible.
            for sending in list(self._holding):
                sending.cancel()
            transport = self._transport
            if transport is not None and not transport.is_closing():
                transport.abort()  # type: ignore[attr-defined]
        await self._shutdown(WSCloseCode.OK, b"")

    async def _shutdown(self, code: int, reason: bytes) -> None:
        """Close handshake (bounded in time), then release the socket."""
        if self._done:
            return
        self._done = True
        try:
            if not self._ws.closed:
                await asyncio.wait_for(self._ws.close(code=code, message=reason), _CLOSE_TIMEOUT)
        except Exception:
            pass  # a peer that does not answer in time: cut below
        finally:
            transport = self._transport
            if transport is not None and not transport.is_closing():
                transport.abort()  # type: ignore[attr-defined]
            if self._session is not None:
                try:
                    await self._session.close()
                except Exception:
                    pass


# -- listener ----------------------------------------------------------------


class WebSocketListener(Listener):
    def __init__(self, url: WebSocketUrl, on_link: OnLink, options: LinkOptions) -> None:
        self.url = str(url)
        self._address = url
        self._on_link = on_link
        self._options = options
        self._links: set[WebSocketLink] = set()
        self._closed = False
        self._cleanup: asyncio.Task[None] | None = None
        app = web.Application()
        app.router.add_get(url.path, self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=_CLOSE_TIMEOUT
        )
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        url = self._address
        context = _tls_settings(self._options).server_context() if url.secure else None
        await self._runner.setup()
        site = web.TCPSite(self._runner, url.host, url.port, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConnectError(f"cannot listen on {url}: {exc.strerror or exc}") from None
        self._site = site
        bound = self._runner.addresses[0]
        self._address = WebSocketUrl(url.scheme, bound[0], bound[1], url.path)
        self.url = str(self._address)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        limits = self._options.limits
        ws = web.WebSocketResponse(
            timeout=_CLOSE_TIMEOUT,
            autoclose=True,
            autoping=True,
            heartbeat=None,
            compress=False,
            max_msg_size=_max_msg_size(limits),
        )
        if not ws.can_prepare(request).ok:
            return web.Response(
                status=426,
                text=(
                    f"426 Upgrade Required: {request.path} is a cellnet WebSocket endpoint; "
                    f"connect a cell to {self._address.scheme}://HOST:PORT{request.path}\n"
                ),
                headers={"Upgrade": "websocket", "Connection": "Upgrade"},
            )
        if self._closed:
            return web.Response(status=503, text="503 Service Unavailable: listener closed\n")
        transport = request.transport
        try:
            await ws.prepare(request)
        except (ConnectionError, RuntimeError):
            return ws
        peer = transport.get_extra_info("peername") if transport is not None else None
        scheme = self._address.scheme
        if peer:
            host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
            remote = f"{scheme}://{host}:{peer[1]}"
        else:
            remote = f"{scheme}://?"
        link = WebSocketLink(ws, transport, remote, limits)
        self._links.add(link)
        try:
            await self._on_link(link)
        except (TransportError, ProtocolError) as exc:
            log.debug("link from %s ended: %s", remote, exc)
        except Exception:
            log.exception("handler for the link from %s failed", remote)
        finally:
            await link.aclose()
            self._links.discard(link)
            if self._closed and not self._links and self._cleanup is None:
                self._cleanup = asyncio.get_running_loop().create_task(self._teardown())
        return ws

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        site, self._site = self._site, None
        try:
            if site is not None:
                await site.stop()
        except Exception:
            pass
        # Accepted links belong to their handlers and outlive the listener;
        # the last one to end tears the application down.
        if not self._links and self._cleanup is None:
            await self._teardown()

    async def _teardown(self) -> None:
        try:
            await asyncio.wait_for(self._runner.cleanup(), 2 * _CLOSE_TIMEOUT + 1)
        except (Exception, asyncio.CancelledError):
            pass


# -- dialing -----------------------------------------------------------------


@contextmanager
def _dial_errors(url: WebSocketUrl, timeout: float) -> Iterator[None]:
    """Translate aiohttp's and ssl's exceptions into ConnectError."""
    try:
        yield
    except TimeoutError:
        raise ConnectError(f"{url}: connect timed out after {timeout:g} s") from None
    except aiohttp.WSServerHandshakeError as exc:
        if exc.status == 404:
            raise ConnectError(f"{url}: no WebSocket endpoint at {url.path} (HTTP 404)") from None
        raise ConnectError(
            f"{url}: WebSocket upgrade refused: HTTP {exc.status} {exc.message}"
        ) from None
    except aiohttp.ClientConnectorCertificateError as exc:
        raise ConnectError(
            f"{url}: TLS certificate verification failed: {exc.certificate_error}"
        ) from None
    except (aiohttp.ClientConnectorSSLError, aiohttp.ClientSSLError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ConnectError(f"{url}: TLS handshake failed: {reason}") from None
    except aiohttp.ClientConnectorError as exc:
        raise ConnectError(f"{url}: {exc.os_error.strerror or exc.os_error}") from None
    except aiohttp.ServerDisconnectedError:
        raise ConnectError(
            f"{url}: the server closed the connection during the handshake"
            + (" (a TLS server that refuses our certificate does this)" if url.secure else "")
        ) from None
    except aiohttp.ClientError as exc:
        raise ConnectError(f"{url}: {type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise ConnectError(f"{url}: {exc.strerror or exc}") from None


def _client_transport(ws: aiohttp.ClientWebSocketResponse) -> asyncio.BaseTransport | None:
    # aiohttp gives no public handle on a client WebSocket's transport; we
    # want it only to abort a connection whose peer stopped reading (close()
    # would wait for the write buffer to drain forever).
    response: Any = getattr(ws, "_response", None)
    connection = getattr(response, "connection", None)
    return getattr(connection, "transport", None)


class WebSocketDriver(Driver):
    schemes = ("http", "https", "ws", "wss")
    capabilities = Capabilities(needs_listen_port=True, tls=True, message_oriented=True)

    def check_url(self, url: str) -> None:
        parse_websocket_url(url)

    async def dial(self, url: str, options: LinkOptions) -> Link:
        address = parse_websocket_url(url)
        context = _tls_settings(options).client_context() if address.secure else None
        timeout = options.connect_timeout
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        try:
            with _dial_errors(address, timeout):
                async with asyncio.timeout(timeout):
                    ws = await session.ws_connect(
                        address.http_url,
                        ssl=context if context is not None else True,
                        autoclose=True,
                        autoping=True,
                        heartbeat=None,
                        compress=0,
                        max_msg_size=_max_msg_size(options.limits),
                        headers={"User-Agent": "cellnet"},
                    )
        except BaseException:
            await session.close()
            raise
        return WebSocketLink(ws, _client_transport(ws), str(address), options.limits, session)

    async def listen(self, url: str, on_link: OnLink, options: LinkOptions) -> Listener:
        listener = WebSocketListener(parse_websocket_url(url), on_link, options)
        await listener.start()
        return listener
