"""Three hosts in network namespaces: a server and two sites.

* ``switched``: all three on one bridge; the sites reach each other and
  upgrade to a direct link.
* ``split``: each site has a cable to the server only; the sites cannot
  reach each other, the direct dial fails, and everything still works
  through the relay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Proc, write_config
from tests.netns import Hosts, skip_reason

pytestmark = pytest.mark.timeout(120)

REASON = skip_reason()
if REASON is not None:
    if os.environ.get("CI"):
        raise RuntimeError(f"multi-host tests cannot run in CI: {REASON}")
    pytestmark = [pytestmark, pytest.mark.skip(reason=REASON)]  # type: ignore[list-item]

PORT = 8002
SITE_PORT = 8003

# Addresses per scenario: the server's as the sites see it, and each site's.
TOPOLOGIES = {
    "switched": {"server": "198.18.0.1", "site-1": "198.18.0.2", "site-2": "198.18.0.3"},
    "split": {"server": "198.18.1.1", "site-1": "198.18.1.2", "site-2": "198.18.2.2"},
}


class Net:
    def __init__(self, tmp: Path, layout: str) -> None:
        self.tmp = tmp
        self.layout = layout
        self.addr = TOPOLOGIES[layout]
        self.hosts = Hosts()
        self.procs: list[Proc] = []
        for host in ("server", "site-1", "site-2"):
            self.hosts.add(host)
        if layout == "switched":
            self.hosts.switch(
                "server", "198.18.0.1/24", [("site-1", "198.18.0.2/24"), ("site-2", "198.18.0.3/24")]
            )
        else:
            self.hosts.wire("server", "198.18.1.1/24", "site-1", "198.18.1.2/24")
            self.hosts.wire("server", "198.18.2.1/24", "site-2", "198.18.2.2/24")
        server = self.addr["server"]
        # In the split layout each site reaches the server on its own cable.
        write_config(tmp / "server.toml", '[cell]\nname = "server"\nlisten = ["tcp://0.0.0.0:%d"]\n' % PORT)
        for site in ("site-1", "site-2"):
            parent = server if layout == "switched" else self.addr[site].rsplit(".", 1)[0] + ".1"
            write_config(
                tmp / f"{site}.toml",
                f'[cell]\nname = "{site}"\nparent = "tcp://{parent}:{PORT}"\n'
                f'listen = ["tcp://0.0.0.0:{SITE_PORT}"]\n'
                f'advertise = ["tcp://{self.addr[site]}:{SITE_PORT}"]\n'
                '[policy]\ndirect = ["site-*"]\n'
                "[timeouts]\nconnect = 1.0\nbackoff_initial = 0.05\nbackoff_max = 0.5\ndirect_retry = 0.5\n",
            )

    def start(self, host: str) -> None:
        argv = self.hosts.run(host, [sys.executable, "-m", "cellnet", "run", "-c", str(self.tmp / f"{host}.toml")])
        self.procs.append(Proc(argv, self.tmp / f"{host}.log"))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = self.hosts.run("server", [sys.executable, "-m", "cellnet", *args, "-c", str(self.tmp / "server.toml")])
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    def route(self, src: str, dst: str) -> list[str] | None:
        out = self.cli("route", src, dst, "--json")
        return json.loads(out.stdout)["route"] if out.returncode == 0 else None

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.hosts.close()


@pytest.fixture
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Net]:
    n = Net(tmp_path, request.param)
    try:
        for host in ("server", "site-1", "site-2"):
            n.start(host)
        deadline = time.monotonic() + 20
        while n.route("site-1", "site-2") is None:  # both sites linked
            assert time.monotonic() < deadline, "the sites never linked to the server"
        yield n
    finally:
        n.close()


def _logged(net: Net, host: str, text: str) -> int:
    return (net.tmp / f"{host}.log").read_text(errors="replace").count(text)


@pytest.mark.parametrize("net", ["switched"], indirect=True)
def test_sites_on_one_network_upgrade_to_a_direct_link(net: Net) -> None:
    deadline = time.monotonic() + 20
    while (seen := net.route("site-1", "site-2")) != ["site-1", "site-2"]:
        assert time.monotonic() < deadline, f"no direct link; route stayed {seen}"
    assert net.route("site-2", "site-1") == ["site-2", "site-1"]
    out = net.cli("status", "--cell", "site-2", "--json")
    links = {link["peer"]: link for link in json.loads(out.stdout)["links"]}
    assert links["site-1"]["role"] == "direct"
    assert links["site-1"]["url"].startswith("tcp://198.18.0.")


@pytest.mark.parametrize("net", ["split"], indirect=True)
def test_sites_that_cannot_reach_each_other_stay_relayed(net: Net) -> None:
    for _ in range(10):
        assert net.route("site-1", "site-2") == ["site-1", "server", "site-2"]
        assert net.route("site-2", "site-1") == ["site-2", "server", "site-1"]
    # The failed dial was logged once per side, not once per message.
    failures = _logged(net, "site-1", "traffic stays relayed") + _logged(net, "site-2", "traffic stays relayed")
    assert 1 <= failures <= 2, failures
