"""Routing is a pure function: these tables are the specification."""

from __future__ import annotations

import pytest

from cellnet.routing import LOCAL, ancestors, loop_reason, next_hop


def test_ancestors_nearest_first() -> None:
    assert ancestors("a.b.c") == ["a.b", "a"]
    assert ancestors("site-1") == []


@pytest.mark.parametrize(
    ("me", "dest", "links", "parent", "expected"),
    [
        ("site-1", "site-1", {"server"}, "server", LOCAL),
        # a direct link wins over the parent
        ("site-1", "site-2", {"server", "site-2"}, "server", "site-2"),
        # relay through the parent by default
        ("site-1", "site-2", {"server"}, "server", "server"),
        # the server reaches a job cell through the site on its path
        ("server", "site-1.job-7", {"site-1", "site-2"}, None, "site-1"),
        ("server", "site-1.job-7.x", {"site-1", "site-1.job-7"}, None, "site-1.job-7"),
        # a cell reaches its own child
        ("site-1", "site-1.job-7", {"server", "site-1.job-7"}, "server", "site-1.job-7"),
        # ... and never sends a message for its missing child up to the parent
        ("site-1", "site-1.job-7", {"server"}, "server", None),
        # a job cell reaches everything through its parent
        ("site-1.job-7", "site-2.job-7", {"site-1"}, "site-1", "site-1"),
        # the server has nowhere to send an unknown cell
        ("server", "site-9", {"site-1"}, None, None),
        # site-10 is not below site-1
        ("server", "site-10", {"site-1"}, None, None),
        # parent known but not linked (reconnecting): no route
        ("site-1", "site-2", set(), "server", None),
        # a child of the server is reached through the server
        ("site-1", "server.job-a", {"server"}, "server", "server"),
    ],
)
def test_next_hop(me: str, dest: str, links: set[str], parent: str | None, expected: str | None) -> None:
    assert next_hop(me, dest, links, parent) == expected


def test_fallback_after_parent() -> None:
    assert next_hop("site-1.job-7", "site-2", {"server"}, "site-1", fallbacks=("server",)) == "server"
    assert next_hop("x", "y", set(), None, fallbacks=("server",)) is None


def test_loop_guard() -> None:
    assert loop_reason("server", ("site-1",), 16) is None
    assert "loop" in (loop_reason("server", ("site-1", "server"), 16) or "")
    assert "hop limit" in (loop_reason("c", ("a", "b"), 2) or "")
