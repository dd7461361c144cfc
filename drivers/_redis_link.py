"""One link over Redis: the record protocol behind :mod:`cellnet.drivers.redis`.

The user documentation (URL grammar, key layout, guarantees) is in
:mod:`cellnet.drivers.redis`; this module is the machinery. Each side of a
link runs three tasks, each on its own pooled Redis connection:

``pump``
    ``BLPOP`` on the incoming data list; drops duplicates, feeds the frame
    decoder, queues frames for the consumer (bounded; when full it stops
    popping, so the sender's window fills and its ``send`` waits).
``writer``
    turns queued frames into records (one sequence number each), pushes them
    within the credit window, re-pushes every unacknowledged record after any
    sign that Redis lost data, and waits for credit on the ``wake`` list.
``control``
    every ``ttl / 4`` seconds refreshes this side's liveness key (a missing
    key means Redis restarted: re-send), checks the peer's, writes the
    acknowledgement key and rings the peer's ``wake`` list.

A Redis error that may pass (connection refused or reset, timeouts,
``LOADING``) is retried with backoff for up to :data:`MAX_OUTAGE` seconds;
anything else (authentication, ``WRONGTYPE``, ACL refusals) breaks the link.

Stopping tasks
    One ``Task.cancel()`` is not enough to stop a task inside a redis-py
    command on Python 3.11: redis-py writes each command under
    ``asyncio.wait_for``, which there returns normally, dropping the
    cancellation, when the cancel lands just as the write completes (CPython
    gh-86296, fixed in 3.12). The task then goes on reading the reply and, in
    a loop, issuing new commands. So every loop here also checks a stop flag,
    :func:`stop_tasks` cancels again until the tasks have ended, and
    :func:`within` (used instead of ``asyncio.wait_for``) bounds a command
    even when its cancellation was dropped.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

from redis import exceptions as rexc
from redis.asyncio import Redis

from cellnet.codec import PREFIX_SIZE, Frame, FrameDecoder, encode_parts
from cellnet.driver import Link, LinkOptions
from cellnet.errors import CellnetError, FrameError, FrameTooLarge, LinkBroken, LinkClosed

log = logging.getLogger("cellnet.drivers.redis")

#: a record: kind, flags, sequence number, piggybacked acknowledgement, body
RECORD = struct.Struct("!BBQQ")
DATA, CLOSE, ACCEPT = 1, 2, 3
#: flag: the sender's window is half full; please write the ack key now
ACK_WANTED = 1

#: largest record body (well below Redis's 512 MB value limit)
CHUNK = 512 * 1024
#: bytes pushed per round trip at most
BATCH = 2 * 1024 * 1024
#: unacknowledged bytes a sender may have in Redis before ``send`` waits
WINDOW = 8 * 1024 * 1024
#: received frames (count, payload bytes) queued for the consumer before popping pauses
RX_FRAMES = 256
RX_BYTES = 4 * 1024 * 1024
#: seconds Redis may stay unreachable before a link gives up
MAX_OUTAGE = 30.0
#: seconds a closed or orphaned link's keys live on (0: never more than this)
GC_TTL = 30.0
#: extra seconds given to a peer's liveness key after we (re)connected
GRACE = 1.0
#: seconds ``aclose`` spends flushing and cleaning up, each
CLOSE_WAIT = 1.0

OPEN, CLOSED = b"open", b"closed"


def transient(exc: BaseException) -> bool:
    """Whether a Redis failure may pass by itself (retry) or is final."""
    if isinstance(exc, rexc.AuthenticationError):
        return False
    if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, OSError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, rexc.ResponseError):
        return str(exc).startswith(("LOADING", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"))
    return False


def reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: seconds :func:`stop_tasks` keeps re-cancelling, by default
STOP_WAIT = 2.0
#: seconds between two cancellations of a task that did not end
_RECANCEL = 0.05


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], grace: float = STOP_WAIT) -> None:
    """Cancel ``tasks`` and wait until they ended, cancelling again every
    50 ms (a cancellation can be dropped, see the module docs); gives up
    after ``grace`` seconds (logged). Never raises but CancelledError."""
    current = asyncio.current_task()
    tasks = [t for t in tasks if t is not current]
    pending = {t for t in tasks if not t.done()}
    if not pending:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            names = ", ".join(t.get_name() for t in pending)
            log.warning("%d task(s) did not stop within %g s: %s", len(pending), grace, names)
            for task in pending:
                task.add_done_callback(_consume)
            return
        _, pending = await asyncio.wait(pending, timeout=min(_RECANCEL, left))
    for task in tasks:
        _consume(task)


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve a finished task's exception so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


async def within(aw: Awaitable[Any], timeout: float, grace: float = STOP_WAIT) -> Any:
    """``asyncio.wait_for`` that keeps its deadline: ``TimeoutError`` after
    ``timeout`` seconds even when the cancellation it sends is dropped (then
    within ``grace`` more at most). A result or error that arrives while the
    awaitable is being stopped is returned or raised, as ``wait_for`` does."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.wait({task}, timeout=max(0.0, timeout))
    except asyncio.CancelledError:
        await stop_tasks([task], grace)
        raise
    if not task.done():
        await stop_tasks([task], grace)
        if not task.done() or task.cancelled():
            raise asyncio.TimeoutError
    return task.result()


