"""The Flower bridge's wire format: round trips, strict decoding, header policy."""

from __future__ import annotations

import contextlib
import json

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellnet.bridge.flower.wire import (
    WIRE_VERSION,
    BridgeWireError,
    HttpCall,
    HttpReply,
    forwardable_headers,
    validate_headers,
)
from cellnet.errors import ProtocolError

FLWR_HEADERS = (
    ("content-type", "application/protobuf"),
    ("accept", "application/protobuf"),
    ("flwr-package-name", "flwr"),
    ("flwr-package-version", "1.42.0"),
    ("flwr-component-name", "SuperNode"),
    ("flwr-public-key", "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0K"),
    ("flwr-timestamp", "2026-01-01T00:00:00.000000+00:00"),
    ("flwr-signature", "MEUCIQD+/=="),
)


def make_call(**overrides: object) -> HttpCall:
    fields: dict[str, object] = {
        "method": "POST",
        "path": "/v1/fleet/pull-messages",
        "query": "",
        "headers": FLWR_HEADERS,
        "body": b"\x0a\x02\x08\x01",
    }
    fields.update(overrides)
    return HttpCall(**fields)  # type: ignore[arg-type]


# -- round trips --------------------------------------------------------------


def test_call_round_trip() -> None:
    call = make_call(query="a=1&b=%2F")
    assert HttpCall.decode(call.encode()) == call


def test_reply_round_trip() -> None:
    reply = HttpReply(401, (("Content-Type", "application/json"),), b'{"detail":"x"}')
    assert HttpReply.decode(reply.encode()) == reply


def test_empty_body_and_headers() -> None:
    call = make_call(headers=(), body=b"")
    assert HttpCall.decode(call.encode()) == call
    reply = HttpReply(204, (), b"")
    assert HttpReply.decode(reply.encode()) == reply


def test_ten_megabyte_body_is_unchanged() -> None:
    body = bytes(range(256)) * (10 * 1024 * 1024 // 256)
    call = make_call(body=body)
    decoded = HttpCall.decode(call.encode())
    assert decoded.body == body
    reply = HttpReply(200, (), body)
    assert HttpReply.decode(reply.encode()).body == body


def test_unicode_header_values() -> None:
    headers = (("X-Name", "Zoë ✓ 日本"), ("flwr-note", "😀"))
    assert HttpCall.decode(make_call(headers=headers).encode()).headers == headers


def test_non_utf8_header_bytes_survive() -> None:
    # aiohttp decodes header bytes with surrogateescape; they must cross as sent.
    value = b"caf\xe9".decode("utf-8", "surrogateescape")
    call = make_call(headers=(("X-Latin1", value),))
    decoded = HttpCall.decode(call.encode())
    assert decoded.headers[0][1].encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_header_case_order_and_duplicates_are_kept() -> None:
    headers = (("Flwr-Timestamp", "t"), ("X-A", "1"), ("x-a", "2"), ("ACCEPT", "*/*"))
    assert HttpCall.decode(make_call(headers=headers).encode()).headers == headers


def test_target_joins_path_and_query() -> None:
    assert make_call(query="").target == "/v1/fleet/pull-messages"
    assert make_call(path="/x", query="a=1").target == "/x?a=1"


def test_accepts_bytearray_and_memoryview() -> None:
    data = make_call().encode()
    assert HttpCall.decode(bytearray(data)) == HttpCall.decode(memoryview(data))


def test_unknown_fields_are_ignored() -> None:
    fields = msgpack.unpackb(make_call().encode(), raw=False)
    fields["future"] = [1, 2, 3]
    assert HttpCall.decode(msgpack.packb(fields, use_bin_type=True)) == make_call()


def test_error_reply_is_short_json() -> None:
    reply = HttpReply.error(503, "bridge-unavailable", "Unreachable: " + "x" * 1000)
    assert reply.status == 503
    assert dict(reply.headers)["Content-Type"] == "application/json"
    payload = json.loads(reply.body)
    assert payload["error"] == "bridge-unavailable"
    assert len(payload["detail"]) <= 300


# -- malformed input ------------------------------------------------------------


def _packed(**fields: object) -> bytes:
    data = msgpack.packb(fields, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


_DELETE = object()


def _call_fields(**overrides: object) -> bytes:
    fields = msgpack.unpackb(make_call().encode(), raw=False)
    fields.update(overrides)
    for key, value in list(fields.items()):
        if value is _DELETE:
            del fields[key]
    return msgpack.packb(fields, use_bin_type=True)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # truncated array
        make_call().encode()[:-1],  # truncated body
        make_call().encode() + b"\x00",  # trailing garbage
        msgpack.packb([WIRE_VERSION, "call"]),  # not a map
        msgpack.packb({1: 2}),  # non-string key
        _packed(v=2, k="call"),  # unknown version
        _packed(k="call"),  # no version
        _packed(v=WIRE_VERSION, k="reply", s=200, h=[], b=b""),  # wrong kind
        _call_fields(m=""),
        _call_fields(m="GET /"),
        _call_fields(m=5),
        _call_fields(p="v1/fleet/x"),  # not absolute
        _call_fields(p="/a b"),
        _call_fields(p="/a\r\nX: y"),
        _call_fields(q="a=1\n"),
        _call_fields(b="text, not bytes"),
        _call_fields(b=_DELETE),
        _call_fields(h={"a": "b"}),
        _call_fields(h=[["a", "b"]]),  # str, not bin
        _call_fields(h=[[b"a"]]),
        _call_fields(h=[[b"bad name", b"v"]]),
        _call_fields(h=[[b"", b"v"]]),
        _call_fields(h=[[b"x-a", b"v\r\nInjected: 1"]]),
    ],
)
def test_malformed_call_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(BridgeWireError):
        HttpCall.decode(data)


