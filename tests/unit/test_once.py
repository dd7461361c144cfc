"""The reply cache behind at-most-once reliable requests."""

from __future__ import annotations

from cellnet.message import Message, MsgType
from cellnet.once import ReplyCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reply(text: str) -> Message:
    return Message(type=MsgType.REPLY, src="b", dst="a", channel="c", topic="t", payload=text.encode())


def test_first_copy_runs_a_copy_while_running_waits_a_later_one_gets_the_reply() -> None:
    cache = ReplyCache(clock=Clock())
    assert cache.begin("a", "1") == (True, None)
    assert cache.begin("a", "1") == (False, None)  # in progress
    cache.finish("a", "1", reply("done"))
    run, cached = cache.begin("a", "1")
    assert not run and cached is not None and cached.payload == b"done"
    # The same id from another sender is another request.
    assert cache.begin("z", "1") == (True, None)


def test_bounded_in_entries_oldest_first() -> None:
    cache = ReplyCache(max_entries=3, clock=Clock())
    for i in range(5):
        assert cache.begin("a", str(i))[0]
        cache.finish("a", str(i), reply(str(i)))
    assert len(cache) == 3
    assert cache.begin("a", "0") == (True, None)  # evicted: it would run again
    assert cache.begin("a", "4")[1] is not None


def test_bounded_in_age_but_running_entries_stay() -> None:
    clock = Clock()
    cache = ReplyCache(max_age=60, clock=clock)
    cache.begin("a", "done")
    cache.finish("a", "done", reply("x"))
    cache.begin("a", "slow")  # still running
    clock.now += 61
    assert cache.begin("a", "slow") == (False, None)
    assert cache.begin("a", "done") == (True, None)  # aged out


def test_forget_lets_a_failed_request_run_again() -> None:
    cache = ReplyCache(clock=Clock())
    cache.begin("a", "1")
    cache.forget("a", "1")
    assert cache.begin("a", "1") == (True, None)
