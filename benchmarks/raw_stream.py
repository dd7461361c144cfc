"""The raw stream baseline: one-way asyncio TCP throughput between two processes.

``python -m cellnet.benchmarks.raw_stream --size 1048576 --count 100`` starts
a sink server in a child process; this process writes ``count`` messages of
``size`` bytes (4-byte length prefix, as :mod:`raw_echo`) back to back on one
connection with ``TCP_NODELAY``, and the sink answers one byte once it has
read them all. No message waits for an answer, so this is the ceiling of what
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


async def _serve(port_out: multiprocessing.connection.Connection) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (count,) = _LEN.unpack(await reader.readexactly(4))
                for _ in range(count):
                    (n,) = _LEN.unpack(await reader.readexactly(4))
                    await reader.readexactly(n)
                writer.write(b"k")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=1 << 20)
    port_out.send(server.sockets[0].getsockname()[1])
    await asyncio.Event().wait()


async def _client(port: int, size: int, count: int, warmup: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = os.urandom(size)
    header = _LEN.pack(size)

    async def burst(n: int) -> float:
        t0 = time.perf_counter()
        writer.write(_LEN.pack(n))
        for _ in range(n):
            writer.write(header)
            writer.write(payload)
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
    with spawned_server(_serve) as port:
        return asyncio.run(_client(port, size, count, warmup))


def main() -> None:
    args = echo_parser(__doc__).parse_args()
    print(json.dumps(measure(args.size, args.count)))


if __name__ == "__main__":
    main()
