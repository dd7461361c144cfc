"""The local client (LGC): where forwarded Fleet API calls leave the bus.

The server cell runs one :class:`SuperLinkClient` next to the real SuperLink
and registers :meth:`SuperLinkClient.handle_bytes` as the bus handler for the
bridge's channel. Each call is replayed against the SuperLink's HTTP port and
the SuperLink's answer goes back unchanged: status, headers (minus hop-by-hop
ones) and body bytes, including its 4xx and 5xx answers, which the SuperNode
must see as the SuperLink meant them.

Bodies are never decompressed or re-encoded: with ``Content-Encoding`` kept,
the SuperNode decodes exactly what the SuperLink sent. Cookies are not kept
and redirects are not followed, because the client acts for many SuperNodes
and must not add state of its own between them.

When the SuperLink itself cannot be reached, the client answers with a
status the SuperNode retries (503; 504 on a timeout; 502 for a response it
could not parse) and never raises, and never answers 401 or 500, which would
make the SuperNode stop.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from typing import Final

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from .wire import HttpCall, HttpReply, forwardable_headers

__all__ = ["DEFAULT_MAX_BODY", "SuperLinkClient"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY: Final = 64 * 1024 * 1024

# Uvicorn, which serves the SuperLink, drops idle connections after 5 s.
# Reusing a connection it is closing at that moment fails the request, so the
# pool lets idle connections go a little earlier.
_IDLE_KEEPALIVE: Final = 4.0
# Headers aiohttp would add on its own; the SuperNode's call decides them.
_NO_AUTO_HEADERS: Final = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_READ_CHUNK: Final = 256 * 1024


class SuperLinkClient:
    """Replays bridge calls against a SuperLink's HTTP port.

    ``address`` is ``host:port`` as given to a SuperNode's ``--superlink``
    (plain HTTP), or a full ``http://`` / ``https://`` base URL. The
    connection pool is created on first use, inside the running event loop.
    """

    def __init__(
        self,
        address: str,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        timeout: float = 25.0,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        if max_body <= 0:
            raise ValueError(f"max_body must be positive, got {max_body}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        base = address if "://" in address else f"http://{address}"
        url = URL(base)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(
                f"SuperLink address must be host:port or an http(s) URL, got {address!r}"
            )
        self._base = str(url.origin())
        self._max_body = max_body
        self._timeout = timeout
        self._ssl = ssl
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def base_url(self) -> str:
        """The SuperLink origin calls are sent to, e.g. ``http://127.0.0.1:9092``."""
        return self._base

    async def handle_bytes(self, data: bytes) -> bytes:
        """Bus handler: decode an :class:`HttpCall`, replay it, encode the reply.

        Raises :class:`~cellnet.bridge.flower.wire.BridgeWireError` only when
        ``data`` is not a call this version understands; the bus reports that
        to the caller as a remote error, which the local server turns into a
        retryable 503.
        """
        call = HttpCall.decode(data)
        reply = await self.handle(call)
        return reply.encode()

    async def handle(self, call: HttpCall, *, timeout: float | None = None) -> HttpReply:
        """Send ``call`` to the SuperLink and return its reply. Never raises.

        ``timeout`` (seconds) overrides the client's default for this call,
        e.g. with the remaining budget of the bus request that carried it.
        """
        if self._closed:
            return HttpReply.error(503, "bridge-closed", "the SuperLink client is closed")
        if len(call.body) > self._max_body:
            return HttpReply.error(
                413,
                "bridge-body-too-large",
                f"{len(call.body)} bytes exceed the bridge limit of {self._max_body} bytes",
            )
        budget = self._timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(budget):
                return await self._exchange(call)
        except TimeoutError:
            log.warning("SuperLink did not answer %s within %.1f s", call.path, budget)
            return HttpReply.error(
                504, "superlink-timeout", f"the SuperLink did not answer within {budget:g} s"
            )
        except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as exc:
            log.warning("bad response from the SuperLink to %s: %s", call.path, exc)
            return HttpReply.error(502, "superlink-bad-response", f"{type(exc).__name__}: {exc}")
        except aiohttp.ClientConnectionError as exc:
            log.warning("cannot reach the SuperLink at %s for %s: %s", self._base, call.path, exc)
            return HttpReply.error(503, "superlink-unreachable", f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("forwarding %s to the SuperLink failed unexpectedly", call.path)
            return HttpReply.error(
                503, "superlink-unreachable", f"unexpected {type(exc).__name__} in the bridge"
            )

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent; later calls answer 503."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> SuperLinkClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    # -- internals --------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, keepalive_timeout=_IDLE_KEEPALIVE, ssl=self._ssl or True
                ),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                # handle() enforces the per-call budget itself.
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=_NO_AUTO_HEADERS,
                trust_env=False,
            )
        return self._session

    async def _exchange(self, call: HttpCall) -> HttpReply:
        url = URL(self._base + call.target, encoded=True)
        headers = CIMultiDict(forwardable_headers(call.headers))
        async with self._get_session().request(
            call.method,
            url,
            headers=headers,
            data=call.body or None,
            allow_redirects=False,
        ) as response:
            body = await self._read_body(response)
            return HttpReply(
                status=response.status,
                headers=forwardable_headers(
                    (
                        name.decode("utf-8", "surrogateescape"),
                        value.decode("utf-8", "surrogateescape"),
                    )
                    for name, value in response.raw_headers
                ),
                body=body,
            )

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        """Read the raw body, refusing to buffer more than ``max_body``."""
        declared = response.content_length
        if declared is not None and declared > self._max_body:
            raise aiohttp.ClientPayloadError(
                f"SuperLink response of {declared} bytes exceeds max_body {self._max_body}"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            size += len(chunk)
            if size > self._max_body:
                raise aiohttp.ClientPayloadError(
                    f"SuperLink response exceeds max_body {self._max_body}"
                )
            chunks.append(chunk)
        return b"".join(chunks)
