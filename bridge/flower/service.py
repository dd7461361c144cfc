"""Wire the Flower bridge onto a cell.

In a **client cell** (``[flower] listen = "host:port"``) a
:class:`~cellnet.bridge.flower.lgs.LocalServer` accepts the SuperNode's Fleet
API calls; each call travels as a *reliable* bus request to the server cell
(re-sent under the same id after a lost link; run at most once there).

In the **server cell** (``[flower] superlink = "host:port"``) a handler on
channel ``flower``, topic ``fleet`` replays each call against the SuperLink
with a :class:`~cellnet.bridge.flower.lgc.SuperLinkClient` and returns the
status, headers and body unchanged.

Only Fleet traffic crosses the bus; the ``flwr`` CLI and the ServerApp talk to
the SuperLink locally, in the server cell's host.

Each side counts what it carried (:class:`BridgeStats`) and logs the totals
when it stops, e.g. ``site-1: bridge carried 212 calls, 24.3 MB out, 49.1 MB
in, 0 failed``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from cellnet.cell import Cell
from cellnet.config import FlowerSection
from cellnet.message import Message

from .lgc import SuperLinkClient
from .lgs import LocalServer
from .wire import HttpCall, HttpReply

log = logging.getLogger("cellnet.bridge.flower")

CHANNEL = "flower"
TOPIC = "fleet"


@dataclass
class BridgeStats:
    """What one side of the bridge carried: Fleet calls and their encoded bytes.

    ``bytes_out`` is what this side sent on (calls in a client cell, replies
    in the server cell); ``bytes_in`` what came back to it.
    """

    calls: int = 0
    failed: int = 0
    bytes_out: int = 0
    bytes_in: int = 0

    def summary(self) -> str:
        return (
            f"{self.calls} calls, {self.bytes_out / 1e6:.1f} MB out, "
            f"{self.bytes_in / 1e6:.1f} MB in, {self.failed} failed"
        )


def make_forward(
    cell: Cell, server: str, stats: BridgeStats | None = None
) -> Callable[[HttpCall, float], Awaitable[HttpReply]]:
    """The LocalServer's forwarder: one reliable bus request per HTTP call."""
    stats = stats if stats is not None else BridgeStats()

    async def forward(call: HttpCall, budget: float) -> HttpReply:
        payload = call.encode()
        stats.calls += 1
        stats.bytes_out += len(payload)
        try:
            reply = await cell.request(
                server, CHANNEL, TOPIC, payload, timeout=budget, reliable=True
            )
        except BaseException:
            stats.failed += 1
            raise
        stats.bytes_in += len(reply.payload)
        return HttpReply.decode(reply.payload)

    return forward


def make_handler(
    client: SuperLinkClient, stats: BridgeStats | None = None
) -> Callable[[Message], Awaitable[bytes]]:
    """The server cell's handler: replay the call against the SuperLink."""
    stats = stats if stats is not None else BridgeStats()

    async def handle(msg: Message) -> bytes:
        stats.calls += 1
        stats.bytes_in += len(msg.payload)
        call = HttpCall.decode(msg.payload)
        timeout = msg.budget if msg.budget is not None else None
        reply = await client.handle(call, timeout=timeout)
        if reply.status >= 500:
            stats.failed += 1
        encoded = reply.encode()
        stats.bytes_out += len(encoded)
        return encoded

    return handle


@dataclass
class Bridge:
    """The running parts of the bridge in one cell."""

    cell: Cell
    local_server: LocalServer | None = None
    superlink_client: SuperLinkClient | None = None
    stats: BridgeStats = field(default_factory=BridgeStats)

    async def aclose(self) -> None:
        if self.local_server is not None or self.superlink_client is not None:
            log.info("%s: bridge carried %s", self.cell.name, self.stats.summary())
        if self.local_server is not None:
            await self.local_server.aclose()
        if self.superlink_client is not None:
            self.cell.remove_handler(CHANNEL, TOPIC)
            await self.superlink_client.aclose()


async def start_bridge(cell: Cell, section: FlowerSection) -> Bridge:
    """Start what ``section`` asks for on ``cell``; returns the running bridge."""
    bridge = Bridge(cell)
    if section.superlink:
        client = SuperLinkClient(section.superlink, max_body=section.max_body)
        cell.on(CHANNEL, TOPIC)(make_handler(client, bridge.stats))
        bridge.superlink_client = client
        log.info("%s: forwarding Fleet calls to the SuperLink at %s", cell.name, client.base_url)
    if section.listen:
        host, _, port = section.listen.rpartition(":")
        server = section.server
        lgs = LocalServer(
            make_forward(cell, server, bridge.stats),
            host.strip("[]"),
            int(port),
            max_body=section.max_body,
        )
        try:
            bound = await lgs.start()
        except BaseException:
            await bridge.aclose()
            raise
        bridge.local_server = lgs
        log.info("%s: Flower SuperNodes connect to %s:%s (relayed to %s)", cell.name, *bound, server)
    return bridge
