"""`keyturn serve`'s access lines: written once per turn of the event loop, whole lines only."""

from __future__ import annotations

import asyncio
import io

from keyturn.logs import _PIPE_BUF, _AccessLines


class _Stream(io.BytesIO):
    """A real byte stream that also keeps each write apart, as the system calls would be."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes.append(bytes(data))
        return super().write(data)


async def test_the_lines_of_one_turn_of_the_loop_are_written_together_after_it() -> None:
    stream = _Stream()
    lines = _AccessLines(stream)
    for n in range(3):
        lines.add(b'{"n":%d}\n' % n)
    assert stream.writes == []  # the requests of this turn are still being answered
    await asyncio.sleep(0)
    assert stream.writes == [b'{"n":0}\n{"n":1}\n{"n":2}\n']
    lines.add(b'{"n":3}\n')
    await asyncio.sleep(0)
    assert stream.writes[1:] == [b'{"n":3}\n']


async def test_a_batch_never_splits_a_line_or_outgrows_an_atomic_pipe_write() -> None:
    stream = _Stream()
    lines = _AccessLines(stream)
    line = b"x" * 1000 + b"\n"
    for _ in range(10):
        lines.add(line)
    await asyncio.sleep(0)
    assert b"".join(stream.writes) == line * 10
    assert all(len(w) <= _PIPE_BUF and len(w) % len(line) == 0 for w in stream.writes)


def test_without_an_event_loop_a_line_is_written_at_once() -> None:
    stream = _Stream()
    _AccessLines(stream).add(b"{}\n")
    assert stream.writes == [b"{}\n"]
