"""The local server (LGS): where a SuperNode's Fleet API calls enter the bus.

A client cell runs one :class:`LocalServer` and starts its SuperNode with
``--superlink HOST:PORT`` pointing at it. Every HTTP request, whatever its
method or path, becomes an :class:`~cellnet.bridge.flower.wire.HttpCall`
handed to a ``forward`` callable (in production: a reliable bus request to the
server cell), and the :class:`~cellnet.bridge.flower.wire.HttpReply` that
comes back is written to the SuperNode unchanged.

Error statuses are chosen for how the SuperNode reacts to them. It retries
transport errors and 502/503/504 with backoff, forever; any other status fails
the call, and a 401 (or any failure during start-up) stops the SuperNode. So
a bus failure must never surface as 401 or 500:

* the bus ran out of time (:class:`~cellnet.errors.RequestTimeout`, or the
  local budget expired) -> 504;
* any other bus failure or an unexpected bug -> 503, with a short JSON body
  naming the cause;
* a request body over ``max_body`` -> 413, which is the SuperNode's problem
  to see, not something a retry can fix.

Each call gets a time budget shorter than the SuperNode's own client timeout
(30 s, 5 s for heartbeats), so the SuperNode always hears a retryable answer
from the bridge before it gives up on its own, and a signed request is never
held long enough to age past the SuperLink's freshness window.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from cellnet.errors import CellnetError, RequestTimeout

from .wire import BridgeWireError, HttpCall, HttpReply, forwardable_headers, validate_headers

__all__ = ["DEFAULT_MAX_BODY", "HEARTBEAT_PATH", "Forward", "LocalServer"]

log = logging.getLogger(__name__)

Forward = Callable[[HttpCall, float], Awaitable[HttpReply]]
"""Sends one call across the bus and returns the reply. The float is the time
budget in seconds; the forwarder retries within it under one request id."""

DEFAULT_MAX_BODY: Final = 64 * 1024 * 1024
HEARTBEAT_PATH: Final = "/v1/fleet/send-node-heartbeat"

# How long aclose() lets in-flight calls finish before cutting them off.
_SHUTDOWN_GRACE: Final = 1.0
# Statuses whose responses must not carry a body (RFC 9110 section 6.4.1).
_NO_BODY: Final = frozenset({204, 304})


class LocalServer:
    """An HTTP/1.1 server that forwards every request through ``forward``.

    Serves many concurrent keep-alive connections (a SuperNode opens about
    three: main loop, heartbeat, parallel object transfers). Not reusable
    after :meth:`aclose`.
    """

    def __init__(
        self,
        forward: Forward,
        host: str,
        port: int,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        call_budget: float = 25.0,
        heartbeat_budget: float = 4.0,
    ) -> None:
        if max_body <= 0:
            raise ValueError(f"max_body must be positive, got {max_body}")
        if call_budget <= 0 or heartbeat_budget <= 0:
            raise ValueError("call budgets must be positive")
        self._forward = forward
        self._host = host
        self._port = port
        self._max_body = max_body
        self._call_budget = call_budget
        self._heartbeat_budget = heartbeat_budget
        self._runner: web.AppRunner | None = None
        self._bound: tuple[str, int] | None = None
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); only valid after :meth:`start`."""
        if self._bound is None:
            raise RuntimeError("LocalServer is not started")
        return self._bound

    def budget_for(self, path: str) -> float:
        """The time budget for a call to ``path``, in seconds."""
        return self._heartbeat_budget if path == HEARTBEAT_PATH else self._call_budget

    async def start(self) -> tuple[str, int]:
        """Bind and start serving; returns the bound (host, port).

        Port 0 picks a free port. Once this returns, connections are accepted.
        """
        if self._closed:
            raise RuntimeError("LocalServer is closed")
        if self._runner is not None:
            return self.address
        # aiohttp refuses bodies over client_max_size (1 MiB by default) with
        # its own 413; let a little more through so the check below decides
        # and answers with the bridge's message.
        app = web.Application(client_max_size=self._max_body + 1)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._bound = (str(host), int(port))
        log.info("bridge local server listening on %s:%d", *self._bound)
        return self._bound

    async def aclose(self) -> None:
        """Stop accepting, give in-flight calls a moment, close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> LocalServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    # -- request handling -----------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        url = request.rel_url
        path = url.raw_path
        budget = self.budget_for(path)
        deadline = loop.time() + budget

        declared = request.content_length
        if declared is not None and declared > self._max_body:
            return self._too_large(path, declared)
        try:
            async with asyncio.timeout_at(deadline):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(path, None)
        except TimeoutError:
            return _to_response(
                HttpReply.error(504, "bridge-timeout", "request body not received in time")
            )
        if len(body) > self._max_body:
            return self._too_large(path, len(body))

        call = HttpCall(
            method=request.method,
            path=path,
            query=url.raw_query_string,
            headers=forwardable_headers(_decode_headers(request.raw_headers)),
            body=body,
        )
        reply = await self._forward_within(call, deadline, budget)
        return _to_response(reply)

    async def _forward_within(self, call: HttpCall, deadline: float, budget: float) -> HttpReply:
        """Run the forwarder, never past ``deadline``; map failures to 503/504."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout_at(deadline):
                reply = await self._forward(call, max(remaining, 0.0))
        except (RequestTimeout, TimeoutError) as exc:
            log.warning("bridge call %s timed out after %.1f s budget: %s", call.path, budget, exc)
            return HttpReply.error(
                504, "bridge-timeout", f"no reply over the bus within {budget:g} s"
            )
        except CellnetError as exc:
            log.warning("bridge call %s failed: %s: %s", call.path, type(exc).__name__, exc)
            return HttpReply.error(503, "bridge-unavailable", f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("bridge call %s failed unexpectedly", call.path)
            return HttpReply.error(
                503, "bridge-unavailable", f"unexpected {type(exc).__name__} in the bridge"
            )
        if not isinstance(reply, HttpReply):
            log.error("bridge forwarder returned %s, not an HttpReply", type(reply).__name__)
            return HttpReply.error(502, "bridge-bad-reply", "the forwarder returned no reply")
        return reply

    def _too_large(self, path: str, size: int | None) -> web.Response:
        what = f"{size} bytes" if size is not None else "the request body"
        log.warning("bridge refused %s: %s over max_body %d", path, what, self._max_body)
        reply = HttpReply.error(
            413,
            "bridge-body-too-large",
            f"{what} exceeds the bridge limit of {self._max_body} bytes",
        )
        response = _to_response(reply)
        # The unread rest of the body would otherwise be parsed as the next request.
        response.force_close()
        return response


def _decode_headers(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """Header pairs as sent (case and order kept), decoded like aiohttp does."""
    return [
        (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for name, value in raw
    ]


def _to_response(reply: HttpReply) -> web.Response:
    """An aiohttp response carrying the reply's status, headers and bytes as is.

    aiohttp adds ``Date`` and ``Server`` only when the reply has none, and
    ``Content-Type: application/octet-stream`` only to a non-empty body
    without one, so a reply from the SuperLink keeps its own values. A reply
    that cannot be written as HTTP/1.1 becomes a 502 here, because once
    aiohttp fails to write it, the SuperNode would see a 500 or a dropped
    connection instead.
    """
    problem = _unwritable(reply)
    if problem is not None:
        log.warning("bridge got a reply it cannot write: %s", problem)
        reply = HttpReply.error(502, "bridge-bad-reply", problem)
    headers = CIMultiDict(forwardable_headers(reply.headers))
    body = b"" if reply.status in _NO_BODY else reply.body
    return web.Response(status=reply.status, headers=headers, body=body)


def _unwritable(reply: HttpReply) -> str | None:
    """Why ``reply`` cannot be sent as a final HTTP/1.1 response, if it cannot."""
    status = reply.status
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        # An interim (1xx) status cannot end an exchange either.
        return f"status {status!r} is not a final HTTP status"
    if not isinstance(reply.body, bytes | bytearray):
        return f"body is {type(reply.body).__name__}, not bytes"
    try:
        validate_headers(reply.headers)
    except BridgeWireError as exc:
        return str(exc)
    return None
