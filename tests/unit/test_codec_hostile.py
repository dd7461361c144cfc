"""The frame codec under hostile input.

Property tests that feed the decoder garbage, truncated and corrupted frames,
lying lengths and odd msgpack headers, and split valid streams at arbitrary
points. The contract checked throughout:

* a valid stream decodes to the same frames however it is chunked;
* invalid input raises :class:`~cellnet.errors.FrameError` (or its subclass
  :class:`~cellnet.errors.FrameTooLarge` for oversize lengths), never any
  other exception type;
* :meth:`FrameDecoder.feed_partial` returns every frame completed before the
  bad bytes, together with the error;
* nothing is allocated from a length the peer declared before that length is
  checked, and not even then: the decoder buffers what it received, no more.
"""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Sequence

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellnet.codec import (
    BufferedFrameDecoder,
    MAGIC,
    PREFIX,
    PREFIX_SIZE,
    VERSION,
    Frame,
    FrameDecoder,
    FrameLimits,
    Kind,
    decode_frame,
    decode_header,
    encode_frame,
    parse_prefix,
)
from cellnet.errors import FrameError, FrameTooLarge

LIMITS = FrameLimits(max_header=4096, max_payload=1 << 20)
MiB = 1 << 20

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KIND_VALUES = frozenset(int(k) for k in Kind)

# -- strategies ---------------------------------------------------------------

# Values msgpack round-trips exactly (no NaN, lists rather than tuples).
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=16),
    st.binary(max_size=16),
)
values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=8,
)
headers = st.dictionaries(st.text(max_size=12), values, max_size=4)

