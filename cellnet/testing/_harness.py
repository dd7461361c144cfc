"""Plumbing of the driver conformance suite: listeners, links, bounded waits.

Every wait on the driver goes through :meth:`Harness.step`, which bounds it
in time and turns a hang, a cellnet error or a foreign exception into a test
failure that names the step. :func:`harness` bounds a whole check and closes
everything it opened, reporting an ``aclose()`` that raises or hangs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from cellnet.codec import Frame, FrameLimits, Kind
from cellnet.driver import Driver, Link, LinkOptions, Listener, OnLink
from cellnet.errors import CellnetError
from cellnet.testing.tlskit import TlsKit, make_tls_kit

T = TypeVar("T")

KiB = 1 << 10
MiB = 1 << 20
#: the suite sends frames up to 16 MiB: limits below this are raised to it
MIN_MAX_PAYLOAD = 16 * MiB + 64 * KiB
HELLO = Frame(Kind.HELLO, {"conformance": "hello"})


def fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def size_label(size: int) -> str:
    for unit, name in ((MiB, "MiB"), (KiB, "KiB")):
        base, rest = divmod(size, unit)
        if base and rest == 0:
            return f"{base}{name}"
        if base and unit - rest == 1:
            return f"{base + 1}{name}-1"
        if base and rest == 1:
            return f"{base}{name}+1"
    return f"{size}B"


def pattern(size: int, seed: int = 0) -> bytes:
    """Reproducible, non-repeating bytes, so shifted or mixed data shows."""
    return random.Random(seed * 1_000_003 + size).randbytes(size)


def first_difference(got: bytes, want: bytes) -> str:
    if len(got) != len(want):
        return f"{len(got)} bytes instead of {len(want)}"
    step = 64 * KiB
    for start in range(0, len(want), step):
        if got[start : start + step] != want[start : start + step]:
            offset = next(
                i for i in range(start, min(start + step, len(want))) if got[i] != want[i]
            )
            return f"the bytes differ from offset {offset}"
    return "no difference"


def check_same(got: Frame, sent: Frame, what: str) -> None:
    """Fail unless ``got`` carries exactly what ``sent`` did."""
    if got.kind != sent.kind:
        fail(f"{what}: the frame arrived as kind {got.kind!r}, it was sent as {sent.kind!r}")
    if got.flags != sent.flags:
        fail(f"{what}: the frame arrived with flags {got.flags:#x}, it was sent with {sent.flags:#x}")
    if got.header != sent.header:
        fail(f"{what}: the header arrived as {got.header!r}, it was sent as {sent.header!r}")
    payload, want = bytes(got.payload), bytes(sent.payload)
    if payload != want:
        fail(f"{what}: the payload was corrupted: {first_difference(payload, want)}")


class Ended:
    """What :meth:`Reader.recv` returns when the iteration ended quietly."""

    def __repr__(self) -> str:
        return "<iteration ended>"


ENDED = Ended()


class Reader:
    """The one iterator the suite uses over a link for the whole check."""

    def __init__(self, link: Link, side: str) -> None:
        self.link = link
        self.side = side
        self._frames = aiter(link)

    async def recv(self) -> Frame | Ended:
        try:
            return await anext(self._frames)
        except StopAsyncIteration:
            return ENDED


@dataclass
class Pair:
    """A dialed link and the listener's end of it, each with its reader."""

    listener: Listener
    dialer: Link
    accepted: Link
    dialer_reader: Reader
    accepted_reader: Reader

    def ends(self, sender: str) -> tuple[Link, Reader, str, Link, Reader, str]:
        """(sending link, its reader, its name, receiving link, its reader, its name)."""
        if sender == "dialer":
            return (self.dialer, self.dialer_reader, "dialer", self.accepted, self.accepted_reader, "listener's link")
        return (self.accepted, self.accepted_reader, "listener's link", self.dialer, self.dialer_reader, "dialer")


@dataclass
class _Served:
    listener: Listener
    accepted: asyncio.Queue[Link] = field(default_factory=asyncio.Queue)


