"""Links between named cells: handshake, heartbeats and the receive loop.

A driver :class:`~cellnet.driver.Link` moves anonymous frames. A
:class:`PeerLink` is such a link after the handshake: it knows the peer's cell
name and limits, keeps the link alive with heartbeats, detects a silent peer,
and hands every message frame to its owner.

Handshake (the dialer speaks first)::

    dialer                                  listener
      HELLO   {name, version, max_message}  ->
                                            <-  WELCOME {name, version, max_message}
                                            or  REFUSE  {code, reason}   (then close)

The listener refuses a bad name, a protocol version it does not speak, or a
name that already has a live link (``name-in-use``): a live link is never
taken over.

Heartbeats: each side sends ``PING`` when it has sent nothing for
``heartbeat_interval`` seconds. Any frame received counts as a sign of life;
after ``heartbeat_timeout`` seconds of silence the link is declared broken.
Time spent waiting to forward a message to a congested next hop does not
count as silence (we are not reading then, the peer is not silent). During a
long transfer chunks are frames too, so a link busy with one stays alive; a
chunk must cross the link within ``heartbeat_timeout`` (1 MiB in 15 s is
about 70 KB/s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from .codec import Frame, Kind
from .driver import Link
from .errors import (
    CellnetError,
    FrameError,
    HandshakeError,
    LinkBroken,
    NameInUse,
    ProtocolError,
    TransportError,
)
from .message import Message
from .names import validate_name

log = logging.getLogger("cellnet.links")

PROTOCOL_VERSION = 1
_PING = Frame(Kind.PING)
_BYE = object()  # what handling a BYE frame returns: stop receiving


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the handshake told us about the peer."""

    name: str
    version: int
    max_message: int


def _hello(kind: Kind, name: str, max_message: int) -> Frame:
    return Frame(kind, {"name": name, "version": PROTOCOL_VERSION, "max": max_message})


def _peer_info(frame: Frame) -> PeerInfo:
    h = frame.header
    name = h.get("name")
    version = h.get("version")
    max_message = h.get("max")
    if not isinstance(version, int) or version != PROTOCOL_VERSION:
        raise HandshakeError(f"unsupported protocol version {version!r} (this side speaks {PROTOCOL_VERSION})")
    if not isinstance(max_message, int) or max_message < 0:
        raise HandshakeError(f"bad max_message {max_message!r} in handshake")
    try:
        validate_name(name)
    except CellnetError as exc:
        raise HandshakeError(f"peer sent an invalid cell name: {exc}") from None
    assert isinstance(name, str)
    return PeerInfo(name, version, max_message)


async def _first_frame(frames: AsyncIterator[Frame], timeout: float) -> Frame:
    try:
        return await asyncio.wait_for(anext(frames), timeout)
    except asyncio.TimeoutError:
        raise HandshakeError(f"no handshake within {timeout} s") from None
    except StopAsyncIteration:
        raise HandshakeError("link closed during the handshake") from None


async def dial_handshake(
    link: Link, name: str, max_message: int, timeout: float
) -> tuple[PeerInfo, AsyncIterator[Frame]]:
    """Run the dialer's side of the handshake; return the peer and the frame stream."""
    frames = aiter(link)
    await link.send(_hello(Kind.HELLO, name, max_message))
    frame = await _first_frame(frames, timeout)
    if frame.kind is Kind.REFUSE:
        code = frame.header.get("code")
        reason = str(frame.header.get("reason", "refused"))
        if code == "name-in-use":
            raise NameInUse(reason)
        raise HandshakeError(reason)
    if frame.kind is not Kind.WELCOME:
        raise HandshakeError(f"expected WELCOME, got {frame.kind.name}")
    return _peer_info(frame), frames


async def accept_handshake(
    link: Link,
    name: str,
    max_message: int,
    timeout: float,
    admit: Callable[[PeerInfo], None],
) -> tuple[PeerInfo, AsyncIterator[Frame]]:
    """Run the listener's side; ``admit`` raises to refuse (e.g. NameInUse)."""
    frames = aiter(link)
    frame = await _first_frame(frames, timeout)
    try:
        if frame.kind is not Kind.HELLO:
            raise HandshakeError(f"expected HELLO, got {frame.kind.name}")
        info = _peer_info(frame)
        admit(info)
    except HandshakeError as exc:
        code = "name-in-use" if isinstance(exc, NameInUse) else "refused"
        try:
            await link.send(Frame(Kind.REFUSE, {"code": code, "reason": str(exc)}))
        except CellnetError:
            pass
        raise
    await link.send(_hello(Kind.WELCOME, name, max_message))
    return info, frames


OnFrame = Callable[["PeerLink", Frame], Awaitable[None] | None]


