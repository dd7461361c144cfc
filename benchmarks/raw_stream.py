"""The raw stream baseline: one-way asyncio TCP throughput between two processes.

``python -m cellnet.benchmarks.raw_stream --size 1048576 --count 100`` starts
a sink server in a child process; this process writes ``count`` messages of
``size`` bytes (4-byte length prefix, as :mod:`raw_echo`) back to back on one
connection with ``TCP_NODELAY``, and the sink (a protocol that only counts
bytes) answers one byte once it has read them all. No message waits for an answer, so this is the ceiling of what
one asyncio TCP connection carries on this machine: the MB/s of an echo can
only approach it. It prints ``size``, ``count``, ``seconds`` and ``mb_per_s``
(bytes sent one way over the time until the sink's answer) as JSON.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing.connection
import os
import socket
import struct
import time

from ._stats import echo_parser, spawned_server

_LEN = struct.Struct("!I")
#: bytes handed to the transport at a time
_SLICE = 1 << 20
#: the byte count of a burst, sent before it
_TOTAL = struct.Struct("!Q")


class _Sink(asyncio.Protocol):
    """Counts bytes without parsing or copying them: the fastest reader."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._left = -1  # bytes still due in this burst; -1: reading the header

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        while data:
            if self._left < 0:
                need = _TOTAL.size - len(self._head)
                self._head += data[:need]
                data = data[need:]
                if len(self._head) == _TOTAL.size:
                    (self._left,) = _TOTAL.unpack(self._head)
                    self._head = b""
                continue
            take = min(self._left, len(data))
            self._left -= take
            data = data[take:]
            if self._left == 0:
                assert self._transport is not None
                self._transport.write(b"k")
                self._left = -1


async def _serve(port_out: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Sink, "127.0.0.1", 0)
    port_out.send(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


async def _client(port: int, size: int, count: int, warmup: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = os.urandom(size)
    header = _LEN.pack(size)

    async def burst(n: int) -> float:
        t0 = time.perf_counter()
        writer.write(_TOTAL.pack(n * (_LEN.size + size)))
        view = memoryview(payload)
        for _ in range(n):
            writer.write(header)
            # In slices: one huge write would be copied into asyncio's buffer.
            for start in range(0, size, _SLICE):
                writer.write(view[start : start + _SLICE])
                await writer.drain()
        await reader.readexactly(1)
        return time.perf_counter() - t0

    if warmup:
        await burst(warmup)
    seconds = await burst(count)
    writer.close()
    return {"size": size, "count": count, "seconds": seconds, "mb_per_s": size * count / seconds / 1e6}


def measure(size: int, count: int, warmup: int = 5) -> dict[str, float]:
    """Run the sink in a child process and stream ``count`` messages of ``size`` bytes to it."""
    if size < 1 or count < 1:  # an empty burst would wait forever for the sink's answer
        raise ValueError(f"size and count must be >= 1, got size {size}, count {count}")
    with spawned_server(_serve) as port:
        return asyncio.run(_client(port, size, count, warmup))


def main() -> None:
    args = echo_parser(__doc__).parse_args()
    print(json.dumps(measure(args.size, args.count)))


if __name__ == "__main__":
    main()
