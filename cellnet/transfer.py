"""Chunked transfers: payloads of any size, with credit-based flow control
and resume.

A payload larger than one chunk (``limits.chunk``) does not travel as one
frame. The sender cuts it into ``CHUNK`` messages; the receiver grants
credit with ``CREDIT`` messages. Both are ordinary bus messages, routed by
destination name, so a relay forwards each chunk as it comes, holds none of
them beyond its link buffers, and keeps no state about the transfer.

The conversation for transfer ``i`` (the message id)::

    sender                                              receiver
      CHUNK  q=1 env={type, channel, ...} z=size   ->   open (or find) the transfer
                                                   <-   CREDIT q=1 a=received w=limit
      CHUNK  k=offset e=epoch  payload             ->   (in order; as far as the credit)
                                                   <-   CREDIT a=received w=limit
      ...                                               (credit grows as the reader reads)
      CHUNK  k=size f=1 sha=hash                   ->   complete
                                                   <-   CREDIT f=1

``a`` is the number of bytes the receiver holds, in order; ``w`` the offset
the sender may send up to. The receiver grants credit as its reader
consumes, one window (``limits.window``) ahead, so its memory holds at most
one window; the sender keeps only what was not acknowledged.

**Resume.** The first ``CHUNK`` (``q=1``) is also the question "where are
you?". The sender asks it again whenever the path broke (a failed send, a
lost link, an ``UNREACHABLE`` from a relay) or the receiver fell silent. The
answer's ``a`` is where the sender continues: bytes are sent again from
there and the receiver, which accepts only the next offset it expects, gets
each byte exactly once. A receiver that notices a gap (``k`` past what it
expects: chunks were lost on a broken path) answers ``g=epoch`` and the
sender goes back; the epoch counter keeps stale gap reports from sending it
back twice. A side that hears nothing from the other for
``timeouts.transfer_resume`` seconds (or whose time budget runs out) gives
up with :class:`~cellnet.errors.TransferFailed` and tells the other side.

Errors travel in ``x`` (a :class:`~cellnet.message.Status`) with the text
in ``m``: a receiver or a relay refusing the size (``TOO_LARGE``), no
handler, a reader that stopped (``stop=1``, not an error: the sender just
stops), or a failed transfer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .codec import Frame, Kind
from .errors import (
    CellnetError,
    FrameError,
    MessageTooLarge,
    NoHandler,
    RequestError,
    RequestTimeout,
    TransferFailed,
    TransportError,
    Unreachable,
)
from .message import Message, MsgType, Status
from .payload import Source
from .stream import Progress, Stream

if TYPE_CHECKING:
    from .cell import Cell
    from .links import PeerLink

log = logging.getLogger("cellnet.transfer")

#: how long a sender waits for an answer to "where are you?" before asking again
_QUERY_FIRST = 0.2
_QUERY_MAX = 2.0
#: finished transfers remembered, to answer late questions about them
_FINISHED_MAX = 4096


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FrameError(f"transfer frame: bad {what} {value!r}")
    return value


@dataclass(eq=False)
class _Outbound:
    xid: str
    dst: str
    env: dict[str, Any]
    source: Source
    size: int | None
    deadline: float | None
    progress: Progress | None
    hasher: Any = None
    hashed: int = 0
    sent: int = 0
    acked: int = 0
    limit: int = 0
    epoch: int = 0
    end_sent: bool = False
    complete: bool = False
    stopped: bool = False
    synced: bool = False
    opened: bool = False  # the receiver answered at least once
    resync: bool = False
    rewind_to: int | None = None
    error: BaseException | None = None
    link: PeerLink | None = None  # the first hop, pinned between re-syncs
    last_contact: float = field(default_factory=time.monotonic)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Inbound:
    xid: str
    src: str
    stream: Stream
    size: int | None
    window: int
    deadline: float | None
    received: int = 0
    consumed: int = 0
    limit: int = 0
    credited_at: int = 0
    gap_epoch: int = -1
    last_rx: float = field(default_factory=time.monotonic)


class Transfers:
    """The transfers of one cell, both directions (see the module docs)."""

    def __init__(self, cell: Cell) -> None:
        self._cell = cell
        self._out: dict[str, _Outbound] = {}
        self._in: dict[str, _Inbound] = {}
        # xid -> (size, error status or None), for late questions
        self._finished: OrderedDict[str, tuple[int, Status | None, str]] = OrderedDict()
        self._reaper: asyncio.Task[None] | None = None

    @property
    def active(self) -> tuple[int, int]:
        """(outgoing, incoming) transfers in progress."""
        return len(self._out), len(self._in)

    def info(self) -> list[dict[str, Any]]:
        """The transfers in progress, for status reports: id, direction,
        the other cell, bytes acknowledged (out) or received (in), size."""
        rows = [
            {"id": o.xid, "direction": "out", "peer": o.dst, "done": o.acked, "size": o.size}
            for o in self._out.values()
        ]
        rows += [
            {"id": i.xid, "direction": "in", "peer": i.src, "done": i.received, "size": i.size}
            for i in self._in.values()
        ]
        return rows

    # -- sending -------------------------------------------------------------

    async def send(
        self,
        msg: Message,
        source: Source,
        *,
        deadline: float | None,
        progress: Progress | None = None,
        checksum: bool = False,
    ) -> None:
        """Stream ``source`` as the payload of ``msg`` (whose own payload is
        ignored) to ``msg.dst``. Returns once the receiver holds every byte
        (or its reader stopped early); raises
        :class:`~cellnet.errors.TransferFailed`,
        :class:`~cellnet.errors.MessageTooLarge`, :class:`~cellnet.errors.NoHandler`
        or :class:`~cellnet.errors.RequestTimeout`."""
        cell = self._cell
        if source.size is not None and source.size > cell.limits.max_message:
            raise MessageTooLarge(source.size, cell.limits.max_message)
        env: dict[str, Any] = {"t": int(msg.type), "c": msg.channel, "o": msg.topic}
        if msg.meta:
            env["m"] = dict(msg.meta)
        if msg.reply_to is not None:
            env["r"] = msg.reply_to
        if msg.status is not Status.OK:
            env["x"] = int(msg.status)
        if msg.budget is not None:
            env["b"] = msg.budget
        if checksum:
            env["cs"] = True
        out = _Outbound(
            msg.id, msg.dst, env, source, source.size, deadline, progress,
            hasher=hashlib.sha256() if checksum else None,
        )
        if msg.id in self._out:
            raise ValueError(f"transfer {msg.id} is already running")
        self._out[msg.id] = out
        try:
            await self._run(out)
        except asyncio.CancelledError:
            await self._abort(out, "the sender cancelled the transfer")
            raise
        except Exception as exc:  # also a source that fails (an unreadable file)
            if out.error is None:  # not the receiver's own verdict: tell it
                await self._abort(out, str(exc) or type(exc).__name__)
            raise
        finally:
            del self._out[msg.id]
            await source.aclose()

    async def _run(self, out: _Outbound) -> None:
        cell = self._cell
        chunk = cell.limits.chunk
        stall = cell.timeouts.heartbeat_interval
        need_sync = True
        while True:
            if out.error is not None:
                raise out.error
            if out.complete or out.stopped:
                return
            if out.rewind_to is not None:
                out.sent, out.rewind_to = out.rewind_to, None
                out.end_sent = False
                out.epoch += 1
            if out.resync:
                out.resync = False
                need_sync = True
            if need_sync:
                await self._sync(out)
                need_sync = False
                continue
            if out.sent < out.limit and not out.end_sent:
                data = await out.source.read(out.sent, min(chunk, out.limit - out.sent))
                n = len(data)
                if n == 0:
                    if out.size is None:
                        out.size = out.sent
                    elif out.sent != out.size:
                        raise TransferFailed(
                            f"the payload ended after {out.sent} of the {out.size} bytes announced"
                        )
                    end: dict[str, Any] = {"k": out.sent, "f": 1, "e": out.epoch}
                    if out.hasher is not None:
                        end["sha"] = out.hasher.hexdigest()
                    if await self._emit(out, self._chunk_frame(out, end)):
                        out.end_sent = True
                    else:
                        need_sync = True
                    continue
                stop = out.sent + n
                if out.size is not None and stop > out.size:
                    raise TransferFailed(f"the payload is longer than the {out.size} bytes announced")
                if stop > cell.limits.max_message:
                    raise MessageTooLarge(stop, cell.limits.max_message)
                if out.hasher is not None and stop > out.hashed:
                    out.hasher.update(data[out.hashed - out.sent :] if out.hashed > out.sent else data)
                    out.hashed = stop
                frame = self._chunk_frame(out, {"k": out.sent, "e": out.epoch}, data)
                if not await self._emit(out, frame):
                    need_sync = True
                    continue
                if out.rewind_to is None:
                    out.sent = stop
                continue
            # Out of credit, or everything sent: wait for the receiver.
            out.wake.clear()
            wait = stall if out.deadline is None else min(stall, out.deadline - time.monotonic())
            if wait <= 0:
                raise RequestTimeout(f"transfer to {out.dst} not completed within its time budget")
            try:
                async with asyncio.timeout(wait):
                    await out.wake.wait()
            except TimeoutError:
                need_sync = True  # silence: ask where the receiver is

    async def _sync(self, out: _Outbound) -> None:
        """Ask the receiver where it is until it answers; continue from there."""
        cell = self._cell
        resume = cell.timeouts.transfer_resume
        delay = _QUERY_FIRST
        while True:
            now = time.monotonic()
            if out.error is not None:
                raise out.error
            if out.deadline is not None and now >= out.deadline:
                raise RequestTimeout(f"transfer to {out.dst} not completed within its time budget")
            if now - out.last_contact > resume:
                raise TransferFailed(
                    f"no answer from {out.dst} for {resume:g} s; the transfer could not resume "
                    f"({out.acked} of {out.size if out.size is not None else '?'} bytes delivered)"
                )
            out.synced = False
            query = {"q": 1, "env": out.env, "k": out.sent, "e": out.epoch}
            if out.size is not None:
                query["z"] = out.size
            # Never wait past the moment this side gives up.
            left = resume - (now - out.last_contact)
            if out.deadline is not None:
                left = min(left, out.deadline - now)
            if not await self._emit(out, self._chunk_frame(out, query), first=True):
                if not out.opened and cell._route(out.dst) is None:
                    raise Unreachable(f"no route from {cell.name} to {out.dst}")
                await cell._wait_route_change(min(1.0, left))
                continue
            out.wake.clear()
            if not out.synced and out.error is None:
                try:
                    async with asyncio.timeout(min(delay, max(left, 0.0))):
                        while not out.synced and out.error is None:
                            out.wake.clear()
                            await out.wake.wait()
                except TimeoutError:
                    delay = min(delay * 2, _QUERY_MAX)
                    continue
            if out.error is not None:
                raise out.error
            out.sent = out.acked
            out.rewind_to = None
            out.end_sent = False
            out.epoch += 1
            return

    def _chunk_frame(self, out: _Outbound, fields: dict[str, Any], payload: Any = b"") -> Frame:
        name = self._cell.name
        header = {"t": int(MsgType.CHUNK), "i": out.xid, "s": name, "d": out.dst, "h": [name]}
        header.update(fields)
        return Frame(Kind.MESSAGE, header, payload)

    async def _emit(self, out: _Outbound, frame: Frame, *, first: bool = False) -> bool:
        """Send one frame towards the receiver; False when the path is broken.

        The path is chosen when the sender (re-)synchronises (``first``) and
        kept until the next one: chunks on one path arrive in order, while
        switching paths mid-window (say, to a direct link that just came up)
        would make the receiver see gaps and ask for re-sends.
        """
        cell = self._cell
        if first or out.link is None:
            hop = cell._route(out.dst)
            if hop is None:
                return False
            link = cell._links[hop]
            out.link = link
        else:
            link = out.link
            hop = link.name
            if cell._links.get(hop) is not link:
                return False  # the pinned link is gone: re-synchronise
        if first and out.size is not None and out.size > link.peer.max_message:
            out.error = MessageTooLarge(out.size, link.peer.max_message, where=hop)
            raise out.error
        if cell._wants_direct and hop != out.dst:
            cell._direct.want(out.dst)
        try:
            await link.send_frame(frame)
        except TransportError:
            cell._link_failed(link)
            return False
        return True

    async def _abort(self, out: _Outbound, reason: str) -> None:
        """Tell the receiver the transfer is over (best effort)."""
        if out.complete:
            return
        frame = self._chunk_frame(
            out, {"k": out.sent, "x": int(Status.TRANSFER_FAILED), "m": {"error": reason}}
        )
        out.link = None  # any path will do
        try:
            await asyncio.wait_for(self._emit(out, frame), 1.0)
        except (asyncio.TimeoutError, CellnetError):
            pass

    def on_credit(self, frame: Frame) -> None:
        """A CREDIT for one of our outgoing transfers."""
        h = frame.header
        out = self._out.get(h.get("i"))  # type: ignore[arg-type]
        if out is None:
            return  # a late answer about a finished transfer
        if h.get("s") == out.dst:  # not a relay speaking for it
            out.last_contact = time.monotonic()
        status = h.get("x")
        if status is not None:
            self._credit_error(out, h, status)
            out.wake.set()
            return
        a = _int(h.get("a", 0), "offset")
        w = _int(h.get("w", 0), "credit")
        if h.get("q"):
            if a < out.acked:
                out.error = TransferFailed(
                    f"{out.dst} lost the transfer (it holds {a} bytes, had acknowledged "
                    f"{out.acked}); was it restarted?"
                )
            out.synced = True
            out.opened = True
        if a > out.acked:
            out.acked = a
            out.source.release(a)
            if out.progress is not None:
                out.progress(a, out.size)
        if w > out.limit:
            out.limit = w
        gap = h.get("g")
        if gap is not None and gap == out.epoch and out.sent > a:
            out.rewind_to = a
        if h.get("f"):
            out.complete = True
        if h.get("stop"):
            out.stopped = True
        out.wake.set()

    def _credit_error(self, out: _Outbound, h: dict[str, Any], status: Any) -> None:
        meta = h.get("m") if isinstance(h.get("m"), dict) else {}
        text = str(meta.get("error", "transfer refused"))
        try:
            code = Status(status)
        except ValueError:
            code = Status.TRANSFER_FAILED
        if code is Status.UNREACHABLE and not out.opened:
            # Never reached it: the name is unknown or the cell is not there
            # (as for a plain request, no waiting).
            out.error = Unreachable(f"{h.get('s')}: {text}")
        elif code is Status.UNREACHABLE:
            out.resync = True  # a relay lost the next hop mid-transfer: ask again
        elif code is Status.TOO_LARGE:
            out.error = MessageTooLarge(
                int(meta.get("size", out.size or 0)), int(meta.get("limit", 0)),
                where=str(meta.get("at", h.get("s"))),
            )
        elif code is Status.NO_HANDLER:
            out.error = NoHandler(f"{h.get('s')}: {text}")
        elif code is Status.TRANSFER_FAILED:
            out.error = TransferFailed(f"{h.get('s')}: {text}")
        else:
            out.error = RequestError(f"{h.get('s')}: {text}")

    def poke(self, xid: str) -> None:
        """The path of outgoing transfer ``xid`` may have broken: re-sync."""
        out = self._out.get(xid)
        if out is not None:
            out.resync = True
            out.wake.set()

    def ask_reply(self, dst: str, xid: str) -> None:
        """Ask ``dst`` about our finished transfer ``xid``: it answers and
        sends its reply again if the first one was lost with a link."""
        name = self._cell.name
        self._cell._send_control(Frame(Kind.MESSAGE, {
            "t": int(MsgType.CHUNK), "i": xid, "s": name, "d": dst, "h": [name],
            "q": 1, "k": 1, "env": {},
        }))

    def link_lost(self, peer: PeerLink) -> None:
        """A link ended: every outgoing transfer asks where its receiver is."""
        for out in self._out.values():
            out.resync = True
            out.wake.set()

    # -- receiving -------------------------------------------------------------

    def on_chunk(self, frame: Frame) -> None:
        """A CHUNK addressed to this cell. Never blocks: credit bounds what
        a well-behaved sender sends, and a sender past its credit is cut off."""
        h = frame.header
        xid, src = h.get("i"), h.get("s")
        if not isinstance(xid, str) or not isinstance(src, str):
            raise FrameError("transfer frame without an id or a source")
        if h.get("x") is not None:
            self._on_abort(xid, h)
            return
        if h.get("q"):
            self._on_query(xid, src, frame)
            return
        inb = self._in.get(xid)
        if inb is None or inb.src != src:
            return  # data of a finished or unknown transfer: the sender will ask
        k = _int(h.get("k"), "offset")
        inb.last_rx = time.monotonic()
        if h.get("f"):
            if k == inb.received:
                self._complete(inb, h.get("sha"))
            elif k > inb.received:
                self._gap(inb, h.get("e"))
            return
        data = frame.payload
        n = len(data)
        if k > inb.received:
            self._gap(inb, h.get("e"))
            return
        if k < inb.received:
            if k + n <= inb.received:
                return  # already have it (a re-send after a resume)
            data = memoryview(data)[inb.received - k :]
            n = len(data)
        stop = inb.received + n
        if stop > inb.limit:
            self._fail_inbound(inb, f"{src} sent past its credit ({stop} > {inb.limit} bytes)")
            return
        limit = self._cell.limits.max_message
        if (inb.size is not None and stop > inb.size) or stop > limit:
            self._fail_inbound(
                inb, f"the payload grew past {inb.size if inb.size is not None else limit} bytes",
                Status.TOO_LARGE,
            )
            return
        inb.received = stop
        inb.stream._push(data)

    def _on_query(self, xid: str, src: str, frame: Frame) -> None:
        h = frame.header
        inb = self._in.get(xid)
        if inb is not None and inb.src == src:
            inb.last_rx = time.monotonic()
            self._credit(inb, q=1)
            return
        finished = self._finished.get(xid)
        if finished is not None:
            size, status, text = finished
            if status is None:
                self._reply_credit(src, xid, {"q": 1, "a": size, "w": size, "f": 1})
                self._cell._resend_reply(src, xid)
            else:
                self._reply_credit(src, xid, {"x": int(status), "m": {"error": text}})
            return
        env = h.get("env")
        if not isinstance(env, dict):
            raise FrameError(f"transfer {xid} from {src}: first frame without an envelope")
        size = h.get("z")
        if size is not None:
            size = _int(size, "size")
        cell = self._cell
        limit = cell.limits.max_message
        if size is not None and size > limit:
            self._reply_credit(
                src, xid,
                {"x": int(Status.TOO_LARGE), "m": {
                    "error": f"message of {size} bytes exceeds the limit of {limit} at {cell.name}",
                    "size": size, "limit": limit, "at": cell.name}},
            )
            return
        if _int(h.get("k", 0), "offset") > 0:
            # A question about a transfer we never saw (or forgot): it cannot continue.
            self._reply_credit(
                src, xid, {"x": int(Status.TRANSFER_FAILED),
                           "m": {"error": f"{cell.name} does not know transfer {xid} (was it restarted?);"
                                             " the payload has to be sent again"}},
            )
            return
        if len(self._in) >= cell.limits.max_transfers:
            # Each holds up to a window: the cap bounds what all of them buffer.
            self._reply_credit(
                src, xid, {"x": int(Status.TRANSFER_FAILED),
                           "m": {"error": f"{cell.name} is receiving {len(self._in)} transfers, its limit"
                                             " (limits.max_transfers); try again later"}},
            )
            return
        budget = env.get("b")
        if budget is not None and not isinstance(budget, (int, float)):
            raise FrameError(f"transfer {xid} from {src}: bad budget {budget!r}")
        window = cell.limits.window
        inb = _Inbound(
            xid, src, None, size, window,  # type: ignore[arg-type]
            None if budget is None else time.monotonic() + float(budget),
            limit=window,
        )
        inb.stream = Stream(
            size,
            on_consumed=lambda n: self._consumed(inb, n),
            on_abandon=lambda: self._abandoned(inb),
            checksum=bool(env.get("cs")),
        )
        try:
            msg = self._envelope(xid, src, frame, env, inb.stream)
        except (KeyError, ValueError, TypeError) as exc:
            raise FrameError(f"transfer {xid} from {src}: malformed envelope: {exc!r}") from None
        refusal = cell._stream_arrived(msg)
        if refusal is not None:
            status, text = refusal
            self._reply_credit(src, xid, {"x": int(status), "m": {"error": text}})
            return
        self._in[xid] = inb
        self._credit(inb, q=1)
        self._start_reaper()

    def _envelope(self, xid: str, src: str, frame: Frame, env: dict[str, Any], stream: Stream) -> Message:
        cell = self._cell
        hops = frame.header.get("h", [])
        if not isinstance(hops, list):
            raise TypeError("hops")
        meta = env.get("m", {})
        if not isinstance(meta, dict):
            raise TypeError("meta")
        reply_to = env.get("r")
        budget = env.get("b")
        msg = Message(
            type=MsgType(env["t"]),
            src=src,
            dst=cell.name,
            channel=str(env.get("c", "")),
            topic=str(env.get("o", "")),
            meta=meta,
            id=xid,
            reply_to=None if reply_to is None else str(reply_to),
            status=Status(env.get("x", 0)),
            budget=None if budget is None else float(budget),
            hops=tuple(str(x) for x in hops) + (cell.name,),
            stream=stream,
        )
        if msg.type not in (MsgType.REQUEST, MsgType.SEND, MsgType.REPLY):
            raise ValueError(f"a {msg.type.name} cannot be streamed")
        return msg

    def _consumed(self, inb: _Inbound, n: int) -> None:
        inb.consumed += n
        if inb.consumed - inb.credited_at >= inb.window // 4 and self._in.get(inb.xid) is inb:
            self._credit(inb)

    def _abandoned(self, inb: _Inbound) -> None:
        if self._in.get(inb.xid) is inb:
            del self._in[inb.xid]
            self._remember(inb.xid, inb.received, None, "")
            self._reply_credit(inb.src, inb.xid, {"stop": 1, "a": inb.received, "w": inb.limit})

    def _credit(self, inb: _Inbound, **extra: Any) -> None:
        inb.limit = max(inb.limit, inb.consumed + inb.window)
        inb.credited_at = inb.consumed
        self._reply_credit(inb.src, inb.xid, {"a": inb.received, "w": inb.limit, **extra})

    def _gap(self, inb: _Inbound, epoch: Any) -> None:
        if epoch != inb.gap_epoch:
            inb.gap_epoch = epoch if isinstance(epoch, int) else -1
            self._reply_credit(inb.src, inb.xid, {"a": inb.received, "w": inb.limit, "g": epoch})

    def _complete(self, inb: _Inbound, sha: Any) -> None:
        if inb.size is not None and inb.received != inb.size:
            self._fail_inbound(inb, f"the payload ended after {inb.received} of {inb.size} bytes")
            return
        del self._in[inb.xid]
        self._remember(inb.xid, inb.received, None, "")
        inb.stream._finish(sha if isinstance(sha, str) else None)
        self._reply_credit(inb.src, inb.xid, {"a": inb.received, "w": inb.limit, "f": 1})

    def _fail_inbound(self, inb: _Inbound, reason: str, status: Status = Status.TRANSFER_FAILED) -> None:
        log.warning("%s: transfer %s from %s failed: %s", self._cell.name, inb.xid, inb.src, reason)
        self._in.pop(inb.xid, None)
        self._remember(inb.xid, inb.received, Status.TRANSFER_FAILED, reason)
        inb.stream._fail(TransferFailed(f"transfer from {inb.src} failed: {reason}"))
        self._reply_credit(inb.src, inb.xid, {"x": int(status), "m": {"error": reason}})

    def _on_abort(self, xid: str, h: dict[str, Any]) -> None:
        inb = self._in.pop(xid, None)
        meta = h.get("m") if isinstance(h.get("m"), dict) else {}
        reason = str(meta.get("error", "aborted"))
        if inb is not None:
            self._remember(xid, inb.received, Status.TRANSFER_FAILED, reason)
            inb.stream._fail(TransferFailed(f"{inb.src} gave up the transfer: {reason}"))
            return
        out = self._out.get(xid)
        if out is not None:  # the receiver gave up on our transfer
            out.error = TransferFailed(f"{out.dst}: {reason}")
            out.wake.set()

    def _remember(self, xid: str, size: int, status: Status | None, text: str) -> None:
        self._finished[xid] = (size, status, text)
        while len(self._finished) > _FINISHED_MAX:
            self._finished.popitem(last=False)

    def _reply_credit(self, dst: str, xid: str, fields: dict[str, Any]) -> None:
        name = self._cell.name
        header = {"t": int(MsgType.CREDIT), "i": xid, "s": name, "d": dst, "h": [name]}
        header.update(fields)
        self._cell._send_control(Frame(Kind.MESSAGE, header))

    # -- receive-side time limits ------------------------------------------------

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Fail incoming transfers whose sender fell silent or whose budget ran out."""
        resume = self._cell.timeouts.transfer_resume
        while self._in:
            await asyncio.sleep(min(1.0, resume / 4))
            now = time.monotonic()
            for inb in list(self._in.values()):
                waiting = inb.limit > inb.received
                if inb.deadline is not None and now > inb.deadline:
                    self._fail_inbound(inb, "its time budget ran out")
                elif waiting and now - inb.last_rx > resume:
                    self._fail_inbound(inb, f"{inb.src} sent nothing for {resume:g} s")

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for inb in list(self._in.values()):
            inb.stream._fail(TransferFailed(f"cell {self._cell.name} closed"))
        self._in.clear()
        outs = [out for out in self._out.values() if not out.complete]
        for out in outs:
            out.error = TransferFailed(f"cell {self._cell.name} closed")
            out.wake.set()
        # Tell the receivers now (the links close next), rather than leave
        # them waiting timeouts.transfer_resume for a sender that is gone.
        await asyncio.gather(*(self._abort(out, f"the sending cell {self._cell.name} closed") for out in outs))

