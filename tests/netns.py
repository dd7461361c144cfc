"""Test hosts in Linux network namespaces: several machines on one.

Each :class:`Hosts` builds namespaces with unique names (a prefix of its
own), wires them with veth pairs, and removes everything on ``close``.
Addresses come from 198.18.0.0/15, the range set aside for network
benchmark tests (RFC 2544), and exist only inside the namespaces.

Needs root and ``ip`` (iproute2). :func:`skip_reason` says why namespaces
cannot be made here; in CI (``CI`` set) tests must not skip, so they fail
instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, timeout=10)


def skip_reason() -> str | None:
    """Why network namespaces cannot be used here, or None."""
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    probe = f"cnprobe{uuid.uuid4().hex[:6]}"
    try:
        subprocess.run(["ip", "netns", "add", probe], check=True, capture_output=True, timeout=10)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


class Hosts:
    """Namespaces named ``<prefix>-<host>`` and the links between them."""

    def __init__(self) -> None:
        self.prefix = f"cn{uuid.uuid4().hex[:6]}"
        self.names: list[str] = []
        self._veth = 0

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def add(self, host: str) -> str:
        name = self.ns(host)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
        self.names.append(name)
        _ip("link", "set", "lo", "up", ns=name)
        return name

    def _pair(self) -> tuple[str, str]:
        self._veth += 1
        return f"{self.prefix}a{self._veth}", f"{self.prefix}b{self._veth}"

    def wire(self, a: str, a_addr: str, b: str, b_addr: str) -> None:
        """A veth cable from host ``a`` to host ``b`` (addresses with /prefix)."""
        end_a, end_b = self._pair()
        _ip("link", "add", end_a, "type", "veth", "peer", "name", end_b)
        for end, host, addr in ((end_a, a, a_addr), (end_b, b, b_addr)):
            _ip("link", "set", end, "netns", self.ns(host))
            _ip("addr", "add", addr, "dev", end, ns=self.ns(host))
            _ip("link", "set", end, "up", ns=self.ns(host))

    def switch(self, host: str, bridge_addr: str, members: Sequence[tuple[str, str]]) -> None:
        """A bridge in ``host`` (with ``bridge_addr``) and a cable to each member."""
        ns = self.ns(host)
        bridge = f"{self.prefix}br"
        _ip("link", "add", bridge, "type", "bridge", ns=ns)
        _ip("addr", "add", bridge_addr, "dev", bridge, ns=ns)
        _ip("link", "set", bridge, "up", ns=ns)
        for member, addr in members:
            end_a, end_b = self._pair()
            _ip("link", "add", end_a, "type", "veth", "peer", "name", end_b)
            _ip("link", "set", end_a, "netns", ns)
            _ip("link", "set", end_a, "master", bridge, ns=ns)
            _ip("link", "set", end_a, "up", ns=ns)
            _ip("link", "set", end_b, "netns", self.ns(member))
            _ip("addr", "add", addr, "dev", end_b, ns=self.ns(member))
            _ip("link", "set", end_b, "up", ns=self.ns(member))

    def run(self, host: str, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` on ``host``."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def close(self) -> None:
        """Remove the namespaces (their veth ends go with them)."""
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        self.names.clear()
