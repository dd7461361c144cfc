"""``cellnet status`` and ``cellnet route`` ask live cells in other processes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Proc, cellnet_cmd, free_port, wait_port, write_config

pytestmark = pytest.mark.timeout(60)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cellnet_cmd(*args), capture_output=True, text=True, timeout=30)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Path]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    write_config(tmp_path / "server.toml", f'[cell]\nname = "server"\nlisten = ["{url}"]\n')
    for site in ("site-1", "site-2"):
        write_config(
            tmp_path / f"{site}.toml",
            f'[cell]\nname = "{site}"\nparent = "{url}"\n[timeouts]\nbackoff_initial = 0.05\n',
        )
    procs = [Proc(cellnet_cmd("run", "-c", str(tmp_path / "server.toml")), tmp_path / "server.log")]
    try:
        wait_port(port, proc=procs[0].popen)
        for site in ("site-1", "site-2"):
            procs.append(Proc(cellnet_cmd("run", "-c", str(tmp_path / f"{site}.toml")), tmp_path / f"{site}.log"))
        for site in ("site-1", "site-2"):  # both linked before the test starts
            for _ in range(50):
                if cli("ping", site, "-c", str(tmp_path / "server.toml"), "--count", "1").returncode == 0:
                    break
            else:
                pytest.fail(f"{site} never linked")
        yield tmp_path
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_status_of_the_server_and_a_site(bus: Path) -> None:
    out = cli("ping", "site-2", "-c", str(bus / "site-1.toml"), "--count", "4")
    assert out.returncode == 0, out.stderr

    out = cli("status", "-c", str(bus / "server.toml"), "--json")
    assert out.returncode == 0, out.stderr
    server = json.loads(out.stdout)
    assert server["name"] == "server" and server["parent"] is None
    links = {link["peer"]: link for link in server["links"]}
    assert {"site-1", "site-2"} <= set(links)
    assert links["site-2"]["role"] == "child" and links["site-2"]["transport"] == "tcp"
    # 4 echo requests to site-2 and 4 replies back (plus the readiness pings).
    assert server["counters"]["relayed"] >= 8
    assert links["site-2"]["sent"] >= 4 and links["site-2"]["received"] >= 4

    out = cli("status", "-c", str(bus / "site-2.toml"), "--json")
    assert out.returncode == 0, out.stderr
    site = json.loads(out.stdout)
    assert site["name"] == "site-2" and site["parent"] == "server" and site["parent_transport"] == "tcp"
    assert [link["role"] for link in site["links"]] == ["parent"]
    assert site["counters"]["requests_served"] >= 4 + 1  # the pings and this status request

    out = cli("status", "-c", str(bus / "site-1.toml"))
    assert out.returncode == 0, out.stderr
    assert "site-1" in out.stdout and "parent server" in out.stdout


def test_route_between_sites_as_recorded(bus: Path) -> None:
    out = cli("route", "site-1", "site-2", "-c", str(bus / "server.toml"), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["route"] == ["site-1", "server", "site-2"]
    assert data["back"] == ["site-2", "server", "site-1"]
    assert data["rtt_us"] > 0

    out = cli("route", "site-1", "server", "-c", str(bus / "site-2.toml"))
    assert out.returncode == 0, out.stderr
    assert "route: site-1 -> server" in out.stdout


def test_errors_are_short_and_typed(bus: Path, tmp_path: Path) -> None:
    out = cli("route", "site-1", "nobody", "-c", str(bus / "server.toml"))
    assert out.returncode == 1 and "Unreachable" in out.stderr and "Traceback" not in out.stderr
    out = cli("status", "-c", str(bus / "server.toml"), "--cell", "ghost")
    assert out.returncode == 1 and "Unreachable" in out.stderr
    out = cli("route", "site-1", "Not A Name", "-c", str(bus / "server.toml"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    # A site config whose cell is not running: the tool says so.
    write_config(
        tmp_path / "site-3.toml",
        f'[cell]\nname = "site-3"\nparent = {json.dumps(_parent(bus))}\n',
    )
    out = cli("status", "-c", str(tmp_path / "site-3.toml"))
    assert out.returncode == 1 and "site-3 is not running" in out.stderr


def _parent(bus: Path) -> str:
    text = (bus / "site-1.toml").read_text()
    return text.split('parent = "', 1)[1].split('"', 1)[0]
