"""``import cellnet`` must stay light: no optional dependency is loaded."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("flwr", "grpc", "redis", "aiohttp", "websockets")


def test_import_cellnet_loads_no_optional_dependency() -> None:
    code = (
        "import sys, cellnet, cellnet.config, cellnet.cell, cellnet.drivers.tcp\n"
        f"print(','.join(m for m in {OPTIONAL!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_packages_install_under_cellnet() -> None:
    import cellnet.benchmarks
    import cellnet.bridge.flower
    import cellnet.drivers.tcp

    for module in (cellnet.drivers.tcp, cellnet.bridge.flower, cellnet.benchmarks):
        assert module.__name__.startswith("cellnet.")
