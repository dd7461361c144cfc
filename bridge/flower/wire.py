"""The bridge's wire format: one HTTP call or reply as one bus payload.

The Flower bridge forwards Fleet API calls as opaque HTTP exchanges. The local
server (LGS) in a client cell turns each incoming request into an
:class:`HttpCall`; the server cell's local client (LGC) sends it to the
SuperLink and answers with an :class:`HttpReply`. Neither side looks inside
the body, so the bridge needs no code per Flower RPC and survives Flower
upgrades that add or change RPCs.

Encoding
--------
Both messages are one msgpack map with short string keys::

    HttpCall   {"v": 1, "k": "call",  "m": method, "p": path, "q": query,
                "h": [[name, value], ...], "b": body}
    HttpReply  {"v": 1, "k": "reply", "s": status,
                "h": [[name, value], ...], "b": body}

``v`` is the format version. A decoder refuses any other version, so an
incompatible change bumps it and fails loudly instead of misreading bytes.
Fields may be *added* without a bump: decoders ignore keys they do not know.
``k`` names the message kind, so a reply fed to the call decoder is an error
rather than a silently wrong object. Header names and values travel as msgpack
``bin`` holding their UTF-8 bytes (with ``surrogateescape``), so headers that
are not valid UTF-8 still cross byte for byte, exactly as the HTTP library
parsed them. Bodies travel as ``bin``, unchanged.

Headers
-------
Which headers cross is decided here, once, for both directions (see
:func:`forwardable_headers`): hop-by-hop headers describe one TCP connection
and must not be replayed on another, and ``Host`` and ``Content-Length`` are
recomputed by the HTTP library on the far side. Everything else crosses
exactly, with its case and order preserved, in particular all ``flwr-*``
headers that carry the SuperNode's signature.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Self

import msgpack

from cellnet.errors import ProtocolError

from .errors import FlowerBridgeError

__all__ = [
    "DROPPED_HEADERS",
    "WIRE_VERSION",
    "BridgeWireError",
    "Headers",
    "HttpCall",
    "HttpReply",
    "forwardable_headers",
    "validate_headers",
]

WIRE_VERSION: Final = 1
"""The version this module writes and the only one it reads."""

Headers = tuple[tuple[str, str], ...]
"""HTTP headers as ordered (name, value) pairs; names keep their case."""

DROPPED_HEADERS: Final = frozenset(
    {
        # Hop-by-hop (RFC 9110 section 7.6.1, plus the legacy keep-alive).
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        # Recomputed by the HTTP library on the far side.
        "host",
        "content-length",
        # The local server has already read the whole body, so a 100-continue
        # handshake with the far side would only add a round trip.
        "expect",
    }
)
"""Header names (lower case) that never cross the bridge. Any ``proxy-*``
header and any header named in a ``Connection`` header are dropped too."""

_CALL: Final = "call"
_REPLY: Final = "reply"
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_FORBIDDEN_IN_VALUE: Final = frozenset("\r\n\x00")
_FORBIDDEN_IN_TARGET: Final = frozenset(" \t\r\n\x00#")


class BridgeWireError(ProtocolError, FlowerBridgeError):
    """Bytes that are not a valid bridge call or reply of a version we speak.

    A :class:`~cellnet.errors.ProtocolError` (the peer sent something we cannot
    accept) that is also caught by ``except FlowerBridgeError``.
    """


def validate_headers(headers: Iterable[tuple[str, str]]) -> None:
    """Raise :class:`BridgeWireError` unless every header could be written
    to an HTTP/1.1 message as is: a token for a name, no CR, LF or NUL in a
    value (which would let a peer inject headers)."""
    for pair in headers:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise BridgeWireError(f"a header must be a (name, value) pair, got {pair!r:.80}")
        name, value = pair
        if not isinstance(name, str) or not isinstance(value, str):
            raise BridgeWireError("header names and values must be str")
        _check_header(name, value)


def forwardable_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """Return the headers that may cross the bridge, in their original order.

    Drops :data:`DROPPED_HEADERS`, every ``proxy-*`` header, and every header
    that a ``Connection`` header declares hop-by-hop (``Connection: x-foo``
    makes ``x-foo`` local to that connection). Names and values are otherwise
    kept exactly as given.
    """
    pairs = tuple(headers)
    local: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            local.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tuple(
        (name, value)
        for name, value in pairs
        if (lowered := name.lower()) not in DROPPED_HEADERS
        and not lowered.startswith("proxy-")
        and lowered not in local
    )


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One HTTP request as the SuperNode sent it to the local server.

    ``path`` and ``query`` are the raw, still percent-encoded request target
    (``query`` without the ``?``), so the SuperLink sees the same bytes.
    """

    method: str
    path: str
    query: str
    headers: Headers
    body: bytes

    @property
    def target(self) -> str:
        """The request target: path plus ``?query`` when there is one."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def encode(self) -> bytes:
        """Serialize to bytes; raises :class:`BridgeWireError` on bad fields."""
        _require(self.method, str, "method")
        _require(self.path, str, "path")
        _require(self.query, str, "query")
        _require(self.body, bytes, "body")
        return _pack(
            {
                "v": WIRE_VERSION,
                "k": _CALL,
                "m": self.method,
                "p": self.path,
                "q": self.query,
                "h": _headers_out(self.headers),
                "b": self.body,
            }
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse bytes from :meth:`encode`; raises :class:`BridgeWireError`."""
        fields = _unpack(data, _CALL)
        method = _field(fields, "m", str)
        if not method or not set(method) <= _TOKEN_CHARS:
            raise BridgeWireError(f"bridge call has an invalid HTTP method {method!r}")
        path = _field(fields, "p", str)
        if not path.startswith("/") or not _FORBIDDEN_IN_TARGET.isdisjoint(path):
            raise BridgeWireError(f"bridge call has an invalid path {path[:80]!r}")
        query = _field(fields, "q", str)
        if not _FORBIDDEN_IN_TARGET.isdisjoint(query):
            raise BridgeWireError(f"bridge call has an invalid query {query[:80]!r}")
        return cls(
            method=method,
            path=path,
            query=query,
            headers=_headers_in(fields),
            body=_field(fields, "b", bytes),
        )


