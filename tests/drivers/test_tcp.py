"""The TCP driver (tcp://, tls://) and the in-memory driver against the conformance suite."""

from __future__ import annotations

from cellnet.drivers.memory import MemoryDriver
from cellnet.drivers.tcp import TcpDriver
from cellnet.testing import driver_conformance

TestTcpConformance = driver_conformance(TcpDriver, "tcp://127.0.0.1:0")
TestTlsConformance = driver_conformance(TcpDriver, "tls://127.0.0.1:0", tls=True)
TestMemoryConformance = driver_conformance(MemoryDriver, "memory://conformance")