async def close_client(client: Redis) -> None:
    """Close a client and its pool; never raises (but CancelledError)."""
    closer = getattr(client, "aclose", None) or client.close
    try:
        await within(closer(), CLOSE_WAIT, grace=CLOSE_WAIT)
    except asyncio.CancelledError:
        raise
    except BaseException:  # noqa: BLE001 - closing must not fail
        pass


class Backoff:
    """Exponential waits between retries, 50 ms up to one second."""

    def __init__(self) -> None:
        self._delay = 0.05

    async def wait(self) -> None:
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, 1.0)

    def reset(self) -> None:
        self._delay = 0.05


class ConnKeys:
    """The Redis keys of one connection, seen from one side."""

    def __init__(self, ns: str, conn_id: str, *, dialer: bool) -> None:
        base = f"{ns}:conn:{conn_id}"
        out, inc = ("c2s", "s2c") if dialer else ("s2c", "c2s")
        me, peer = ("c", "s") if dialer else ("s", "c")
        self.out = f"{base}:{out}"
        self.out_ack = f"{base}:{out}:ack"
        self.out_wake = f"{base}:{out}:wake"
        self.inc = f"{base}:{inc}"
        self.inc_ack = f"{base}:{inc}:ack"
        self.inc_wake = f"{base}:{inc}:wake"
        self.me = f"{base}:{me}"
        self.peer = f"{base}:{peer}"

    def all(self) -> list[str]:
        return [self.out, self.out_ack, self.out_wake, self.inc, self.inc_ack, self.inc_wake, self.me, self.peer]


