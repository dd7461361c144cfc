"""Time budgets are relative: cells whose wall clocks are an hour ahead or
behind serve requests, plain and reliable, with short budgets."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellnet import Cell
from cellnet.config import Timeouts
from tests.helpers import Proc, free_port, until_reachable, wait_port, write_config

pytestmark = pytest.mark.timeout(60)

SKEWED = Path(__file__).with_name("skewed_cell.py")
HOUR = 3600.0


@pytest.fixture
def skewed_bus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    procs: list[Proc] = []
    write_config(tmp_path / "server.toml", f'[cell]\nname = "server"\nlisten = ["{url}"]\n')
    procs.append(Proc([sys.executable, str(SKEWED), str(HOUR), str(tmp_path / "server.toml")], tmp_path / "server.log"))
    try:
        wait_port(port, proc=procs[0].popen)
        for name, shift in (("ahead", HOUR), ("behind", -HOUR)):
            write_config(tmp_path / f"{name}.toml", f'[cell]\nname = "{name}"\nparent = "{url}"\n')
            procs.append(
                Proc([sys.executable, str(SKEWED), str(shift), str(tmp_path / f"{name}.toml")], tmp_path / f"{name}.log")
            )
        yield url, tmp_path
    finally:
        for proc in reversed(procs):
            proc.stop()


def clock_offset(log: Path) -> float:
    """Seconds between the first log line's timestamp and now."""
    stamp = next(line[:19] for line in log.read_text().splitlines() if line[:4].isdigit())
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() - time.time()


async def test_requests_to_cells_with_shifted_clocks(skewed_bus: tuple[str, Path]) -> None:
    url, folder = skewed_bus
    async with Cell("site-1", parent=url, timeouts=Timeouts(backoff_initial=0.05)) as site:
        await site.wait_parent(10)
        for name in ("ahead", "behind"):
            await until_reachable(site, name)
            for reliable in (False, True):
                reply = await site.request(name, "cellnet", "echo", b"tick", timeout=0.5, reliable=reliable)
                assert reply.payload == b"tick"
                assert list(reply.meta["route"]) == ["site-1", "server", name]
    # The cells really ran with their clocks an hour off.
    assert abs(clock_offset(folder / "ahead.log") - HOUR) < 120
    assert abs(clock_offset(folder / "behind.log") + HOUR) < 120
    assert abs(clock_offset(folder / "server.log") - HOUR) < 120
