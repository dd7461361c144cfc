"""Direct links between cells in separate processes over TCP on loopback:
upgrade, fallback to the relay when a site dies, a new upgrade when it comes
back on another address."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Proc, cellnet_cmd, free_port, wait_port, write_config

pytestmark = pytest.mark.timeout(90)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cellnet_cmd(*args), capture_output=True, text=True, timeout=30)


class Sites:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.procs: dict[str, Proc] = {}
        url = f"tcp://127.0.0.1:{self.port}"
        write_config(tmp / "server.toml", f'[cell]\nname = "server"\nlisten = ["{url}"]\n')
        for site in ("site-1", "site-2"):
            self.write_site(site, free_port())

    def write_site(self, site: str, port: int) -> None:
        write_config(
            self.tmp / f"{site}.toml",
            f'[cell]\nname = "{site}"\nparent = "tcp://127.0.0.1:{self.port}"\n'
            f'listen = ["tcp://127.0.0.1:{port}"]\n'
            '[policy]\ndirect = ["site-*"]\n'
            "[timeouts]\nbackoff_initial = 0.05\nbackoff_max = 0.3\n"
            "direct_retry = 0.2\nheartbeat_interval = 0.5\nheartbeat_timeout = 2.0\n",
        )

    def start(self, name: str) -> None:
        self.procs[name] = Proc(cellnet_cmd("run", "-c", str(self.tmp / f"{name}.toml")), self.tmp / f"{name}.log")

    def route(self, src: str, dst: str) -> list[str] | None:
        out = cli("route", src, dst, "-c", str(self.tmp / "server.toml"), "--json")
        return json.loads(out.stdout)["route"] if out.returncode == 0 else None

    def until_route(self, src: str, dst: str, expected: list[str], budget: float = 20.0) -> None:
        deadline = time.monotonic() + budget
        seen = None
        while time.monotonic() < deadline:
            seen = self.route(src, dst)
            if seen == expected:
                return
        pytest.fail(f"route {src} -> {dst} stayed {seen}, expected {expected}")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    s = Sites(tmp_path)
    try:
        s.start("server")
        wait_port(s.port, proc=s.procs["server"].popen)
        s.start("site-1")
        s.start("site-2")
        yield s
    finally:
        s.stop()


def test_sites_upgrade_fall_back_and_upgrade_again_on_a_new_address(sites: Sites) -> None:
    # The first messages go through the server; then the direct link is up.
    sites.until_route("site-1", "site-2", ["site-1", "site-2"])
    assert sites.route("site-2", "site-1") == ["site-2", "site-1"]
    out = cli("status", "-c", str(sites.tmp / "site-1.toml"), "--json")
    links = {link["peer"]: link for link in json.loads(out.stdout)["links"]}
    assert links["site-2"]["role"] == "direct" and links["server"]["role"] == "parent"

    # site-2 dies: site-1 reaches nothing there, through the relay it fails fast.
    sites.procs["site-2"].kill()
    sites.procs["site-2"].popen.wait(5)
    out = cli("route", "site-1", "site-2", "-c", str(sites.tmp / "server.toml"))
    assert out.returncode == 1

    # site-2 comes back on another port: relayed first, then direct again.
    sites.write_site("site-2", free_port())
    sites.start("site-2")
    sites.until_route("site-1", "site-2", ["site-1", "site-2"])


def test_without_policy_everything_stays_relayed(tmp_path: Path) -> None:
    s = Sites(tmp_path)
    for site in ("site-1", "site-2"):  # the same sites, without [policy]
        text = (tmp_path / f"{site}.toml").read_text().replace('[policy]\ndirect = ["site-*"]\n', "")
        (tmp_path / f"{site}.toml").write_text(text)
    try:
        s.start("server")
        wait_port(s.port, proc=s.procs["server"].popen)
        s.start("site-1")
        s.start("site-2")
        s.until_route("site-1", "site-2", ["site-1", "server", "site-2"])
        for _ in range(3):
            assert s.route("site-1", "site-2") == ["site-1", "server", "site-2"]
    finally:
        s.stop()
