"""The raw WebSocket baseline: a plain aiohttp WebSocket echo between two processes.

``python -m cellnet.benchmarks.raw_websocket_echo --size 100 --count 2000``
starts an aiohttp echo server in a child process and measures request/response
round trips of binary WebSocket messages with ``ClientSession.ws_connect``:
the floor the ``http://`` driver can approach. Compression and aiohttp's
heartbeat are off and the message limit fits ``--size``, as in the driver.
It prints RTT min/median/p99 and MB/s as JSON, like
:mod:`cellnet.benchmarks.raw_echo`.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing.connection
import os
import time

from ._stats import echo_parser, spawned_server, summarize

_PATH = "/echo"


def _limit(size: int) -> int:
    return size + 1024


async def _serve(port_out: multiprocessing.connection.Connection, size: int) -> None:
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, heartbeat=None, max_msg_size=_limit(size))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get(_PATH, echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_out.send(runner.addresses[0][1])
    await asyncio.Event().wait()


async def _client(port: int, size: int, count: int, warmup: int) -> dict[str, float]:
    import aiohttp

    payload = os.urandom(size)
    rtts: list[float] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(
            f"http://127.0.0.1:{port}{_PATH}",
            compress=0,
            heartbeat=None,
            max_msg_size=_limit(size),
        ) as ws:
            for i in range(warmup + count):
                t0 = time.perf_counter()
                await ws.send_bytes(payload)
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.BINARY or len(msg.data) != size:
                    raise RuntimeError(f"echo failed: {msg.type!r}")
                if i >= warmup:
                    rtts.append(time.perf_counter() - t0)
    return summarize(rtts, size)


def measure(size: int, count: int, warmup: int = 50) -> dict[str, float]:
    """Run the echo server in a child process and measure ``count`` round trips."""
    with spawned_server(_serve, size) as port:
        return asyncio.run(_client(port, size, count, warmup))


def main() -> None:
    args = echo_parser(__doc__).parse_args()
    print(json.dumps(measure(args.size, args.count)))


if __name__ == "__main__":
    main()
