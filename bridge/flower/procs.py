"""Start, watch and stop the local processes of a federation.

Flower processes spawn their own children (SuperLink -> ``flower-superexec``
-> ``flwr-serverapp``, SuperNode -> ``flower-superexec`` -> ``flwr-clientapp``),
and the SuperLink starts its SuperExec in a *new session*. Stopping only the
process we started, or only its process group, can therefore leave workers
behind. :class:`ProcessGroup` handles this:

* every process starts in its own session (``start_new_session=True``), so a
  terminal's Ctrl-C reaches only us and we decide the stop order;
* every process gets an environment tag (``CELLNET_PROCESS_TAG``) that its
  descendants inherit, so on Linux we can find all of them through ``/proc``
  even after they were re-parented or moved to another session;
* stopping sends SIGTERM to every group involved, waits, then SIGKILLs
  whatever is left, and reports any survivor.

Readiness is observed, never slept on: :meth:`ProcessGroup.wait_port` polls a
TCP port while watching that the process is still alive, and a process that
dies during start-up raises :class:`~.errors.ProcessFailed` with the tail of
its log (:class:`~.errors.PortInUse` if its port was taken).

Each process writes stdout and stderr to ``<log_dir>/<name>.log`` and, if
asked, gets its own ``FLWR_HOME`` folder. ``PATH`` starts with the folder of
the Python interpreter, because Flower finds ``flower-superexec`` and friends
on ``PATH`` and a venv is often used without being activated.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .errors import PortInUse, ProcessFailed, StartupTimeout

TAG_VARIABLE = "CELLNET_PROCESS_TAG"
"""Environment variable that marks every process started by a group, and its
descendants."""

LOCALHOST = "127.0.0.1"
LOG_TAIL_LINES = 40
DEFAULT_STOP_TIMEOUT = 10.0

_Check = Callable[[], Awaitable[bool]]
_ArgvForPort = Callable[[int], Sequence[str]]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ADDRESS_IN_USE = re.compile(
    r"address already in use|errno 98\b|errno 48\b|eaddrinuse|"
    r"only one usage of each socket address",
    re.IGNORECASE,
)


# -- ports -------------------------------------------------------------------


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """True if ``host:port`` can be bound right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """Hands out free TCP ports, never the same one twice in this process.

    Ports come from below the kernel's ephemeral range (on Linux
    ``net.ipv4.ip_local_port_range``, usually from 32768 up), where neither
    ``bind(port 0)`` nor outgoing connections take them, so other programs
    that pick free ports the usual way cannot race us for them. Each port is
    checked free just before it is handed out, and the ports handed out are
    remembered process-wide, so concurrent federations in one process never
    share one. Another process can still take a port before our server binds
    it: the caller detects that (:class:`~.errors.PortInUse`) and asks for
    another one.
    """

    _given: set[int] = set()
    """Ports handed out by any allocator of this process."""

    def __init__(self, host: str = LOCALHOST, *, seed: int | None = None) -> None:
        self.host = host
        self._random = random.Random(seed)
        low = _ephemeral_low()
        self._range = (max(_LOWEST_PORT, low - _RANGE_SIZE), low) if low > _LOWEST_PORT + 1000 else None

    def take(self) -> int:
        for _ in range(200):
            port = self._candidate()
            if port not in self._given and port_is_free(port, self.host):
                self._given.add(port)
                return port
        raise OSError(errno.EADDRINUSE, f"no free port found on {self.host}")

    def _candidate(self) -> int:
        if self._range is not None:
            return self._random.randrange(*self._range)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((self.host, 0))
            return int(sock.getsockname()[1])


_LOWEST_PORT = 10000
_RANGE_SIZE = 12000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (0 where unknown)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 0


async def port_accepts(port: int, host: str = LOCALHOST, timeout: float = 1.0) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


# -- /proc helpers (Linux); elsewhere they return nothing and we fall back to
# -- the process groups we started ----------------------------------------------