@pytest.mark.parametrize("status", [99, 600, -1, True, "200", None])
def test_bad_status_is_a_typed_error(status: object) -> None:
    with pytest.raises(BridgeWireError):
        HttpReply.decode(_packed(v=WIRE_VERSION, k="reply", s=status, h=[], b=b""))


def test_reply_is_not_a_call_and_back() -> None:
    with pytest.raises(BridgeWireError, match="expected a bridge call"):
        HttpCall.decode(HttpReply(200, (), b"").encode())
    with pytest.raises(BridgeWireError, match="expected a bridge reply"):
        HttpReply.decode(make_call().encode())


def test_version_error_names_both_versions() -> None:
    with pytest.raises(BridgeWireError, match=r"version 2 \(this side speaks 1\)"):
        HttpCall.decode(_packed(v=2, k="call"))


def test_wire_error_is_a_protocol_error() -> None:
    assert issubclass(BridgeWireError, ProtocolError)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(BridgeWireError):
        HttpCall.decode("text")  # type: ignore[arg-type]


def test_encode_rejects_wrong_field_types() -> None:
    with pytest.raises(BridgeWireError):
        make_call(body="text").encode()
    with pytest.raises(BridgeWireError):
        HttpReply("200", (), b"").encode()  # type: ignore[arg-type]
    with pytest.raises(BridgeWireError):
        make_call(headers=((b"x", "y"),)).encode()


# -- header policy --------------------------------------------------------------


def test_hop_by_hop_headers_are_dropped() -> None:
    headers = (
        ("Host", "127.0.0.1:9092"),
        ("Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("TE", "trailers"),
        ("Trailer", "x"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Proxy-Connection", "keep-alive"),
        ("Content-Length", "4"),
        ("Expect", "100-continue"),
        *FLWR_HEADERS,
        ("Accept-Encoding", "gzip, deflate"),
        ("User-Agent", "python-httpx/0.28.1"),
    )
    kept = forwardable_headers(headers)
    assert kept == (
        *FLWR_HEADERS,
        ("Accept-Encoding", "gzip, deflate"),
        ("User-Agent", "python-httpx/0.28.1"),
    )


def test_headers_named_by_connection_are_dropped() -> None:
    headers = (
        ("Connection", "close, X-Hop"),
        ("x-hop", "1"),
        ("X-Keep", "2"),
        ("connection", "X-Other"),
        ("X-Other", "3"),
    )
    assert forwardable_headers(headers) == (("X-Keep", "2"),)


def test_flwr_headers_keep_case_and_order() -> None:
    headers = (("FLWR-Signature", "s"), ("flwr-public-key", "k"), ("Flwr-Timestamp", "t"))
    assert forwardable_headers(headers) == headers


def test_validate_headers() -> None:
    validate_headers(FLWR_HEADERS)
    for bad in ((("x a", "v"),), (("x", "a\nb"),), (("", "v"),), (("x", 1),), (("x",),)):
        with pytest.raises(BridgeWireError):
            validate_headers(bad)  # type: ignore[arg-type]


# -- properties -------------------------------------------------------------------

_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1
)
_value = st.text().filter(lambda v: not set(v) & {"\r", "\n", "\x00"})


@given(
    method=_token,
    path=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-._~%", max_size=40).map(
        lambda p: "/" + p
    ),
    query=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789=&%+", max_size=40),
    headers=st.lists(st.tuples(_token, _value), max_size=8).map(tuple),
    body=st.binary(max_size=2048),
)
def test_any_valid_call_round_trips(
    method: str, path: str, query: str, headers: tuple[tuple[str, str], ...], body: bytes
) -> None:
    call = HttpCall(method, path, query, headers, body)
    assert HttpCall.decode(call.encode()) == call


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes) -> None:
    for decode in (HttpCall.decode, HttpReply.decode):
        with contextlib.suppress(BridgeWireError):
            decode(data)


@given(st.integers(min_value=0, max_value=64), st.binary(min_size=1, max_size=1))
def test_corrupted_encodings_are_typed_errors(position: int, byte: bytes) -> None:
    data = bytearray(make_call().encode())
    data[position % len(data)] = byte[0]
    with contextlib.suppress(BridgeWireError):
        HttpCall.decode(bytes(data))
