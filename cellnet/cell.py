"""The cell: the public API of the bus.

A :class:`Cell` has a name, listens on zero or more URLs, and dials a parent
(one URL, or a list tried in order). It routes every message by destination
name (see :mod:`cellnet.routing`) and offers:

* ``await cell.request(dst, channel, topic, payload, timeout=...)`` -> reply
  :class:`~cellnet.message.Message`; errors are typed
  (:class:`~cellnet.errors.RequestError` and subclasses);
* ``await cell.send(...)``: fire-and-forget;
* ``await cell.broadcast(targets, ...)``: one request to many cells;
* ``@cell.on(channel, topic)``: register a handler; it returns ``bytes``,
  a :class:`Reply` or ``None``; to refuse, it raises (the requester gets
  :class:`~cellnet.errors.RemoteError` with the text; a
  :class:`~cellnet.errors.CellnetError` such as ``RemoteError("exists")`` is
  logged without a traceback, anything else with one);
* ``await cell.aclose()``.

Payloads of any size: a payload may be bytes, a file path or an async
iterable of chunks. One larger than ``limits.chunk`` travels in chunks with
credit-based flow control and resumes after a broken link (see
:mod:`cellnet.transfer`). A handler registered with ``stream=True`` reads it
as it arrives (``msg.stream``, a :class:`~cellnet.stream.Stream`: iterate,
``read()`` or ``save(path)``); other handlers get it whole in
``msg.payload``. ``request(..., stream_reply=True)`` returns a large reply
the same way. ``progress=`` callbacks report the bytes acknowledged.

Time budgets are relative (seconds), never wall-clock deadlines. A pending
request fails at once with :class:`~cellnet.errors.LinkLost` when the link it
left on dies, or with :class:`~cellnet.errors.Unreachable` when a relay loses
the next hop; a *reliable* request is instead re-sent under the same id once
the cell has a route again, and the receiver runs its handler at most once.

Every cell answers ``("cellnet", "echo")`` with the payload it got and the
recorded route, which ``cellnet ping`` uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Iterable, Mapping, Sequence

from .codec import Frame, FrameLimits
from .config import Config, Limits, Policy, Timeouts
from .driver import Driver, Listener, LinkOptions
from .errors import (
    CellClosed,
    CellnetError,
    ConnectError,
    FrameError,
    LinkLost,
    MessageTooLarge,
    NoHandler,
    RemoteError,
    RequestError,
    RequestTimeout,
    TransferFailed,
    TransportError,
    Unreachable,
)
from .links import PeerLink
from .message import Message, MsgType, Status
from .names import validate_name
from .once import ReplyCache
from .payload import PayloadLike, is_bytes, open_source
from .stream import Progress, Stream
from .transfer import Transfers
from .registry import DriverRegistry, default_registry
from .tls import TlsSettings
from .direct import DirectLinks
from .cell_links import LinkLifecycle
from .relay import Relay, _Relayed
from .serving import Handler, HandlerResult, Reply, Serving  # noqa: F401 - Handler, HandlerResult, Reply: public here too
from .introspect import Counters
from .introspect import install as install_introspection
from .routing import next_hop

log = logging.getLogger("cellnet.cell")

SYSTEM_CHANNEL = "cellnet"
ECHO_TOPIC = "echo"




@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Message]
    #: the link the request left on (a new link to the same name is another)
    via: PeerLink | None = None


_CHUNK = int(MsgType.CHUNK)
_CREDIT = int(MsgType.CREDIT)


_STATUS_ERRORS: dict[Status, type[RequestError]] = {
    Status.TIMEOUT: RequestTimeout,
    Status.UNREACHABLE: Unreachable,
    Status.NO_HANDLER: NoHandler,
    Status.REMOTE_ERROR: RemoteError,
    Status.TRANSFER_FAILED: TransferFailed,
}


def _expire(future: asyncio.Future[Message], msg: Message) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(f"no reply from {msg.dst} within {msg.budget:g} s"))


def _as_registry(drivers: DriverRegistry | Mapping[str, Driver] | None) -> DriverRegistry:
    if drivers is None:
        return default_registry()
    if isinstance(drivers, DriverRegistry):
        return drivers
    return DriverRegistry(drivers)


class Cell(Serving, Relay, LinkLifecycle):
    """One named participant on the bus."""

    def __init__(
        self,
        name: str,
        *,
        parent: str | Sequence[str] | None = None,
        listen: Sequence[str] = (),
        advertise: Sequence[str] = (),
        limits: Limits | None = None,
        timeouts: Timeouts | None = None,
        policy: Policy | None = None,
        tls: TlsSettings | None = None,
        drivers: DriverRegistry | Mapping[str, Driver] | None = None,
    ) -> None:
        self.name = validate_name(name)
        if isinstance(parent, str):
            parent = [parent]
        self.parent_urls: tuple[str, ...] = tuple(parent or ())
        self.listen_urls: tuple[str, ...] = tuple(listen)
        #: URLs other cells dial for a direct link (default: the bound listen URLs)
        self.advertise_urls: tuple[str, ...] = tuple(advertise)
        self.limits = limits or Limits()
        self.limits.check()
        self.timeouts = timeouts or Timeouts()
        self.policy = policy or Policy()
        self._registry = _as_registry(drivers)
        # Resolve drivers now: an unknown scheme is a construction error.
        for url in self.parent_urls + self.listen_urls:
            self._registry.for_url(url).check_url(url)
        self._options = LinkOptions(
            limits=FrameLimits(self.limits.max_header, self.limits.max_frame),
            connect_timeout=self.timeouts.connect,
            tls=tls,
        )
        self._links: dict[str, PeerLink] = {}
        self._listeners: list[Listener] = []
        self._parent: str | None = None
        self.parent_url: str | None = None
        self._route_changed = asyncio.Event()
        self._pending: dict[str, _Pending] = {}
        self._relayed: dict[str, _Relayed] = {}
        self._handlers: dict[tuple[str, str], Handler] = {}
        self._stream_handlers: set[tuple[str, str]] = set()
        self._transfers = Transfers(self)
        self._once = ReplyCache()
        self._tasks: set[asyncio.Task[Any]] = set()
        #: control frames on their way out (flushed by aclose)
        self._control: set[asyncio.Task[Any]] = set()
        self._started = False
        self._closed = False
        self.on(SYSTEM_CHANNEL, ECHO_TOPIC, stream=True)(self._echo)
        #: messages handled since the start (see :mod:`cellnet.introspect`)
        self.counters = Counters()
        #: ``time.monotonic()`` at :meth:`start`
        self.started_at: float | None = None
        install_introspection(self, SYSTEM_CHANNEL, ECHO_TOPIC)
        self._direct = DirectLinks(self, SYSTEM_CHANNEL)
        self._wants_direct = bool(self.policy.direct)

    @classmethod
    def from_config(
        cls, config: Config, *, drivers: DriverRegistry | Mapping[str, Driver] | None = None
    ) -> Cell:
        return cls(
            config.cell.name,
            parent=config.cell.parent,
            listen=config.cell.listen,
            advertise=config.cell.advertise,
            limits=config.limits,
            timeouts=config.timeouts,
            policy=config.policy,
            tls=config.tls.settings() if config.tls is not None else None,
            drivers=drivers,
        )

    # -- lifecycle ---------------------------------------------------------

    async def start(self, *, wait_parent: float | None = None) -> Cell:
        """Open the listeners and start dialing the parent.

        With ``wait_parent``, wait up to that many seconds for the parent
        link (also when the cell was started before); raise
        :class:`~cellnet.errors.ConnectError` if it is not up.
        """
        if not self._started:
            self._started = True
            self.started_at = time.monotonic()
            for url in self.listen_urls:
                driver = self._registry.for_url(url)
                listener = await driver.listen(url, self._accept, self._options)
                self._listeners.append(listener)
                log.info("%s listening on %s", self.name, listener.url)
            if self.parent_urls:
                self._spawn(self._parent_loop())
        if self.parent_urls and wait_parent is not None:
            await self.wait_parent(wait_parent)
        return self

    async def wait_parent(self, timeout: float) -> str:
        """Wait until the parent link is up; return the parent's name."""
        deadline = time.monotonic() + timeout
        while self._parent is None:
            if self._refused is not None:
                raise self._refused
            if self._closed:
                raise CellClosed(f"cell {self.name} is closed")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ConnectError(
                    f"{self.name}: no link to a parent at {', '.join(self.parent_urls)} "
                    f"within {timeout:g} s"
                    + (f" ({self._last_dial_error})" if self._last_dial_error else "")
                )
            await self._wait_route_change(left)
        return self._parent


    async def __aenter__(self) -> Cell:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close links and listeners, fail pending requests. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._control:
            # Let queued acknowledgements out, so the other ends of finished
            # transfers do not wait for them.
            await asyncio.wait(list(self._control), timeout=0.5)
        await self._transfers.aclose()
        for listener in self._listeners:
            await listener.aclose()
        # Together: each may wait a moment for its last bytes to leave.
        await asyncio.gather(*(link.aclose() for link in list(self._links.values())))
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(CellClosed(f"cell {self.name} closed"))
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._notify_route_change()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def listen_addresses(self) -> list[str]:
        """The bound URLs of the listeners (port 0 resolved)."""
        return [listener.url for listener in self._listeners]

    @property
    def parent_transport(self) -> str | None:
        """The URL scheme of the link to the parent (``grpc``, ``redis``, ...)
        while linked; with several parent URLs this tells which one is in use."""
        url = self.parent_url
        return url.split("://", 1)[0].lower() if url else None

    @property
    def parent(self) -> str | None:
        """The parent cell's name while linked to it."""
        return self._parent

    @property
    def peers(self) -> list[str]:
        return sorted(self._links)

    def transfers(self) -> list[dict[str, Any]]:
        """The chunked transfers in progress, in and out (see
        :meth:`cellnet.transfer.Transfers.info`)."""
        return self._transfers.info()

    def link_info(self) -> list[dict[str, Any]]:
        return [
            {
                "peer": link.name,
                "url": link.url,
                "dialed": link.dialed,
                "sent": link.sent,
                "received": link.received,
                "since": link.since,
                "direct": self.is_direct(link),
            }
            for link in self._links.values()
        ]

    # -- sending -------------------------------------------------------------

    def _check_size(self, payload: bytes | bytearray | memoryview) -> None:
        if len(payload) > self.limits.max_message:
            raise MessageTooLarge(len(payload), self.limits.max_message)

    def _streamed(self, payload: PayloadLike) -> bool:
        """Whether ``payload`` travels in chunks rather than in one frame."""
        return not is_bytes(payload) or len(payload) > self.limits.chunk  # type: ignore[arg-type]

    async def request(
        self,
        dst: str,
        channel: str,
        topic: str = "",
        payload: PayloadLike = b"",
        *,
        meta: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        reliable: bool = False,
        progress: Progress | None = None,
        stream_reply: bool = False,
        size: int | None = None,
        checksum: bool = False,
    ) -> Message:
        """Send a request and wait for its reply.

        ``payload`` is bytes, a file path (:class:`os.PathLike`) or an async
        iterable of byte chunks (``size`` gives its length when known). A
        payload larger than ``limits.chunk`` is streamed in chunks and
        resumes after a broken link; ``progress(done, total)`` is called as
        the destination acknowledges bytes, and ``checksum=True`` sends a
        SHA-256 of the content that the receiving stream verifies.

        ``timeout`` is the relative time budget in seconds (default
        ``timeouts.request``) for the whole request, the upload of a large
        payload included. With ``reliable=True`` the request is re-sent
        under the same id after a lost link or a lost destination, until the
        budget runs out; the destination runs the handler at most once (a
        streamed request is resumed instead, and is run once as well).

        With ``stream_reply=True`` the reply's payload is left in
        ``reply.stream`` to be read as it arrives; otherwise it is read
        into ``reply.payload``.

        Raises :class:`RequestTimeout`, :class:`Unreachable`,
        :class:`LinkLost`, :class:`NoHandler`, :class:`RemoteError`,
        :class:`MessageTooLarge`, :class:`TransferFailed` or
        :class:`CellClosed`.
        """
        self._ensure_open()
        validate_name(dst)
        if is_bytes(payload):
            self._check_size(payload)  # type: ignore[arg-type]
        budget = self.timeouts.request if timeout is None else float(timeout)
        if budget <= 0:
            raise ValueError("timeout must be > 0")
        deadline = time.monotonic() + budget
        streamed = self._streamed(payload)
        msg = Message(
            type=MsgType.REQUEST,
            src=self.name,
            dst=dst,
            channel=channel,
            topic=topic,
            payload=b"" if streamed else payload,  # type: ignore[arg-type]
            meta=meta or {},
            budget=budget,
            reliable=reliable,
            hops=(self.name,),
        )
        self.counters.requests_sent += 1
        if dst == self.name:
            if streamed:
                msg = replace(msg, payload=await _read_all(payload, size, self.limits.max_message))
            reply = await self._local_request(msg, budget)
            return await self._finish_reply(reply, deadline, stream_reply)
        if streamed:
            source = open_source(payload, size)
            reply = await self._request_streamed(msg, source, deadline, progress, checksum)
            return await self._finish_reply(self._result(reply), deadline, stream_reply)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeout(f"no reply from {dst} within {budget:g} s")
            try:
                reply = await self._attempt(msg, left)
            except (LinkLost, Unreachable) as exc:
                if not reliable:
                    raise
                log.info("%s: reliable request %s to %s: %s; retrying", self.name, msg.id, dst, exc)
                await self._wait_route_change(min(deadline - time.monotonic(), 1.0))
                continue
            if reply.status is Status.IN_PROGRESS and reliable:
                # The handler still runs; its reply may come on this id, or we ask again.
                await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            if reply.status is Status.UNREACHABLE and reliable:
                await self._wait_route_change(min(deadline - time.monotonic(), 1.0))
                continue
            return await self._finish_reply(self._result(reply), deadline, stream_reply)

    async def _request_streamed(
        self, msg: Message, source: Any, deadline: float, progress: Progress | None, checksum: bool
    ) -> Message:
        """Upload ``source`` as the payload of request ``msg``; return its reply.

        The reply may come before the upload ends (a handler that answers
        early, or one that streams its reply as the request arrives); the
        upload then goes on in the background until the receiver has it or
        stops reading. A broken path does not fail the request: the upload
        resumes, and once it is complete a route change asks the
        destination to send its reply again.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        self._pending[msg.id] = _Pending(future)
        upload = loop.create_task(
            self._transfers.send(msg, source, deadline=deadline, progress=progress, checksum=checksum)
        )
        self._tasks.add(upload)
        upload.add_done_callback(_upload_done)
        upload.add_done_callback(self._tasks.discard)
        ask_every = 0.5  # once uploaded: ask for the reply again now and then
        try:
            while not future.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RequestTimeout(f"no reply from {msg.dst} within {msg.budget:g} s")
                route_changed = loop.create_task(self._route_changed.wait())
                try:
                    waits: set[asyncio.Future[Any]] = {future, route_changed}
                    wait = left
                    if not upload.done():
                        waits.add(upload)
                    else:
                        wait = min(left, ask_every)
                    await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    route_changed.cancel()
                if future.done():
                    break
                if upload.done():
                    error = upload.exception()
                    if error is not None:
                        raise error
                    # The reply may have been lost with a link, on our side
                    # (a route change) or anywhere on the path (no news):
                    # the destination sends it again if it has it.
                    self._transfers.ask_reply(msg.dst, msg.id)
                    ask_every = min(ask_every * 2, 4.0)
            return future.result()
        except BaseException:
            if not upload.done():
                upload.cancel()
            raise
        finally:
            self._pending.pop(msg.id, None)

    async def _finish_reply(self, reply: Message, deadline: float, stream_reply: bool) -> Message:
        """Give the reply in the form asked for: payload in a stream or in bytes."""
        if stream_reply:
            if reply.stream is None:
                return replace(reply, stream=Stream.of(reply.payload))
            return reply
        if reply.stream is None:
            return reply
        left = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(left, 0.001)):
                payload = await reply.stream.read(self.limits.max_message)
        except TimeoutError:
            reply.stream.abandon()
            raise RequestTimeout(f"the reply from {reply.src} did not arrive within the budget") from None
        return replace(reply, payload=payload, stream=None)

    async def _attempt(self, msg: Message, left: float) -> Message:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        pending = _Pending(future)
        self._pending[msg.id] = pending
        timer = loop.call_later(left, _expire, future, msg)
        try:
            hop = self._route(msg.dst)
            if hop is None:
                raise Unreachable(f"no route from {self.name} to {msg.dst}")
            if self._wants_direct and hop != msg.dst:
                self._direct.want(msg.dst)
            link = self._links[hop]
            pending.via = link
            self._check_peer_limit(link, msg)
            if msg.budget is not None and left < msg.budget - 0.001:
                msg = msg.with_budget(left)  # a retry: the budget already shrank
            try:
                await link.send(msg)
            except TransportError as exc:
                self._link_failed(link)
                raise LinkLost(f"link to {hop} failed while sending: {exc}") from None
            return await future
        finally:
            timer.cancel()
            self._pending.pop(msg.id, None)

    def _result(self, reply: Message) -> Message:
        if reply.status is Status.OK:
            return reply
        text = str(reply.meta.get("error", reply.status.name.lower()))
        if reply.status is Status.TOO_LARGE:
            size = int(reply.meta.get("size", 0))
            limit = int(reply.meta.get("limit", 0))
            raise MessageTooLarge(size, limit, where=str(reply.meta.get("at", reply.src)))
        error = _STATUS_ERRORS.get(reply.status, RequestError)
        raise error(f"{reply.src}: {text}")

    def _check_peer_limit(self, link: PeerLink, msg: Message) -> None:
        if len(msg.payload) > link.peer.max_message:
            raise MessageTooLarge(len(msg.payload), link.peer.max_message, where=link.name)

    async def _local_request(self, msg: Message, budget: float) -> Message:
        try:
            reply = await asyncio.wait_for(self._run_handler(msg), budget)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"local handler did not answer within {budget:g} s") from None
        return self._result(reply)

    async def send(
        self,
        dst: str,
        channel: str,
        topic: str = "",
        payload: PayloadLike = b"",
        *,
        meta: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        progress: Progress | None = None,
        size: int | None = None,
        checksum: bool = False,
    ) -> None:
        """Fire-and-forget. Raises only when there is no first hop.

        A payload larger than ``limits.chunk`` (or given as a file path or
        an async iterable) is streamed: ``send`` then returns once the
        destination holds all of it, and raises
        :class:`~cellnet.errors.TransferFailed` if it cannot (``timeout``
        bounds the whole transfer; by default only a stall does).
        """
        self._ensure_open()
        validate_name(dst)
        if is_bytes(payload):
            self._check_size(payload)  # type: ignore[arg-type]
        streamed = self._streamed(payload)
        msg = Message(
            type=MsgType.SEND,
            src=self.name,
            dst=dst,
            channel=channel,
            topic=topic,
            payload=b"" if streamed else payload,  # type: ignore[arg-type]
            meta=meta or {},
            hops=(self.name,),
        )
        if dst == self.name:
            if streamed:
                msg = replace(msg, payload=await _read_all(payload, size, self.limits.max_message))
            self._spawn(self._deliver_send(msg))
            return
        if streamed:
            deadline = None if timeout is None else time.monotonic() + timeout
            await self._transfers.send(
                msg, open_source(payload, size), deadline=deadline, progress=progress, checksum=checksum
            )
            return
        hop = self._route(dst)
        if hop is None:
            raise Unreachable(f"no route from {self.name} to {dst}")
        if self._wants_direct and hop != dst:
            self._direct.want(dst)
        link = self._links[hop]
        self._check_peer_limit(link, msg)
        try:
            await link.send(msg)
        except TransportError as exc:
            self._link_failed(link)
            raise LinkLost(f"link to {hop} failed while sending: {exc}") from None

    async def broadcast(
        self,
        targets: Iterable[str] | None,
        channel: str,
        topic: str = "",
        payload: bytes | bytearray | memoryview = b"",
        *,
        meta: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Message | CellnetError]:
        """Send one request to each target; return each reply or error.

        ``targets=None`` means every cell linked to this one except its parent.
        """
        names = list(targets) if targets is not None else [
            name for name in self._links if name != self._parent
        ]

        async def one(name: str) -> Message | CellnetError:
            try:
                return await self.request(name, channel, topic, payload, meta=meta, timeout=timeout)
            except CellnetError as exc:
                return exc

        results = await asyncio.gather(*(one(n) for n in names))
        return dict(zip(names, results))

    # -- routing -------------------------------------------------------------

    def _route(self, dst: str) -> str | None:
        return next_hop(self.name, dst, self._links, self._parent)

    def route_to(self, dst: str) -> str | None:
        """The next hop this cell would use for ``dst`` now (``""`` = local)."""
        return self._route(validate_name(dst))

    def _notify_route_change(self) -> None:
        self._route_changed.set()
        self._route_changed = asyncio.Event()

    async def _wait_route_change(self, timeout: float) -> None:
        if timeout <= 0:
            return
        event = self._route_changed
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # -- receiving -----------------------------------------------------------

    def _on_frame(self, link: PeerLink, frame: Frame) -> Awaitable[None] | None:
        """Called by the link's receive loop, in order. Forwarding is awaited
        there, so a congested next hop slows the sender (bounded memory);
        handlers run in their own tasks."""
        header = frame.header
        if header.get("d") != self.name:
            return self._forward(link, frame)
        try:
            return self._receive(link, frame)
        except FrameError as exc:
            src = header.get("s")
            if src == link.name:
                raise  # the neighbour itself misbehaves: its link closes
            # Relayed from another cell: drop the message, keep the link.
            log.warning("%s: dropped a malformed message from %r via %s: %s", self.name, src, link.name, exc)
            return None

    def _receive(self, link: PeerLink, frame: Frame) -> Awaitable[None] | None:
        header = frame.header
        kind = header.get("t")
        if kind == _CHUNK:
            self._transfers.on_chunk(frame)
            return None
        if kind == _CREDIT:
            self._transfers.on_credit(frame)
            return None
        msg = Message.from_frame(frame, hop=self.name)
        counters = self.counters
        if msg.type is MsgType.REPLY:
            counters.replies_received += 1
            self._on_reply(msg)
            return None
        if msg.channel != SYSTEM_CHANNEL and self._wants_stream(msg):
            # One frame: a finished stream, so stream handlers read every
            # payload the same way (the built-in echo uses the bytes).
            msg = replace(msg, stream=Stream.of(msg.payload))
        if msg.type is MsgType.REQUEST:
            counters.requests_served += 1
            self._spawn(self._serve_request(msg))
        else:
            counters.sends_delivered += 1
            self._spawn(self._deliver_send(msg))
        return None

    def _send_control(self, frame: Frame) -> None:
        """Send a small control frame (transfer credit) without waiting."""
        hop = self._route(frame.header["d"])
        if hop is None:
            return
        task = asyncio.get_running_loop().create_task(self._send_quietly(self._links[hop], frame))
        self._control.add(task)
        task.add_done_callback(self._control.discard)

    async def _send_quietly(self, link: PeerLink, frame: Frame) -> None:
        try:
            await link.send_frame(frame)
        except TransportError as exc:
            log.debug("%s: control frame to %s lost: %s", self.name, link.name, exc)

    def _on_reply(self, msg: Message) -> None:
        pending = self._pending.get(msg.reply_to or "")
        if pending is not None and not pending.future.done():
            pending.future.set_result(msg)

    # -- helpers -------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise CellClosed(f"cell {self.name} is closed")

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _upload_done(task: asyncio.Task[Any]) -> None:
    """Retrieve the error of an upload that outlived its request."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("upload ended: %s", task.exception())


async def _read_all(payload: PayloadLike, size: int | None, limit: int) -> bytes:
    """A payload in memory (for a request to this cell's own handler)."""
    source = open_source(payload, size)
    buf = bytearray()
    try:
        while True:
            data = await source.read(len(buf), 1 << 20)
            if not data:
                return bytes(buf)
            buf += data
            if len(buf) > limit:
                raise MessageTooLarge(len(buf), limit)
    finally:
        await source.aclose()