@dataclass(frozen=True, slots=True)
class HttpReply:
    """One HTTP response to be written back to the SuperNode unchanged."""

    status: int
    headers: Headers
    body: bytes

    @classmethod
    def error(cls, status: int, error: str, detail: str) -> Self:
        """A reply made by the bridge itself, with a short JSON body.

        ``error`` is a stable machine-readable kind (``"bridge-timeout"``);
        ``detail`` says what happened in words, for the SuperNode's log.
        """
        body = json.dumps({"error": error, "detail": detail[:300]}).encode()
        return cls(status, (("Content-Type", "application/json"),), body)

    def encode(self) -> bytes:
        """Serialize to bytes; raises :class:`BridgeWireError` on bad fields."""
        _require(self.status, int, "status")
        _require(self.body, bytes, "body")
        return _pack(
            {
                "v": WIRE_VERSION,
                "k": _REPLY,
                "s": self.status,
                "h": _headers_out(self.headers),
                "b": self.body,
            }
        )

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Self:
        """Parse bytes from :meth:`encode`; raises :class:`BridgeWireError`."""
        fields = _unpack(data, _REPLY)
        status = _field(fields, "s", int)
        if not 100 <= status <= 599:
            raise BridgeWireError(f"bridge reply has an invalid HTTP status {status}")
        return cls(
            status=status,
            headers=_headers_in(fields),
            body=_field(fields, "b", bytes),
        )


# -- helpers ------------------------------------------------------------------


def _check_header(name: str, value: str) -> None:
    if not name or not set(name) <= _TOKEN_CHARS:
        raise BridgeWireError(f"invalid HTTP header name {name[:80]!r}")
    if not _FORBIDDEN_IN_VALUE.isdisjoint(value):
        raise BridgeWireError(f"HTTP header {name!r} has a value with CR, LF or NUL")


def _pack(obj: dict[str, Any]) -> bytes:
    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise BridgeWireError(f"cannot encode bridge {obj['k']}: {exc}") from exc
    assert isinstance(data, bytes)
    return data


def _unpack(data: bytes | bytearray | memoryview, kind: str) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BridgeWireError(f"bridge {kind} must be bytes, not {type(data).__name__}")
    try:
        # msgpack bounds every length by len(data), so a hostile length prefix
        # cannot make it allocate more than the input's size.
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise BridgeWireError(f"bridge {kind} is not valid msgpack: {exc}") from exc
    if not isinstance(obj, dict):
        raise BridgeWireError(f"bridge {kind} must be a msgpack map, not {type(obj).__name__}")
    version = obj.get("v")
    if version != WIRE_VERSION:
        raise BridgeWireError(
            f"unsupported bridge wire version {version!r} (this side speaks {WIRE_VERSION})"
        )
    if obj.get("k") != kind:
        raise BridgeWireError(f"expected a bridge {kind}, got kind {obj.get('k')!r}")
    return obj


def _require(value: object, kind: type, name: str) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BridgeWireError(f"{name} must be {kind.__name__}, got {type(value).__name__}")


def _field(fields: dict[str, Any], key: str, kind: type) -> Any:
    value = fields.get(key)
    # bool is an int subclass; a boolean status is a malformed message.
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__
        raise BridgeWireError(
            f"bridge field {key!r} must be {expected}, got {type(value).__name__}"
        )
    return value


def _headers_out(headers: Headers) -> list[tuple[bytes, bytes]]:
    try:
        return [
            (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
            for name, value in headers
        ]
    except (AttributeError, TypeError, ValueError) as exc:
        raise BridgeWireError(f"headers must be (str, str) pairs: {exc}") from exc


def _headers_in(fields: dict[str, Any]) -> Headers:
    raw = _field(fields, "h", list)
    out: list[tuple[str, str]] = []
    for pair in raw:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], bytes)
            or not isinstance(pair[1], bytes)
        ):
            raise BridgeWireError("bridge headers must be [name, value] pairs of bytes")
        name = pair[0].decode("utf-8", "surrogateescape")
        value = pair[1].decode("utf-8", "surrogateescape")
        _check_header(name, value)
        out.append((name, value))
    return tuple(out)
