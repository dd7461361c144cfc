"""What a live cell tells about itself: its links and counters, and the path
a message from it takes.

Every cell answers two requests on the system channel (``cellnet``):

``status`` (empty payload)
    A JSON object (UTF-8 bytes)::

        {"name": "site-1", "listen": [...], "parent": "server",
         "parent_url": "grpc://...", "parent_transport": "grpc",
         "uptime_s": 12.5,
         "links": [{"peer": "server", "url": "grpc://...", "transport": "grpc",
                    "role": "parent", "path": "relay", "sent": 10,
                    "received": 9, "since": 1764828000.0}],
         "counters": {"requests_sent": 3, "requests_served": 2,
                      "sends_delivered": 0, "relayed": 0,
                      "replies_received": 3},
         "transfers": [{"id": "9f2c...", "direction": "out", "peer": "site-2",
                        "done": 268435456, "size": 536870912}]}

    ``role`` is ``parent`` (the link this cell dialed to its parent),
    ``child`` (a cell that dialed this one as its parent) or ``direct`` (a
    direct link between two cells, see :mod:`cellnet.direct`); ``path`` is
    ``direct`` for direct links and ``relay`` for the others (traffic
    between other cells may cross them). ``transfers`` lists the chunked
    transfers in progress (see :mod:`cellnet.transfer`): ``done`` is the
    bytes the receiver acknowledged (``out``) or received (``in``);
    ``size`` is ``null`` for a payload of unknown length. ``cellnet status
    -c`` prints it.

``trace`` (payload: the destination's name)
    The cell sends an echo request to the destination and answers with the
    route that request took, as recorded hop by hop, the route of the reply,
    and the round-trip time::

        {"route": ["site-1", "server", "site-2"],
         "back": ["site-2", "server", "site-1"], "rtt_us": 412.0}

    or ``{"error": "Unreachable: ..."}`` when the echo failed.

    ``cellnet route SRC DST -c`` prints it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .errors import CellnetError
from .message import Message
from .names import validate_name

if TYPE_CHECKING:
    from .cell import Cell

STATUS_TOPIC = "status"
TRACE_TOPIC = "trace"


@dataclass(slots=True)
class Counters:
    """Messages a cell handled since it started."""

    requests_sent: int = 0
    requests_served: int = 0
    sends_delivered: int = 0
    relayed: int = 0
    replies_received: int = 0


def _scheme(url: str | None) -> str | None:
    return url.split("://", 1)[0].lower() if url and "://" in url else None


def status(cell: Cell) -> dict[str, Any]:
    """The cell's status as a JSON-able mapping (see the module docs)."""
    links = []
    for info in cell.link_info():
        if info["direct"]:
            role = "direct"
        elif info["peer"] == cell.parent and info["dialed"]:
            role = "parent"
        else:
            role = "child"
        links.append(
            {
                "peer": info["peer"],
                "url": info["url"],
                "transport": _scheme(info["url"]),
                "role": role,
                "path": "direct" if info["direct"] else "relay",
                "sent": info["sent"],
                "received": info["received"],
                "since": info["since"],
            }
        )
    return {
        "name": cell.name,
        "listen": cell.listen_addresses,
        "parent": cell.parent,
        "parent_url": cell.parent_url,
        "parent_transport": cell.parent_transport,
        "uptime_s": round(time.monotonic() - cell.started_at, 3) if cell.started_at else 0.0,
        "links": sorted(links, key=lambda link: link["peer"]),
        "counters": asdict(cell.counters),
        "transfers": cell.transfers(),
    }


def install(cell: Cell, system_channel: str, echo_topic: str) -> None:
    """Register the ``status`` and ``trace`` handlers on ``cell``."""
    from .cell import Reply

    async def on_status(msg: Message) -> Reply:
        return Reply(json.dumps(status(cell)).encode())

    async def on_trace(msg: Message) -> Reply:
        dst = validate_name(bytes(msg.payload).decode("utf-8", "replace"))
        budget = msg.budget if msg.budget is not None else cell.timeouts.request
        started = time.perf_counter()
        try:
            reply = await cell.request(dst, system_channel, echo_topic, b"", timeout=max(0.001, budget * 0.9))
        except CellnetError as exc:
            return Reply(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        rtt = time.perf_counter() - started
        body = {
            "route": [str(hop) for hop in reply.meta.get("route", [])],
            "back": list(reply.hops),
            "rtt_us": round(rtt * 1e6, 1),
        }
        return Reply(json.dumps(body).encode())

    cell.on(system_channel, STATUS_TOPIC)(on_status)
    cell.on(system_channel, TRACE_TOPIC)(on_trace)


__all__ = ["Counters", "STATUS_TOPIC", "TRACE_TOPIC", "install", "status"]
