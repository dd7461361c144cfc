"""Routing: a pure function from (this cell, destination, links) to a next hop.

The order, first match wins:

1. **local**: the destination is this cell;
2. **direct link**: a live link to the destination itself;
3. **on the path**: a live link to a cell above the destination in the name
   hierarchy, the nearest first (``site-1.job-7`` is reached through
   ``site-1``), which is also how a cell reaches its own children;
4. **parent**: the cell this one dialed (usually the server), unless the
   destination lies below this cell, where going up would only loop;
5. **fallbacks**: further uplinks, e.g. the server cell when the parent is
   not the server;
6. otherwise **unreachable**.

Loops are stopped by the hop list every message carries: a cell that finds
its own name already in the list, or a list at ``max_hops``, refuses the
message (:func:`loop_reason`).
"""

from __future__ import annotations

from typing import Collection, Sequence

from .names import is_ancestor

#: returned by :func:`next_hop` when the destination is this cell
LOCAL = ""


def ancestors(name: str) -> list[str]:
    """Proper ancestors of a name, nearest first (``a.b.c`` -> ``a.b``, ``a``)."""
    out: list[str] = []
    while True:
        cut = name.rfind(".")
        if cut < 0:
            return out
        name = name[:cut]
        out.append(name)


def next_hop(
    me: str,
    dest: str,
    links: Collection[str],
    parent: str | None = None,
    fallbacks: Sequence[str] = (),
) -> str | None:
    """The name of the linked peer to hand ``dest``'s message to.

    Returns :data:`LOCAL` when ``dest`` is this cell and ``None`` when there
    is no route.
    """
    if dest == me:
        return LOCAL
    if dest in links:
        return dest
    for above in ancestors(dest):
        if above == me:
            break  # below us, but no link to the child on the path
        if above in links:
            return above
    if is_ancestor(me, dest):
        return None
    if parent is not None and parent in links:
        return parent
    for name in fallbacks:
        if name in links and name != me:
            return name
    return None


def loop_reason(me: str, hops: Sequence[str], max_hops: int) -> str | None:
    """Why a message that reached ``me`` must not go further, or ``None``."""
    if me in hops:
        return f"routing loop: {me} already in route {' -> '.join(hops)}"
    if len(hops) >= max_hops:
        return f"hop limit of {max_hops} reached: {' -> '.join(hops)}"
    return None
