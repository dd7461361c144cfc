"""Find a driver by URL scheme.

Built-in drivers are listed in :data:`BUILTIN` as ``"module:Class"`` strings
and imported only when first used, so ``import cellnet`` pulls in no optional
dependency. Third-party packages add drivers through the entry-point group
``cellnet.drivers``: the entry point's name is the scheme, its value the
driver class::

    [project.entry-points."cellnet.drivers"]
    quic = "cellnet_quic:QuicDriver"

A :class:`DriverRegistry` is an ordinary object (no process-wide state beyond
the cached default): a cell can be given its own registry, for example with a
:class:`~cellnet.drivers.memory.MemoryDriver` in unit tests.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Mapping
from urllib.parse import urlsplit

from .driver import Driver
from .errors import DriverUnavailable, UnknownScheme

ENTRY_POINT_GROUP = "cellnet.drivers"

#: scheme -> "module:Class" of the drivers that ship with cellnet
BUILTIN: Mapping[str, str] = {
    "tcp": "cellnet.drivers.tcp:TcpDriver",
    "tls": "cellnet.drivers.tcp:TcpDriver",
    "grpc": "cellnet.drivers.grpc:GrpcDriver",
    "grpcs": "cellnet.drivers.grpc:GrpcDriver",
    "http": "cellnet.drivers.websocket:WebSocketDriver",
    "https": "cellnet.drivers.websocket:WebSocketDriver",
    "ws": "cellnet.drivers.websocket:WebSocketDriver",
    "wss": "cellnet.drivers.websocket:WebSocketDriver",
    "redis": "cellnet.drivers.redis:RedisDriver",
    "rediss": "cellnet.drivers.redis:RedisDriver",
}

#: scheme -> the extra that installs its dependencies
EXTRAS: Mapping[str, str] = {
    "grpc": "grpc",
    "grpcs": "grpc",
    "http": "http",
    "https": "http",
    "ws": "http",
    "wss": "http",
    "redis": "redis",
    "rediss": "redis",
}


def scheme_of(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise UnknownScheme(f"{url!r} has no scheme; expected e.g. tcp://host:port")
    return scheme


class DriverRegistry:
    """Maps URL schemes to driver instances, loading them lazily."""

    def __init__(
        self,
        drivers: Mapping[str, Driver] | None = None,
        *,
        builtin: Mapping[str, str] = BUILTIN,
        use_entry_points: bool = True,
    ) -> None:
        self._instances: dict[str, Driver] = dict(drivers or {})
        self._targets: dict[str, str] = dict(builtin)
        if use_entry_points:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                self._targets.setdefault(ep.name.lower(), ep.value)

    def known_schemes(self) -> list[str]:
        return sorted(set(self._targets) | set(self._instances))

    def register(self, driver: Driver) -> None:
        """Add a driver instance for every scheme it declares."""
        for scheme in driver.schemes:
            self._instances[scheme] = driver

    def for_url(self, url: str) -> Driver:
        return self.get(scheme_of(url))

    def get(self, scheme: str) -> Driver:
        scheme = scheme.lower()
        driver = self._instances.get(scheme)
        if driver is not None:
            return driver
        target = self._targets.get(scheme)
        if target is None:
            known = self.known_schemes()
            hint = difflib.get_close_matches(scheme, known, n=1)
            did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UnknownScheme(
                f"no driver for scheme {scheme!r}{did_you_mean}; known schemes: {', '.join(known)}"
            )
        cls = _load(scheme, target)
        driver = cls()
        for s in cls.schemes or (scheme,):
            self._instances.setdefault(s, driver)
        self._instances[scheme] = driver
        return driver


def _load(scheme: str, target: str) -> type[Driver]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(scheme)
        hint = f'; install it with: pip install "cellnet[{extra}]"' if extra else ""
        raise DriverUnavailable(
            f"the {scheme}:// driver cannot be loaded ({exc}){hint}"
        ) from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise DriverUnavailable(f"{target!r} (scheme {scheme!r}) is not a cellnet Driver class")
    return cls


_default: DriverRegistry | None = None


def default_registry() -> DriverRegistry:
    """The registry of built-in and installed drivers (created on first use)."""
    global _default
    if _default is None:
        _default = DriverRegistry()
    return _default