frames = st.builds(
    Frame,
    kind=st.sampled_from(list(Kind)),
    header=headers,
    payload=st.binary(max_size=300),
    flags=st.integers(0, 0xFFFF),
)
frame_lists = st.lists(frames, max_size=4)
# Good frames sent ahead of bad bytes.
leading = st.lists(frames, max_size=2)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Split ``data`` at arbitrary points (empty chunks included)."""
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def prefix(
    kind: int = int(Kind.MESSAGE),
    header_len: int = 0,
    payload_len: int = 0,
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
    flags: int = 0,
) -> bytes:
    return PREFIX.pack(magic, version, kind, flags, header_len, payload_len)


def raw_frame(header: bytes, payload: bytes = b"", kind: int = int(Kind.MESSAGE)) -> bytes:
    """A frame with an arbitrary (possibly invalid) header, lengths honest."""
    return prefix(kind, len(header), len(payload)) + header + payload


# -- helpers ------------------------------------------------------------------


def feed_chunks(
    decoder: FrameDecoder, chunks: Sequence[bytes]
) -> tuple[list[Frame], FrameError | None]:
    """Feed chunks with ``feed_partial`` until the first error, as a link would."""
    out: list[Frame] = []
    for chunk in chunks:
        got, error = decoder.feed_partial(chunk)
        out += got
        if error is not None:
            return out, error
    return out, None


def assert_rejected_after(
    good: list[Frame],
    bad: bytes,
    data: st.DataObject,
    limits: FrameLimits = LIMITS,
    error: type[FrameError] = FrameError,
    match: str | None = None,
) -> FrameError:
    """Good frames then bad bytes, split anyhow: the good frames come out, then
    exactly one error of the expected type."""
    stream = b"".join(encode_frame(f) for f in good) + bad
    chunks = data.draw(chunked(stream), label="chunks")
    out, exc = feed_chunks(FrameDecoder(limits), chunks)
    assert out == good
    assert isinstance(exc, error), exc
    if match is not None:
        assert match in str(exc)
    # feed() raises the same error and loses the frames, as documented.
    with pytest.raises(error):
        FrameDecoder(limits).feed(stream)
    return exc


# -- valid streams ------------------------------------------------------------


@SETTINGS
@given(good=frame_lists, data=st.data())
def test_valid_stream_decodes_identically_whatever_the_split(
    good: list[Frame], data: st.DataObject
) -> None:
    encoded = [encode_frame(f) for f in good]
    stream = b"".join(encoded)
    chunks = data.draw(chunked(stream), label="chunks")

    # Frame boundaries, to know exactly what the decoder must hold at any point.
    starts = [0]
    for e in encoded:
        starts.append(starts[-1] + len(e))

    decoder = FrameDecoder(LIMITS)
    out: list[Frame] = []
    fed = 0
    for chunk in chunks:
        got, error = decoder.feed_partial(chunk)
        assert error is None
        out += got
        fed += len(chunk)
        # Every frame that ends within what was fed has been returned.
        assert len(out) == sum(1 for s in starts[1:] if s <= fed)
        index = len(out)
        within = fed - starts[index]
        if within < PREFIX_SIZE:
            assert decoder.buffered == within
            assert decoder.pending_body == 0
        else:
            body_len = len(encoded[index]) - PREFIX_SIZE
            assert decoder.buffered == within - PREFIX_SIZE
            assert decoder.pending_body == body_len - decoder.buffered
        assert decoder.at_boundary() == (within == 0)

    assert out == good
    assert decoder.at_boundary()
    assert decoder.buffered == 0
    assert [decode_frame(e, LIMITS) for e in encoded] == good


@SETTINGS
@given(good=frame_lists, data=st.data())
def test_feed_and_feed_partial_agree(good: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(f) for f in good)
    chunks = data.draw(chunked(stream), label="chunks")
    decoder = FrameDecoder(LIMITS)
    out = [f for chunk in chunks for f in decoder.feed(chunk)]
    assert out == good
    assert decoder.at_boundary()


# -- garbage and corruption ---------------------------------------------------


@SETTINGS
@given(garbage=st.binary(max_size=512), data=st.data())
def test_garbage_raises_only_frame_error(garbage: bytes, data: st.DataObject) -> None:
    # Any exception other than FrameError propagates and fails the test.
    try:
        decode_frame(garbage, LIMITS)
    except FrameError:
        pass
    chunks = data.draw(chunked(garbage), label="chunks")
    one_shot, one_shot_error = FrameDecoder(LIMITS).feed_partial(garbage)
    out, error = feed_chunks(FrameDecoder(LIMITS), chunks)
    assert out == one_shot
    assert type(error) is type(one_shot_error)


@SETTINGS
@given(good=st.lists(frames, min_size=1, max_size=3), data=st.data())
def test_mutated_stream_raises_only_frame_error(good: list[Frame], data: st.DataObject) -> None:
    """Flip, insert and delete bytes of a valid stream: whatever the result,
    the decoder returns frames or a FrameError, the same for every split."""
    stream = bytearray(b"".join(encode_frame(f) for f in good))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]), label="op")
        at = data.draw(st.integers(0, max(0, len(stream) - 1)), label="at")
        if op == "flip" and stream:
            stream[at] ^= data.draw(st.integers(1, 255), label="mask")
        elif op == "insert":
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=8), label="inserted")
        elif stream:
            del stream[at : at + data.draw(st.integers(1, 8), label="deleted")]
    stream = bytes(stream)

    one_shot, one_shot_error = FrameDecoder(LIMITS).feed_partial(stream)
    out, error = feed_chunks(FrameDecoder(LIMITS), data.draw(chunked(stream), label="chunks"))
    assert out == one_shot
    assert type(error) is type(one_shot_error)
    try:
        decode_frame(stream, LIMITS)
    except FrameError:
        pass


@SETTINGS
@given(original=frames, data=st.data())
def test_truncated_frame(original: Frame, data: st.DataObject) -> None:
    encoded = encode_frame(original)
    cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
    with pytest.raises(FrameError) as info:
        decode_frame(encoded[:cut], LIMITS)
    assert not isinstance(info.value, FrameTooLarge)

    decoder = FrameDecoder(LIMITS)
    out, error = feed_chunks(decoder, data.draw(chunked(encoded[:cut]), label="chunks"))
    assert (out, error) == ([], None)  # a truncated stream is incomplete, not wrong
    assert decoder.at_boundary() == (cut == 0)
    if cut < PREFIX_SIZE:
        assert (decoder.buffered, decoder.pending_body) == (cut, 0)
    else:
        assert decoder.buffered == cut - PREFIX_SIZE
        assert decoder.pending_body == len(encoded) - cut
    # The rest of the bytes complete the frame.
    assert decoder.feed(encoded[cut:]) == [original]
    assert decoder.at_boundary()


@SETTINGS
@given(
    good=leading,
    magic=st.binary(min_size=2, max_size=2).filter(lambda m: m != MAGIC),
    tail=st.binary(max_size=32),
    data=st.data(),
)
def test_wrong_magic(good: list[Frame], magic: bytes, tail: bytes, data: st.DataObject) -> None:
    bad = prefix(magic=magic) + tail
    with pytest.raises(FrameError, match="magic"):
        decode_frame(bad, LIMITS)
    assert_rejected_after(good, bad, data, match="magic")


@SETTINGS
@given(
    good=leading,
    version=st.integers(0, 255).filter(lambda v: v != VERSION),
    tail=st.binary(max_size=32),
    data=st.data(),
)
def test_wrong_version(good: list[Frame], version: int, tail: bytes, data: st.DataObject) -> None:
    bad = prefix(version=version) + tail
    with pytest.raises(FrameError, match="version"):
        decode_frame(bad, LIMITS)
    assert_rejected_after(good, bad, data, match="version")


@SETTINGS
@given(
    good=leading,
    kind=st.integers(0, 255).filter(lambda k: k not in KIND_VALUES),
    tail=st.binary(max_size=32),
    data=st.data(),
)
def test_unknown_kind(good: list[Frame], kind: int, tail: bytes, data: st.DataObject) -> None:
    bad = prefix(kind) + tail
    with pytest.raises(FrameError, match="kind"):
        decode_frame(bad, LIMITS)
    assert_rejected_after(good, bad, data, match="kind")


# -- lying lengths ------------------------------------------------------------


@SETTINGS
@given(
    good=leading,
    header=headers,
    payload=st.binary(min_size=1, max_size=64),
    data=st.data(),
)
def test_header_length_that_lies(
    good: list[Frame], header: dict[str, object], payload: bytes, data: st.DataObject
) -> None:
    """The declared header length is off, the total body length is right: the
    msgpack header is cut short or runs into the payload. Either is an error."""
    packed = msgpack.packb(header, use_bin_type=True)
    body = packed + payload
    header_len = data.draw(
        st.integers(0, len(body)).filter(lambda n: n != len(packed)), label="header_len"
    )
    bad = prefix(int(Kind.MESSAGE), header_len, len(body) - header_len) + body
    with pytest.raises(FrameError, match="malformed frame header"):
        decode_frame(bad, LIMITS)
    assert_rejected_after(good, bad, data, match="malformed frame header")


@SETTINGS
@given(original=frames, delta=st.integers(-(2**16), 2**16).filter(bool))
def test_whole_message_length_mismatch(original: Frame, delta: int) -> None:
    """A message-oriented transport delivers more or fewer bytes than declared."""
    encoded = encode_frame(original)
    declared_payload = len(original.payload) + delta
    if declared_payload < 0:
        encoded = encoded[:delta]  # fewer bytes than declared instead
    else:
        head = prefix(int(original.kind), len(encoded) - PREFIX_SIZE - len(original.payload),
                      declared_payload, flags=original.flags)
        encoded = head + encoded[PREFIX_SIZE:]
    with pytest.raises(FrameError):
        decode_frame(encoded, LIMITS)


@SETTINGS
@given(
    good=leading,
    header_len=st.one_of(
        st.integers(0, LIMITS.max_header), st.integers(LIMITS.max_header + 1, 2**32 - 1)
    ),
    payload_len=st.one_of(
        st.integers(0, LIMITS.max_payload),
        st.integers(LIMITS.max_payload + 1, 2**64 - 1),
        st.sampled_from([2**63, 2**64 - 1]),
    ),
    tail=st.binary(max_size=32),
    data=st.data(),
)
def test_declared_size_past_the_limit(
    good: list[Frame], header_len: int, payload_len: int, tail: bytes, data: st.DataObject
) -> None:
    """Oversize lengths are FrameTooLarge from the prefix alone, whatever follows."""
    if header_len <= LIMITS.max_header and payload_len <= LIMITS.max_payload:
        header_len = LIMITS.max_header + 1
    bad = prefix(int(Kind.MESSAGE), header_len, payload_len) + tail
    with pytest.raises(FrameTooLarge):
        parse_prefix(bad[:PREFIX_SIZE], LIMITS)
    with pytest.raises(FrameTooLarge):
        decode_frame(bad, LIMITS)

    assert_rejected_after(good, bad, data, error=FrameTooLarge)
    decoder = FrameDecoder(LIMITS)
    with pytest.raises(FrameTooLarge):
        decoder.feed(bad[:PREFIX_SIZE])
    assert decoder.buffered <= PREFIX_SIZE  # nothing sized by the claim
    assert decoder.pending_body == 0  # the prefix was never accepted


# -- odd msgpack headers ------------------------------------------------------

non_map_values = values.filter(lambda v: not isinstance(v, dict))


@SETTINGS
@given(good=leading, value=non_map_values, data=st.data())
def test_header_that_is_not_a_map(good: list[Frame], value: object, data: st.DataObject) -> None:
    header = msgpack.packb(value, use_bin_type=True)
    bad = raw_frame(header, b"payload")
    with pytest.raises(FrameError, match="must be a map"):
        decode_frame(bad, LIMITS)
    assert_rejected_after(good, bad, data, match="must be a map")


non_string_keys = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.binary(max_size=8),
    st.tuples(st.integers(0, 9)),  # packed as an array
)


@SETTINGS
@given(
    good=leading,
    fine=headers,
    bad_keys=st.dictionaries(non_string_keys, values, min_size=1, max_size=3),
    data=st.data(),
)
def test_header_with_non_string_keys(
    good: list[Frame], fine: dict[str, object], bad_keys: dict[object, object], data: st.DataObject
) -> None:
    header = msgpack.packb({**fine, **bad_keys}, use_bin_type=True)
    with pytest.raises(FrameError):
        decode_header(header)
    assert_rejected_after(good, raw_frame(header), data)


@SETTINGS
@given(
    depth=st.integers(1, 3000),
    container=st.sampled_from([b"\x91", b"\x81\xa1k"]),  # [x] or {"k": x}
    leaf=st.sampled_from([b"\xc0", b"\x90", b"\x80", b"\xc1"]),
)
def test_deeply_nested_header(depth: int, container: bytes, leaf: bytes) -> None:
    """Nesting too deep for msgpack is a FrameError, not a RecursionError or a
    crash; nesting it accepts decodes."""
    header = b"\x81\xa1k" + container * depth + leaf
    limits = FrameLimits(max_header=len(header), max_payload=0)
    data = raw_frame(header)
    for attempt in (lambda: decode_frame(data, limits), lambda: FrameDecoder(limits).feed(data)):
        try:
            result = attempt()
        except FrameError:
            continue
        assert leaf != b"\xc1"  # a reserved byte never decodes
        got = result if isinstance(result, Frame) else result[0]
        # Walk the nesting without recursion.
        node, levels = got.header["k"], 0
        while node not in (None, [], {}):
            node = node[0] if isinstance(node, list) else node["k"]
            levels += 1
        assert levels == depth


# -- allocation ---------------------------------------------------------------

ALLOCATION_BUDGET = 64 * 1024


def traced_peak(action) -> int:  # type: ignore[no-untyped-def]
    """Peak bytes allocated by Python while ``action`` runs."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


