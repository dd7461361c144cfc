"""How a cell serves the messages addressed to it: a mixin of
:class:`cellnet.cell.Cell`, kept apart from the messaging API.

Handlers are registered per channel and topic (``"*"``: any topic) with
:meth:`Serving.on`. A request runs its handler in a task of its own and gets
exactly one reply: the handler's result, or an error status (no handler,
the handler raised, the reply is too large). A streamed request (one that
came in chunks) runs its handler once per transfer, and its small reply is
kept to be sent again if the requester asks (see :mod:`cellnet.transfer`);
a reliable request runs at most once per id (:mod:`cellnet.once`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Union

from .errors import CellnetError, TransportError
from .message import Message, MsgType, Status
from .payload import PayloadLike, is_bytes, open_source

if TYPE_CHECKING:
    from .config import Limits
    from .introspect import Counters
    from .links import PeerLink
    from .once import ReplyCache
    from .transfer import Transfers

log = logging.getLogger("cellnet.cell")


@dataclass(frozen=True, slots=True)
class Reply:
    """What a handler may return to set the reply's meta as well as its payload."""

    #: bytes, or for a large reply a file path or an async iterable of
    #: chunks (such as an incoming :class:`~cellnet.stream.Stream`)
    payload: PayloadLike = b""
    meta: Mapping[str, Any] = field(default_factory=dict)


HandlerResult = Union[bytes, bytearray, memoryview, Reply, None]
Handler = Callable[[Message], Awaitable[HandlerResult]]

