"""``cellnet send-file`` and ``cellnet receive`` (and a streamed ``cellnet ping``)
between real processes over TCP on loopback.

The server relays; site-2 runs ``cellnet receive DIR``; the commands run from
site-1's config, so every file and ping crosses the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cellnet.files import LOCK_NAME, UnsafeName, safe_name
from tests.helpers import Proc, cellnet_cmd, free_port, run_cellnet, wait_output, wait_port, write_config
from tests.proxy import FaultProxy


@dataclass
class Bus:
    tmp: Path
    inbox: Path
    site1: Path  # the config the commands run with
    receiver: Proc
    port: int  # the server's


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    tmp = tmp_path_factory.mktemp("files")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    write_config(tmp / "server.toml", f'[cell]\nname = "server"\nlisten = ["{url}"]\n')
    for site in ("site-1", "site-2"):
        write_config(
            tmp / f"{site}.toml",
            f'[cell]\nname = "{site}"\nparent = "{url}"\n'
            "[timeouts]\nbackoff_initial = 0.05\nbackoff_max = 0.5\ntransfer_resume = 3\n",
        )
    inbox = tmp / "inbox"
    server = Proc(cellnet_cmd("run", "-c", str(tmp / "server.toml")), tmp / "server.log")
    procs = [server]
    try:
        wait_port(port, proc=server.popen)
        receiver = Proc(cellnet_cmd("receive", str(inbox), "-c", str(tmp / "site-2.toml")), tmp / "site-2.log")
        procs.append(receiver)
        wait_output(receiver, "site-2: linked to server")
        yield Bus(tmp, inbox, tmp / "site-1.toml", receiver, port)
    finally:
        for proc in procs:
            proc.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Files in progress the receiver failed to clean up."""
    return sorted(p.name for p in folder.iterdir()
                  if (p.name.startswith(".") or p.name.endswith(".partial")) and p.name != LOCK_NAME)


def test_a_large_file_arrives_byte_identical(bus: Bus) -> None:
    src = bus.tmp / "model.bin"
    src.write_bytes(os.urandom(40 * 1024 * 1024))
    digest = sha256(src)
    out = run_cellnet("send-file", str(src), "site-2", "-c", str(bus.site1))
    assert out.returncode == 0, out.stderr
    assert f"sha256: {digest}" in out.stdout
    assert "route: site-1 -> server -> site-2" in out.stdout
    assert "MB/s" in out.stdout
    stored = bus.inbox / "model.bin"
    assert stored.stat().st_size == src.stat().st_size and sha256(stored) == digest
    assert leftovers(bus.inbox) == []
    wait_output(bus.receiver, f"received model.bin (41943040 bytes, sha256 {digest}) from site-1")


