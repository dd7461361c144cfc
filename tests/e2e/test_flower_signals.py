"""``cellnet flower run`` stopped by a signal mid-run leaves nothing behind:
Ctrl-C (SIGINT), SIGTERM, and SIGHUP (a closed terminal or SSH session)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "examples" / "flower-digits"


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(int(entry.name))
    return found


@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["int", "term", "hup"]
)
def test_signal_mid_run_stops_everything(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    workdir = tmp_path / "run"
    out = (tmp_path / "out.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellnet", "flower", "run", str(APP), "--clients", "2", "--workdir", str(workdir)],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        # A default SIGINT disposition, as in an interactive shell.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while b"round 1/" not in (tmp_path / "out.log").read_bytes():
            assert proc.poll() is None, (tmp_path / "out.log").read_text()
            assert time.monotonic() < deadline, "round 1 never started"
            time.sleep(0.2)
        assert processes_mentioning(str(workdir)), "the federation's processes should be running"
        proc.send_signal(sig)
        assert proc.wait(60) == code, (tmp_path / "out.log").read_text()
        left = processes_mentioning(str(workdir))
        assert left == [], f"left behind: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in processes_mentioning(str(workdir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out.close()


def test_not_a_flower_app_fails_before_anything_starts(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cellnet", "flower", "run", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "not a Flower app" in out.stderr and "Traceback" not in out.stderr
    assert "cellnet flower run" not in out.stdout  # no header: nothing was started