@dataclass(frozen=True)
class _ProcInfo:
    pid: int
    ppid: int
    pgid: int
    zombie: bool


def _proc_info(pid: int) -> _ProcInfo | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return _ProcInfo(pid, int(fields[1]), int(fields[2]), fields[0] in ("Z", "X"))


def _all_pids() -> list[int]:
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def _has_tag(pid: int, tag: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{TAG_VARIABLE}={tag}".encode() in environ.split(b"\0")


def tagged_processes(tag: str) -> list[int]:
    """Live (non-zombie) processes that carry ``tag``, on Linux; else ``[]``."""
    pids = []
    for pid in _all_pids():
        if pid == os.getpid() or not _has_tag(pid, tag):
            continue
        info = _proc_info(pid)
        if info is not None and not info.zombie:
            pids.append(pid)
    return pids


def _group_alive(pgid: int) -> bool:
    """True if the process group still has a live (non-zombie) member."""
    if Path("/proc/self/stat").exists():
        for pid in _all_pids():
            info = _proc_info(pid)
            if info is not None and info.pgid == pgid and not info.zombie:
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# -- processes -----------------------------------------------------------------


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, without colour codes."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - 64 * 1024))
            data = file.read()
    except OSError:
        return ""
    text = _ANSI.sub("", data.decode("utf-8", errors="replace"))
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """A process started by a :class:`ProcessGroup`; the leader of its own group."""

    name: str
    argv: tuple[str, ...]
    log_path: Path
    popen: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def pgid(self) -> int:
        # start_new_session=True makes the child the leader of a new group.
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return read_log_tail(self.log_path, lines)

    def failure(self, reason: str | None = None, port: int | None = None) -> ProcessFailed:
        """The error to raise for this process having died (or hung) at start-up."""
        tail = self.log_tail()
        if port is not None and _ADDRESS_IN_USE.search(tail):
            return PortInUse(self.name, port, tail)
        if reason is None:
            reason = f"exited with code {self.returncode} during start-up"
        return ProcessFailed(self.name, reason, tail)


class ProcessGroup:
    """Starts processes and guarantees that all of them are stopped.

    Use it as a context manager (sync or async); leaving the block for any
    reason (an exception, ``KeyboardInterrupt``, task cancellation) stops
    every process it started and their descendants. An ``atexit`` hook covers
    interpreter exit while the group is still open.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        python: str | Path | None = None,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.tag = uuid.uuid4().hex
        self.stop_timeout = stop_timeout
        # Do not resolve symlinks: a venv's bin/python links to the base
        # interpreter, and it is the venv's bin folder we want on PATH.
        self.bin_dir = Path(python or sys.executable).parent
        self._env = dict(env or {})
        self._procs: list[ManagedProcess] = []
        self._accepting = True
        self._closed = False
        self.leftovers: list[int] = []

    # -- starting ------------------------------------------------------------

    @property
    def processes(self) -> tuple[ManagedProcess, ...]:
        return tuple(self._procs)

    def environment(
        self, extra: Mapping[str, str] | None = None, flwr_home: Path | None = None
    ) -> dict[str, str]:
        """The environment a started process gets."""
        env = dict(os.environ)
        env.update(self._env)
        env.update(extra or {})
        env["PATH"] = os.pathsep.join(p for p in (str(self.bin_dir), env.get("PATH", "")) if p)
        # Unbuffered output keeps log files current, which the log tails in
        # errors and the live progress of `flwr run --stream` rely on.
        env.setdefault("PYTHONUNBUFFERED", "1")
        if flwr_home is not None:
            env["FLWR_HOME"] = str(flwr_home)
        env[TAG_VARIABLE] = self.tag
        return env

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        flwr_home: Path | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session, logging to ``<log_dir>/<name>.log``.

        If ``flwr_home`` is given, the folder is created and exported as
        ``FLWR_HOME``, so that the process keeps its Flower state apart.
        """
        if not self._accepting:
            raise RuntimeError("the process group is closed")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if flwr_home is not None:
            flwr_home.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(env, flwr_home),
                cwd=cwd,
                start_new_session=True,
            )
        proc = ManagedProcess(name, tuple(argv), log_path, popen)
        self._procs.append(proc)
        return proc

    async def wait_port(
        self,
        proc: ManagedProcess,
        port: int,
        *,
        host: str = LOCALHOST,
        timeout: float = 60.0,
    ) -> None:
        """Return once ``host:port`` accepts connections.

        Raises :class:`~.errors.ProcessFailed` (or :class:`~.errors.PortInUse`)
        if ``proc`` exits first, and :class:`~.errors.StartupTimeout` if the
        port is not ready within ``timeout`` seconds.
        """
        await self.wait_until(
            proc,
            lambda: port_accepts(port, host),
            what=f"listening on {host}:{port}",
            timeout=timeout,
            port=port,
        )
        # Someone else may hold the port while our process fails to bind it.
        if not proc.running():
            raise proc.failure(port=port)

    async def wait_until(
        self,
        proc: ManagedProcess,
        check: _Check,
        *,
        what: str,
        timeout: float,
        port: int | None = None,
    ) -> None:
        """Poll ``check`` until it is true, failing fast if ``proc`` exits."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if not proc.running():
                raise proc.failure(port=port)
            if await check():
                return
            if time.monotonic() >= deadline:
                raise StartupTimeout(
                    proc.name, f"not {what} after {timeout:.0f} s", proc.log_tail()
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    async def start_listening(
        self,
        name: str,
        argv_for_port: _ArgvForPort,
        ports: PortAllocator,
        *,
        env: Mapping[str, str] | None = None,
        flwr_home: Path | None = None,
        timeout: float = 60.0,
        attempts: int = 3,
        port: int | None = None,
        ready: tuple[str, _Check] | None = None,
    ) -> tuple[ManagedProcess, int]:
        """Start a server on a free port and wait until it accepts connections.

        ``argv_for_port(port)`` builds the command line. If the process fails
        because the port was taken meanwhile, it is retried on a new port, up
        to ``attempts`` times. ``port`` forces the first port to try.
        ``ready`` is a further ``(what, check)`` to wait for once the port
        accepts; a process that dies meanwhile because its port was taken is
        retried as well (a port that accepts may belong to someone else).
        """
        for attempt in range(1, attempts + 1):
            chosen = port if (port is not None and attempt == 1) else ports.take()
            if not port_is_free(chosen, ports.host):
                # Checked again right before the start: a port that another
                # process holds would make the readiness check lie.
                if attempt == attempts:
                    raise PortInUse(name, chosen)
                continue
            proc = self.start(name, argv_for_port(chosen), env=env, flwr_home=flwr_home)
            try:
                await self.wait_port(proc, chosen, host=ports.host, timeout=timeout)
                if ready is not None:
                    what, check = ready
                    await self.wait_until(proc, check, what=what, timeout=timeout, port=chosen)
            except PortInUse:
                self.stop([proc])
                if attempt == attempts:
                    raise
                continue
            return proc, chosen
        raise AssertionError("unreachable")

    async def wait_exit(self, proc: ManagedProcess, timeout: float) -> int:
        """Wait for ``proc`` to exit and return its code; stop it after ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while proc.running():
            if time.monotonic() >= deadline:
                self.stop([proc], timeout=2.0)
                raise StartupTimeout(
                    proc.name, f"did not finish within {timeout:.0f} s", proc.log_tail()
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        return proc.popen.returncode

    # -- watching ------------------------------------------------------------

    def check_running(self, procs: Sequence[ManagedProcess] | None = None) -> None:
        """Raise :class:`~.errors.ProcessFailed` for the first process that exited."""
        for proc in self._procs if procs is None else procs:
            if not proc.running():
                raise ProcessFailed(
                    proc.name,
                    f"exited unexpectedly with code {proc.returncode}",
                    proc.log_tail(),
                )

    # -- stopping ------------------------------------------------------------

    def stop(
        self, procs: Sequence[ManagedProcess] | None = None, timeout: float | None = None
    ) -> list[int]:
        """Stop ``procs`` (default: all) and their descendants; return survivors.

        SIGTERM goes to every process group involved (the groups we started,
        plus groups that descendants created, found by their tag on Linux),
        then we wait up to ``timeout`` seconds, SIGKILL what is left and wait
        a little more. The returned PIDs are processes that survived even
        SIGKILL (normally none).
        """
        targets = list(self._procs if procs is None else procs)
        everything = procs is None
        timeout = self.stop_timeout if timeout is None else timeout
        groups = {p.pgid for p in targets if p.running() or _group_alive(p.pgid)}
        tagged = set(tagged_processes(self.tag)) if everything else set()
        if not everything:
            for proc in targets:
                tagged |= set(_descendants(proc.pid))
        groups |= {info.pgid for pid in tagged if (info := _proc_info(pid))}
        groups.discard(os.getpgid(0))  # never our own group

        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            alive = self._alive(targets, groups, tagged)
            if not alive:
                break
            for pgid in groups:
                _signal_group(pgid, sig)
            for pid in tagged:
                # Descendants that left our groups (e.g. a new session).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if _has_tag(pid, self.tag):
                        os.kill(pid, sig)
            self._wait_gone(targets, groups, tagged, wait)
        survivors = sorted(self._alive(targets, groups, tagged))
        if everything:
            self.leftovers = survivors
        else:
            # Stopped on purpose: no longer watched by check_running().
            self._procs = [p for p in self._procs if all(p is not t for t in targets)]
        return survivors

    def _alive(
        self, targets: Sequence[ManagedProcess], groups: set[int], tagged: set[int]
    ) -> set[int]:
        alive = {p.pid for p in targets if p.running()}
        alive |= {g for g in groups if _group_alive(g)}
        alive |= {pid for pid in tagged if _live_with_tag(pid, self.tag)}
        return alive

    def _wait_gone(
        self,
        targets: Sequence[ManagedProcess],
        groups: set[int],
        tagged: set[int],
        timeout: float,
    ) -> None:
        deadline = time.monotonic() + timeout
        while self._alive(targets, groups, tagged) and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> list[int]:
        """Stop everything (idempotent); return the PIDs that survived.

        New starts are refused from the first call on, but the group counts
        as closed (and its ``atexit`` hook is dropped) only once the stop has
        completed: a second Ctrl-C that interrupts the stop leaves the hook
        in place to finish the job at interpreter exit.
        """
        if self._closed:
            return self.leftovers
        self._accepting = False
        survivors = self.stop()
        self._closed = True
        atexit.unregister(self.close)
        return survivors

    def __enter__(self) -> ProcessGroup:
        atexit.register(self.close)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> ProcessGroup:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Synchronous on purpose: this also runs while the task is being
        # cancelled, when awaiting could be interrupted half way.
        self.close()


def _live_with_tag(pid: int, tag: str) -> bool:
    info = _proc_info(pid)
    return info is not None and not info.zombie and _has_tag(pid, tag)


def _descendants(root: int) -> Iterator[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        info = _proc_info(pid)
        if info is not None:
            children.setdefault(info.ppid, []).append(pid)
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        yield pid
        stack.extend(children.get(pid, []))


__all__ = [
    "DEFAULT_STOP_TIMEOUT",
    "LOCALHOST",
    "TAG_VARIABLE",
    "ManagedProcess",
    "PortAllocator",
    "ProcessGroup",
    "port_accepts",
    "port_is_free",
    "read_log_tail",
    "tagged_processes",
]
