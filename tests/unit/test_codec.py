"""The frame codec: round trips, and hostile input rejected before allocation."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellnet.codec import (
    MAGIC,
    PREFIX,
    PREFIX_SIZE,
    VERSION,
    Frame,
    FrameDecoder,
    FrameLimits,
    Kind,
    decode_frame,
    encode_frame,
    parse_prefix,
)
from cellnet.errors import FrameError, FrameTooLarge

LIMITS = FrameLimits(max_header=1024, max_payload=1 << 20)


def frame(payload: bytes = b"payload", **header: object) -> Frame:
    return Frame(Kind.MESSAGE, dict(header) or {"k": "v"}, payload)


def test_prefix_is_18_bytes() -> None:
    assert PREFIX_SIZE == 18


@pytest.mark.parametrize("size", [0, 1, 65_535, 65_536, 65_537])
def test_round_trip_sizes(size: int) -> None:
    original = frame(bytes(range(256)) * (size // 256) + b"x" * (size % 256), a=1, b=[1, "two"])
    data = encode_frame(original)
    assert len(data) == PREFIX_SIZE + len(data) - PREFIX_SIZE
    decoded = decode_frame(data, LIMITS)
    assert decoded == original


def test_incremental_decoder_byte_by_byte() -> None:
    frames = [frame(b"a" * n, n=n) for n in (0, 1, 300, 5000)]
    stream = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder(LIMITS)
    out: list[Frame] = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == frames
    assert decoder.at_boundary()


def test_truncated_frame_is_an_error_not_a_hang() -> None:
    data = encode_frame(frame(b"x" * 100))
    for cut in (0, 5, PREFIX_SIZE - 1, PREFIX_SIZE, len(data) - 1):
        with pytest.raises(FrameError):
            decode_frame(data[:cut], LIMITS)
    decoder = FrameDecoder(LIMITS)
    assert decoder.feed(data[:-1]) == []
    assert not decoder.at_boundary()


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(FrameError, match="mismatch"):
        decode_frame(encode_frame(frame()) + b"!", LIMITS)


def test_bad_magic() -> None:
    data = b"XX" + encode_frame(frame())[2:]
    with pytest.raises(FrameError, match="magic"):
        decode_frame(data, LIMITS)


def test_bad_version() -> None:
    data = bytearray(encode_frame(frame()))
    data[2] = VERSION + 1
    with pytest.raises(FrameError, match="version"):
        decode_frame(bytes(data), LIMITS)


def test_unknown_kind() -> None:
    data = bytearray(encode_frame(frame()))
    data[3] = 200
    with pytest.raises(FrameError, match="kind"):
        decode_frame(bytes(data), LIMITS)


def test_oversized_payload_rejected_from_the_prefix_alone() -> None:
    # A prefix that claims 2**60 payload bytes: rejected with 18 bytes read.
    prefix = PREFIX.pack(MAGIC, VERSION, int(Kind.MESSAGE), 0, 0, 1 << 60)
    with pytest.raises(FrameTooLarge, match="payload"):
        parse_prefix(prefix, LIMITS)
    decoder = FrameDecoder(LIMITS)
    with pytest.raises(FrameTooLarge):
        decoder.feed(prefix)
    assert decoder.buffered <= PREFIX_SIZE  # nothing sized by the claim


def test_oversized_header_rejected() -> None:
    prefix = PREFIX.pack(MAGIC, VERSION, int(Kind.MESSAGE), 0, LIMITS.max_header + 1, 0)
    with pytest.raises(FrameTooLarge, match="header"):
        parse_prefix(prefix, LIMITS)


def test_payload_at_limit_accepted() -> None:
    limits = FrameLimits(max_header=1024, max_payload=1000)
    assert decode_frame(encode_frame(frame(b"z" * 1000)), limits).payload == b"z" * 1000
    with pytest.raises(FrameTooLarge):
        decode_frame(encode_frame(frame(b"z" * 1001)), limits)


@pytest.mark.parametrize(
    "header",
    [b"\xc1", b"\x93\x01\x02\x03", b"\xa3abc", b"\x81\x01\x02", b"\xdf\xff\xff\xff\xff"],
    ids=["reserved-byte", "array", "string", "int-key", "map-claims-4G-entries"],
)
def test_garbage_header_is_frame_error(header: bytes) -> None:
    data = PREFIX.pack(MAGIC, VERSION, int(Kind.MESSAGE), 0, len(header), 0) + header
    with pytest.raises(FrameError):
        decode_frame(data, LIMITS)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=256))
def test_fuzz_garbage_never_crashes(data: bytes) -> None:
    decoder = FrameDecoder(LIMITS)
    try:
        decoder.feed(data)
    except FrameError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(list(Kind)),
    header_len=st.integers(0, 2**32 - 1),
    payload_len=st.integers(0, 2**64 - 1),
    tail=st.binary(max_size=64),
)
def test_fuzz_lying_prefix(kind: Kind, header_len: int, payload_len: int, tail: bytes) -> None:
    data = PREFIX.pack(MAGIC, VERSION, int(kind), 0, header_len, payload_len) + tail
    decoder = FrameDecoder(LIMITS)
    try:
        decoder.feed(data)
    except FrameError:
        return
    # Accepted prefixes were within limits; the decoder holds at most what it got.
    assert header_len <= LIMITS.max_header and payload_len <= LIMITS.max_payload
    assert decoder.buffered <= len(tail)


@settings(max_examples=200, deadline=None)
@given(
    header=st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.binary(max_size=20)), max_size=5),
    payload=st.binary(max_size=2000),
    chunk=st.integers(1, 50),
)
def test_fuzz_round_trip_any_chunking(header: dict[str, object], payload: bytes, chunk: int) -> None:
    original = Frame(Kind.MESSAGE, header, payload)
    data = encode_frame(original) * 2
    decoder = FrameDecoder(LIMITS)
    out: list[Frame] = []
    for i in range(0, len(data), chunk):
        out += decoder.feed(data[i : i + chunk])
    assert out == [original, original]


def test_prefix_layout_is_big_endian() -> None:
    data = encode_frame(Frame(Kind.PING, {}, b"abc", flags=0x0102))
    magic, version, kind, flags, hlen, plen = struct.unpack("!2sBBHIQ", data[:PREFIX_SIZE])
    assert (magic, version, kind, flags, plen) == (b"CN", 1, int(Kind.PING), 0x0102, 3)
    assert hlen == 1  # msgpack empty map
