"""``cellnet run`` as a process: a second cell with a name already linked stops."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.helpers import Proc, cellnet_cmd, free_port, wait_output, wait_port, write_config

FAST = "[timeouts]\nheartbeat_interval = 0.3\nheartbeat_timeout = 1.0\nconnect = 1.0\nbackoff_initial = 0.05\nbackoff_max = 0.2\n"


def server_and_first(tmp_path: Path, procs: list[Proc]) -> Proc:
    """A server and a first ``site-2`` linked to it (both appended to ``procs``)."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    write_config(tmp_path / "server.toml", f'[cell]\nname = "server"\nlisten = ["{url}"]\n{FAST}')
    write_config(tmp_path / "site-2.toml", f'[cell]\nname = "site-2"\nparent = "{url}"\n{FAST}')
    server = Proc(cellnet_cmd("run", "-c", str(tmp_path / "server.toml")), tmp_path / "server.log")
    procs.append(server)
    wait_port(port, proc=server.popen)
    first = Proc(cellnet_cmd("run", "-c", str(tmp_path / "site-2.toml")), tmp_path / "first.log")
    procs.append(first)
    wait_output(first, "site-2: linked to server")
    return first


def test_a_second_cell_of_a_linked_name_stops_with_an_error(tmp_path: Path) -> None:
    procs: list[Proc] = []
    try:
        first = server_and_first(tmp_path, procs)
        t0 = time.monotonic()
        second = subprocess.run(cellnet_cmd("run", "-c", str(tmp_path / "site-2.toml")),
                                capture_output=True, text=True, timeout=30)
        took = time.monotonic() - t0
        assert second.returncode == 1, second.stderr
        assert "is already linked to server; still after 2 s: is another site-2 running?" in second.stderr
        assert took < 10  # heartbeat_timeout + connect, then it stops
        assert first.popen.poll() is None  # the first one goes on
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_a_cell_restarted_while_its_predecessor_hangs_waits_it_out(tmp_path: Path) -> None:
    procs: list[Proc] = []
    try:
        first = server_and_first(tmp_path, procs)
        # Frozen, its socket open (a host that hung): the server holds the
        # name until its heartbeat timeout, and refuses the new run meanwhile.
        first.kill(signal.SIGSTOP)
        again = Proc(cellnet_cmd("run", "-c", str(tmp_path / "site-2.toml")), tmp_path / "again.log")
        procs.append(again)
        wait_output(again, "refused the name", timeout=10)
        wait_output(again, "site-2: linked to server", timeout=10)
        time.sleep(2.5)  # past the grace: the refusals at the start must not stop it
        assert again.popen.poll() is None
        first.kill(signal.SIGKILL)
    finally:
        for proc in reversed(procs):
            proc.stop()