class PeerLink:
    """A handshaken link to one named peer."""

    def __init__(
        self,
        link: Link,
        frames: AsyncIterator[Frame],
        peer: PeerInfo,
        *,
        dialed: bool,
        url: str,
        heartbeat_interval: float,
        heartbeat_timeout: float,
    ) -> None:
        self.link = link
        self.peer = peer
        self.dialed = dialed
        self.url = url
        self._frames = frames
        self._interval = heartbeat_interval
        self._timeout = heartbeat_timeout
        now = time.monotonic()
        self._last_rx = now
        self._last_tx = now
        self.sent = 0
        self.received = 0
        self.since = time.time()
        self.close_reason: str | None = None
        #: a direct link between two cells that otherwise talk through the relay
        self.direct = False
        self._forwarding = False

    @property
    def name(self) -> str:
        return self.peer.name

    async def send(self, msg: Message) -> None:
        await self.send_frame(msg.to_frame())

    async def send_frame(self, frame: Frame) -> None:
        await self.link.send(frame)
        self._last_tx = time.monotonic()
        self.sent += 1

    def send_frame_nowait(self, frame: Frame) -> bool:
        """Send at once if the link can take the frame without waiting;
        False: use :meth:`send_frame`."""
        if self.link.send_nowait(frame):
            self._last_tx = time.monotonic()
            self.sent += 1
            return True
        return False

    async def run(self, on_message: OnFrame) -> None:
        """Receive until the link ends. Returns normally when closed by us;
        raises a TransportError or ProtocolError when it broke."""
        watchdog = asyncio.get_running_loop().create_task(self._watchdog())
        try:
            if self.link.set_receiver(self._make_receiver(on_message)):
                await self._run_receiver()
            else:
                async for frame in self._frames:
                    pending = self._take(frame, on_message)
                    if pending is _BYE:
                        return
                    if pending is not None:
                        await self._wait_forwarding(pending)
            if self.close_reason is None:
                self.close_reason = "closed"
        except (TransportError, ProtocolError) as exc:
            if self.close_reason is None:
                self.close_reason = str(exc)
            raise
        finally:
            watchdog.cancel()
            await self.link.aclose()

    def _take(self, frame: Frame, on_message: OnFrame) -> Awaitable[None] | object | None:
        """Handle one frame: None when done, an awaitable to wait for
        (forwarding to a congested next hop), or ``_BYE``."""
        self._last_rx = time.monotonic()
        kind = frame.kind
        if kind is Kind.MESSAGE:
            self.received += 1
            return on_message(self, frame)
        if kind is Kind.PING or kind is Kind.PONG:
            return None
        if kind is Kind.BYE:
            self.close_reason = "peer said goodbye"
            return _BYE
        raise FrameError(f"unexpected {kind.name} frame after the handshake")

    async def _wait_forwarding(self, pending: Awaitable[None]) -> None:
        # Forwarding waits for the next hop; while it does we do not read,
        # so the peer's silence is ours.
        self._forwarding = True
        try:
            await pending
        finally:
            self._forwarding = False
            self._last_rx = time.monotonic()

    def _make_receiver(self, on_message: OnFrame) -> Callable[[Frame], bool]:
        """The callback a driver calls with each frame (Link.set_receiver).
        Anything but "done" holds delivery and wakes :meth:`_run_receiver`."""
        self._held: Awaitable[None] | object | None = None
        self._stop: Exception | None = None
        self._receiving = True
        self._wakeup = asyncio.Event()

        def receive(frame: Frame) -> bool:
            if not self._receiving:
                return False  # run() ended: frames are left to the closing link
            try:
                pending = self._take(frame, on_message)
            except Exception as exc:  # raised from run(), as when iterating
                pending = _BYE
                self._stop = exc
            if pending is None:
                return True
            self._held = pending
            self._wakeup.set()
            return False

        return receive

    async def _run_receiver(self) -> None:
        """Run while the driver delivers frames by callback: wait for what
        the callback held (a congested forward, the peer's goodbye, an
        error), and for the end of the link, which iteration reports."""
        loop = asyncio.get_running_loop()
        ended = loop.create_task(self._until_end())
        ended.add_done_callback(lambda _: self._wakeup.set())
        try:
            while True:
                held, self._held = self._held, None
                if held is _BYE:
                    if self._stop is not None:
                        raise self._stop
                    return
                if held is not None:
                    await self._wait_forwarding(held)  # type: ignore[arg-type]
                    self.link.resume_receiving()  # delivers the queued frames; may hold again
                    continue
                if ended.done():
                    ended.result()  # the link's error, if it broke
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            self._receiving = False
            if not ended.done():
                ended.cancel()
            elif not ended.cancelled():
                ended.exception()  # retrieved: the link is gone either way

    async def _until_end(self) -> None:
        async for frame in self._frames:  # yields no frames while a receiver is set
            raise AssertionError(f"{frame.kind.name} frame iterated while a receiver is set")

    async def _watchdog(self) -> None:
        step = min(self._interval, self._timeout / 3)
        while True:
            await asyncio.sleep(step)
            now = time.monotonic()
            if now - self._last_rx > self._timeout and not self._forwarding:
                self.close_reason = f"heartbeat timeout: nothing heard for {self._timeout:g} s"
                log.warning("link to %s: %s", self.peer.name, self.close_reason)
                await self.link.aclose()
                return
            if now - self._last_tx >= self._interval:
                try:
                    await self.link.send(_PING)
                    self._last_tx = time.monotonic()
                except CellnetError:
                    return

    async def aclose(self, reason: str = "closed by this cell") -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if not self.link.closed:
            try:
                # Not wait_for: on 3.11 it can leave the send's error unretrieved.
                async with asyncio.timeout(1.0):
                    await self.link.send(Frame(Kind.BYE))
            except (CellnetError, TimeoutError):
                pass
        await self.link.aclose()


__all__ = [
    "PROTOCOL_VERSION",
    "PeerInfo",
    "PeerLink",
    "accept_handshake",
    "dial_handshake",
    "LinkBroken",
]