class Serving:
    """The serving side of a cell (see the module docs)."""

    # Set by Cell.__init__.
    name: str
    limits: Limits
    counters: Counters
    _handlers: dict[tuple[str, str], Handler]
    _stream_handlers: set[tuple[str, str]]
    _once: ReplyCache
    _transfers: Transfers
    _links: dict[str, PeerLink]
    _pending: dict[str, Any]

    if TYPE_CHECKING:

        def _spawn(self, coro: Awaitable[Any]) -> None: ...
        def _route(self, dst: str) -> str | None: ...
        def _on_reply(self, msg: Message) -> None: ...
        def _streamed(self, payload: PayloadLike) -> bool: ...

    def on(self, channel: str, topic: str = "*", *, stream: bool = False) -> Callable[[Handler], Handler]:
        """Register ``handler`` for a channel and topic (``"*"``: any topic).

        With ``stream=True`` the handler is called as soon as a message
        starts to arrive, with ``msg.stream`` to read its payload chunk by
        chunk (bounded memory, any size); otherwise it is called with the
        whole payload in ``msg.payload``.
        """

        def register(handler: Handler) -> Handler:
            key = (channel, topic)
            self._handlers[key] = handler
            if stream:
                self._stream_handlers.add(key)
            else:
                self._stream_handlers.discard(key)
            return handler

        return register

    def remove_handler(self, channel: str, topic: str = "*") -> None:
        self._handlers.pop((channel, topic), None)
        self._stream_handlers.discard((channel, topic))

    def _handler_key(self, channel: str, topic: str) -> tuple[str, str] | None:
        for key in ((channel, topic), (channel, "*")):
            if key in self._handlers:
                return key
        return None

    def _handler_for(self, channel: str, topic: str) -> Handler | None:
        key = self._handler_key(channel, topic)
        return None if key is None else self._handlers[key]

    def _wants_stream(self, msg: Message) -> bool:
        return self._handler_key(msg.channel, msg.topic) in self._stream_handlers

    async def _echo(self, msg: Message) -> Reply:
        meta = {"route": list(msg.hops)}
        if msg.stream is not None and msg.stream.chunked:
            return Reply(msg.stream, meta)  # echoed as it arrives
        return Reply(msg.payload, meta)


    def _stream_arrived(self, msg: Message) -> tuple[Status, str] | None:
        """A streamed message began to arrive (see :mod:`cellnet.transfer`).
        Dispatch it, or say why it is refused."""
        if msg.type is MsgType.REPLY:
            pending = self._pending.get(msg.reply_to or "")
            if pending is None or pending.future.done():
                return Status.UNREACHABLE, f"no request on {self.name} waits for this reply"
            self.counters.replies_received += 1
            pending.future.set_result(msg)
            return None
        if self._handler_for(msg.channel, msg.topic) is None:
            return Status.NO_HANDLER, f"no handler for channel {msg.channel!r} topic {msg.topic!r}"
        if not self._wants_stream(msg):
            self._spawn(self._collect(msg))
        elif msg.type is MsgType.REQUEST:
            self.counters.requests_served += 1
            self._spawn(self._serve_request(msg))
        else:
            self.counters.sends_delivered += 1
            self._spawn(self._deliver_send(msg))
        return None

    async def _collect(self, msg: Message) -> None:
        """Read a streamed payload whole, for a handler that wants bytes."""
        assert msg.stream is not None
        try:
            payload = await msg.stream.read(self.limits.max_message)
        except CellnetError as exc:
            log.info("%s: %s from %s not delivered: %s", self.name, msg.type.name.lower(), msg.src, exc)
            return
        msg = replace(msg, payload=payload, stream=None)
        if msg.type is MsgType.REQUEST:
            self.counters.requests_served += 1
            await self._serve_request(msg, streamed=True)
        else:
            self.counters.sends_delivered += 1
            await self._deliver_send(msg)

    def _resend_reply(self, src: str, msg_id: str) -> None:
        """Send again the cached reply to streamed request ``msg_id``, if any."""
        run, cached = self._once.begin(src, msg_id)
        if run:
            self._once.forget(src, msg_id)  # not ours to start
        elif cached is not None:
            self._spawn(self._send_reply(cached))

    async def _reply_error(self, request: Message, status: Status, text: str, **extra: Any) -> None:
        reply = request.reply(self.name, status=status, meta={"error": text, **extra})
        await self._send_reply(reply)

    async def _send_reply(self, reply: Message) -> None:
        if reply.dst == self.name:
            self._on_reply(reply)
            return
        if self._streamed(reply.payload):
            budget = reply.budget
            deadline = None if budget is None else time.monotonic() + budget
            try:
                await self._transfers.send(
                    replace(reply, payload=b""), open_source(reply.payload), deadline=deadline
                )
            except CellnetError as exc:
                log.info("%s: reply to %s not delivered: %s", self.name, reply.dst, exc)
            return
        hop = self._route(reply.dst)
        if hop is None:
            log.debug("%s: reply to %s dropped: no route", self.name, reply.dst)
            return
        link = self._links[hop]
        frame = reply.to_frame()
        if link.send_frame_nowait(frame):
            return
        try:
            await link.send_frame(frame)
        except TransportError as exc:
            log.debug("%s: reply to %s lost: %s", self.name, reply.dst, exc)

    async def _serve_request(self, msg: Message, *, streamed: bool = False) -> None:
        if msg.stream is not None and msg.stream.chunked:
            streamed = True
        if streamed:
            # Run once per transfer; keep a small reply to send again if asked.
            self._once.begin(msg.src, msg.id)
            reply = await self._run_handler(msg)
            await self._send_reply(reply)
            if msg.stream is not None and not msg.stream.done:
                msg.stream.abandon()  # the handler is done: stop the sender
            if is_bytes(reply.payload) and len(reply.payload) <= self.limits.chunk:
                self._once.finish(msg.src, msg.id, reply)
            else:
                self._once.forget(msg.src, msg.id)
            return
        if msg.reliable:
            run, cached = self._once.begin(msg.src, msg.id)
            if not run:
                if cached is None:
                    await self._send_reply(msg.reply(self.name, status=Status.IN_PROGRESS))
                else:
                    await self._send_reply(
                        Message.reply(msg, self.name, cached.payload, status=cached.status, meta=cached.meta)
                    )
                return
        reply = await self._run_handler(msg)
        if msg.reliable:
            self._once.finish(msg.src, msg.id, reply)
        await self._send_reply(reply)

    async def _run_handler(self, msg: Message) -> Message:
        handler = self._handler_for(msg.channel, msg.topic)
        if handler is None:
            return msg.reply(
                self.name,
                status=Status.NO_HANDLER,
                meta={"error": f"no handler for channel {msg.channel!r} topic {msg.topic!r}"},
            )
        try:
            result = await handler(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, CellnetError):
                # A deliberate refusal (e.g. RemoteError("file exists")): no traceback.
                log.info("%s: handler for %s/%s refused: %s", self.name, msg.channel, msg.topic, exc)
            else:
                log.exception("%s: handler for %s/%s raised", self.name, msg.channel, msg.topic)
            return msg.reply(
                self.name,
                status=Status.REMOTE_ERROR,
                meta={"error": f"{type(exc).__name__}: {exc}"},
            )
        if isinstance(result, Reply):
            payload, meta = result.payload, result.meta
        elif result is None:
            payload, meta = b"", {}
        else:
            payload, meta = result, {}
        if is_bytes(payload) and len(payload) > self.limits.max_message:  # type: ignore[arg-type]
            return msg.reply(
                self.name,
                status=Status.TOO_LARGE,
                meta={
                    "error": f"reply of {len(payload)} bytes exceeds the limit of {self.limits.max_message}",
                    "size": len(payload),
                    "limit": self.limits.max_message,
                    "at": self.name,
                },
            )
        return msg.reply(self.name, payload, meta=meta)  # type: ignore[arg-type]

    async def _deliver_send(self, msg: Message) -> None:
        handler = self._handler_for(msg.channel, msg.topic)
        if handler is None:
            log.debug("%s: no handler for one-way %s/%s", self.name, msg.channel, msg.topic)
            return
        try:
            await handler(msg)
        except Exception:
            log.exception("%s: handler for %s/%s raised", self.name, msg.channel, msg.topic)
        finally:
            if msg.stream is not None and not msg.stream.done:
                msg.stream.abandon()  # the handler is done: stop the sender