@pytest.mark.parametrize("payload_len", [MiB + 1, 2**32, 2**63, 2**64 - 1])
def test_huge_declared_payload_rejected_without_allocating(payload_len: int) -> None:
    limits = FrameLimits(max_header=1024, max_payload=MiB)
    head = prefix(int(Kind.MESSAGE), 0, payload_len)
    decoder = FrameDecoder(limits)
    errors: list[FrameError] = []

    def feed() -> None:
        errors.append(decoder.feed_partial(head)[1])  # type: ignore[arg-type]

    assert traced_peak(feed) < ALLOCATION_BUDGET
    assert isinstance(errors[0], FrameTooLarge)
    assert decoder.buffered <= PREFIX_SIZE
    assert decoder.pending_body == 0


@pytest.mark.parametrize("split", [False, True], ids=["one-chunk", "byte-by-byte"])
def test_payload_at_the_limit_is_not_preallocated(split: bool) -> None:
    limits = FrameLimits(max_header=1024, max_payload=MiB)
    header = msgpack.packb({"k": "v"})
    start = prefix(int(Kind.MESSAGE), len(header), MiB) + header + b"abcd"
    decoder = FrameDecoder(limits)

    def feed() -> None:
        chunks = [start[i : i + 1] for i in range(len(start))] if split else [start]
        for chunk in chunks:
            assert decoder.feed(chunk) == []

    assert traced_peak(feed) < ALLOCATION_BUDGET
    assert decoder.buffered == len(header) + 4
    assert decoder.pending_body == MiB - 4
    # The declared payload is honoured once it really arrives.
    payload = b"abcd" + bytes(MiB - 4)
    (got,) = decoder.feed(payload[4:])
    assert got == Frame(Kind.MESSAGE, {"k": "v"}, payload)
    assert decoder.at_boundary()


