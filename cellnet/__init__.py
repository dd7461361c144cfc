"""cellnet: a cell-addressed message bus for federated systems.

The public API::

    from cellnet import Cell, load_config

    async with Cell("site-1", parent="tcp://server.example.org:8002") as cell:
        reply = await cell.request("site-2", "app", "hello", b"payload", timeout=5)
        # any size: bytes, a file path or an async iterable, streamed in chunks
        await cell.request("site-2", "models", "put", Path("model.bin"), timeout=600)

Importing cellnet loads no optional dependency (flwr, grpc, redis, aiohttp,
websockets); drivers and applications load theirs when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import *  # noqa: F401,F403  (the error tree is public API)
from .errors import __all__ as _errors

if TYPE_CHECKING:
    from .cell import Cell, Reply
    from .config import Config, config_from_mapping, load_config
    from .message import Message, MsgType, Status
    from .stream import Stream

__version__ = "0.1.0"

# Loaded on first use, so that ``import cellnet`` (and the ``cellnet``
# command, which can be interrupted while it starts) stays quick.
_LAZY = {
    "Cell": ".cell",
    "Reply": ".cell",
    "Config": ".config",
    "config_from_mapping": ".config",
    "load_config": ".config",
    "Message": ".message",
    "MsgType": ".message",
    "Status": ".message",
    "Stream": ".stream",
}

__all__ = [
    "Cell",
    "Config",
    "Message",
    "MsgType",
    "Reply",
    "Status",
    "Stream",
    "config_from_mapping",
    "load_config",
    *_errors,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cellnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
