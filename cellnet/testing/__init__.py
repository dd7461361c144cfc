"""Test kit for code built on cellnet.

``MemoryNetwork`` and ``MemoryDriver`` put cells in one event loop without
sockets, for fast deterministic unit tests::

    from cellnet import Cell
    from cellnet.testing import MemoryDriver, MemoryNetwork

    drivers = {"memory": MemoryDriver(MemoryNetwork())}
    server = Cell("server", listen=["memory://server"], drivers=drivers)
    site = Cell("site-1", parent="memory://server", drivers=drivers)
"""

from cellnet.drivers.memory import MemoryDriver, MemoryLink, MemoryNetwork

__all__ = ["MemoryDriver", "MemoryLink", "MemoryNetwork"]
