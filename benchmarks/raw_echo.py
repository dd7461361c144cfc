"""The raw baseline: a plain asyncio TCP echo between two processes.

``python -m cellnet.benchmarks.raw_echo --size 100 --count 2000`` starts an
echo server in a child process and measures request/response round trips with
asyncio streams and a 4-byte length prefix: the floor any asyncio bus on TCP
can approach. It prints RTT min/median/p99 and MB/s as JSON.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing.connection
import os
import socket
import struct
import time

from ._stats import echo_parser, spawned_server, summarize

_LEN = struct.Struct("!I")


async def _serve(port_out: multiprocessing.connection.Connection) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (n,) = _LEN.unpack(await reader.readexactly(4))
                data = await reader.readexactly(n)
                writer.write(_LEN.pack(n) + data)
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
    rtts: list[float] = []
    for i in range(warmup + count):
        t0 = time.perf_counter()
        writer.write(_LEN.pack(size) + payload)
        await writer.drain()
        (n,) = _LEN.unpack(await reader.readexactly(4))
        await reader.readexactly(n)
        if i >= warmup:
            rtts.append(time.perf_counter() - t0)
    writer.close()
    return summarize(rtts, size)


def measure(size: int, count: int, warmup: int = 50) -> dict[str, float]:
    """Run the echo server in a child process and measure ``count`` round trips."""
    with spawned_server(_serve) as port:
        return asyncio.run(_client(port, size, count, warmup))


def main() -> None:
    args = echo_parser(__doc__).parse_args()
    print(json.dumps(measure(args.size, args.count)))


if __name__ == "__main__":
    main()
