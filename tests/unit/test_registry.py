"""Drivers are found by URL scheme; unknown schemes name the known ones."""

from __future__ import annotations

import pytest

from cellnet.cell import Cell
from cellnet.drivers.memory import MemoryDriver
from cellnet.drivers.tcp import TcpDriver, parse_tcp_url
from cellnet.errors import ConfigError, DriverUnavailable, UnknownScheme
from cellnet.registry import DriverRegistry


def test_builtin_tcp_is_loaded_lazily() -> None:
    registry = DriverRegistry()
    assert "tcp" in registry.known_schemes()
    assert isinstance(registry.for_url("tcp://127.0.0.1:1"), TcpDriver)
    assert registry.get("tcp") is registry.get("TCP")


def test_unknown_scheme_names_the_known_ones() -> None:
    registry = DriverRegistry()
    with pytest.raises(UnknownScheme) as info:
        registry.for_url("tcpp://host:1")
    assert "tcpp" in str(info.value) and "tcp" in str(info.value)
    assert "did you mean 'tcp'" in str(info.value)


def test_cell_with_unknown_scheme_fails_at_construction() -> None:
    with pytest.raises(UnknownScheme, match="known schemes"):
        Cell("site-1", parent="quic://server:1")


def test_missing_module_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import cellnet.registry as reg

    monkeypatch.setattr(reg, "EXTRAS", {"fancy": "fancy"})
    registry = DriverRegistry(builtin={"fancy": "cellnet_no_such_module:Driver"})
    with pytest.raises(DriverUnavailable, match=r'pip install "cellnet\[fancy\]"'):
        registry.get("fancy")


def test_given_instances_win() -> None:
    memory = MemoryDriver()
    registry = DriverRegistry({"memory": memory})
    assert registry.for_url("memory://x") is memory


@pytest.mark.parametrize(
    ("url", "expected"),
    [("tcp://127.0.0.1:8002", ("127.0.0.1", 8002)), ("tcp://[::1]:0", ("::1", 0)), ("tcp://host:1", ("host", 1))],
)
def test_tcp_url(url: str, expected: tuple[str, int]) -> None:
    assert parse_tcp_url(url) == expected


@pytest.mark.parametrize("url", ["tcp://host", "tcp://:80", "tcp://host:99999", "tcp://host:1/path", "grpc://h:1"])
def test_bad_tcp_url(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_tcp_url(url)


@pytest.mark.parametrize(
    ("scheme", "module", "extra"),
    [("grpc", "grpc", "grpc"), ("grpcs", "grpc", "grpc"), ("redis", "redis", "redis"), ("https", "aiohttp", "http")],
)
def test_builtin_driver_without_its_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, scheme: str, module: str, extra: str
) -> None:
    import sys

    # As if the library were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, module, None)
    for name in [n for n in sys.modules if n.startswith("cellnet.drivers.")]:
        if name not in ("cellnet.drivers.tcp", "cellnet.drivers.memory"):
            monkeypatch.delitem(sys.modules, name)
    with pytest.raises(DriverUnavailable, match=rf'the {scheme}:// driver .*pip install "cellnet\[{extra}\]"'):
        DriverRegistry().get(scheme)


@pytest.mark.parametrize("scheme", ["tcp", "tls", "grpc", "grpcs", "http", "https", "ws", "wss", "redis", "rediss"])
def test_every_builtin_scheme_loads(scheme: str) -> None:
    driver = DriverRegistry().get(scheme)
    assert scheme in driver.schemes
