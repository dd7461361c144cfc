"""The frame codec: sans-I/O, bytes in, frames out.

Every unit that crosses a link is a *frame*. A frame is a fixed 18-byte prefix,
a msgpack header and a raw payload::

     0      2      3      4          6                  10                         18
     +------+------+------+----------+------------------+--------------------------+
     | "CN" | ver  | kind |  flags   |  header length   |      payload length      |
     |  2B  |  1B  |  1B  |   u16    |       u32        |           u64            |
     +------+------+------+----------+------------------+--------------------------+
     | header: msgpack map, `header length` bytes                                  |
     +-----------------------------------------------------------------------------+
     | payload: raw bytes, `payload length` bytes                                  |
     +-----------------------------------------------------------------------------+

All integers are big-endian. The prefix is checked (magic, version, kind and
both lengths against the configured :class:`FrameLimits`) *before* anything
sized by the peer is allocated or read, so a peer that lies about a length
costs us 18 bytes, not gigabytes.

This module never imports asyncio or sockets. Drivers that get a byte stream
(TCP) read the prefix, call :func:`parse_prefix`, then read exactly the
announced body; drivers that get whole messages (WebSocket, Redis) call
:func:`decode_frame`. :class:`FrameDecoder` is the incremental form for
arbitrary chunks of a stream; :class:`BufferedFrameDecoder` is the same for
transports that read into a buffer they are handed (the TCP driver): it
reads the body of a large frame straight into a buffer of its own, so the
payload reaches the consumer without being copied.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import FrameError, FrameTooLarge

MAGIC = b"CN"
VERSION = 1
PREFIX = struct.Struct("!2sBBHIQ")
PREFIX_SIZE = PREFIX.size  # 18

DEFAULT_MAX_HEADER = 64 * 1024
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024


class Kind(enum.IntEnum):
    """What a frame is for. Link-level kinds never leave their link."""

    HELLO = 1  # handshake, dialer -> listener: name, version, capabilities
    WELCOME = 2  # handshake, listener -> dialer: accepted, listener's name
    REFUSE = 3  # handshake refused: reason; the link closes after it
    MESSAGE = 4  # a bus message (request, reply or one-way send)
    PING = 5  # heartbeat
    PONG = 6  # heartbeat answer
    BYE = 7  # orderly close


_KINDS = frozenset(int(k) for k in Kind)
_KIND = {int(k): k for k in Kind}


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """Largest header and payload a decoder accepts."""

    max_header: int = DEFAULT_MAX_HEADER
    max_payload: int = DEFAULT_MAX_PAYLOAD


@dataclass(frozen=True, slots=True)
class Prefix:
    """The decoded fixed prefix of a frame."""

    kind: Kind
    flags: int
    header_len: int
    payload_len: int

    @property
    def body_len(self) -> int:
        return self.header_len + self.payload_len


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: a kind, flags, a header mapping and a raw payload."""

    kind: Kind
    header: dict[str, Any] = field(default_factory=dict)
    payload: bytes | bytearray | memoryview = b""
    flags: int = 0


_packb = msgpack.Packer(use_bin_type=True).pack


def encode_parts(frame: Frame) -> tuple[bytes, bytes | bytearray | memoryview]:
    """Encode a frame as (prefix + header, payload).

    Two parts so a large payload is handed to the transport without a copy.
    """
    header = _packb(frame.header)
    payload = frame.payload
    prefix = PREFIX.pack(
        MAGIC, VERSION, int(frame.kind), frame.flags, len(header), len(payload)
    )
    return prefix + header, payload


def encode_frame(frame: Frame) -> bytes:
    """Encode a frame into one bytes object."""
    head, payload = encode_parts(frame)
    return head + bytes(payload)


def parse_prefix(data: bytes | bytearray | memoryview, limits: FrameLimits) -> Prefix:
    """Decode and check an 18-byte prefix against ``limits``.

    Raises :class:`FrameError` for a wrong magic, version or kind, and
    :class:`FrameTooLarge` when a declared length is over its limit.
    """
    if len(data) != PREFIX_SIZE:
        raise FrameError(f"frame prefix must be {PREFIX_SIZE} bytes, got {len(data)}")
    magic, version, kind, flags, header_len, payload_len = PREFIX.unpack(data)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}: not a cellnet peer")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version} (this side speaks {VERSION})")
    if kind not in _KINDS:
        raise FrameError(f"unknown frame kind {kind}")
    if header_len > limits.max_header:
        raise FrameTooLarge(
            f"frame header of {header_len} bytes exceeds the limit of {limits.max_header}"
        )
    if payload_len > limits.max_payload:
        raise FrameTooLarge(
            f"frame payload of {payload_len} bytes exceeds the limit of {limits.max_payload}"
        )
    return Prefix(Kind(kind), flags, header_len, payload_len)