def test_header_at_the_limit_is_not_preallocated() -> None:
    limits = FrameLimits(max_header=MiB, max_payload=MiB)
    head = prefix(int(Kind.MESSAGE), MiB, MiB) + b"\xde\x00"
    decoder = FrameDecoder(limits)
    assert traced_peak(lambda: decoder.feed(head)) < ALLOCATION_BUDGET
    assert decoder.buffered == 2
    assert decoder.pending_body == 2 * MiB - 2


# -- the buffered decoder (asyncio.BufferedProtocol) ---------------------------------


def feed_buffered(
    decoder: BufferedFrameDecoder, chunks: Sequence[bytes]
) -> tuple[list[Frame], FrameError | None]:
    """Write chunks through get_buffer()/buffer_updated() as a transport would
    (a chunk larger than the buffer offered goes in several writes)."""
    out: list[Frame] = []
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            buf = decoder.get_buffer(len(view))
            n = min(len(buf), len(view))
            assert n > 0
            buf[:n] = view[:n]
            view = view[n:]
            got, error = decoder.buffer_updated(n)
            out += got
            if error is not None:
                return out, error
    return out, None


# A tiny direct threshold and scratch area, so both the scratch path, its
# compaction and the direct-body path run on small examples.
def small_buffered() -> BufferedFrameDecoder:
    return BufferedFrameDecoder(LIMITS, scratch=0, direct=64)


