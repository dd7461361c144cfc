"""How a cell relays messages for other cells: a mixin of
:class:`cellnet.cell.Cell`, kept apart from the messaging API.

A relay reads only the routing fields of a frame (destination, hop list,
type), extends the hop list and sends the frame on; it never decodes the
payload. It remembers a relayed request only to answer it with
``UNREACHABLE`` when the next hop is lost, and keeps no state at all about
chunked transfers (see :mod:`cellnet.transfer`): it forwards each chunk as it
comes, awaiting the next hop, so a congested next hop slows the sender and
the relay's memory stays bounded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable

from .codec import Frame, Kind
from .errors import FrameError, TransportError
from .message import DEFAULT_MAX_HOPS, Message, MsgType, Status
from .routing import loop_reason

if TYPE_CHECKING:
    from .config import Timeouts
    from .introspect import Counters
    from .links import PeerLink

log = logging.getLogger("cellnet.cell")

_MSG_TYPES = frozenset(int(t) for t in MsgType)
_CHUNK = int(MsgType.CHUNK)
_CREDIT = int(MsgType.CREDIT)


@dataclass(slots=True)
class _Relayed:
    prev: str  # the peer it came from
    next: str  # the peer it went to
    expires: float
    request: Frame  # decoded into a Message only to answer it with an error



class Relay:
    """The relaying side of a cell (see the module docs)."""

    # Set by Cell.__init__.
    name: str
    timeouts: Timeouts
    counters: Counters
    _links: dict[str, PeerLink]
    _relayed: dict[str, _Relayed]

    if TYPE_CHECKING:

        def _route(self, dst: str) -> str | None: ...
        def _link_failed(self, peer: PeerLink) -> None: ...
        def _send_control(self, frame: Frame) -> None: ...
        async def _reply_error(self, request: Message, status: Status, text: str, **extra: Any) -> None: ...

    def _forward(self, came_from: PeerLink, frame: Frame) -> Awaitable[None] | None:
        """Relay a message for another cell without decoding it into a Message:
        only the routing fields are read and the hop list is extended.

        The frame is sent at once when the next hop can take it; otherwise
        this returns what the caller has to await (the next hop is
        congested, or the sender gets an error reply)."""
        h = frame.header
        dst, hops, mtype = h.get("d"), h.get("h"), h.get("t")
        if not isinstance(dst, str) or not isinstance(hops, list) or mtype not in _MSG_TYPES:
            raise FrameError(f"malformed message header from {came_from.name}")
        max_hops = h.get("n", DEFAULT_MAX_HOPS)
        reason = loop_reason(self.name, hops, max_hops if isinstance(max_hops, int) else 0)
        hop = None if reason else self._route(dst)
        if mtype == _CHUNK or mtype == _CREDIT:
            return self._forward_transfer(came_from, frame, hop, reason)
        if hop is None or (hop == came_from.name and hop != dst):
            if mtype == MsgType.REQUEST:
                why = reason or f"no route to {dst}"
                return self._reply_error(Message.from_frame(frame), Status.UNREACHABLE, why)
            log.debug("%s: dropping a message for %s: no route", self.name, dst)
            return None
        link = self._links[hop]
        size = len(frame.payload)
        if size > link.peer.max_message:
            if mtype == MsgType.REQUEST:
                return self._reply_error(
                    Message.from_frame(frame),
                    Status.TOO_LARGE,
                    f"message of {size} bytes exceeds the limit of {link.peer.max_message} at {hop}",
                    size=size,
                    limit=link.peer.max_message,
                    at=hop,
                )
            return None
        msg_id = h.get("i")
        if mtype == MsgType.REQUEST and isinstance(msg_id, str):
            budget = h.get("b")
            ttl = float(budget) if isinstance(budget, (int, float)) else self.timeouts.request
            self._relayed[msg_id] = _Relayed(came_from.name, hop, time.monotonic() + ttl, frame)
            self._expire_relayed()
        elif mtype == MsgType.REPLY:
            self._relayed.pop(h.get("r"), None)  # type: ignore[arg-type]
        hops.append(self.name)
        self.counters.relayed += 1
        if link.send_frame_nowait(frame):
            return None
        return self._send_forwarded(link, frame, msg_id if mtype == MsgType.REQUEST else None)

    async def _send_forwarded(self, link: PeerLink, frame: Frame, request_id: Any) -> None:
        """Send a relayed message, waiting for a congested next hop; a lost
        next hop answers a request with ``UNREACHABLE``."""
        try:
            await link.send_frame(frame)
        except TransportError as exc:
            if isinstance(request_id, str):
                self._relayed.pop(request_id, None)
                await self._reply_error(
                    Message.from_frame(frame), Status.UNREACHABLE, f"{self.name} lost the link to {link.name}: {exc}"
                )

    def _forward_transfer(
        self, came_from: PeerLink, frame: Frame, hop: str | None, reason: str | None
    ) -> Awaitable[None] | None:
        """Relay a piece of a chunked transfer as it comes. The relay keeps
        no transfer state; it answers the sender itself only when it cannot
        forward (no route, or a first chunk announcing a size over the next
        hop's limit)."""
        h = frame.header
        is_chunk = h["t"] == _CHUNK
        if hop is None or (hop == came_from.name and hop != h["d"]):
            if is_chunk and h.get("x") is None:
                self._transfer_error(h, Status.UNREACHABLE, reason or f"{self.name} has no route to {h['d']}")
            return None
        link = self._links[hop]
        size = h.get("z")
        if is_chunk and isinstance(size, int) and size > link.peer.max_message:
            limit = link.peer.max_message
            self._transfer_error(
                h, Status.TOO_LARGE, f"message of {size} bytes exceeds the limit of {limit} at {hop}",
                size=size, limit=limit, at=hop,
            )
            return None
        h["h"].append(self.name)
        self.counters.relayed += 1
        if link.send_frame_nowait(frame):
            return None
        return self._send_transfer_piece(link, frame, is_chunk)

    async def _send_transfer_piece(self, link: PeerLink, frame: Frame, is_chunk: bool) -> None:
        h = frame.header
        try:
            await link.send_frame(frame)
        except TransportError as exc:
            self._link_failed(link)
            if is_chunk and h.get("x") is None:
                self._transfer_error(h, Status.UNREACHABLE, f"{self.name} lost the link to {link.name}: {exc}")

    def _transfer_error(self, h: dict[str, Any], status: Status, text: str, **extra: Any) -> None:
        src, xid = h.get("s"), h.get("i")
        if not isinstance(src, str) or not isinstance(xid, str):
            return
        self._send_control(Frame(Kind.MESSAGE, {
            "t": _CREDIT, "i": xid, "s": self.name, "d": src, "h": [self.name],
            "x": int(status), "m": {"error": text, **extra},
        }))

    def _expire_relayed(self) -> None:
        if len(self._relayed) < 1024:
            return
        now = time.monotonic()
        for key in [k for k, r in self._relayed.items() if r.expires < now]:
            del self._relayed[key]
