"""Files over the bus: one cell serves a folder, others put files into it.

The receiving cell calls :func:`serve_files`; it registers a streaming
handler on ``("cellnet.files", "put")`` that writes each incoming file
straight to disk. A sender calls :func:`send_file`. ``cellnet receive`` and
``cellnet send-file`` are these two functions on the command line.

A file travels as a chunked payload (see :mod:`cellnet.transfer`), so neither
end holds more than one credit window (``limits.window``) of it in memory,
whatever its size, and a transfer whose path breaks resumes where it stopped.
The sender sends a SHA-256 of the content; the receiver verifies it before
the file appears under its name, and answers with the hash it verified, which
:func:`send_file` checks against a hash of the local file.

The receiver trusts nothing in the request but the bytes: the file name is a
bare name (no folders, no ``..``, no hidden names), an existing file is kept
unless the folder is served with ``overwrite=True``, and a file that does not
arrive whole is removed, never left looking complete.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import fcntl
except ImportError:  # not on Windows: one receiver per folder is then up to the user
    fcntl = None  # type: ignore[assignment]

from .cell import Cell, Reply
from .errors import CellnetError, ChecksumMismatch, RemoteError
from .stream import Progress

if TYPE_CHECKING:
    from .message import Message

log = logging.getLogger("cellnet.files")

FILES_CHANNEL = "cellnet.files"
PUT_TOPIC = "put"

#: the slowest average rate a file transfer may have when no timeout is given
MIN_RATE = 1_000_000  # bytes per second

_MAX_NAME = 255  # bytes, the usual file-name limit of a file system


class FolderInUse(CellnetError):
    """Another receiver (another process) already serves the folder."""


class FileChanged(CellnetError):
    """The local file changed while it was being sent: what the receiver
    stored may not be the file as it is now."""


class FileRefused(RemoteError):
    """The receiver refuses a file (an existing name, a name already
    arriving, no space, an unsafe name); the sender gets it as a
    :class:`~cellnet.errors.RemoteError`, the receiver logs one line."""


class UnsafeName(FileRefused, ValueError):
    """A file name the receiver refuses: it could leave the folder, hide
    itself or is not a valid name on disk."""


def safe_name(name: object) -> str:
    """Return ``name`` if it is a plain file name, else raise :class:`UnsafeName`.

    Only a bare name is accepted: no path separators, not ``.`` or ``..``
    (nor any name made only of dots), no leading dot (hidden files, and the
    receiver's own files in progress start with one), no control characters
    and at most 255 bytes of UTF-8. Names are refused rather than cleaned, so
    a file never lands under a name its sender did not choose.
    """
    if not isinstance(name, str) or not name:
        raise UnsafeName(f"refused file name {name!r}: expected a non-empty string")
    if "/" in name or "\\" in name:
        raise UnsafeName(f"refused file name {name!r}: it must not contain a path separator")
    if name.startswith("."):
        raise UnsafeName(f"refused file name {name!r}: it must not start with a dot")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise UnsafeName(f"refused file name {name!r}: it contains a control character")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeName(f"refused file name {name!r}: it is not valid UTF-8") from None
    if len(encoded) > _MAX_NAME:
        raise UnsafeName(f"refused file name {name[:40]!r}...: longer than {_MAX_NAME} bytes")
    return name


def transfer_budget(size: int, floor: float, rate: float = MIN_RATE) -> float:
    """A time budget for moving ``size`` bytes: ``floor`` seconds, or more
    for a payload that needs longer at ``rate`` bytes per second. A request's
    timeout covers its whole upload, so a fixed default would fail every
    large transfer; a stalled one fails early anyway (``transfer_resume``)."""
    return max(floor, size / rate)


def file_sha256(path: str | os.PathLike[str], block: int = 1 << 20) -> str:
    """The SHA-256 (hex) of a file, read in blocks (run it in a thread)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while data := fh.read(block):
            digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class ReceivedFile:
    """A file :func:`serve_files` saved."""

    name: str
    path: Path
    size: int
    sha256: str
    #: the cell that sent it
    source: str


@dataclass(frozen=True)
class SentFile:
    """The outcome of :func:`send_file`."""

    name: str
    size: int
    #: the hash the receiver verified, equal to the local file's
    sha256: str
    source: str
    target: str
    #: the path the request took, as recorded by every hop
    route: list[str]
    seconds: float
    mb_per_s: float


def serve_files(
    cell: Cell,
    folder: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    channel: str = FILES_CHANNEL,
    topic: str = PUT_TOPIC,
) -> ServedFolder:
    """Save the files other cells put to ``cell`` into ``folder``.

    Registers a streaming handler; each file is written as it arrives and
    appears under its name only once it is complete and its hash verified.
    A refused file (unsafe name, existing file without ``overwrite``, the
    same name already arriving, not enough disk space) fails the sender's
    request with :class:`~cellnet.errors.RemoteError`; a transfer that breaks
    for good fails it with :class:`~cellnet.errors.TransferFailed`. The reply
    meta holds ``name``, ``size``, ``sha256`` and the ``route`` taken.

    One receiver serves a folder: a second one (in this or another process)
    raises :class:`FolderInUse`, since it would take the first one's files
    in progress for leftovers of a killed receiver and remove them.
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    # One receiver per folder: a second one would take the first one's files
    # in progress for leftovers and remove them.
    lock = _lock_folder(root)
    _remove_leftovers(root)
    arriving: set[str] = set()

    async def put(msg: Message) -> Reply:
        assert msg.stream is not None  # registered with stream=True
        name = safe_name(msg.meta.get("name"))
        if name in arriving:
            raise FileRefused(f"{name} is already being received by {cell.name}")
        arriving.add(name)
        try:
            received = await _receive(msg, root, name, overwrite)
        finally:
            arriving.discard(name)
        log.info(
            "received %s (%d bytes, sha256 %s) from %s",
            received.name, received.size, received.sha256, received.source,
        )
        return Reply(b"", _reply_meta(received, msg))

    cell.on(channel, topic, stream=True)(put)
    return ServedFolder(root, cell, channel, topic, lock)


@dataclass
class ServedFolder:
    """What :func:`serve_files` returns: :meth:`close` stops serving the
    folder (the handler is removed and the folder's lock released; the lock
    is released anyway when the process ends)."""

    folder: Path
    _cell: Cell
    _channel: str
    _topic: str
    _lock: int | None

    def close(self) -> None:
        self._cell.remove_handler(self._channel, self._topic)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _reply_meta(received: ReceivedFile, msg: Message) -> dict[str, Any]:
    return {
        "name": received.name,
        "size": received.size,
        "sha256": received.sha256,
        "route": list(msg.hops),
    }


async def _receive(msg: Message, root: Path, name: str, overwrite: bool) -> ReceivedFile:
    """Write the stream of ``msg`` to ``root / name``.

    The bytes go to a hidden file first (no sender can pick such a name),
    which is then linked to the final name: the link fails if the name
    exists, so a file created while this one arrived is not replaced either.
    """
    stream = msg.stream
    assert stream is not None
    target = root / name
    if not overwrite and target.exists():
        raise FileRefused(f"{name} exists on {msg.dst}; not overwritten")
    if stream.size is not None:
        free = shutil.disk_usage(root).free
        if stream.size > free:
            raise FileRefused(f"{name}: {stream.size} bytes do not fit ({free} bytes free on {msg.dst})")
    incoming = root / f".{name}.{msg.id}"
    try:
        await stream.save(incoming)
        # The sender's hash was verified by the stream; without one, hash what was written.
        digest = stream.sha256 or await asyncio.to_thread(file_sha256, incoming)
        size = incoming.stat().st_size
        if overwrite:
            os.replace(incoming, target)
        else:
            _link_new(incoming, target, f"{name} exists on {msg.dst}; not overwritten")
    finally:
        incoming.unlink(missing_ok=True)
    return ReceivedFile(name, target, size, digest, msg.src)


_LEFTOVER = re.compile(r"\..+\.[0-9a-f]{32}(\.partial)?")


LOCK_NAME = ".cellnet-receive.lock"


def _lock_folder(root: Path) -> int | None:
    """Lock ``root`` for this process (an advisory lock on a hidden file in
    it, released when the process ends); raise :class:`FolderInUse` if
    another process holds it. None where there is no ``fcntl``."""
    if fcntl is None:
        return None
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FolderInUse(
            f"{root} is already served by another receiver (pid {holder}); one receiver per folder"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _remove_leftovers(root: Path) -> None:
    """Remove the files in progress a receiver killed mid-transfer left
    (hidden, named ``.<name>.<transfer id>[.partial]``): they can never
    be completed, as a transfer does not outlive its receiver."""
    for path in root.iterdir():
        if _LEFTOVER.fullmatch(path.name) and path.is_file():
            log.warning("removing %s, left by a transfer that did not finish", path)
            path.unlink(missing_ok=True)


def _link_new(src: Path, dst: Path, exists: str) -> None:
    """Give ``src`` the name ``dst`` unless ``dst`` exists (atomic where the
    file system has hard links)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise FileRefused(exists) from None
    except OSError:  # no hard links here: check, then rename
        if dst.exists():
            raise FileRefused(exists) from None
        os.replace(src, dst)


async def send_file(
    cell: Cell,
    target: str,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    timeout: float | None = None,
    progress: Progress | None = None,
    channel: str = FILES_CHANNEL,
    topic: str = PUT_TOPIC,
) -> SentFile:
    """Put the file ``path`` into the folder ``target`` serves (see :func:`serve_files`).

    ``name`` is the name to store it under (default: the file's own name);
    ``timeout`` bounds the whole transfer (default: enough for
    :data:`MIN_RATE`, at least ``timeouts.request``); ``progress(done, total)``
    is called as the receiver acknowledges bytes. The file is hashed here in
    a thread while it is sent, and the hash the receiver verified must match.

    Raises :class:`FileNotFoundError` for a missing file,
    :class:`~cellnet.errors.RemoteError` when the receiver refuses it,
    :class:`~cellnet.errors.TransferFailed` (or
    :class:`~cellnet.errors.ChecksumMismatch`) when it does not arrive whole,
    and the other request errors of :meth:`Cell.request`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    before = path.stat()
    size = before.st_size
    name = name if name is not None else path.name
    budget = timeout if timeout is not None else transfer_budget(size, cell.timeouts.request)
    local_hash = asyncio.create_task(asyncio.to_thread(file_sha256, path))
    t0 = time.perf_counter()
    try:
        reply = await cell.request(
            target, channel, topic, path,
            meta={"name": name, "size": size}, timeout=budget, progress=progress, checksum=True,
        )
    except BaseException:
        local_hash.cancel()
        await asyncio.gather(local_hash, return_exceptions=True)
        raise
    seconds = time.perf_counter() - t0
    mine = await local_hash
    theirs = reply.meta.get("sha256")
    after = path.stat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise FileChanged(
            f"{path} changed while it was being sent; {target} stored what it received as {name}"
            f" ({reply.meta.get('size')} bytes, sha256 {theirs})"
        )
    if theirs != mine:
        raise ChecksumMismatch(f"{target} stored {name} with sha256 {theirs}, the local file has {mine}")
    stored = reply.meta.get("size")
    if stored != size:
        raise ChecksumMismatch(f"{target} stored {stored} bytes of {name}, the local file has {size}")
    return SentFile(
        name=str(reply.meta.get("name", name)),
        size=size,
        sha256=mine,
        source=cell.name,
        target=target,
        route=[str(x) for x in reply.meta.get("route", [])],
        seconds=seconds,
        mb_per_s=size / seconds / 1e6 if seconds > 0 else 0.0,
    )


__all__ = [
    "FILES_CHANNEL",
    "MIN_RATE",
    "PUT_TOPIC",
    "ReceivedFile",
    "SentFile",
    "UnsafeName",
    "file_sha256",
    "safe_name",
    "send_file",
    "serve_files",
    "ServedFolder",
    "FolderInUse",
    "FileChanged",
    "transfer_budget",
]
