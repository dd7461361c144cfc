"""A peer process for the conformance suite: dial a listener and stream frames.

The suite starts it, waits until its frames arrive, and kills it with
SIGKILL in the middle of a send::

    python -m cellnet.testing._peer MODULE:CALLABLE URL [--ca PEM --cert PEM --key PEM]
        [--frame-size BYTES] [--max-header BYTES] [--max-payload BYTES] [--seconds S]

``MODULE:CALLABLE`` is called with no arguments and must return the driver
(a driver class usually is such a callable). Frames carry ``{"seq": n}``
headers and ``--frame-size`` payload bytes whose first 8 bytes are ``n``
(big-endian). The process exits by itself after ``--seconds`` so a test that
failed to kill it leaves nothing behind for long. Errors go to stderr with
exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

from cellnet.codec import Frame, FrameLimits, Kind
from cellnet.driver import Driver, LinkOptions
from cellnet.tls import TlsSettings


def load_driver(path: str) -> Driver:
    """Import ``module:callable`` and call it to get a driver."""
    module_name, _, attr = path.partition(":")
    target: object = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path!r} is not callable")
    driver = target()
    if not isinstance(driver, Driver):
        raise TypeError(f"{path!r}() returned {type(driver).__name__}, not a cellnet Driver")
    return driver


def stream_payload(seq: int, size: int, filler: bytes) -> bytes:
    """The payload of frame ``seq``: its number, then filler, ``size`` bytes in all."""
    return (seq.to_bytes(8, "big") + filler)[:size]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cellnet.testing._peer")
    parser.add_argument("driver", help="MODULE:CALLABLE returning the driver")
    parser.add_argument("url", help="the listener's URL")
    parser.add_argument("--ca", type=Path)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--frame-size", type=int, default=1 << 20)
    parser.add_argument("--max-header", type=int, default=FrameLimits().max_header)
    parser.add_argument("--max-payload", type=int, default=FrameLimits().max_payload)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    return parser.parse_args(argv)


async def _stream(args: argparse.Namespace) -> None:
    tls = None
    if args.ca or args.cert or args.key:
        tls = TlsSettings(args.ca, args.cert, args.key)
    options = LinkOptions(
        limits=FrameLimits(args.max_header, args.max_payload),
        connect_timeout=args.connect_timeout,
        tls=tls,
    )
    driver = load_driver(args.driver)
    link = await driver.dial(args.url, options)
    filler = bytes(range(256)) * (args.frame_size // 256 + 1)
    seq = 0
    try:
        async with asyncio.timeout(args.seconds):
            while True:
                await link.send(Frame(Kind.MESSAGE, {"seq": seq}, stream_payload(seq, args.frame_size, filler)))
                seq += 1
    except TimeoutError:
        pass
    finally:
        await link.aclose()


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        asyncio.run(_stream(args))
    except Exception as exc:
        print(f"peer: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
