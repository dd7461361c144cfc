"""The raw baseline: a plain asyncio TCP echo between two processes.

``python -m cellnet.benchmarks.raw_echo --size 100 --count 2000
[--concurrency 32]`` starts an echo server in a child process and measures
request/response round trips with asyncio streams and a 4-byte length
prefix: the floor any asyncio bus on TCP can approach. It prints RTT
min/median/p99 and MB/s as JSON.

With ``--concurrency N`` (N > 1) the client keeps N requests outstanding on
its one connection (pipelined: a writer task sends while a reader task takes
the echoes in order, so neither side's socket buffer can stall the other),
which is what the bus does over its single link at ``concurrency`` N. Then
``msgs_per_s`` is echoes per second of wall time and ``mb_per_s`` counts the
payload once each way (``2 * size * msgs_per_s / 1e6``), as the harness
counts the bus.
"""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing.connection
import os
import socket
import struct
import time

from ._stats import echo_parser, positive_int, spawned_server, summarize

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


async def _pipelined(port: int, size: int, count: int, warmup: int, concurrency: int) -> dict[str, float]:
    """``count`` echoes with ``concurrency`` of them outstanding on one connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = os.urandom(size)
    frame = _LEN.pack(size) + payload
    for _ in range(warmup):  # one at a time: connection and allocator warm-up
        writer.write(frame)
        await writer.drain()
        await reader.readexactly(4 + size)
    slots = asyncio.Semaphore(concurrency)
    sent: collections.deque[float] = collections.deque()  # send times, in order (the server echoes in order)
    rtts: list[float] = []

    async def send() -> None:
        for _ in range(count):
            await slots.acquire()
            sent.append(time.perf_counter())
            writer.write(frame)
            await writer.drain()

    async def receive() -> None:
        for _ in range(count):
            (n,) = _LEN.unpack(await reader.readexactly(4))
            await reader.readexactly(n)
            rtts.append(time.perf_counter() - sent.popleft())
            slots.release()

    t0 = time.perf_counter()
    await asyncio.gather(send(), receive())
    elapsed = time.perf_counter() - t0
    writer.close()
    result = summarize(rtts, size)
    msgs = count / elapsed
    result.update(concurrency=concurrency, elapsed_s=elapsed, msgs_per_s=msgs, mb_per_s=2 * size * msgs / 1e6)
    return result


def measure(size: int, count: int, warmup: int = 50, concurrency: int = 1) -> dict[str, float]:
    """Run the echo server in a child process and measure ``count`` round trips.

    ``concurrency`` > 1 keeps that many requests outstanding on the one
    connection (see the module docstring); 1 measures one request at a time.
    """
    with spawned_server(_serve) as port:
        if concurrency > 1:
            return asyncio.run(_pipelined(port, size, count, warmup, concurrency))
        result = asyncio.run(_client(port, size, count, warmup))
    # one at a time, the wall time is the sum of the round trips
    result.update(concurrency=1, msgs_per_s=result["mb_per_s"] * 1e6 / (2 * size))
    return result


def main() -> None:
    parser = echo_parser(__doc__)
    parser.add_argument("--concurrency", type=positive_int, default=1,
                        help="requests outstanding on the connection (default 1)")
    args = parser.parse_args()
    print(json.dumps(measure(args.size, args.count, concurrency=args.concurrency)))


if __name__ == "__main__":
    main()
