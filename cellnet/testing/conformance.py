"""The driver conformance suite: one class every cellnet driver's tests run.

A driver proves it keeps the contract of :mod:`cellnet.driver` with one line
in its test module (pytest with pytest-asyncio; the checks are ``async``)::

    from cellnet.testing import driver_conformance
    from my_package import QuicDriver

    TestQuicConformance = driver_conformance(QuicDriver, "quic://127.0.0.1:0")
    TestQuicsConformance = driver_conformance(QuicDriver, "quics://127.0.0.1:0", tls=True)

``driver_conformance(driver_cls_or_factory, listen_url, *, tls=False,
options=None)`` returns a test class whose ``env`` fixture builds a fresh
driver (``driver_cls_or_factory()``) for every check. A driver that needs a
fixture (a broker, a server started by the tests) subclasses
:class:`DriverConformance` and overrides ``env``::

    class TestRedisConformance(DriverConformance):
        @pytest.fixture
        def env(self, redis_url: str) -> ConformanceEnv:
            return ConformanceEnv(driver=RedisDriver(), listen_url=redis_url + "&cell=server")

The environment
    ``ConformanceEnv(driver, listen_url, options=None, tls=False,
    tls_kit=None, driver_path=None)``. Every check listens on
    ``listen_url`` (a port-0 URL for drivers that open ports) and dials the
    URL the listener reports. ``options`` is the base
    :class:`~cellnet.driver.LinkOptions`; the suite raises
    ``limits.max_payload`` to at least 16 MiB + 64 KiB. With ``tls=True`` the
    driver must declare ``capabilities.tls``; the suite makes a CA and
    certificates (:func:`~cellnet.testing.make_tls_kit`; pass ``tls_kit`` to
    use yours, e.g. one a broker was started with), gives the listener
    ``kit.server`` (mutual TLS) and the dialer ``kit.client``, and runs the
    TLS checks. ``driver_path`` (``"module:callable"``) builds the driver in
    a child process; by default the driver's class is called with no
    arguments. It must be importable by a fresh interpreter started in an
    empty folder (installed, or on ``PYTHONPATH``).

What is checked (each check bounds its time, so a hanging driver fails)
    * order: 1000 frames each way at once arrive in order, intact;
    * sizes: payloads of 0, 1, 64 KiB +-1, 4 MiB +-1 and 16 MiB round-trip
      byte-exact, with kind, flags and header;
    * concurrent senders: several tasks sending on one link at once; each
      task's order is kept, nothing is lost or mixed;
    * closed by us: after ``aclose()`` a running iteration ends quietly, a
      new one ends quietly, ``send`` raises ``LinkClosed``, ``closed`` is
      true, a second ``aclose()`` is harmless; the peer sees ``LinkBroken``;
    * broken by the peer: frames the peer sent before its ``aclose()``
      arrive, then the iteration raises ``LinkBroken`` (a quiet end means
      "closed by us" and is wrong here) and ``send`` raises ``LinkBroken``;
    * a send held by back-pressure is released: with ``LinkBroken`` when the
      peer closes, by returning or ``LinkClosed`` when we close;
    * a peer process killed with SIGKILL while it streams 1 MiB frames: the
      listener's link raises ``LinkBroken`` within ``peer_death_timeout``
      and the listener accepts a new link (only with
      ``capabilities.cross_process``);
    * a port-0 listener reports a bound, dialable URL of the same scheme, a
      different one for a second listener (only with
      ``capabilities.needs_listen_port``); dialing a closed listener raises
      ``ConnectError``;
    * slow receiver: while the receiver does not iterate, ``send`` of 1 MiB
      frames starts to wait before ``send_block_bound`` bytes; once the
      receiver reads, every frame arrives intact;
    * over-limit frames (payload over the receiver's ``max_payload``, header
      over its ``max_header``): the sender's ``send`` refuses them with
      ``ProtocolError``/``MessageTooLarge`` and the link keeps working, or the
      receiver's iteration raises ``ProtocolError`` (``FrameTooLarge``); the
      frame sent before arrives, the over-limit one never does, and the
      listener keeps serving new links;
    * the optional fast paths, when the driver offers them (else skipped):
      ``send_nowait`` keeps order with ``send`` and refuses after
      ``aclose()``; a receiver set with ``set_receiver`` gets every frame in
      order, also those that arrived before it was set, gets none while it
      holds delivery until ``resume_receiving()``, holding pushes back on the
      sender, and iteration still raises ``LinkBroken`` when the peer closes;
    * TLS (``tls=True``): mutual TLS works; clients without a certificate,
      with one from another CA, or trusting another CA are refused and the
      listener keeps serving good clients. With
      ``capabilities.needs_listen_port`` (the listener terminates TLS
      itself) also: a server certificate that does not name the host is
      refused, an IP-address subjectAltName for 127.0.0.1 is accepted, and a
      listener without a certificate is a ``ConfigError``.

    A refused client must get ``ConnectError`` from ``dial``. One exception
    is allowed where the server refuses the *client's* certificate: in TLS
    1.3 the client finishes its half of the handshake before the server has
    checked that certificate, so ``dial`` may return a link that is dead on
    arrival (its first exchange raises ``LinkBroken`` or ``ConnectError``).
    Either way no frame from that client may reach the listener.

Tuning
    Class attributes a subclass may override: ``time_limit`` (seconds per
    check), ``step_timeout`` (seconds per wait), ``peer_death_timeout``,
    ``send_block_bound`` (bytes) and ``blocked_after`` (seconds a send must
    be pending to count as waiting). A check that cannot apply to a driver
    is skipped through its capabilities; a subclass may also override a
    check with a skip and say why.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cellnet.codec import Frame, FrameLimits, Kind
from cellnet.driver import Driver, Link, LinkOptions
from cellnet.errors import (
    CellnetError,
    ConfigError,
    ConnectError,
    LinkBroken,
    LinkClosed,
    MessageTooLarge,
    ProtocolError,
)
from cellnet.testing._harness import (
    ENDED,
    Ended,
    Harness,
    KiB,
    MiB,
    Reader,
    check_same,
    describe,
    fail,
    harness,
    pattern,
    size_label,
    tls_kit_for,
)
from cellnet.testing._fast_paths import FastPathChecks
from cellnet.testing._peer import stream_payload
from cellnet.testing.tlskit import TlsKit

SIZES = (0, 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 16 * MiB)
ORDER_FRAMES = 1000
SENDER_TASKS = 4  # per side
FRAMES_PER_TASK = 100
MIXED_SIZES = (0, 100, 3000, 70_000)
CLOSE_FRAMES = 50
SMALL_LIMITS = FrameLimits(max_header=4 * KiB, max_payload=1 * MiB)


@dataclass(frozen=True)
class ConformanceEnv:
    """What the suite runs against; see the module documentation."""

    driver: Driver
    listen_url: str
    options: LinkOptions | None = None
    tls: bool = False
    #: certificates to use with ``tls=True``; made by the suite when ``None``
    tls_kit: TlsKit | None = None
    #: ``"module:callable"`` building the driver in a child process
    driver_path: str | None = None


def _mixed_payload(task: int, seq: int) -> bytes:
    size = MIXED_SIZES[seq % len(MIXED_SIZES)]
    return (struct.pack("!HI", task, seq) * (size // 6 + 1))[:size]


def _seq_frame(seq: int, payload: bytes, **header: object) -> Frame:
    return Frame(Kind.MESSAGE, {"seq": seq, **header}, payload)


class DriverConformance(FastPathChecks):
    """The checks; subclass it with an ``env`` fixture, or use :func:`driver_conformance`."""

    pytestmark = [pytest.mark.asyncio]

    #: seconds one check may take before it fails as hung
    time_limit: float = 30.0
    #: seconds one wait on the driver may take (transfers get more)
    step_timeout: float = 5.0
    #: seconds a listener may take to notice a killed peer process
    peer_death_timeout: float = 10.0
    #: bytes a sender may push to a receiver that reads nothing before send waits
    send_block_bound: int = 64 * MiB
    #: a send pending this long counts as waiting on back-pressure
    blocked_after: float = 1.0

    @pytest.fixture
    def env(self) -> ConformanceEnv:
        fail(
            f"{type(self).__name__} has no `env` fixture: override it to return a "
            "ConformanceEnv, or build the class with driver_conformance(...)"
        )

    def _harness(
        self, env: ConformanceEnv, tmp_path: Path, time_limit: float | None = None
    ) -> AbstractAsyncContextManager[Harness]:
        if env.tls and not env.driver.capabilities.tls:
            fail(f"tls=True, but {type(env.driver).__name__}.capabilities.tls is False")
        return harness(
            env.driver,
            env.listen_url,
            env.options,
            tls_kit_for(env.tls, env.tls_kit, tmp_path),
            time_limit=time_limit or self.time_limit,
            step_timeout=self.step_timeout,
        )

    @property
    def _transfer_timeout(self) -> float:
        return self.time_limit * 0.6

    # -- frames arrive as sent ---------------------------------------------

    async def test_frames_keep_their_order_both_ways(self, env: ConformanceEnv, tmp_path: Path) -> None:
        async with self._harness(env, tmp_path) as h:
            p = await h.pair()

            async def send_all(link: Link) -> None:
                for seq in range(ORDER_FRAMES):
                    await link.send(_seq_frame(seq, seq.to_bytes(4, "big") * (seq % 17)))

            async def receive_all(reader: Reader, peer: str) -> None:
                for i in range(ORDER_FRAMES):
                    got = await reader.recv()
                    if isinstance(got, Ended):
                        fail(f"the {reader.side}'s iteration ended after {i} of {ORDER_FRAMES} frames")
                    seq = got.header.get("seq")
                    if seq != i:
                        fail(
                            f"frame #{i} from the {peer} to the {reader.side} carried seq {seq!r}: "
                            "frames were reordered, lost or duplicated on the link"
                        )
                    if bytes(got.payload) != i.to_bytes(4, "big") * (i % 17):
                        fail(f"frame #{i} from the {peer} arrived with a corrupted payload")

            await h.together(
                f"{ORDER_FRAMES} frames sent each way at once",
                self._transfer_timeout,
                send_all(p.dialer),
                send_all(p.accepted),
                receive_all(p.accepted_reader, "dialer"),
                receive_all(p.dialer_reader, "listener's link"),
            )

    @pytest.mark.parametrize("size", SIZES, ids=[size_label(s) for s in SIZES])
    async def test_payload_round_trips_byte_exact(self, env: ConformanceEnv, tmp_path: Path, size: int) -> None:
        async with self._harness(env, tmp_path) as h:
            listener = await h.listen(h.echo)
            link = await h.dial(listener.url)
            reader = Reader(link, "dialer")
            label = size_label(size)
            sent = Frame(Kind.MESSAGE, {"size": size, "label": label}, pattern(size), flags=0x5A5A)
            await h.step(link.send(sent), f"sending a {label} payload", self._transfer_timeout)
            got = await h.frame(reader, f"the echo of a {label} payload", self._transfer_timeout)
            check_same(got, sent, f"a {label} payload sent to an echoing listener and back")

    async def test_concurrent_senders_keep_each_order(self, env: ConformanceEnv, tmp_path: Path) -> None:
        total = SENDER_TASKS * FRAMES_PER_TASK
        async with self._harness(env, tmp_path) as h:
            p = await h.pair()

            async def sender(link: Link, task: int) -> None:
                for seq in range(FRAMES_PER_TASK):
                    await link.send(_seq_frame(seq, _mixed_payload(task, seq), task=task))

            async def receive(reader: Reader, peer: str) -> None:
                next_seq = dict.fromkeys(range(SENDER_TASKS), 0)
                for i in range(total):
                    got = await reader.recv()
                    if isinstance(got, Ended):
                        fail(f"the {reader.side}'s iteration ended after {i} of {total} frames")
                    task, seq = got.header.get("task"), got.header.get("seq")
                    if task not in next_seq or seq != next_seq[task]:
                        fail(
                            f"the {reader.side} got seq {seq!r} of sender task {task!r} from the "
                            f"{peer}, expected seq {next_seq.get(task)!r}: one task's frames were "
                            "reordered, lost or duplicated while other tasks sent on the same link"
                        )
                    if bytes(got.payload) != _mixed_payload(task, seq):
                        fail(
                            f"frame {seq} of sender task {task} arrived corrupted: concurrent "
                            "sends interleaved their bytes on the wire"
                        )
                    next_seq[task] += 1

            await h.together(
                f"{SENDER_TASKS} tasks sending {FRAMES_PER_TASK} frames each on each end of one link",
                self._transfer_timeout,
                *(sender(p.dialer, t) for t in range(SENDER_TASKS)),
                *(sender(p.accepted, t) for t in range(SENDER_TASKS)),
                receive(p.accepted_reader, "dialer"),
                receive(p.dialer_reader, "listener's link"),
            )

    # -- closing and breaking ----------------------------------------------

    @pytest.mark.parametrize("closer", ["dialer", "listener"])
    async def test_close_by_us_ends_iteration_quietly(
        self, env: ConformanceEnv, tmp_path: Path, closer: str
    ) -> None:
        async with self._harness(env, tmp_path) as h:
            p = await h.pair()
            link, reader, side, _, peer_reader, peer_side = p.ends(closer)

            async def drain() -> None:
                while not isinstance(await reader.recv(), Ended):
                    pass

            reading = h.spawn(drain())
            await asyncio.sleep(0)  # let the iteration start waiting
            await h.step(link.aclose(), f"the {side}'s aclose()")
            result = await h.outcome(reading, f"the {side}'s running iteration to end after its aclose()")
            if isinstance(result, BaseException):
                fail(
                    f"after the {side}'s own aclose(), its running iteration raised "
                    f"{describe(result)}; it must end quietly (closed by us is not an error)"
                )
            if not link.closed:
                fail(f"the {side}'s link.closed is False after its aclose()")
            after = await h.outcome(Reader(link, side).recv(), f"a new iteration on the {side} after aclose()")
            if isinstance(after, BaseException):
                fail(f"a new iteration on the {side} after aclose() raised {describe(after)}; it must end quietly")
            if not isinstance(after, Ended):
                # Frames received before the close may still be handed out;
                # the suite sent none, so anything here is wrong.
                fail(f"a new iteration on the {side} after aclose() yielded a frame nobody sent: {after!r}")
            await h.expect_error(
                link.send(_seq_frame(0, b"late")),
                LinkClosed,
                f"send on the {side} after its aclose()",
                "the link was closed by this side",
            )
            await h.step(link.aclose(), f"a second aclose() on the {side}")
            await h.expect_error(
                peer_reader.recv(),
                LinkBroken,
                f"the {peer_side}'s iteration after the {side} closed the link",
                "for the peer the link was broken, not closed by itself",
            )

    @pytest.mark.parametrize("closer", ["dialer", "listener"])
    async def test_peer_close_breaks_the_link(self, env: ConformanceEnv, tmp_path: Path, closer: str) -> None:
        async with self._harness(env, tmp_path) as h:
            p = await h.pair()
            link, _, side, survivor, reader, survivor_side = p.ends(closer)
            for seq in range(CLOSE_FRAMES):
                await h.step(link.send(_seq_frame(seq, pattern(KiB, seq))), f"the {side} sending frame {seq}")
            await h.step(link.aclose(), f"the {side}'s aclose()")
            for seq in range(CLOSE_FRAMES):
                got = await h.frame(reader, f"frame {seq} of {CLOSE_FRAMES} sent before the {side}'s aclose()")
                check_same(got, _seq_frame(seq, pattern(KiB, seq)), f"frame {seq} sent just before aclose()")
            end = await h.outcome(reader.recv(), f"the {survivor_side}'s iteration after the {side} closed")
            if isinstance(end, Ended):
                fail(
                    f"the {survivor_side}'s iteration ended quietly when the {side} closed the link; "
                    "a quiet end means 'closed by us': it must raise LinkBroken"
                )
            if not isinstance(end, LinkBroken):
                what = describe(end) if isinstance(end, BaseException) else f"an extra frame {end!r}"
                fail(f"the {survivor_side}'s iteration gave {what} after the {side} closed; expected LinkBroken")
            if not survivor.closed:
                fail(f"the {survivor_side}'s link.closed is False after its iteration raised LinkBroken")
            await h.expect_error(
                survivor.send(_seq_frame(0, b"late")),
                LinkBroken,
                f"send on the {survivor_side} after the peer closed",
                "the link was broken by the peer, not closed by this side",
            )
            await h.step(survivor.aclose(), f"aclose() on the broken {survivor_side}")

    async def _fill_until_blocked(
        self, h: Harness, link: Link, side: str
    ) -> tuple[int, asyncio.Task[None]]:
        """Send 1 MiB frames until a send waits; return (its seq, its task)."""
        block = pattern(MiB, 1)
        for seq in range(self.send_block_bound // MiB):
            task = h.spawn(link.send(_seq_frame(seq, block)))
            done, _ = await asyncio.wait({task}, timeout=self.blocked_after)
            if not done:
                return seq, task
            if task.exception() is not None:
                fail(f"the {side}'s send of 1 MiB frame {seq} raised {describe(task.exception())}")  # type: ignore[arg-type]
        fail(
            f"the {side}'s send never waited: {self.send_block_bound // MiB} MiB were accepted while "
            "the receiver read nothing; send must apply back-pressure instead of queueing without bound"
        )

    @pytest.mark.parametrize("sender", ["dialer", "listener"])
    async def test_slow_receiver_makes_send_wait(self, env: ConformanceEnv, tmp_path: Path, sender: str) -> None:
        async with self._harness(env, tmp_path) as h:
            p = await h.pair()
            link, _, side, _, reader, receiver_side = p.ends(sender)
            blocked_seq, pending = await self._fill_until_blocked(h, link, side)
            extra = 4
            total = blocked_seq + 1 + extra
            block = pattern(MiB, 1)

            async def receive_all() -> None:
                for seq in range(total):
                    got = await h.frame(reader, f"1 MiB frame {seq} of {total}", self._transfer_timeout)
                    if got.header.get("seq") != seq:
                        fail(
                            f"the {receiver_side} got seq {got.header.get('seq')!r} where {seq} was due: "
                            "frames sent under back-pressure were lost or reordered"
                        )
                    if bytes(got.payload) != block:
                        fail(f"1 MiB frame {seq} sent under back-pressure arrived corrupted")

            async def send_rest() -> None:
                await pending
                for seq in range(blocked_seq + 1, total):
                    await link.send(_seq_frame(seq, block))

            await h.together(
                f"the {receiver_side} draining {total} MiB while the {side} finishes its waiting send",
                self._transfer_timeout,
                receive_all(),
                send_rest(),
            )

    @pytest.mark.parametrize("closer", ["peer", "us"])
    async def test_waiting_send_is_released_by_close(
        self, env: ConformanceEnv, tmp_path: Path, closer: str
    ) -> None:
        async with self._harness(env, tmp_path) as h:
            p = await h.pair()
            _, pending = await self._fill_until_blocked(h, p.dialer, "dialer")
            if closer == "peer":
                await h.step(p.accepted.aclose(), "the listener's link aclose()")
                await h.expect_error(
                    pending,
                    LinkBroken,
                    "a dialer's send waiting on back-pressure when the listener's end closed",
                    "the frame can no longer be delivered: the peer broke the link",
                )
            else:
                await h.step(p.dialer.aclose(), "the dialer's aclose() while one of its sends waits")
                result = await h.outcome(pending, "a dialer's send waiting on back-pressure after the dialer's aclose()")
                if isinstance(result, BaseException) and not isinstance(result, LinkClosed):
                    fail(
                        f"a send waiting on back-pressure raised {describe(result)} when its own link "
                        "was closed; it must return or raise LinkClosed"
                    )

    # -- a peer process dies -----------------------------------------------

    async def test_killed_peer_process_breaks_the_link(self, env: ConformanceEnv, tmp_path: Path) -> None:
        if not env.driver.capabilities.cross_process:
            pytest.skip("capabilities.cross_process is False: links cannot reach another process")
        path = env.driver_path or _class_path(type(env.driver))
        if path is None:
            pytest.skip("the driver class cannot be imported by a child process; set ConformanceEnv.driver_path")
        async with self._harness(env, tmp_path, self.time_limit + self.peer_death_timeout) as h:
            streaming = asyncio.Event()
            outcome: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            late_send: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            links = 0

            async def on_link(link: Link) -> None:
                nonlocal links
                links += 1
                if links > 1:
                    return await h.echo(link)
                filler = bytes(range(256)) * (MiB // 256 + 1)
                seq = 0
                try:
                    async for frame in link:
                        if frame.header.get("seq") != seq or bytes(frame.payload) != stream_payload(seq, MiB, filler):
                            outcome.set_result(f"frame {seq} from the peer process arrived corrupted or out of order")
                            return
                        seq += 1
                        if seq == 3:
                            streaming.set()
                    outcome.set_result(ENDED)
                except Exception as exc:
                    outcome.set_result(exc)
                try:
                    await link.send(_seq_frame(0, b"late"))
                    late_send.set_result(None)
                except Exception as exc:
                    late_send.set_result(exc)

            listener = await h.listen(on_link)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "cellnet.testing._peer", path, listener.url,
                *_peer_args(h),
                cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                exited = asyncio.ensure_future(proc.wait())
                started = asyncio.ensure_future(streaming.wait())
                h.current = "the peer process streaming its first frames"
                await asyncio.wait({exited, started}, timeout=self.time_limit / 2, return_when=asyncio.FIRST_COMPLETED)
                started.cancel()
                if not streaming.is_set():
                    exited.cancel()
                    if outcome.done():
                        fail(f"before the peer process was killed: {_what(outcome.result())}")
                    err = (await proc.stderr.read()).decode(errors="replace") if proc.returncode is not None else ""  # type: ignore[union-attr]
                    fail(
                        f"the peer process (python -m cellnet.testing._peer {path}) never streamed 3 frames "
                        f"to the listener; exit status {proc.returncode}; stderr: {err.strip() or '-'}"
                    )
                os.kill(proc.pid, signal.SIGKILL)
                await exited
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            result = await h.outcome(
                asyncio.shield(outcome),
                "the listener's link noticing that the peer process was killed",
                self.peer_death_timeout,
            )
            if isinstance(result, Ended):
                fail(
                    "the listener's iteration ended quietly when the peer process was killed; "
                    "it must raise LinkBroken"
                )
            if isinstance(result, str):
                fail(result)
            if not isinstance(result, LinkBroken):
                fail(
                    f"the listener's iteration raised {_what(result)} when the peer process was killed "
                    "mid-send; expected LinkBroken (a stream cut by a dead peer is a broken link, "
                    "not bad input)"
                )
            late = await h.outcome(asyncio.shield(late_send), "send on the link to the killed peer")
            if not isinstance(late, LinkBroken):
                fail(
                    f"send on the link to the killed peer gave {_what(late)}; it must raise LinkBroken"
                )
            link = await h.dial(listener.url, what="dialing the listener again after the peer was killed")
            await h.round_trip(link, Reader(link, "dialer"), "a new link after the peer process was killed")

    # -- listeners ---------------------------------------------------------

    async def test_port_zero_listener_reports_bound_url(self, env: ConformanceEnv, tmp_path: Path) -> None:
        if not env.driver.capabilities.needs_listen_port:
            pytest.skip("capabilities.needs_listen_port is False: the listener opens no port")
        asked = urlsplit(env.listen_url)
        if _port(env.listen_url) != 0:
            pytest.skip(f"the listen URL {env.listen_url!r} does not ask for port 0")
        async with self._harness(env, tmp_path) as h:
            first = await h.listen(h.echo)
            second = await h.listen(h.echo)
            for listener in (first, second):
                url = listener.url
                if urlsplit(url).scheme != asked.scheme:
                    fail(f"a listener on {env.listen_url!r} reports {url!r}: the scheme changed")
                port = _port(url)
                if not port:
                    fail(f"a listener on {env.listen_url!r} reports {url!r}: it must report the bound port")
            if first.url == second.url:
                fail(f"two listeners on {env.listen_url!r} both report {first.url!r}")
            for listener in (first, second):
                link = await h.dial(listener.url)
                await h.round_trip(link, Reader(link, "dialer"), f"a link to {listener.url}")

    async def test_dial_to_a_closed_listener_is_connect_error(self, env: ConformanceEnv, tmp_path: Path) -> None:
        if not env.driver.capabilities.needs_listen_port:
            pytest.skip("capabilities.needs_listen_port is False: a closed listener may leave its URL reachable")
        async with self._harness(env, tmp_path) as h:
            listener = await h.listen(h.echo)
            await h.step(listener.aclose(), "the listener's aclose()")
            await h.step(listener.aclose(), "a second aclose() on the listener")
            await h.expect_error(
                env.driver.dial(listener.url, h.dial_options),
                ConnectError,
                f"dial({listener.url!r}) after that listener closed",
                "nothing listens there any more",
            )

    # -- limits ------------------------------------------------------------

    @pytest.mark.parametrize("part", ["payload", "header"])
    @pytest.mark.parametrize("direction", ["to-listener", "to-dialer"])
    async def test_over_limit_frame_is_refused(
        self, env: ConformanceEnv, tmp_path: Path, direction: str, part: str
    ) -> None:
        async with self._harness(env, tmp_path) as h:
            small = SMALL_LIMITS
            if direction == "to-listener":
                p = await h.pair(listen_options=replace(h.listen_options, limits=small))
                sender, _, side, _, reader, receiver = p.ends("dialer")
            else:
                p = await h.pair(dial_options=replace(h.dial_options, limits=small))
                sender, _, side, _, reader, receiver = p.ends("listener")
            if part == "payload":
                limit = f"max_payload of {small.max_payload} bytes"
                big = _seq_frame(1, b"x" * (small.max_payload + 1))
            else:
                limit = f"max_header of {small.max_header} bytes"
                big = _seq_frame(1, b"", pad="h" * (2 * small.max_header))
            good = _seq_frame(0, pattern(1000))
            await h.step(sender.send(good), f"the {side} sending a frame within the limits")
            refused = await h.outcome(sender.send(big), f"the {side} sending a frame over the {receiver}'s {limit}")
            at_sender = isinstance(refused, (ProtocolError, MessageTooLarge))
            if isinstance(refused, BaseException) and not isinstance(refused, CellnetError):
                fail(f"sending an over-limit frame raised {describe(refused)}, which is not a cellnet error")
            got = await h.frame(reader, "the frame sent just before the over-limit one")
            check_same(got, good, "the frame sent just before the over-limit one")
            if at_sender:
                after = _seq_frame(2, pattern(1000, 2))
                await h.step(
                    sender.send(after),
                    f"the {side} sending again after send refused an over-limit frame "
                    "(a refused frame must leave the link usable)",
                )
                got = await h.frame(reader, "the frame sent after the refused one")
                check_same(got, after, "the frame sent after the refused one (the refused frame must not arrive)")
            else:
                end = await h.outcome(reader.recv(), f"the {receiver}'s iteration after the over-limit frame")
                if isinstance(end, Frame):
                    fail(
                        f"the {receiver} accepted a frame over its {limit}: the driver does not apply "
                        "options.limits on the receiving side"
                    )
                if not isinstance(end, ProtocolError):
                    extra = f"; the sender got {_what(refused)}" if refused is not None else ""
                    fail(
                        f"the {receiver}'s iteration gave {_what(end)} for a frame over its {limit}{extra}: "
                        "either the sender's send must refuse it with ProtocolError/MessageTooLarge, or "
                        "the receiver must raise ProtocolError (FrameTooLarge)"
                    )
            served = await h.pair(p.listener)
            await h.step(served.dialer.send(good), "a new link sending a frame after the over-limit one")
            check_same(
                await h.frame(served.accepted_reader, "a frame on a new link after the over-limit one"),
                good,
                "a frame on a new link after the over-limit one (the listener must keep serving)",
            )

    # -- TLS ---------------------------------------------------------------

    def _need_tls(self, env: ConformanceEnv, terminates: bool = False) -> None:
        if not env.tls:
            pytest.skip("TLS checks run with tls=True")
        if terminates and not env.driver.capabilities.needs_listen_port:
            pytest.skip("the listener opens no port, so it does not present a server certificate itself")

    async def test_tls_mutual_round_trip(self, env: ConformanceEnv, tmp_path: Path) -> None:
        self._need_tls(env)
        async with self._harness(env, tmp_path) as h:
            listener = await h.listen(h.echo)
            link = await h.dial(listener.url, what="a client with a good certificate dialing a mutual-TLS listener")
            await h.round_trip(link, Reader(link, "dialer"), "a mutual-TLS link", 70_000)

    @pytest.mark.parametrize(
        ("member", "why"),
        [
            ("no_cert_client", "no client certificate"),
            ("foreign_client", "a client certificate from another CA"),
            ("distrusting_client", "a client that trusts only another CA"),
        ],
        ids=["no-client-cert", "client-cert-from-another-ca", "client-trusts-another-ca"],
    )
    async def test_tls_refuses_bad_clients(self, env: ConformanceEnv, tmp_path: Path, member: str, why: str) -> None:
        self._need_tls(env)
        async with self._harness(env, tmp_path) as h:
            assert h.kit is not None
            delivered: list[Frame] = []

            async def record(link: Link) -> None:
                try:
                    async for frame in link:
                        delivered.append(frame)
                        await link.send(frame)
                except CellnetError:
                    pass

            listener = await h.listen(record)
            options = replace(h.dial_options, tls=getattr(h.kit, member))
            what = f"dial({listener.url!r}) by {why}"
            result = await h.outcome(env.driver.dial(listener.url, options), what, options.connect_timeout + self.step_timeout)
            if isinstance(result, Link):
                h.adopt(result)
                if member == "distrusting_client":
                    fail(f"{what} succeeded: the dialer must verify the server certificate against its CA")
                await _expect_dead_on_arrival(h, result, what)
            elif not isinstance(result, ConnectError):
                fail(f"{what} raised {_what(result)}; expected ConnectError")
            if delivered:
                fail(f"the listener delivered {len(delivered)} frame(s) from {why}: the TLS handshake must refuse it")
            link = await h.dial(listener.url, what=f"a good client dialing after {why} was refused")
            await h.round_trip(link, Reader(link, "dialer"), f"a good client's link after {why} was refused")

    async def test_tls_server_certificate_must_name_the_host(self, env: ConformanceEnv, tmp_path: Path) -> None:
        self._need_tls(env, terminates=True)
        async with self._harness(env, tmp_path) as h:
            assert h.kit is not None
            listener = await h.listen(h.echo, replace(h.listen_options, tls=h.kit.wrong_host_server))
            host = urlsplit(listener.url).hostname
            what = f"dial({listener.url!r}) to a server whose certificate names only server.example.org"
            error = await h.expect_error(
                env.driver.dial(listener.url, h.dial_options),
                ConnectError,
                what,
                f"the certificate does not name {host}",
            )
            text = str(error).lower()
            if not any(word in text for word in ("certificate", "hostname", "verif", "tls", "ssl", "handshake")):
                fail(f"{what} raised ConnectError({str(error)!r}), which does not say that TLS verification failed")

    async def test_tls_ip_address_san_is_accepted(self, env: ConformanceEnv, tmp_path: Path) -> None:
        self._need_tls(env, terminates=True)
        async with self._harness(env, tmp_path) as h:
            assert h.kit is not None
            listener = await h.listen(h.echo, replace(h.listen_options, tls=h.kit.ip_only_server))
            if urlsplit(listener.url).hostname != "127.0.0.1":
                pytest.skip(f"the listener reports {listener.url!r}, not a 127.0.0.1 address")
            link = await h.dial(listener.url, what="dial to a server whose certificate names only IP 127.0.0.1")
            await h.round_trip(link, Reader(link, "dialer"), "a link verified by an IP-address subjectAltName")

    async def test_tls_listener_without_certificate_is_config_error(self, env: ConformanceEnv, tmp_path: Path) -> None:
        self._need_tls(env, terminates=True)
        async with self._harness(env, tmp_path) as h:
            assert h.kit is not None
            for tls, what in ((None, "no TLS settings"), (h.kit.no_cert_client, "a CA but no certificate")):
                result = await h.outcome(
                    env.driver.listen(env.listen_url, h.echo, replace(h.listen_options, tls=tls)),
                    f"listen({env.listen_url!r}) with {what}",
                )
                if not isinstance(result, BaseException):
                    await result.aclose()  # type: ignore[attr-defined]
                    fail(f"listen({env.listen_url!r}) with {what} succeeded; it must raise ConfigError")
                if not isinstance(result, ConfigError):
                    fail(f"listen({env.listen_url!r}) with {what} raised {describe(result)}; expected ConfigError")


async def _expect_dead_on_arrival(h: Harness, link: Link, what: str) -> None:
    """A link whose TLS peer refused our certificate after the handshake (TLS 1.3)."""
    probe = Frame(Kind.MESSAGE, {"probe": True}, b"probe")
    sent = await h.outcome(link.send(probe), f"send on the link from {what}")
    if isinstance(sent, BaseException):
        if isinstance(sent, (LinkBroken, ConnectError)):
            return
        fail(f"send on the link from {what} raised {describe(sent)}; expected LinkBroken or ConnectError")
    end = await h.outcome(Reader(link, "refused dialer").recv(), f"the link from {what} receiving")
    if isinstance(end, Frame):
        fail(f"{what} got a frame back: the listener accepted a client it must refuse")
    if isinstance(end, Ended):
        fail(f"the iteration of the link from {what} ended quietly; expected LinkBroken or ConnectError")
    if not isinstance(end, (LinkBroken, ConnectError)):
        fail(f"the link from {what} raised {describe(end)}; expected ConnectError from dial, or LinkBroken")


def _what(value: object) -> str:
    if isinstance(value, BaseException):
        return describe(value)
    if value is None:
        return "a normal return"
    return repr(value)


def _port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def _class_path(cls: type) -> str | None:
    if "<" in cls.__qualname__ or cls.__module__ == "__main__":
        return None
    return f"{cls.__module__}:{cls.__qualname__}"


def _peer_args(h: Harness) -> list[str]:
    options = h.dial_options
    args = [
        "--frame-size", str(MiB),
        "--max-header", str(options.limits.max_header),
        "--max-payload", str(options.limits.max_payload),
        "--connect-timeout", str(options.connect_timeout),
        "--seconds", "60",
    ]  # fmt: skip
    tls = options.tls
    if tls is not None:
        for flag, path in (("--ca", tls.ca), ("--cert", tls.cert), ("--key", tls.key)):
            if path is not None:
                args += [flag, str(path)]
    return args


def driver_conformance(
    driver: Callable[[], Driver],
    listen_url: str,
    *,
    tls: bool = False,
    options: LinkOptions | None = None,
) -> type[DriverConformance]:
    """A :class:`DriverConformance` subclass running against ``driver()`` on ``listen_url``."""

    class Conformance(DriverConformance):
        @pytest.fixture
        def env(self) -> ConformanceEnv:
            return ConformanceEnv(driver(), listen_url, options, tls)

    name = getattr(driver, "__name__", "Driver")
    Conformance.__name__ = Conformance.__qualname__ = f"Test{name}{'Tls' if tls else ''}Conformance"
    return Conformance


__all__ = ["ConformanceEnv", "DriverConformance", "driver_conformance"]
