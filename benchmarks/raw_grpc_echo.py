"""The raw gRPC baseline: a plain grpc.aio echo between two processes.

``python -m cellnet.benchmarks.raw_grpc_echo --size 100 --count 2000`` starts
a grpc.aio echo server in a child process and measures request/response round
trips over one bidirectional streaming call (``/bench.Echo/Stream``), served by
a generic handler with bytes in and bytes out (no protobuf): the floor the
``grpc://`` driver can approach, which carries each link on one such call.
``--mode unary`` measures one unary call (``/bench.Echo/Unary``) per round trip
on one channel instead. The message size limits of both ends are raised to fit
``--size``, never gRPC's 4 MiB default. It prints RTT min/median/p99 and MB/s
as JSON, like :mod:`cellnet.benchmarks.raw_echo`.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing.connection
import os
import time

from ._stats import echo_parser, spawned_server, summarize

_SERVICE = "bench.Echo"
_STREAM = f"/{_SERVICE}/Stream"
_UNARY = f"/{_SERVICE}/Unary"
MODES = ("stream", "unary")


def _options(size: int) -> list[tuple[str, int]]:
    limit = min(size + 1024, 2**31 - 1)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]


async def _serve(port_out: multiprocessing.connection.Connection, size: int) -> None:
    import grpc
    import grpc.aio

    async def stream(_requests: object, context: grpc.aio.ServicerContext) -> None:
        # The read/write API: no async generator between gRPC and the echo.
        while True:
            data = await context.read()
            if data is grpc.aio.EOF:
                return
            await context.write(data)

    async def unary(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        _SERVICE,
        {
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
        },
    )
    server = grpc.aio.server(options=_options(size))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_out.send(port)
    await server.wait_for_termination()


async def _client(port: int, size: int, count: int, warmup: int, mode: str) -> dict[str, float | int | str]:
    import grpc.aio

    payload = os.urandom(size)
    rtts: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_options(size)) as channel:
        if mode == "stream":
            call = channel.stream_stream(_STREAM)()
            for i in range(warmup + count):
                t0 = time.perf_counter()
                await call.write(payload)
                data = await call.read()
                if i >= warmup:
                    rtts.append(time.perf_counter() - t0)
                if data is grpc.aio.EOF or len(data) != size:
                    raise RuntimeError(f"echo failed: got {data!r:.60}")
            await call.done_writing()
            await call.code()
        else:
            rpc = channel.unary_unary(_UNARY)
            for i in range(warmup + count):
                t0 = time.perf_counter()
                data = await rpc(payload)
                if i >= warmup:
                    rtts.append(time.perf_counter() - t0)
                if len(data) != size:
                    raise RuntimeError(f"echo failed: got {len(data)} bytes")
    return {"mode": mode, **summarize(rtts, size)}


def measure(size: int, count: int, warmup: int = 50, mode: str = "stream") -> dict[str, float | int | str]:
    """Run the echo server in a child process and measure ``count`` round trips."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    with spawned_server(_serve, size) as port:
        return asyncio.run(_client(port, size, count, warmup, mode))


def main() -> None:
    parser = echo_parser(__doc__)
    parser.add_argument("--mode", choices=MODES, default="stream",
                        help="stream: one bidirectional call (default); unary: one call per echo")
    args = parser.parse_args()
    print(json.dumps(measure(args.size, args.count, mode=args.mode)))


if __name__ == "__main__":
    main()
