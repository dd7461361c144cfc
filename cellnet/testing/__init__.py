"""Test kit for code built on cellnet.

``MemoryNetwork`` and ``MemoryDriver`` put cells in one event loop without
sockets, for fast deterministic unit tests::

    from cellnet import Cell
    from cellnet.testing import MemoryDriver, MemoryNetwork

    drivers = {"memory": MemoryDriver(MemoryNetwork())}
    server = Cell("server", listen=["memory://server"], drivers=drivers)
    site = Cell("site-1", parent="memory://server", drivers=drivers)

The driver conformance suite (:mod:`cellnet.testing.conformance`) proves a
driver keeps the contract of :mod:`cellnet.driver` with one line::

    from cellnet.testing import driver_conformance

    TestTcpConformance = driver_conformance(TcpDriver, "tcp://127.0.0.1:0")

``make_tls_kit(folder)`` makes a CA and certificates for good and bad TLS
peers (:mod:`cellnet.testing.tlskit`). The suite needs pytest and the kit
the ``cryptography`` package; both load only when their names are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cellnet.drivers.memory import MemoryDriver, MemoryLink, MemoryNetwork

if TYPE_CHECKING:
    from cellnet.testing.conformance import ConformanceEnv, DriverConformance, driver_conformance
    from cellnet.testing.tlskit import TlsKit, make_tls_kit

_LAZY = {
    "ConformanceEnv": "cellnet.testing.conformance",
    "DriverConformance": "cellnet.testing.conformance",
    "driver_conformance": "cellnet.testing.conformance",
    "TlsKit": "cellnet.testing.tlskit",
    "make_tls_kit": "cellnet.testing.tlskit",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ConformanceEnv",
    "DriverConformance",
    "MemoryDriver",
    "MemoryLink",
    "MemoryNetwork",
    "TlsKit",
    "driver_conformance",
    "make_tls_kit",
]