async def test_ctrl_c_stops_the_transfer_and_the_receiver_keeps_nothing(bus: Bus) -> None:
    # Through a proxy throttled to 4 MB/s, 24 MiB take about 6 s: SIGINT lands mid-transfer.
    proxy = FaultProxy(bus.port, rate=4e6)
    await proxy.open()
    slow = bus.tmp / "site-9.toml"
    write_config(slow, f'[cell]\nname = "site-9"\nparent = "tcp://127.0.0.1:{proxy.port}"\n')
    src = bus.tmp / "interrupted.bin"
    src.write_bytes(os.urandom(24 * 1024 * 1024))
    proc = await asyncio.create_subprocess_exec(
        *cellnet_cmd("send-file", str(src), "site-2", "-c", str(slow)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not leftovers(bus.inbox):  # the receiver has begun its hidden partial file
            assert time.monotonic() < deadline and proc.returncode is None, "the transfer did not start"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proxy.shut()
    assert proc.returncode == 130, err.decode()
    assert "interrupted: interrupted.bin was not sent; site-2 discards the part it got" in err.decode()
    assert b"sha256" not in out
    # The receiver removes the partial file: at once when the sender's abort
    # reaches it, else once the sender has been silent for transfer_resume (3 s).
    deadline = time.monotonic() + 8
    while leftovers(bus.inbox) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert leftovers(bus.inbox) == []
    assert not (bus.inbox / "interrupted.bin").exists()


def test_a_name_leaving_the_folder_is_refused(bus: Bus) -> None:
    src = bus.tmp / "payload.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    before = sorted(p.name for p in bus.tmp.iterdir())
    out = run_cellnet("send-file", str(src), "site-2", "-c", str(bus.site1), "--name", "../escaped.bin", "--json")
    assert out.returncode == 1, out.stderr
    error = json.loads(out.stdout)
    assert error["error"] == "RemoteError" and "path separator" in error["message"]
    assert sorted(p.name for p in bus.tmp.iterdir()) == before  # nothing written beside the inbox
    assert not (bus.inbox / "escaped.bin").exists() and leftovers(bus.inbox) == []


def test_an_existing_file_is_not_overwritten(bus: Bus) -> None:
    kept = bus.inbox / "report.csv"
    kept.write_bytes(b"the receiver's own copy\n")
    src = bus.tmp / "report.csv"
    src.write_bytes(os.urandom(2 * 1024 * 1024))
    out = run_cellnet("send-file", str(src), "site-2", "-c", str(bus.site1))
    assert out.returncode == 1
    assert "exists" in out.stderr and "not overwritten" in out.stderr
    assert kept.read_bytes() == b"the receiver's own copy\n"
    assert leftovers(bus.inbox) == []


def test_a_streamed_ping_is_relayed(bus: Bus) -> None:
    out = run_cellnet("ping", "site-2", "-c", str(bus.site1), "--size", "64MiB", "--count", "1", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["route"] == ["site-1", "server", "site-2"]
    assert result["size"] == 64 * 1024 * 1024 and result["count"] == 1
    assert result["mb_per_s"] > 0


def test_a_missing_file_is_a_usage_error(bus: Bus) -> None:
    out = run_cellnet("send-file", str(bus.tmp / "absent.bin"), "site-2", "-c", str(bus.site1))
    assert out.returncode == 2
    assert "no such file" in out.stderr


@pytest.mark.parametrize("name", ["..", ".", "...", "a/b", "..\\b", ".hidden", "", "tab\tname", "x" * 256])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeName):
        safe_name(name)


@pytest.mark.parametrize("name", ["model.bin", "a..b", "résumé.pdf", "x" * 255])
def test_plain_names_are_kept(name: str) -> None:
    assert safe_name(name) == name


async def test_serving_a_folder_removes_leftovers_of_a_killed_receiver(tmp_path: Path) -> None:
    from cellnet.cell import Cell
    from cellnet.files import serve_files

    left = tmp_path / (".model.bin." + "ab" * 16 + ".partial")
    left.write_bytes(b"half")
    keep = tmp_path / ".profile"
    keep.write_bytes(b"mine")
    serve_files(Cell("site-2", listen=["tcp://127.0.0.1:0"]), tmp_path)
    assert not left.exists() and keep.exists()


async def test_one_receiver_per_folder(tmp_path: Path) -> None:
    from cellnet.cell import Cell
    from cellnet.files import FolderInUse, serve_files

    first = serve_files(Cell("site-2", listen=["tcp://127.0.0.1:0"]), tmp_path)
    in_progress = tmp_path / (".model.bin." + "cd" * 16 + ".partial")  # the first one's, arriving
    in_progress.write_bytes(b"half")
    with pytest.raises(FolderInUse, match=rf"already served by another receiver \(pid {os.getpid()}\)"):
        serve_files(Cell("site-3", listen=["tcp://127.0.0.1:0"]), tmp_path)
    assert in_progress.exists()  # not taken for a leftover
    first.close()
    again = serve_files(Cell("site-3", listen=["tcp://127.0.0.1:0"]), tmp_path)
    assert not in_progress.exists()  # now it is one: its receiver is gone
    assert (tmp_path / LOCK_NAME).exists()
    again.close()


def test_a_second_receive_on_the_folder_exits_and_the_first_keeps_serving(bus: Bus) -> None:
    other = bus.tmp / "site-3.toml"
    write_config(other, f'[cell]\nname = "site-3"\nparent = "tcp://127.0.0.1:{bus.port}"\n')
    out = run_cellnet("receive", str(bus.inbox), "-c", str(other), timeout=30)
    assert out.returncode == 2, out.stderr
    assert f"is already served by another receiver (pid {bus.receiver.popen.pid})" in out.stderr
    src = bus.tmp / "after.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    sent = run_cellnet("send-file", str(src), "site-2", "-c", str(bus.site1))
    assert sent.returncode == 0, sent.stderr
    assert sha256(bus.inbox / "after.bin") == sha256(src)


def test_send_file_to_a_cell_that_does_not_receive_says_so(bus: Bus) -> None:
    src = bus.tmp / "nowhere.bin"
    src.write_bytes(b"x" * 100)
    out = run_cellnet("send-file", str(src), "server", "-c", str(bus.site1), "--name", "else.bin")
    assert out.returncode == 1
    assert "send-file else.bin to server failed: NoHandler" in out.stderr
    assert "(is `cellnet receive` running on server?)" in out.stderr


async def test_a_file_changed_while_it_is_sent_is_reported(tmp_path: Path) -> None:
    from cellnet.cell import Cell
    from cellnet.files import FileChanged, send_file, serve_files

    server = Cell("server", listen=["tcp://127.0.0.1:0"])
    await server.start()
    url = server.listen_addresses[0]
    site1, site2 = Cell("site-1", parent=url), Cell("site-2", parent=url)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    served = serve_files(site2, inbox)
    try:
        for cell in (site1, site2):
            await cell.start(wait_parent=5)
        src = tmp_path / "log.bin"
        src.write_bytes(os.urandom(4 * 1024 * 1024))

        def grow(done: int, total: int | None) -> None:
            if done and src.stat().st_size == total:
                with open(src, "ab") as f:  # the file grows behind the sender's back
                    f.write(b"more")

        with pytest.raises(FileChanged, match=r"log.bin changed while it was being sent; site-2 stored"):
            await send_file(site1, "site-2", src, progress=grow)
        assert (inbox / "log.bin").stat().st_size == 4 * 1024 * 1024  # what it received, whole
    finally:
        served.close()
        for cell in (site1, site2, server):
            await cell.aclose()