def decode_header(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Decode a msgpack header; it must be a map with string keys."""
    try:
        header = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise FrameError(f"malformed frame header: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError(f"frame header must be a map, got {type(header).__name__}")
    for key in header:
        if not isinstance(key, str):
            raise FrameError(f"frame header keys must be strings, got {type(key).__name__}")
    return header


def decode_body(prefix: Prefix, body: bytes | bytearray | memoryview) -> Frame:
    """Build a frame from its checked prefix and exactly ``prefix.body_len`` bytes.

    The header and payload are copied out, so ``body`` may be a view into a
    buffer the caller reuses.
    """
    if len(body) != prefix.body_len:
        raise FrameError(f"frame body is {len(body)} bytes, prefix says {prefix.body_len}")
    hlen = prefix.header_len
    with memoryview(body) as view:
        header_bytes = bytes(view[:hlen])
        payload = bytes(view[hlen:]) if prefix.payload_len else b""
    return Frame(prefix.kind, decode_header(header_bytes), payload, prefix.flags)


def decode_frame(data: bytes | bytearray | memoryview, limits: FrameLimits) -> Frame:
    """Decode one whole frame (for message-oriented transports)."""
    if len(data) < PREFIX_SIZE:
        raise FrameError(f"truncated frame: {len(data)} bytes, prefix needs {PREFIX_SIZE}")
    view = memoryview(data)
    prefix = parse_prefix(view[:PREFIX_SIZE], limits)
    body = view[PREFIX_SIZE:]
    if len(body) != prefix.body_len:
        raise FrameError(
            f"frame length mismatch: prefix declares {prefix.body_len} body bytes, got {len(body)}"
        )
    return decode_body(prefix, body)


class FrameDecoder:
    """Incremental decoder: feed arbitrary chunks of a stream, get whole frames.

    Memory held is at most one prefix plus one checked frame body (and the
    unparsed tail of the last chunk fed).
    """

    def __init__(self, limits: FrameLimits | None = None) -> None:
        self._limits = limits or FrameLimits()
        self._buf = bytearray()
        self._prefix: Prefix | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    @property
    def pending_body(self) -> int:
        """Body bytes the frame being received still needs (0 between frames)."""
        return 0 if self._prefix is None else max(0, self._prefix.body_len - len(self._buf))

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return every frame they complete.

        After a :class:`FrameError` the stream is unusable; close the link.
        Frames completed before the bad bytes are lost with the error: use
        :meth:`feed_partial` to keep them.
        """
        frames, error = self.feed_partial(data)
        if error is not None:
            raise error
        return frames

    def feed_partial(self, data: bytes | bytearray | memoryview) -> tuple[list[Frame], FrameError | None]:
        """Like :meth:`feed`, but return the frames completed before bad
        bytes together with the error, so good frames are delivered first."""
        if self._prefix is None and not self._buf:
            return self._feed_fresh(data)
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        limits = self._limits
        try:
            while True:
                prefix = self._prefix
                if prefix is None:
                    if end - pos < PREFIX_SIZE:
                        break
                    prefix = parse_prefix(bytes(buf[pos : pos + PREFIX_SIZE]), limits)
                    pos += PREFIX_SIZE
                    self._prefix = prefix
                need = prefix.body_len
                if end - pos < need:
                    break
                with memoryview(buf) as view:
                    body = view[pos : pos + need]
                    try:
                        frame = decode_body(prefix, body)
                    finally:
                        body.release()
                frames.append(frame)
                pos += need
                self._prefix = None
        except FrameError as exc:
            return frames, exc
        finally:
            if pos:
                del buf[:pos]
        return frames, None

    def _feed_fresh(self, data: bytes | bytearray | memoryview) -> tuple[list[Frame], FrameError | None]:
        """The common case, between frames with nothing buffered: decode
        straight from ``data``, copying only what is left over (the same
        checks, in the same order, as the general path)."""
        if type(data) is not bytes:
            data = bytes(data)
        end = len(data)
        pos = 0
        frames: list[Frame] = []
        limits = self._limits
        unpack = PREFIX.unpack_from
        try:
            while end - pos >= PREFIX_SIZE:
                magic, version, kind, flags, hlen, plen = unpack(data, pos)
                if (magic != MAGIC or version != VERSION or kind not in _KINDS
                        or hlen > limits.max_header or plen > limits.max_payload):
                    parse_prefix(data[pos : pos + PREFIX_SIZE], limits)  # raises the precise error
                pos += PREFIX_SIZE
                if end - pos < hlen + plen:
                    self._prefix = Prefix(_KIND[kind], flags, hlen, plen)
                    break
                hend = pos + hlen
                header = decode_header(data[pos:hend])
                pos = hend + plen
                frames.append(Frame(_KIND[kind], header, data[hend:pos] if plen else b"", flags))
        except FrameError as exc:
            return frames, exc
        if pos < end:
            self._buf += memoryview(data)[pos:]
        return frames, None

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for EOF)."""
        return self._prefix is None and not self._buf


class BufferedFrameDecoder:
    """Incremental decoder for transports that read into a buffer they are
    given (``asyncio.BufferedProtocol``): ``get_buffer()`` says where the next
    bytes go, ``buffer_updated(n)`` says how many arrived and returns the
    frames they complete.

    Small frames are parsed out of one reusable scratch buffer. The body of a
    large frame (``direct`` bytes or more) is read straight into a buffer of
    its own, allocated once its prefix has passed the limit checks, and the
    frame's payload is a view of that buffer: the bytes are not copied
    between the socket and the consumer. A peer can thus make us allocate at
    most one body of ``limits.max_header + limits.max_payload`` bytes, and
    only by announcing it in a prefix that passed the checks.
    """

    def __init__(self, limits: FrameLimits | None = None, *, scratch: int = 64 * 1024,
                 direct: int = 16 * 1024) -> None:
        self._limits = limits or FrameLimits()
        if scratch < PREFIX_SIZE + self._limits.max_header + direct:
            scratch = PREFIX_SIZE + self._limits.max_header + direct
        self._scratch = bytearray(scratch)
        self._view = memoryview(self._scratch)
        self._start = 0  # unparsed bytes are scratch[_start:_end]
        self._end = 0
        self._direct = direct
        self._prefix: Prefix | None = None  # of the large frame being read
        self._body: bytearray | None = None
        self._fill = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return self._end - self._start + (self._fill if self._body is not None else 0)

    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for EOF)."""
        return self._body is None and self._start == self._end

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the transport should write the next bytes."""
        if self._body is not None:
            return memoryview(self._body)[self._fill :]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._scratch) - self._end < PREFIX_SIZE + self._limits.max_header:
            # Move the unparsed tail to the front: room for at least a prefix and a header.
            n = self._end - self._start
            self._view[:n] = self._view[self._start : self._end]
            self._start, self._end = 0, n
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> tuple[list[Frame], FrameError | None]:
        """``nbytes`` were written into the last buffer; return the frames
        completed, and the error that makes the stream unusable, if any."""
        frames: list[Frame] = []
        if self._body is not None:
            self._fill += nbytes
            if self._fill < len(self._body):
                return frames, None
            try:
                frames.append(self._take_body())
            except FrameError as exc:
                return frames, exc
            return frames, None
        self._end += nbytes
        try:
            self._parse(frames)
        except FrameError as exc:
            return frames, exc
        return frames, None

    def _parse(self, frames: list[Frame]) -> None:
        view, limits, scratch = self._view, self._limits, self._scratch
        unpack = PREFIX.unpack_from
        while self._end - self._start >= PREFIX_SIZE:
            pos = self._start
            magic, version, kind, flags, hlen, plen = unpack(scratch, pos)
            if (magic != MAGIC or version != VERSION or kind not in _KINDS
                    or hlen > limits.max_header or plen > limits.max_payload):
                parse_prefix(view[pos : pos + PREFIX_SIZE], limits)  # raises the precise error
            need = hlen + plen
            start = pos + PREFIX_SIZE
            have = self._end - start
            if need >= self._direct and have < need:
                # A large body: read it into a buffer of its own from here on.
                body = bytearray(need)
                body[:have] = view[start : self._end]
                self._prefix = Prefix(_KIND[kind], flags, hlen, plen)
                self._body, self._fill = body, have
                self._start = self._end = 0
                return
            if have < need:
                return  # the rest of a small frame comes later
            hend = start + hlen
            self._start = hend + plen
            header = decode_header(view[start:hend])
            payload = bytes(view[hend : self._start]) if plen else b""
            frames.append(Frame(_KIND[kind], header, payload, flags))

    def _take_body(self) -> Frame:
        prefix, body = self._prefix, self._body
        assert prefix is not None and body is not None
        self._prefix, self._body, self._fill = None, None, 0
        view = memoryview(body)
        header = decode_header(view[: prefix.header_len])
        return Frame(prefix.kind, header, view[prefix.header_len :], prefix.flags)
