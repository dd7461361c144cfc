"""Message ids: unique, 128 random bits, and never shared with a forked child."""

from __future__ import annotations

import os
import re

import pytest

from cellnet.message import Message, MsgType, new_id


def test_ids_are_unique_128_bit_hex() -> None:
    ids = [new_id() for _ in range(10_000)]  # many batches
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_every_message_gets_its_own_id() -> None:
    a = Message(MsgType.SEND, "site-1", "server")
    b = Message(MsgType.SEND, "site-1", "server")
    assert a.id != b.id


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_id()  # the parent holds a partly used batch
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids and leave at once
        os.close(read)
        os.write(write, "".join(new_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 4096):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    child = {data[i : i + 32].decode() for i in range(0, len(data), 32)}
    parent = {new_id() for _ in range(8)}
    assert len(child) == 8
    assert not child & parent
