"""The driver interface: how frames move between two processes.

A driver knows one family of URL schemes (``tcp://``, ``grpc://``, ...). It
offers two operations:

``await driver.dial(url, options) -> Link``
    Connect to a listener. Raises :class:`~cellnet.errors.ConnectError` when
    the peer cannot be reached.

``await driver.listen(url, on_link, options) -> Listener``
    Start accepting links. Returns once the listener is ready; its ``url``
    is the bound address (so ``tcp://127.0.0.1:0`` reports the real port).
    ``on_link(link)`` is called in a new task for every accepted link and
    owns it until it returns.

A :class:`Link` is an ordered, reliable, bidirectional stream of frames:

``await link.send(frame)``
    Queue one frame. Waits while the transport is congested (back-pressure:
    memory stays bounded). Raises :class:`~cellnet.errors.LinkClosed` after
    :meth:`Link.aclose`, :class:`~cellnet.errors.LinkBroken` when the peer
    or network broke the link.

``async for frame in link``
    Receive frames in order. Ends quietly when the link is closed by us;
    raises :class:`~cellnet.errors.LinkBroken` when the peer vanishes and
    :class:`~cellnet.errors.ProtocolError` when it sends bad bytes.

``await link.aclose()``
    Release everything; idempotent; never raises.

Optional fast paths (a driver may implement them; the defaults say "not
supported" and the caller falls back to ``send`` and iteration):

``link.send_nowait(frame) -> bool``
    Send at once, without waiting, if the link can take the frame now (not
    congested, not broken); False means "use ``send``", which then waits or
    raises as usual.

``link.set_receiver(receiver) -> bool``
    Deliver frames by calling ``receiver(frame)`` from the transport's own
    receive callback instead of through iteration, which saves an event-loop
    wake-up per frame. The receiver returns False to hold delivery: the
    following frames are queued (bounded, with the driver's usual
    back-pressure) until :meth:`Link.resume_receiving`, which delivers them
    in order. While a receiver is set, iteration yields no frames: it only
    ends, or raises, when the link does.

Drivers translate their library's exceptions into the cellnet error tree at
this edge. Handshakes, heartbeats and routing live above, in
:mod:`cellnet.links` and :mod:`cellnet.cell`; drivers only move frames.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, ClassVar

from .codec import Frame, FrameLimits
from .tls import TlsSettings


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a driver can do, as data the layers above consult."""

    #: the listener needs an open port on the server's host
    needs_listen_port: bool = True
    #: TLS is supported
    tls: bool = False
    #: frames arrive as whole messages (no stream framing needed)
    message_oriented: bool = False
    #: links can join two operating-system processes (False for in-memory
    #: drivers whose links live inside one event loop)
    cross_process: bool = True


@dataclass(frozen=True, slots=True)
class LinkOptions:
    """Settings a driver needs for one link or listener."""

    limits: FrameLimits = FrameLimits()
    connect_timeout: float = 5.0
    #: bytes buffered in the transport before ``send`` waits
    write_buffer: int = 1024 * 1024
    #: certificates for secure schemes (``tls://``, ``grpcs://``, ...); see
    #: :mod:`cellnet.tls`. ``None``: a dialer trusts the system's CAs and a
    #: listener on a secure scheme fails with a ConfigError.
    tls: TlsSettings | None = None


class Link(abc.ABC):
    """One connection between two processes, carrying frames."""

    #: a human-readable description of the remote end (for logs)
    remote: str = "?"

    @abc.abstractmethod
    async def send(self, frame: Frame) -> None: ...

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[Frame]: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...

    def send_nowait(self, frame: Frame) -> bool:
        """Send ``frame`` at once if the link can take it without waiting."""
        return False

    def set_receiver(self, receiver: Receiver) -> bool:
        """Deliver frames by calling ``receiver`` (see the module docs);
        False if this link does not support it."""
        return False

    def resume_receiving(self) -> None:
        """Deliver the frames queued since the receiver held delivery."""


class Listener(abc.ABC):
    """A bound listener; ``url`` is the address peers should dial."""

    url: str

    @abc.abstractmethod
    async def aclose(self) -> None: ...


OnLink = Callable[[Link], Awaitable[None]]
#: called with each frame; returns False to hold delivery (see the module docs)
Receiver = Callable[[Frame], bool]


class Driver(abc.ABC):
    """A transport, selected by URL scheme."""

    #: the URL schemes this driver serves
    schemes: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[Capabilities] = Capabilities()

    @abc.abstractmethod
    async def dial(self, url: str, options: LinkOptions) -> Link: ...

    @abc.abstractmethod
    async def listen(self, url: str, on_link: OnLink, options: LinkOptions) -> Listener: ...

    def check_url(self, url: str) -> None:
        """Raise :class:`~cellnet.errors.ConfigError` if ``url`` is not a
        valid URL for this driver (called when a config or a cell is made,
        so a bad URL is an error at once, not a failing dial later)."""
