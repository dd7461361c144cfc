"""Helpers for tests that start real processes: free ports, configs, process groups."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from cellnet.cell import Cell


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"port {port} not open after {timeout} s")


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class Proc:
    """A child process in its own process group, stopped by PID."""

    def __init__(self, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._fh = open(log, "wb")
        self.popen = subprocess.Popen(
            list(args),
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        self.pid = self.popen.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.popen.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait(timeout)
        self.kill(signal.SIGKILL)  # anything left in the group
        self._fh.close()
        return self.popen.returncode

    def output(self) -> str:
        self._fh.flush()
        return self.log.read_text(errors="replace")


def cellnet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cellnet", *args]


async def until_reachable(cell: "Cell", dst: str, timeout: float = 15.0) -> None:
    """Echo ``dst`` from ``cell`` until it answers; raise the last error after ``timeout``."""
    import asyncio

    from cellnet.errors import CellnetError

    deadline = time.monotonic() + timeout
    while True:
        try:
            await cell.request(dst, "cellnet", "echo", b"", timeout=1.0)
            return
        except CellnetError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def run_cellnet(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run one ``cellnet`` command to completion; stdout and stderr as text."""
    return subprocess.run(cellnet_cmd(*args), capture_output=True, text=True, timeout=timeout)


def wait_output(proc: Proc, text: str, timeout: float = 10.0) -> None:
    """Wait until ``text`` appears in the output of ``proc``."""
    deadline = time.monotonic() + timeout
    while text not in proc.output():
        if proc.popen.poll() is not None:
            raise RuntimeError(f"process exited with {proc.popen.returncode}:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in the output after {timeout} s:\n{proc.output()}")
        time.sleep(0.02)
