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

from .cell import Cell, Reply
from .config import Config, config_from_mapping, load_config
from .errors import *  # noqa: F401,F403  (the error tree is public API)
from .errors import __all__ as _errors
from .message import Message, MsgType, Status
from .stream import Stream

__version__ = "0.1.0"

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
