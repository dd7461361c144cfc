"""Conformance checks of the optional fast paths of a link
(:meth:`~cellnet.driver.Link.send_nowait`, :meth:`~cellnet.driver.Link.set_receiver`).

A driver that does not offer one skips its checks; one that does must keep
the same guarantees as ``send`` and iteration: order, intact frames,
bounded memory (a receiver that holds delivery pushes back on the sender),
and the end of the link reported by iteration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cellnet.codec import Frame, Kind
from cellnet.driver import Link
from cellnet.errors import LinkBroken
from cellnet.testing._harness import Harness, MiB, fail, pattern

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from cellnet.testing.conformance import ConformanceEnv

FRAMES = 200
HOLD_AT = 50


def _frame(seq: int, payload: bytes = b"") -> Frame:
    return Frame(Kind.MESSAGE, {"seq": seq}, payload or seq.to_bytes(4, "big") * (seq % 9))


class FastPathChecks:
    """Mixed into :class:`~cellnet.testing.conformance.DriverConformance`."""

    if TYPE_CHECKING:
        step_timeout: float
        blocked_after: float

        def _harness(
            self, env: ConformanceEnv, tmp_path: Path, time_limit: float | None = None
        ) -> AbstractAsyncContextManager[Harness]: ...

        async def _fill_until_blocked(self, h: Harness, link: Link, side: str) -> tuple[int, asyncio.Task[None]]: ...

    async def _wait_for(self, h: Harness, check: Any, what: str) -> None:
        async def poll() -> None:
            while not check():
                await asyncio.sleep(0.005)

        await h.step(poll(), what)

    async def test_send_nowait_keeps_order_with_send(self, env: ConformanceEnv, tmp_path: Path) -> None:
        async with self._harness(env, tmp_path) as h:
            p = await h.pair()
            if not p.dialer.send_nowait(_frame(0)):
                pytest.skip(f"{type(env.driver).__name__} links do not send without waiting (send_nowait)")
            for seq in range(1, FRAMES):
                if seq % 2 or not p.dialer.send_nowait(_frame(seq)):
                    await h.step(p.dialer.send(_frame(seq)), f"send of frame {seq}")
            for seq in range(FRAMES):
                got = await h.frame(p.accepted_reader, f"frame {seq} of {FRAMES}")
                if got.header.get("seq") != seq or bytes(got.payload) != bytes(_frame(seq).payload):
                    fail(f"frame #{seq} arrived as seq {got.header.get('seq')!r}: frames sent with "
                         "send_nowait and send were reordered, lost or corrupted")
            await h.step(p.dialer.aclose(), "aclose() on the dialer")
            if p.dialer.send_nowait(_frame(FRAMES)):
                fail("send_nowait accepted a frame after aclose(); it must return False")

    async def _receiving_pair(self, h: Harness, env: ConformanceEnv, got: list[Frame],
                              hold: int | None) -> Any:
        p = await h.pair()

        def receiver(frame: Frame) -> bool:
            got.append(frame)
            return frame.header.get("seq") != hold

        if not p.accepted.set_receiver(receiver):
            pytest.skip(f"{type(env.driver).__name__} links do not deliver frames by callback (set_receiver)")
        return p

    async def test_receiver_gets_frames_in_order_and_holds(self, env: ConformanceEnv, tmp_path: Path) -> None:
        got: list[Frame] = []
        async with self._harness(env, tmp_path) as h:
            p = await self._receiving_pair(h, env, got, HOLD_AT)
            iteration = h.spawn(p.accepted_reader.recv())
            for seq in range(FRAMES):
                await h.step(p.dialer.send(_frame(seq)), f"send of frame {seq}")
            await self._wait_for(h, lambda: len(got) > HOLD_AT, f"the receiver getting frame {HOLD_AT}")
            await asyncio.sleep(0.2)
            if len(got) != HOLD_AT + 1:
                fail(f"the receiver returned False for frame {HOLD_AT} (hold), yet got {len(got) - HOLD_AT - 1} "
                     "more frames before resume_receiving()")
            p.accepted.resume_receiving()
            await self._wait_for(h, lambda: len(got) >= FRAMES, f"all {FRAMES} frames after resume_receiving()")
            seqs = [f.header.get("seq") for f in got]
            if seqs != list(range(FRAMES)):
                first = next(i for i, s in enumerate(seqs) if s != i) if len(seqs) == FRAMES else len(seqs)
                fail(f"the receiver got the frames out of order, lost or duplicated (first wrong at #{first})")
            for f in got:
                if bytes(f.payload) != bytes(_frame(f.header["seq"]).payload):
                    fail(f"frame {f.header['seq']} reached the receiver corrupted")
            if iteration.done():
                fail(f"iteration gave {iteration.result()!r} while a receiver was set; it must yield no frames")
            await h.step(p.dialer.aclose(), "aclose() on the dialer")
            await h.expect_error(
                iteration, LinkBroken, "the iteration after the peer closed, with a receiver set",
                "the peer broke the link; a receiver changes how frames arrive, not how the end is reported",
            )

    async def test_held_receiver_pushes_back_on_the_sender(self, env: ConformanceEnv, tmp_path: Path) -> None:
        got: list[Frame] = []
        async with self._harness(env, tmp_path) as h:
            p = await self._receiving_pair(h, env, got, 0)
            blocked_seq, pending = await self._fill_until_blocked(h, p.dialer, "dialer")
            block = pattern(MiB, 1)
            total = blocked_seq + 1
            if len(got) != 1:
                fail(f"the receiver held delivery at frame 0 but got {len(got)} frames")
            p.accepted.resume_receiving()
            await h.step(pending, "the waiting send, after resume_receiving()")
            await self._wait_for(h, lambda: len(got) >= total, f"all {total} frames after resume_receiving()")
            for i, f in enumerate(got):
                if f.header.get("seq") != i or bytes(f.payload) != block:
                    fail(f"1 MiB frame #{i} held back and then delivered came as seq {f.header.get('seq')!r}, "
                         "or corrupted")

    async def test_frames_before_the_receiver_are_delivered_to_it(
        self, env: ConformanceEnv, tmp_path: Path
    ) -> None:
        async with self._harness(env, tmp_path) as h:
            p = await h.pair()
            for seq in range(10):
                await h.step(p.dialer.send(_frame(seq)), f"send of frame {seq}")
            await asyncio.sleep(0.2)  # they arrive while no one reads
            got: list[Frame] = []

            def receiver(frame: Frame) -> bool:
                got.append(frame)
                return True

            if not p.accepted.set_receiver(receiver):
                pytest.skip(f"{type(env.driver).__name__} links do not deliver frames by callback (set_receiver)")
            await self._wait_for(h, lambda: len(got) >= 10, "the 10 frames sent before set_receiver()")
            if [f.header.get("seq") for f in got] != list(range(10)):
                fail("frames that arrived before set_receiver() reached the receiver out of order or twice")