@SETTINGS
@given(good=frame_lists, data=st.data())
def test_buffered_decoder_matches_the_stream_decoder(good: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(f) for f in good)
    chunks = data.draw(chunked(stream), label="chunks")
    decoder = small_buffered()
    out, error = feed_buffered(decoder, chunks)
    assert error is None
    assert out == good
    assert decoder.at_boundary() and decoder.buffered == 0


@SETTINGS
@given(garbage=st.binary(max_size=512), good=leading, data=st.data())
def test_buffered_decoder_rejects_like_the_stream_decoder(
    garbage: bytes, good: list[Frame], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(f) for f in good) + garbage
    chunks = data.draw(chunked(stream), label="chunks")
    expected, expected_error = FrameDecoder(LIMITS).feed_partial(stream)
    out, error = feed_buffered(small_buffered(), chunks)
    assert out == expected
    assert type(error) is type(expected_error)


def test_buffered_decoder_allocates_a_large_body_only_after_its_prefix_is_checked() -> None:
    decoder = BufferedFrameDecoder(LIMITS)
    out, error = feed_buffered(decoder, [prefix(payload_len=2**63)])
    assert out == [] and isinstance(error, FrameTooLarge)
    decoder = BufferedFrameDecoder(LIMITS)
    header = msgpack.packb({"k": 1})
    body = bytes(range(256)) * 4096  # 1 MiB, the limit
    frame_bytes = prefix(header_len=len(header), payload_len=len(body)) + header + body
    out, error = feed_buffered(decoder, [frame_bytes[:1000]])
    assert out == [] and error is None and decoder.buffered == 1000 - PREFIX_SIZE
    out, error = feed_buffered(decoder, [frame_bytes[1000:]])
    assert error is None and len(out) == 1
    assert isinstance(out[0].payload, memoryview) and out[0].payload == body  # not copied
