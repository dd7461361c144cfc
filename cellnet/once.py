"""At-most-once execution of reliable requests: a bounded reply cache.

A reliable request may arrive more than once (the sender re-sends it under the
same id after a lost link). The receiver runs the handler for the first copy
only. A copy that arrives while the handler runs is answered "in progress";
a copy that arrives after it finished gets the cached reply. The cache is
bounded both in entries and in age, oldest evicted first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from .message import Message

_RUNNING = None


@dataclass(slots=True)
class _Entry:
    reply: Message | None  # None while the handler runs
    at: float


class ReplyCache:
    def __init__(
        self,
        max_entries: int = 10_000,
        max_age: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._max_entries = max_entries
        self._max_age = max_age
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, src: str, msg_id: str) -> tuple[bool, Message | None]:
        """Claim a request. Returns ``(True, None)`` when the caller must run
        the handler, ``(False, None)`` when it is already running, and
        ``(False, reply)`` when it finished before."""
        self._expire()
        key = (src, msg_id)
        entry = self._entries.get(key)
        if entry is None:
            self._entries[key] = _Entry(_RUNNING, self._clock())
            return True, None
        return False, entry.reply

    def finish(self, src: str, msg_id: str, reply: Message) -> None:
        key = (src, msg_id)
        self._entries[key] = _Entry(reply, self._clock())
        self._entries.move_to_end(key)
        self._expire()

    def forget(self, src: str, msg_id: str) -> None:
        self._entries.pop((src, msg_id), None)

    def _expire(self) -> None:
        entries = self._entries
        oldest = self._clock() - self._max_age
        while entries:
            key, entry = next(iter(entries.items()))
            if len(entries) > self._max_entries or (entry.at < oldest and entry.reply is not None):
                entries.popitem(last=False)
            else:
                break