class Harness:
    """Opens listeners and links for one check, and closes them afterwards."""

    def __init__(
        self,
        driver: Driver,
        listen_url: str,
        options: LinkOptions | None,
        kit: TlsKit | None,
        step_timeout: float,
    ) -> None:
        self.driver = driver
        self.capabilities = driver.capabilities
        self.listen_url = listen_url
        self.kit = kit
        self.step_timeout = step_timeout
        self.current = "starting"
        base = options or LinkOptions()
        limits = base.limits
        base = replace(
            base, limits=FrameLimits(limits.max_header, max(limits.max_payload, MIN_MAX_PAYLOAD))
        )
        self.listen_options = replace(base, tls=kit.server) if kit else base
        self.dial_options = replace(base, tls=kit.client) if kit else base
        self._release = asyncio.Event()
        self._links: list[Link] = []
        self._listeners: list[Listener] = []
        self._served: dict[int, _Served] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.handler_errors: list[str] = []

    # -- bounded waits -----------------------------------------------------

    async def step(self, aw: Awaitable[T], what: str, timeout: float | None = None) -> T:
        """Await ``aw``; fail naming ``what`` if it hangs or raises."""
        limit = self.step_timeout if timeout is None else timeout
        self.current = what
        try:
            async with asyncio.timeout(limit):
                return await aw
        except TimeoutError:
            fail(f"{what}: no result within {limit:g} s (the driver hangs)")
        except CellnetError as exc:
            fail(f"{what} raised {describe(exc)}")
        except Exception as exc:
            fail(
                f"{what} raised {describe(exc)}, which is not a cellnet error: "
                "the driver lets a library exception leak"
            )

    async def outcome(
        self, aw: Awaitable[T], what: str, timeout: float | None = None
    ) -> T | BaseException:
        """Await ``aw`` within the bound; return its result or the exception it raised."""
        limit = self.step_timeout if timeout is None else timeout
        self.current = what
        try:
            async with asyncio.timeout(limit):
                return await aw
        except TimeoutError:
            fail(f"{what}: nothing happened within {limit:g} s (the driver hangs)")
        except Exception as exc:
            return exc

    async def expect_error(
        self, aw: Awaitable[object], expected: type[Exception], what: str, why: str
    ) -> Exception:
        """Fail unless ``aw`` raises ``expected`` within the bound."""
        result = await self.outcome(aw, what)
        if not isinstance(result, BaseException):
            fail(f"{what} returned normally; it must raise {expected.__name__} ({why})")
        if not isinstance(result, expected):
            leak = "" if isinstance(result, CellnetError) else " (not even a cellnet error)"
            fail(f"{what} raised {describe(result)}{leak}; it must raise {expected.__name__} ({why})")
        return result

    async def together(self, what: str, timeout: float, *coros: Coroutine[Any, Any, Any]) -> list[Any]:
        """Run coroutines side by side; the first failure cancels the rest."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        self.current = what
        try:
            done, pending = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if pending:
                fail(f"{what}: not finished within {timeout:g} s (the driver hangs or is far too slow)")
            return [t.result() for t in tasks]
        except CellnetError as exc:
            fail(f"{what}: {describe(exc)}")
        except Exception as exc:
            fail(f"{what}: {describe(exc)}, which is not a cellnet error: the driver lets a library exception leak")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def frame(self, reader: Reader, what: str, timeout: float | None = None) -> Frame:
        """The next frame on ``reader``; fail if the iteration ends or raises."""
        got = await self.outcome(reader.recv(), f"the {reader.side} waiting for {what}", timeout)
        if isinstance(got, Ended):
            fail(f"the {reader.side}'s iteration ended quietly before {what} arrived")
        if isinstance(got, BaseException):
            fail(f"the {reader.side}'s iteration raised {describe(got)} before {what} arrived")
        return got

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        return task

    # -- listeners and links -----------------------------------------------

    async def listen(
        self, on_link: OnLink, options: LinkOptions | None = None, url: str | None = None
    ) -> Listener:
        url = url or self.listen_url

        async def owned(link: Link) -> None:
            self._links.append(link)
            await on_link(link)

        listener = await self.step(
            self.driver.listen(url, owned, options or self.listen_options), f"listen({url!r})"
        )
        self._listeners.append(listener)
        if not isinstance(getattr(listener, "url", None), str):
            fail(f"listen({url!r}) returned a listener without a url string")
        return listener

    async def dial(self, url: str, options: LinkOptions | None = None, what: str | None = None) -> Link:
        options = options or self.dial_options
        link = await self.step(
            self.driver.dial(url, options), what or f"dial({url!r})", options.connect_timeout + self.step_timeout
        )
        self._links.append(link)
        return link

    def adopt(self, link: Link) -> None:
        """Close ``link`` with everything else at the end of the check."""
        self._links.append(link)

    async def hold(self, link: Link, queue: asyncio.Queue[Link]) -> None:
        """An ``on_link`` that hands the link to the check and keeps it open."""
        queue.put_nowait(link)
        await self._release.wait()

    async def echo(self, link: Link) -> None:
        """An ``on_link`` that sends every frame back."""
        try:
            async for frame in link:
                await link.send(frame)
        except CellnetError as exc:
            self.handler_errors.append(describe(exc))

    async def serve(self, options: LinkOptions | None = None) -> Listener:
        """A listener whose links are handed to :meth:`pair`."""
        queue: asyncio.Queue[Link] = asyncio.Queue()
        listener = await self.listen(lambda link: self.hold(link, queue), options)
        self._served[id(listener)] = _Served(listener, queue)
        return listener

    async def pair(
        self,
        listener: Listener | None = None,
        *,
        listen_options: LinkOptions | None = None,
        dial_options: LinkOptions | None = None,
    ) -> Pair:
        """Dial a listener from :meth:`serve` (a new one by default).

        The dialer sends one HELLO frame first, so drivers that learn of a new
        link only from its first frame work too.
        """
        if listener is None:
            listener = await self.serve(listen_options)
        served = self._served[id(listener)]
        dialer = await self.dial(listener.url, dial_options)
        await self.step(dialer.send(HELLO), "the dialer sending its first frame")
        accepted = await self.step(
            served.accepted.get(), "the listener handing the dialed link to on_link"
        )
        pair = Pair(listener, dialer, accepted, Reader(dialer, "dialer"), Reader(accepted, "listener's link"))
        check_same(await self.frame(pair.accepted_reader, "the dialer's first frame"), HELLO, "the first frame")
        return pair

    async def round_trip(self, link: Link, reader: Reader, what: str, size: int = 1000) -> None:
        """Send a frame to an echoing listener and check the echo."""
        sent = Frame(Kind.MESSAGE, {"check": what}, pattern(size, 7))
        await self.step(link.send(sent), f"sending a frame on {what}")
        check_same(await self.frame(reader, f"the echo on {what}"), sent, f"the echo on {what}")

    # -- clean-up ----------------------------------------------------------

    async def aclose(self) -> list[str]:
        """Close everything; return what misbehaved (aclose raising or hanging)."""
        self._release.set()
        problems: list[str] = []
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for closer, what in [(link.aclose, "a link's aclose()") for link in self._links] + [
            (listener.aclose, "a listener's aclose()") for listener in self._listeners
        ]:
            try:
                async with asyncio.timeout(self.step_timeout):
                    await closer()
            except TimeoutError:
                problems.append(f"{what} hung for more than {self.step_timeout:g} s")
            except Exception as exc:
                problems.append(f"{what} raised {describe(exc)}; aclose() must never raise")
        return problems


@asynccontextmanager
async def harness(
    driver: Driver,
    listen_url: str,
    options: LinkOptions | None,
    kit: TlsKit | None,
    *,
    time_limit: float,
    step_timeout: float,
) -> AsyncIterator[Harness]:
    """A :class:`Harness` for one check, bounded by ``time_limit`` seconds."""
    h = Harness(driver, listen_url, options, kit, step_timeout)
    failed = True
    try:
        async with asyncio.timeout(time_limit):
            yield h
        failed = False
    except TimeoutError:
        fail(f"the check did not finish within {time_limit:g} s; it was waiting for: {h.current}")
    finally:
        problems = await h.aclose()
        if problems and not failed:
            fail("; ".join(problems))


def tls_kit_for(tls: bool, kit: TlsKit | None, folder: Path) -> TlsKit | None:
    if not tls:
        return None
    return kit or make_tls_kit(folder / "tls")

