"""How a cell keeps its links: accepting and admitting peers, dialing its
parent (URLs in order, with backoff), running each link, and cleaning up
what depended on a link that ended.

A mixin of :class:`cellnet.cell.Cell`, kept apart so that the cell module
holds the messaging API (requests, replies, relaying) and this one the
link lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from .driver import Link, LinkOptions
from .errors import (
    CellnetError,
    HandshakeError,
    LinkLost,
    NameInUse,
    ProtocolError,
    TransportError,
)
from .links import PeerInfo, PeerLink, accept_handshake, dial_handshake
from .message import Message, Status
from .names import is_ancestor

if TYPE_CHECKING:
    from .cell import _Pending
    from .relay import _Relayed
    from .config import Limits, Timeouts
    from .direct import DirectLinks
    from .transfer import Transfers
    from .registry import DriverRegistry

log = logging.getLogger("cellnet.cell")


class LinkLifecycle:
    """The link side of a cell (see the module docs)."""

    # Set by Cell.__init__.
    name: str
    parent_urls: tuple[str, ...]
    parent_url: str | None
    limits: Limits
    timeouts: Timeouts
    _links: dict[str, PeerLink]
    _parent: str | None
    _pending: dict[str, _Pending]
    _relayed: dict[str, _Relayed]
    _direct: DirectLinks
    _transfers: Transfers
    _registry: DriverRegistry
    _options: LinkOptions
    _closed: bool
    #: why the last dial of a parent URL failed (for wait_parent's error)
    _last_dial_error: str | None = None
    #: the parent refused our name (wait_parent raises it)
    _refused: NameInUse | None = None

    if TYPE_CHECKING:

        def _on_frame(self, link: PeerLink, frame: Any) -> Any: ...
        def _notify_route_change(self) -> None: ...
        def _spawn(self, coro: Any) -> None: ...
        async def _reply_error(self, request: Message, status: Status, text: str, **extra: Any) -> None: ...

    def is_direct(self, peer: PeerLink) -> bool:
        """Whether ``peer`` is a direct link: neither our parent nor a cell
        that reached us as its parent or ancestor."""
        if peer.direct:
            return True
        return bool(self.parent_urls) and not peer.dialed and not is_ancestor(self.name, peer.name)

    # -- links ---------------------------------------------------------------

    def _admit(self, info: PeerInfo) -> None:
        if info.name == self.name:
            raise HandshakeError(f"peer claims this cell's own name {info.name!r}")
        if info.name in self._links:
            raise NameInUse(f"cell name {info.name!r} is already linked to {self.name}")
        if not self._direct.admits(info.name):
            raise HandshakeError(f"{self.name}'s policy does not allow a link from {info.name!r}")

    async def _accept(self, link: Link) -> None:
        if self._closed:
            await link.aclose()
            return
        try:
            info, frames = await accept_handshake(
                link, self.name, self.limits.max_message, self.timeouts.handshake, self._admit
            )
        except NameInUse as exc:
            # Usually a tool joining beside a live cell of that name (it then
            # joins under a name of its own); the claimant logs a warning.
            log.info("%s: refused a link from %s: %s", self.name, link.remote, exc)
            await link.aclose()
            return
        except (ProtocolError, TransportError) as exc:
            log.warning("%s: refused a link from %s: %s", self.name, link.remote, exc)
            await link.aclose()
            return
        peer = PeerLink(
            link,
            frames,
            info,
            dialed=False,
            url=link.remote,
            heartbeat_interval=self.timeouts.heartbeat_interval,
            heartbeat_timeout=self.timeouts.heartbeat_timeout,
        )
        await self._run_link(peer)

    async def _run_link(self, peer: PeerLink) -> None:
        self._links[peer.name] = peer
        log.info("%s: linked to %s (%s)", self.name, peer.name, peer.url)
        self._notify_route_change()
        try:
            await peer.run(self._on_frame)
        except (ProtocolError, TransportError) as exc:
            # While this cell closes, its peers close too: no news then.
            level = logging.DEBUG if self._closed else logging.WARNING
            log.log(level, "%s: link to %s ended: %s", self.name, peer.name, exc)
        finally:
            if self._links.get(peer.name) is peer:
                del self._links[peer.name]
            if self._parent == peer.name and peer.dialed and peer.name not in self._links:
                self._parent = None
            if self.is_direct(peer):
                self._direct.lost(peer.name)
            self._link_lost(peer, peer.close_reason or "link closed")
            self._notify_route_change()

    def _link_failed(self, peer: PeerLink) -> None:
        """A send on ``peer`` failed: route around it now, before its receive
        loop notices (which then fails what depended on it)."""
        if self._links.get(peer.name) is peer:
            del self._links[peer.name]
            if self._parent == peer.name and peer.dialed:
                self._parent = None
            self._notify_route_change()

    def _link_lost(self, peer: PeerLink, reason: str) -> None:
        """Fail everything that depended on the link ``peer``."""
        if self._closed:
            return
        self._transfers.link_lost(peer)
        name = peer.name
        for pending in self._pending.values():
            if pending.via is peer and not pending.future.done():
                pending.future.set_exception(LinkLost(f"link to {name} lost: {reason}"))
        for key, relayed in list(self._relayed.items()):
            if relayed.next == name:
                del self._relayed[key]
                self._spawn(
                    self._reply_error(
                        Message.from_frame(relayed.request),
                        Status.UNREACHABLE,
                        f"{self.name} lost the link to {name}: {reason}",
                    )
                )
            elif relayed.prev == name:
                del self._relayed[key]

    @property
    def name_refused(self) -> NameInUse | None:
        """The parent's refusal of this cell's name (another cell of that
        name is linked to it), while the cell is not linked; else None."""
        return self._refused if self._parent is None else None

    async def _parent_loop(self) -> None:
        t = self.timeouts
        backoff = t.backoff_initial
        while not self._closed:
            linked = False
            for url in self.parent_urls:
                try:
                    peer = await self._dial(url)
                except NameInUse as exc:
                    self._last_dial_error = str(exc)
                    self._refused = exc
                    self._notify_route_change()
                    log.warning("%s: %s refused the name: %s", self.name, url, exc)
                    continue
                except (TransportError, ProtocolError) as exc:
                    text = str(exc)
                    self._last_dial_error = text if text.startswith(url) else f"{url}: {text}"
                    log.info("%s: cannot link to parent at %s: %s", self.name, url, exc)
                    continue
                except CellnetError as exc:  # a URL its driver refuses: try the next
                    self._last_dial_error = f"{url}: {exc}"
                    log.error("%s: cannot use parent URL %s: %s", self.name, url, exc)
                    continue
                linked = True
                self._refused = None
                self._parent = peer.name
                self.parent_url = url
                if url != self.parent_urls[0]:
                    log.warning(
                        "%s: linked to parent %s at %s (fallback; %s)",
                        self.name, peer.name, url, self._last_dial_error,
                    )
                backoff = t.backoff_initial
                await self._run_link(peer)
                self.parent_url = None
                break
            if self._closed:
                return
            delay = backoff * (0.5 + random.random() / 2)
            await asyncio.sleep(delay)
            if not linked:
                backoff = min(backoff * 2, t.backoff_max)

    async def _dial(self, url: str) -> PeerLink:
        driver = self._registry.for_url(url)
        link = await driver.dial(url, self._options)
        try:
            info, frames = await dial_handshake(
                link, self.name, self.limits.max_message, self.timeouts.handshake
            )
        except BaseException:
            await link.aclose()
            raise
        return PeerLink(
            link,
            frames,
            info,
            dialed=True,
            url=url,
            heartbeat_interval=self.timeouts.heartbeat_interval,
            heartbeat_timeout=self.timeouts.heartbeat_timeout,
        )

