"""The message envelope that travels in ``MESSAGE`` frames.

A :class:`Message` is immutable. Its typed fields cover everything routing and
request/reply need; applications put their own keys in ``meta``. On the wire
the envelope is the frame header (a msgpack map with short keys) and the
payload is the frame payload, untouched.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

from .codec import Frame, Kind
from .errors import FrameError

if TYPE_CHECKING:
    from .stream import Stream

DEFAULT_MAX_HOPS = 16


class MsgType(enum.IntEnum):
    REQUEST = 1  # expects exactly one REPLY
    REPLY = 2  # answers the request whose id is in ``reply_to``
    SEND = 3  # fire-and-forget
    CHUNK = 4  # a piece of a streamed payload (see cellnet.transfer)
    CREDIT = 5  # flow control and acknowledgement of a streamed payload


class Status(enum.IntEnum):
    """Outcome carried by a REPLY."""

    OK = 0
    TIMEOUT = 1  # budget ran out on the way or at the handler
    UNREACHABLE = 2  # a hop had no route, or lost the next hop
    NO_HANDLER = 3  # nothing registered for channel/topic at the destination
    REMOTE_ERROR = 4  # the handler raised
    TOO_LARGE = 5  # a hop's size limit refused the message
    IN_PROGRESS = 6  # a retried reliable request is still running
    TRANSFER_FAILED = 7  # a streamed payload could not be completed


# Ids are drawn from the OS's CSPRNG in batches: one system call per 256
# ids. They stay unpredictable (a peer that saw some ids cannot guess the
# next), and a forked child drops the batch it inherited.
_ID_BATCH = 256
_ids: list[str] = []


def _draw_ids() -> None:
    raw = os.urandom(16 * _ID_BATCH).hex()
    _ids[:] = [raw[i : i + 32] for i in range(0, len(raw), 32)]


os.register_at_fork(after_in_child=_ids.clear)


def new_id() -> str:
    """A fresh, unique message id (128 random bits, hex)."""
    try:
        return _ids.pop()
    except IndexError:
        _draw_ids()
        return _ids.pop()


@dataclass(frozen=True, slots=True)
class Message:
    """One bus message.

    ``hops`` is the recorded route: every cell that handles the message
    appends its name (the sender first, the destination last).
    ``budget`` is the remaining time budget in seconds, relative, never an
    absolute wall-clock deadline, so cells with skewed clocks agree on it.
    """

    type: MsgType
    src: str
    dst: str
    channel: str = ""
    topic: str = ""
    payload: bytes | bytearray | memoryview = b""
    meta: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    reply_to: str | None = None
    status: Status = Status.OK
    budget: float | None = None
    reliable: bool = False
    hops: tuple[str, ...] = ()
    max_hops: int = DEFAULT_MAX_HOPS
    #: the payload as it arrives in chunks, for handlers registered with
    #: ``stream=True`` and replies requested with ``stream_reply=True``
    #: (``payload`` is then empty unless it came in one frame); not on the wire
    stream: Stream | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def route(self) -> tuple[str, ...]:
        """Alias of ``hops``: the cells this message passed, in order."""
        return self.hops

    def with_budget(self, budget: float) -> Message:
        return replace(self, budget=budget)

    def reply(
        self,
        src: str,
        payload: bytes | bytearray | memoryview = b"",
        *,
        status: Status = Status.OK,
        meta: Mapping[str, Any] | None = None,
    ) -> Message:
        """Build the reply to this request, addressed to its sender."""
        return Message(
            type=MsgType.REPLY,
            src=src,
            dst=self.src,
            channel=self.channel,
            topic=self.topic,
            payload=payload,
            meta=meta or {},
            reply_to=self.id,
            status=status,
            budget=self.budget,
            hops=(src,),
        )

    # -- wire form -------------------------------------------------------

    def to_frame(self) -> Frame:
        header: dict[str, Any] = {
            "t": int(self.type),
            "i": self.id,
            "s": self.src,
            "d": self.dst,
            "c": self.channel,
            "o": self.topic,
            "h": list(self.hops),
        }
        if self.meta:
            header["m"] = dict(self.meta)
        if self.reply_to is not None:
            header["r"] = self.reply_to
        if self.status is not Status.OK:
            header["x"] = int(self.status)
        if self.budget is not None:
            header["b"] = self.budget
        if self.reliable:
            header["y"] = True
        if self.max_hops != DEFAULT_MAX_HOPS:
            header["n"] = self.max_hops
        return Frame(Kind.MESSAGE, header, self.payload)

    @classmethod
    def from_frame(cls, frame: Frame, hop: str | None = None, stream: Stream | None = None) -> Message:
        """Build a message from a MESSAGE frame; a malformed header is a FrameError.

        ``hop``, if given, is appended to the recorded route (the receiving cell).
        """
        h = frame.header
        try:
            src, dst, msg_id = h["s"], h["d"], h["i"]
            channel, topic = h.get("c", ""), h.get("o", "")
            if not (type(src) is str and type(dst) is str and type(msg_id) is str
                    and type(channel) is str and type(topic) is str):
                raise TypeError("routing fields must be strings")
            hops = h.get("h", [])
            if type(hops) is not list or not all(type(x) is str for x in hops):
                raise TypeError("malformed hops")
            route = tuple(hops) if hop is None else (*hops, hop)
            meta = h.get("m")
            if meta is None:
                meta = {}
            elif type(meta) is not dict:
                raise TypeError("malformed meta")
            reply_to = h.get("r")
            if reply_to is not None and type(reply_to) is not str:
                raise TypeError("malformed reply_to")
            x = h.get("x")
            budget = h.get("b")
            payload = frame.payload
            if type(payload) is memoryview:
                # A view into a receive buffer (a zero-copy read): handlers
                # get plain bytes, as they would expect.
                payload = payload.tobytes()
            msg = cls(
                _MSG_TYPE[h["t"]],
                src,
                dst,
                channel,
                topic,
                payload,
                meta,
                msg_id,
                reply_to,
                Status.OK if x is None else Status(x),
                None if budget is None else float(budget),
                bool(h.get("y", False)),
                route,
                int(h.get("n", DEFAULT_MAX_HOPS)),
                stream,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise FrameError(f"malformed message header: {exc!r}") from None
        return msg


_MSG_TYPE: dict[Any, MsgType] = {int(t): t for t in MsgType}
