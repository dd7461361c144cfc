"""The benchmarks' child processes, each started in its own session and stopped
by its PID (:class:`Procs`), the signals that interrupt a run
(:class:`Interrupts`), and the progress bar and failure lines they print."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class BenchError(Exception):
    pass


# -- processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Interrupts:
    """SIGINT and SIGTERM while a benchmark runs (a context manager).

    The first one raises :class:`KeyboardInterrupt`, so the run unwinds and
    stops its child processes; the ones after it are ignored until the
    block ends, so that cleanup runs to the end even when two signals come
    at once (Ctrl-C reaching both ``timeout`` and us, or pressed twice).
    Every child is stopped within a few seconds (SIGKILL after a grace), so
    ignoring them cannot hang the exit. :attr:`exit_code` is the shell's
    code for the first signal (130 for SIGINT, 143 for SIGTERM), or None.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:
            return  # already stopping
        self.signum = signum
        raise KeyboardInterrupt

    def __enter__(self) -> Interrupts:
        self._old = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Procs:
    """Child processes, each stopped by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, label: str, args: list[str], stop_signal: int = signal.SIGTERM) -> subprocess.Popen[bytes]:
        log = self.folder / f"{label}.log"
        with open(log, "wb") as out:
            # Own session: a Ctrl-C in the terminal reaches only us; we stop them.
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        proc.stop_signal = stop_signal  # type: ignore[attr-defined]
        self.procs.append((label, proc, log))
        return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        """Wait for one of our processes to exit by itself; stop it if it does
        not within ``timeout`` or if the wait is interrupted. Either way it is
        no longer ours afterwards. True if it exited by itself."""
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
        finally:
            self.stop(proc)  # a no-op when it exited; Ctrl-C must not leave it running
            self.procs = [p for p in self.procs if p[1] is not proc]

    def check_alive(self) -> None:
        for label, proc, log in self.procs:
            if proc.poll() is not None:
                raise BenchError(f"{label} (pid {proc.pid}) exited with {proc.returncode}: {tail(log)}")

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, getattr(proc, "stop_signal", signal.SIGTERM))
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def quit_worker(self, worker: subprocess.Popen[bytes]) -> None:
        """Ask a measuring worker (which reads commands on stdin) to quit; once
        it exits cleanly it is no longer one of ours to stop. Then check the rest."""
        assert worker.stdin is not None
        worker.stdin.write(b"quit\n")
        worker.stdin.flush()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(15)
        if worker.returncode == 0:
            self.procs = [p for p in self.procs if p[1] is not worker]
        self.check_alive()

    def record_failure(self, group: dict[str, Any], exc: Exception) -> None:
        """Put a failed group's error and the tail of every log into its record."""
        group["error"] = f"{type(exc).__name__}: {exc}"
        group["logs"] = {label: tail(log, 30) for label, _proc, log in self.procs}

    @contextlib.contextmanager
    def guard(self, group: dict[str, Any]) -> Iterator[None]:
        """Run one group of measurements: an exception ends it and is put into
        ``group`` with the tail of every log (the other groups still run), and
        every process is stopped at the end, notes on unclean exits in
        ``group["stop_notes"]``. An interrupt goes on after the stop."""
        try:
            yield
        except Exception as exc:  # reported; the rest of the run still stands
            self.record_failure(group, exc)
        finally:
            notes = self.stop_all()
            if notes:
                group["stop_notes"] = notes

    def stop_all(self) -> list[str]:
        """Stop every process, newest first; return notes on unclean exits.

        An interrupt (Ctrl-C) that lands while one is being stopped does not
        spare the others: each is still stopped, then the interrupt goes on."""
        notes = []
        interrupted: BaseException | None = None
        for label, proc, _log in reversed(self.procs):
            running = proc.poll() is None
            t0 = time.monotonic()
            try:
                self.stop(proc)
            except KeyboardInterrupt as exc:
                interrupted = exc
                self.stop(proc)  # the interrupt cut its wait short
            took = time.monotonic() - t0
            if running and (proc.returncode not in (0, -signal.SIGTERM, -signal.SIGINT) or took > 2.0):
                notes.append(f"{label} exit code {proc.returncode} after stop ({took:.1f} s)")
        self.procs.clear()
        if interrupted is not None:
            raise interrupted
        return notes


def progress_bar(console: Any, show: bool, remaining: bool = True) -> Any:
    """The benchmarks' progress bar (``rich.progress.Progress``): what runs, done/total, elapsed, remaining."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description:<42}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), *([TimeRemainingColumn()] if remaining else [])]
    return Progress(*columns, console=console, disable=not show)


def print_failure(console: Any, what: str, group: dict[str, Any]) -> None:
    """A failed group's error and the tails of its logs (:meth:`Procs.record_failure`), if it failed."""
    if "error" not in group:
        return
    console.print(f"[red]{what}:[/] {group['error']}", highlight=False)
    for label, text in group.get("logs", {}).items():
        console.print(f"  --- {label}:\n{text}", highlight=False, markup=False)


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


def run_json(procs: Procs, label: str, args: list[str], timeout: float,
             stop_signal: int = signal.SIGTERM) -> dict[str, Any]:
    """Run a command that prints one JSON line; return it parsed."""
    proc = procs.start(label, args, stop_signal)
    log = procs.folder / f"{label}.log"
    if not procs.wait(proc, timeout):
        raise BenchError(f"{label} timed out after {timeout:g} s: {tail(log)}")
    if proc.returncode != 0:
        raise BenchError(f"{label} failed with exit code {proc.returncode}: {tail(log)}")
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise BenchError(f"{label} printed no JSON: {tail(log)}")
