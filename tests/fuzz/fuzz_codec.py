"""Coverage-guided fuzzing of the frame decoder with atheris.

Every input is decoded three ways: in one piece by :func:`decode_frame`, in one
piece by :meth:`FrameDecoder.feed_partial`, and by ``feed_partial`` in chunks
cut at fuzzer-chosen points. The only exception allowed out of the codec is
:class:`~cellnet.errors.FrameError`; anything else is a crash. The harness also
checks that the chunked and one-piece decodes agree, that ``decode_frame``
agrees with the stream decoder, and that the decoder never holds more than one
checked frame body.

Half the inputs are used as raw bytes; the other half describe frames (kind,
flags, header bytes, payload and possibly lying lengths) so that the fuzzer
gets past the prefix checks quickly.

Run it for a bounded number of inputs::

    python tests/fuzz/fuzz_codec.py -runs=200000

or longer, keeping a corpus and crash reproducers, on several cores::

    mkdir -p corpus/codec
    python tests/fuzz/fuzz_codec.py corpus/codec -max_total_time=3600 \\
        -artifact_prefix=crashes/ -jobs=4 -workers=4

A crash leaves a ``crash-<sha1>`` file; replay it with
``python tests/fuzz/fuzz_codec.py crash-<sha1>``. Any libFuzzer option works,
e.g. ``-max_len=65536`` for larger inputs or ``-seed=N`` to repeat a run.
"""

from __future__ import annotations

import itertools
import math
import sys

import atheris
import msgpack

# atheris instruments whole top-level packages; of cellnet only the codec runs.
with atheris.instrument_imports(include=["cellnet"]):
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
    )

from cellnet.errors import FrameError

# Small limits so that "at the limit" and "past the limit" are both reachable.
LIMITS = (
    FrameLimits(max_header=64, max_payload=256),
    FrameLimits(max_header=1024, max_payload=4096),
    FrameLimits(),
)
KINDS = [int(k) for k in Kind]


def _same(a: object, b: object) -> bool:
    """Structural equality without recursion (headers may nest ~1000 deep),
    with NaN equal to itself (two decodes of one NaN must agree)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if list(x) != list(y):  # type: ignore[call-overload]
                return False
            stack.extend((x[k], y[k]) for k in x)  # type: ignore[index]
        elif isinstance(x, list):
            if len(x) != len(y):  # type: ignore[arg-type]
                return False
            stack.extend(zip(x, y))  # type: ignore[call-overload]
        elif isinstance(x, float):
            if not (x == y or (math.isnan(x) and math.isnan(y))):  # type: ignore[arg-type]
                return False
        elif x != y:
            return False
    return True


def _same_frames(a: list[Frame], b: list[Frame]) -> bool:
    return len(a) == len(b) and all(
        x.kind == y.kind
        and x.flags == y.flags
        and bytes(x.payload) == bytes(y.payload)
        and _same(x.header, y.header)
        for x, y in zip(a, b)
    )


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    choice = fdp.ConsumeIntInRange(0, 7 if depth < 3 else 5)
    if choice == 0:
        return None
    if choice == 1:
        return fdp.ConsumeBool()
    if choice == 2:
        return fdp.ConsumeIntInRange(-(2**63), 2**64 - 1)
    if choice == 3:
        return fdp.ConsumeRegularFloat()
    if choice == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 16))
    if choice == 5:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
    if choice == 6:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return _map(fdp, depth + 1)


def _map(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> dict[object, object]:
    out: dict[object, object] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        # Mostly string keys, sometimes the kinds a header must not have.
        key = fdp.ConsumeUnicodeNoSurrogates(8) if fdp.ConsumeProbability() < 0.9 else _value(fdp, 3)
        try:
            out[key] = _value(fdp, depth)
        except TypeError:  # an unhashable key
            pass
    return out


def _header(fdp: atheris.FuzzedDataProvider) -> bytes:
    """Header bytes: a packed map, a packed non-map or raw bytes."""
    choice = fdp.ConsumeIntInRange(0, 3)
    if choice <= 1:
        return msgpack.packb(_map(fdp), use_bin_type=True)
    if choice == 2:
        return msgpack.packb(_value(fdp), use_bin_type=True)
    return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 96))


def _structured(fdp: atheris.FuzzedDataProvider) -> bytes:
    """Frames built from fuzz data, with honest or lying prefixes."""
    out = bytearray()
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        header = _header(fdp)
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
        header_len, payload_len = len(header), len(payload)
        lie = fdp.ConsumeIntInRange(0, 7)
        if lie == 1:
            header_len = fdp.ConsumeIntInRange(0, 2**32 - 1)
        elif lie == 2:
            payload_len = fdp.ConsumeIntInRange(0, 2**64 - 1)
        elif lie == 3:  # move the boundary between header and payload
            shift = fdp.ConsumeIntInRange(-header_len, payload_len)
            header_len, payload_len = header_len + shift, payload_len - shift
        magic = MAGIC if fdp.ConsumeProbability() < 0.95 else fdp.ConsumeBytes(2).ljust(2, b"\0")
        version = VERSION if fdp.ConsumeProbability() < 0.95 else fdp.ConsumeIntInRange(0, 255)
        kind = fdp.PickValueInList(KINDS) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 255)
        flags = fdp.ConsumeIntInRange(0, 0xFFFF)
        out += PREFIX.pack(magic, version, kind, flags, header_len, payload_len)
        out += header + payload
    if fdp.ConsumeBool():
        out += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    return bytes(out)


def _decode_all(decoder: FrameDecoder, chunks: list[bytes], limits: FrameLimits):
    frames: list[Frame] = []
    max_body = limits.max_header + limits.max_payload
    for chunk in chunks:
        got, error = decoder.feed_partial(chunk)
        frames += got
        if error is not None:
            if not isinstance(error, FrameError):
                raise AssertionError(f"feed_partial returned {error!r}")
            return frames, error
        # Between calls the decoder holds less than one prefix, or part of one
        # checked body: never a whole frame it should have returned, never a
        # buffer sized by a claim.
        if decoder.pending_body == 0:
            assert decoder.buffered < PREFIX_SIZE, decoder.buffered
        else:
            assert decoder.buffered + decoder.pending_body <= max_body
    return frames, None


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    limits = LIMITS[fdp.ConsumeIntInRange(0, len(LIMITS) - 1)]
    cuts = [fdp.ConsumeIntInRange(0, 1 << 16) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    stream = _structured(fdp) if fdp.ConsumeBool() else fdp.ConsumeBytes(fdp.remaining_bytes())

    try:
        whole: Frame | None = decode_frame(stream, limits)
    except FrameError:
        whole = None

    one_piece, error = _decode_all(FrameDecoder(limits), [stream], limits)

    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    decoder = FrameDecoder(limits)
    chunked, chunked_error = _decode_all(decoder, chunks, limits)

    if not _same_frames(one_piece, chunked):
        raise AssertionError(f"split at {bounds} changed the frames: {one_piece!r} != {chunked!r}")
    if type(error) is not type(chunked_error):
        raise AssertionError(f"split at {bounds} changed the error: {error!r} != {chunked_error!r}")

    # decode_frame accepts exactly the streams that hold one whole frame.
    single = error is None and len(one_piece) == 1 and decoder.at_boundary()
    if (whole is not None) != single:
        raise AssertionError(f"decode_frame gave {whole!r}, the stream decoder {one_piece!r}")
    if whole is not None and not _same_frames([whole], one_piece):
        raise AssertionError(f"decode_frame gave {whole!r}, the stream decoder {one_piece!r}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
