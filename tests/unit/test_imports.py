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


def test_import_cellnet_loads_the_api_on_first_use() -> None:
    code = (
        "import sys, cellnet\n"
        "light = 'cellnet.cell' not in sys.modules and 'cellnet.config' not in sys.modules\n"
        "from cellnet import Cell, NameInUse, Status, load_config\n"
        "import cellnet.cell, cellnet.config\n"
        "assert Cell is cellnet.cell.Cell and load_config is cellnet.config.load_config\n"
        "assert sorted(set(cellnet.__all__) - set(dir(cellnet))) == []\n"
        "print(light)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    missing = subprocess.run([sys.executable, "-c", "import cellnet; cellnet.Nope"], capture_output=True, text=True)
    assert "AttributeError: module 'cellnet' has no attribute 'Nope'" in missing.stderr


def test_ctrl_c_while_the_command_loads_exits_quietly() -> None:
    # The command line takes a few tenths of a second to load; a Ctrl-C then
    # ends it with 130 and no traceback. The interrupt is raised from the
    # import of cellnet.cli, where a real Ctrl-C would most likely land.
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'cellnet.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from cellnet._launch import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (130, "")