class RedisLink(Link):
    """One side of a link; see the module docstring for the tasks it runs."""

    def __init__(
        self,
        client: Redis,
        keys: ConnKeys,
        options: LinkOptions,
        *,
        remote: str,
        ttl: float,
        peer_ttl: float,
    ) -> None:
        self.remote = remote
        self._redis = client
        self._keys = keys
        self._limits = options.limits
        self._write_buffer = max(1, options.write_buffer)
        self._ttl_ms = max(1, int(ttl * 1000))
        self._gc_ms = int(max(GC_TTL, 4 * ttl, 4 * peer_ttl) * 1000)
        self._interval = ttl / 4
        self._peer_ttl = peer_ttl
        # sending
        self._pending: deque[memoryview] = deque()
        self._pending_bytes = 0
        self._seq = 0
        self._acked = 0
        self._unacked: deque[tuple[int, int, bytes]] = deque()  # (seq, body length, record)
        self._unacked_bytes = 0
        self._resend = False
        self._writer_wake = asyncio.Event()
        self._space = asyncio.Event()
        self._flushed = asyncio.Event()
        self._closing = False
        # receiving
        self._rx_seq = 0
        self._decoder = FrameDecoder(options.limits)
        self._frames: deque[Frame] = deque()
        self._frames_bytes = 0
        self._frames_ready = asyncio.Event()
        self._frames_space = asyncio.Event()
        self._ack_wanted = asyncio.Event()
        self._ack_sent = 0
        # state
        self._closed = False
        #: set when the tasks must end (see "Stopping tasks" in the module docs)
        self._halt = False
        self._error: CellnetError | None = None
        self._peer_gone = False
        self._down_since: float | None = None
        self._fresh_since = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name, body in (("pump", self._pump), ("writer", self._writer), ("control", self._control)):
            task = loop.create_task(self._guard(body), name=f"redis-{name} {self.remote}")
            self._tasks.append(task)

    async def _guard(self, body: Callable[[], Awaitable[None]]) -> None:
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except CellnetError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug must not leave the link hanging
            log.exception("link %s: internal error", self.remote)
            self._fail(LinkBroken(f"link to {self.remote} failed: {reason(exc)}"))

    @property
    def closed(self) -> bool:
        return self._closed or self._error is not None

    def _fail(self, exc: CellnetError) -> None:
        """Break the link: wake every waiter and stop the other tasks."""
        if self._error is None:
            self._error = exc
            if not self._closed:
                log.info("%s", exc)
        self._halt = True
        self._wake_all()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def _wake_all(self) -> None:
        self._frames_ready.set()
        self._space.set()
        self._writer_wake.set()
        self._frames_space.set()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake_all()
        if self._error is None:
            self._closing = True
            self._writer_wake.set()
            try:
                await within(self._flushed.wait(), CLOSE_WAIT)
            except asyncio.TimeoutError:
                pass
        self._halt = True
        self._wake_all()
        await stop_tasks(self._tasks)
        try:
            await within(self._cleanup(), CLOSE_WAIT)
        except asyncio.CancelledError:
            await close_client(self._redis)
            raise
        except BaseException:  # noqa: BLE001 - Redis down: the TTLs clean up
            pass
        await close_client(self._redis)

    async def _cleanup(self) -> None:
        """Delete this link's keys; tell a live peer we closed.

        The CLOSE record is the last command, so a peer that reacts to it by
        deleting every key never sees one of ours reappear."""
        k = self._keys
        pipe = self._redis.pipeline(transaction=False)
        if not self._peer_gone:
            peer = await self._redis.get(k.peer)
            self._peer_gone = peer is None or peer == CLOSED
        if self._peer_gone:
            pipe.delete(*k.all())
        else:
            pipe.delete(k.inc, k.inc_ack, k.inc_wake)
            pipe.set(k.me, CLOSED, px=self._gc_ms)
            pipe.rpush(k.out, RECORD.pack(CLOSE, 0, self._seq + 1, self._rx_seq))
            pipe.pexpire(k.out, self._gc_ms)
        await pipe.execute()

    # -- Redis health --------------------------------------------------------

    def _down(self, exc: BaseException) -> None:
        """Note a failed command; raise LinkBroken when it is final."""
        if not transient(exc):
            raise LinkBroken(f"link to {self.remote} broken by Redis: {reason(exc)}") from None
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.info("link %s: Redis unreachable (%s); retrying", self.remote, reason(exc))
        elif now - self._down_since > MAX_OUTAGE:
            raise LinkBroken(
                f"link to {self.remote} broken: Redis unreachable for {MAX_OUTAGE:g} s ({reason(exc)})"
            ) from None

    def _up(self) -> None:
        if self._down_since is not None:
            self._down_since = None
            log.info("link %s: Redis reachable again", self.remote)
            self._recovered()

    def _recovered(self) -> None:
        """After an outage (or when our keys vanished) Redis may have lost
        records: re-send everything unacknowledged, re-write our ack, and give
        the peer a full TTL to re-create its liveness key."""
        self._fresh_since = time.monotonic()
        self._resend = True
        self._writer_wake.set()
        self._ack_wanted.set()

    # -- sending -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LinkClosed(f"link to {self.remote} is closed")
        if self._error is not None:
            if isinstance(self._error, LinkBroken):
                raise LinkBroken(str(self._error))
            raise LinkBroken(f"link to {self.remote} is broken: {self._error}")

    async def send(self, frame: Frame) -> None:
        self._check_open()
        head, payload = encode_parts(frame)
        limits = self._limits
        if len(payload) > limits.max_payload:
            raise FrameTooLarge(
                f"frame payload of {len(payload)} bytes exceeds the limit of {limits.max_payload}"
            )
        if len(head) - PREFIX_SIZE > limits.max_header:
            raise FrameTooLarge(
                f"frame header of {len(head) - PREFIX_SIZE} bytes exceeds the limit of {limits.max_header}"
            )
        while self._pending_bytes >= self._write_buffer:
            self._space.clear()
            await self._space.wait()
            self._check_open()
        self._pending.append(memoryview(head))
        if payload:
            self._pending.append(memoryview(payload if isinstance(payload, bytes) else bytes(payload)))
        self._pending_bytes += len(head) + len(payload)
        self._writer_wake.set()

    def _take(self, limit: int) -> list[memoryview]:
        """Up to ``limit`` bytes from the front of the pending frames."""
        pieces: list[memoryview] = []
        left = limit
        pending = self._pending
        while pending and left:
            view = pending[0]
            if len(view) <= left:
                pending.popleft()
                pieces.append(view)
                left -= len(view)
            else:
                pieces.append(view[:left])
                pending[0] = view[left:]
                left = 0
        self._pending_bytes -= limit - left
        return pieces

    def _next_batch(self) -> list[bytes]:
        """Make records from pending frames while the window has room."""
        records: list[bytes] = []
        size = 0
        while self._pending and self._unacked_bytes < WINDOW and size < BATCH:
            pieces = self._take(CHUNK)
            body_len = sum(len(p) for p in pieces)
            self._seq += 1
            flags = ACK_WANTED if self._unacked_bytes + body_len >= WINDOW // 2 else 0
            record = b"".join([RECORD.pack(DATA, flags, self._seq, self._rx_seq), *pieces])
            self._unacked.append((self._seq, body_len, record))
            self._unacked_bytes += body_len
            records.append(record)
            size += len(record)
        if records:
            self._space.set()
        return records

    def _on_ack(self, seq: int) -> None:
        if seq <= self._acked or seq > self._seq:
            return
        self._acked = seq
        unacked = self._unacked
        freed = False
        while unacked and unacked[0][0] <= seq:
            _, body_len, _ = unacked.popleft()
            self._unacked_bytes -= body_len
            freed = True
        if freed:
            self._writer_wake.set()

    async def _push(self, records: list[bytes]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.rpush(self._keys.out, *records)
        pipe.pexpire(self._keys.out, self._gc_ms)
        await pipe.execute()

    async def _resend_all(self) -> None:
        self._resend = False
        batch: list[bytes] = []
        size = 0
        for _, _, record in list(self._unacked):
            batch.append(record)
            size += len(record)
            if size >= BATCH:
                await self._push(batch)
                batch, size = [], 0
        if batch:
            await self._push(batch)

    async def _wait_credit(self) -> None:
        """Block on the wake list until the receiver acknowledges something."""
        k = self._keys
        await self._redis.blpop([k.out_wake], timeout=0.25)
        value = await self._redis.get(k.out_ack)
        if value is not None:
            self._on_ack(int(value))

    async def _writer(self) -> None:
        backoff = Backoff()
        while not self._halt:
            try:
                if self._resend:
                    await self._resend_all()
                batch = self._next_batch()
                if batch:
                    await self._push(batch)
                elif self._closing and not self._pending:
                    self._flushed.set()
                    return
                elif self._pending:
                    await self._wait_credit()
                else:
                    self._writer_wake.clear()
                    await self._writer_wake.wait()
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
                self._resend = True
                await backoff.wait()
                continue
            backoff.reset()
            self._up()

    # -- receiving -----------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Frame]:
        frames = self._frames
        while True:
            if frames:
                frame = frames.popleft()
                self._frames_bytes -= len(frame.payload)
                if len(frames) <= RX_FRAMES // 2 and self._frames_bytes <= RX_BYTES // 2:
                    self._frames_space.set()
                yield frame
                continue
            if self._closed:
                return
            if self._error is not None:
                raise self._error
            self._frames_ready.clear()
            await self._frames_ready.wait()

    async def _pump(self) -> None:
        backoff = Backoff()
        key = self._keys.inc
        while not self._halt:
            if len(self._frames) >= RX_FRAMES or self._frames_bytes >= RX_BYTES:
                self._frames_space.clear()
                await self._frames_space.wait()
                continue
            try:
                item = await self._redis.blpop([key], timeout=1)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
                await backoff.wait()
                continue
            if self._halt:
                return  # stopped while popping: the record is not ours to use
            backoff.reset()
            self._up()
            if item is not None and self._on_record(item[1]):
                return

    def _on_record(self, record: bytes) -> bool:
        """Handle one record; True when it ended the link."""
        if len(record) < RECORD.size or len(record) > RECORD.size + CHUNK:
            raise FrameError(f"link to {self.remote}: bad record of {len(record)} bytes")
        kind, flags, seq, ack = RECORD.unpack_from(record)
        if kind not in (DATA, CLOSE):
            raise FrameError(f"link to {self.remote}: unknown record kind {kind}")
        self._on_ack(ack)
        if seq != self._rx_seq + 1:
            # A duplicate of a re-sent record, or one past a gap that the
            # sender's re-send will fill: either way not ours to use now.
            return False
        self._rx_seq = seq
        if flags & ACK_WANTED:
            self._ack_wanted.set()
        if kind == CLOSE:
            self._peer_gone = True
            if not self._decoder.at_boundary():
                raise FrameError(f"link to {self.remote}: peer closed in the middle of a frame")
            self._fail(LinkBroken(f"link to {self.remote}: peer closed the link"))
            return True
        frames, error = self._decoder.feed_partial(memoryview(record)[RECORD.size :])
        if frames:
            # Frames completed before bad bytes are delivered before the error.
            self._frames.extend(frames)
            self._frames_bytes += sum(len(f.payload) for f in frames)
            self._frames_ready.set()
        if error is not None:
            raise error
        return False

    # -- liveness and acknowledgements ---------------------------------------

    async def _control(self) -> None:
        k = self._keys
        backoff = Backoff()
        next_tick = time.monotonic() + self._interval
        while not self._halt:
            wait = next_tick - time.monotonic()
            if wait > 0 and not self._ack_wanted.is_set():
                try:
                    await asyncio.wait_for(self._ack_wanted.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            forced = self._ack_wanted.is_set()
            self._ack_wanted.clear()
            tick = time.monotonic() >= next_tick
            rx = self._rx_seq
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(k.inc_ack, rx, px=self._gc_ms)
            if forced or rx != self._ack_sent:
                pipe.rpush(k.inc_wake, b"1")
                pipe.ltrim(k.inc_wake, -1, -1)
                pipe.pexpire(k.inc_wake, self._gc_ms)
            if tick:
                pipe.set(k.me, OPEN, px=self._ttl_ms, get=True)
                pipe.get(k.peer)
                pipe.get(k.out_ack)
                pipe.pexpire(k.out, self._gc_ms)
            try:
                results: list[Any] = await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._down(exc)
                if forced:
                    self._ack_wanted.set()
                await backoff.wait()
                continue
            if self._halt:
                return
            backoff.reset()
            self._up()
            self._ack_sent = rx
            if tick:
                next_tick = time.monotonic() + self._interval
                mine, peer, out_ack = results[-4], results[-3], results[-2]
                if mine is None:
                    log.info("link %s: its Redis keys vanished (restart?); re-sending", self.remote)
                    self._recovered()
                if out_ack is not None:
                    self._on_ack(int(out_ack))
                self._judge_peer(peer)

    def _judge_peer(self, peer: bytes | None) -> None:
        # A peer that closed (value CLOSED) has its CLOSE record queued behind
        # its data; the pump ends the link when it gets there.
        if peer is None and time.monotonic() - self._fresh_since > self._peer_ttl + GRACE:
            self._peer_gone = True
            raise LinkBroken(
                f"link to {self.remote} broken: the peer vanished "
                f"(no sign of life for {self._peer_ttl:g} s)"
            )
