"""Direct links: two cells upgrade from the relay to a link of their own.

By default every message between client cells crosses the server cell. When
both cells' ``[policy] direct`` patterns name each other, the first message
one sends to the other (a request or a send) starts an upgrade in the
background; that message and the ones after it travel relayed until the
direct link is up, and over it from then on (routing prefers a live link to
the destination itself).

Negotiation, over the relayed path (system channel, topic ``direct``)::

    A (wants the link)                           B
      request {op: "offer", urls: A's advertised URLs, token}  ->
                     B checks its policy; if A gave URLs, B dials one
      <-  {op: "dialed"}    (B's link to A is up)
      <-  {op: "dial-me", urls: B's URLs}   (A gave none: A dials B)
      <-  {op: "linked"}    (a direct link exists already)
      <-  {op: "refused", why}              (B's policy says no)
      <-  {op: "defer"}     (B's own offer to A wins; see below)
      <-  {op: "failed", why}               (B could not dial A)

Exactly one side dials, whatever the order of the names: the one that
receives an offer with URLs in it. When both offer at once, the offer with
the larger random ``token`` wins and the other side answers ``defer``: both
sides see both tokens, so they agree without comparing names.

A cell with a parent accepts a link from another cell only when its policy
names that cell (or the cell is below it in the name hierarchy): the upgrade
cannot be used to take over a name or to reach cells the policy shuts out.

When a direct link breaks, its routes fall back to the relay at once (plain
requests in flight on it fail with ``LinkLost``; reliable ones are re-sent
over the relay). The next message to that cell starts a new upgrade after
``timeouts.direct_retry`` seconds, doubling up to ``direct_retry_max`` while
it keeps failing, so a peer that comes back, also on a new address, gets its
direct link again. A dial that fails (a firewall between the two) is logged
once per failure streak, and traffic stays relayed.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from .errors import CellnetError, NameInUse, ProtocolError
from .message import Message
from .names import is_ancestor

if TYPE_CHECKING:
    from .cell import Cell, Reply

log = logging.getLogger("cellnet.direct")

DIRECT_TOPIC = "direct"


@dataclass(slots=True)
class _PeerState:
    """Where the upgrade to one peer stands."""

    #: an upgrade task is running
    busy: bool = False
    #: our outstanding offer's token (for simultaneous offers)
    token: int = 0
    #: no new attempt before this ``time.monotonic()``
    not_before: float = 0.0
    #: current retry delay
    delay: float = 0.0
    #: failures in a row (the first is logged)
    failures: int = 0


class DirectLinks:
    """The upgrade logic of one cell (see the module docs)."""

    def __init__(self, cell: Cell, system_channel: str) -> None:
        self._cell = cell
        self._channel = system_channel
        self._peers: dict[str, _PeerState] = {}
        cell.on(system_channel, DIRECT_TOPIC)(self._on_offer)

    # -- policy ----------------------------------------------------------------

    def allowed(self, name: str) -> bool:
        return self._cell.policy.allows_direct(name)

    def admits(self, name: str) -> bool:
        """Whether this cell accepts a link from ``name`` (see the module docs)."""
        cell = self._cell
        if not cell.parent_urls:
            return True  # a server cell accepts every cell
        return is_ancestor(cell.name, name) or self.allowed(name)

    def advertised(self) -> list[str]:
        cell = self._cell
        return list(cell.advertise_urls) or [
            url for url in cell.listen_addresses if not _wildcard(url)
        ]

    # -- wanting a link ----------------------------------------------------------

    def want(self, name: str) -> None:
        """Start an upgrade to ``name`` if allowed and due. Cheap when not."""
        state = self._peers.get(name)
        if state is None:
            if name == self._cell.parent or not self.allowed(name):
                return
            state = self._peers[name] = _PeerState(delay=self._cell.timeouts.direct_retry)
        if state.busy or time.monotonic() < state.not_before:
            return
        state.busy = True
        self._cell._spawn(self._upgrade(name, state))

    async def _upgrade(self, name: str, state: _PeerState) -> None:
        cell = self._cell
        try:
            if name in cell._links:
                return
            state.token = secrets.randbits(63) + 1
            urls = self.advertised()
            body = {"op": "offer", "urls": urls, "token": state.token}
            try:
                reply = await cell.request(
                    name, self._channel, DIRECT_TOPIC, msgpack.packb(body), timeout=cell.timeouts.connect * 2
                )
                answer = _decode(reply.payload)
            except CellnetError as exc:
                self._failed(name, state, f"no answer to the offer: {exc}")
                return
            op = answer.get("op")
            if op in ("dialed", "linked"):
                self._succeeded(name, state)
            elif op == "dial-me":
                peer_urls = [u for u in answer.get("urls", []) if isinstance(u, str)]
                error = await self._dial_any(name, peer_urls)
                if error is None:
                    self._succeeded(name, state)
                else:
                    self._failed(name, state, error)
            elif op == "defer":
                state.not_before = 0.0  # the peer's offer wins; it will link
            else:
                self._failed(name, state, str(answer.get("why", f"answer {op!r}")), refused=op == "refused")
        finally:
            state.busy = False
            state.token = 0

    def _succeeded(self, name: str, state: _PeerState) -> None:
        if state.failures:
            log.info("%s: direct link to %s is up after %d failed attempts", self._cell.name, name, state.failures)
        state.failures = 0
        state.delay = self._cell.timeouts.direct_retry
        state.not_before = 0.0

    def _failed(self, name: str, state: _PeerState, why: str, *, refused: bool = False) -> None:
        state.failures += 1
        if state.failures == 1:
            level = logging.INFO if refused else logging.WARNING
            log.log(level, "%s: no direct link to %s, traffic stays relayed: %s", self._cell.name, name, why)
        else:
            log.debug("%s: direct link to %s failed again (%d): %s", self._cell.name, name, state.failures, why)
        state.not_before = time.monotonic() + state.delay
        state.delay = min(state.delay * 2, self._cell.timeouts.direct_retry_max)

    def lost(self, name: str) -> None:
        """A direct link ended: retry after the initial delay (on the next message)."""
        state = self._peers.get(name)
        if state is not None:
            state.not_before = time.monotonic() + self._cell.timeouts.direct_retry

    # -- being offered a link ------------------------------------------------------

    async def _on_offer(self, msg: Message) -> Reply:
        from .cell import Reply

        cell = self._cell
        peer = msg.src
        try:
            offer = _decode(msg.payload)
        except ProtocolError as exc:
            return Reply(msgpack.packb({"op": "refused", "why": str(exc)}))
        if offer.get("op") != "offer":
            return Reply(msgpack.packb({"op": "refused", "why": "not an offer"}))
        if not self.allowed(peer):
            return Reply(msgpack.packb({"op": "refused", "why": f"{cell.name}'s policy does not allow {peer}"}))
        if peer in cell._links:
            return Reply(msgpack.packb({"op": "linked"}))
        state = self._peers.setdefault(peer, _PeerState(delay=cell.timeouts.direct_retry))
        token = offer.get("token")
        if state.token and isinstance(token, int) and state.token > token:
            return Reply(msgpack.packb({"op": "defer"}))
        urls = [u for u in offer.get("urls", []) if isinstance(u, str)]
        if not urls:
            mine = self.advertised()
            if not mine:
                return Reply(msgpack.packb({"op": "failed", "why": "neither cell advertises a URL to dial"}))
            return Reply(msgpack.packb({"op": "dial-me", "urls": mine}))
        error = await self._dial_any(peer, urls)
        if error is None:
            self._succeeded(peer, state)
            return Reply(msgpack.packb({"op": "dialed"}))
        self._failed(peer, state, error)
        return Reply(msgpack.packb({"op": "failed", "why": error}))

    # -- dialing -----------------------------------------------------------------

    async def _dial_any(self, name: str, urls: list[str]) -> str | None:
        """Dial ``name`` at the first URL that works; None, or why none did."""
        cell = self._cell
        errors: list[str] = []
        for url in urls:
            try:
                peer = await cell._dial(url)
            except NameInUse:
                return None if name in cell._links else f"{url}: {name} refused: already linked"
            except CellnetError as exc:  # transport, handshake, an unknown scheme
                text = str(exc)
                errors.append(text if text.startswith(url) else f"{url}: {text}")
                continue
            if peer.name != name:
                await peer.link.aclose()
                errors.append(f"{url} is cell {peer.name!r}, not {name!r}")
                continue
            if name in cell._links:  # linked meanwhile (the other way round)
                await peer.link.aclose()
                return None
            peer.direct = True
            cell._spawn(cell._run_link(peer))
            return None
        return "; ".join(errors) or "no URL to dial"


def _decode(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(bytes(payload))
    except Exception as exc:
        raise ProtocolError(f"bad direct-link message: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("bad direct-link message: not a map")
    return value


def _wildcard(url: str) -> bool:
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in ("0.0.0.0", "[::]", "::", "")


__all__ = ["DIRECT_TOPIC", "DirectLinks"]
