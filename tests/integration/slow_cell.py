"""A cell process for tests: ``python slow_cell.py CELL.toml``.

Runs the configured cell with extra handlers: ``("test", "sleep")`` sleeps
for the number of seconds in the payload before answering;
``("test", "count")`` counts how often it ran for each payload and answers
that count; ``("test", "counts")`` answers every count as JSON.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from cellnet.cell import Cell
from cellnet.config import load_config
from cellnet.message import Message


async def main(path: str) -> None:
    cell = Cell.from_config(load_config(path))

    @cell.on("test", "sleep")
    async def sleep(msg: Message) -> bytes:
        await asyncio.sleep(float(msg.payload or b"0"))
        return b"slept"

    runs: dict[str, int] = {}

    @cell.on("test", "count")
    async def count(msg: Message) -> bytes:
        key = bytes(msg.payload).decode()
        runs[key] = runs.get(key, 0) + 1
        return str(runs[key]).encode()

    @cell.on("test", "counts")
    async def counts(msg: Message) -> bytes:
        return json.dumps(runs).encode()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with cell:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
