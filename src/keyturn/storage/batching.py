"""Work that requests start in the same turn of the event loop, done once for all of them.

Under load, every request whose bytes arrived in one poll of the sockets reaches its database
call in the same turn of the loop. One query for all of them costs the database one statement
(and, for a write, one commit) instead of one each, and costs us one round trip; with 32
clients a busy server gathers about ten at a time. Each request's query still starts after the
request arrived, so whatever was committed before it (a revocation) is seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

K = TypeVar("K")
T = TypeVar("T")
V = TypeVar("V")

# A follower's answer when the batch it joined was abandoned (its leader's request was
# cancelled): it submits again, and leads or joins another batch.
_AGAIN: Any = object()


class TurnBatch(Generic[K, T, V]):
    """`submit` calls made in one turn of the loop share one call of `run`.

    The first submission of a turn leads: it lets the loop finish the turn (the others join),
    then runs the batch and hands every follower its answer. `run` gets the first item of each
    key and answers by key: a value, or an exception for that key's submissions alone; a key
    it leaves out is answered None, and an error it raises reaches every submission.

    A later submission of a key already in the batch shares the first one's answer, or, with
    `share=False`, is answered None, as if it had come after the batch.

    With `until`, the batch stays open after its turn until `until()` returns: for work that
    would only queue meanwhile (SQLite's writes, while a commit is flushed).
    """

    def __init__(
        self,
        run: Callable[[dict[K, T]], Awaitable[Mapping[K, V | Exception]]],
        *,
        share: bool = True,
        until: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._run = run
        self._share = share
        self._until = until
        self._gathering: dict[K, tuple[T, list[asyncio.Future[Any]]]] | None = None

    async def submit(self, key: K, item: T) -> V | None:
        gathering = self._gathering
        if gathering is not None:  # another request's batch is gathering: join it
            # No callback to read an error answer: the waiting task's wake-up reads it first,
            # even when the task has been cancelled meanwhile (a test holds it).
            waiter = asyncio.get_running_loop().create_future()
            gathering.setdefault(key, (item, []))[1].append(waiter)
            answer = await waiter
            if answer is _AGAIN:
                return await self.submit(key, item)
            return answer  # type: ignore[no-any-return]
        gathering = self._gathering = {key: (item, [])}
        try:
            try:
                await asyncio.sleep(0)  # the requests of this turn of the loop join
                if self._until is not None:
                    await self._until()  # ... and those of the turns until it returns
            finally:
                self._gathering = None
            answers = await self._run({k: entry[0] for k, entry in gathering.items()})
        except Exception as error:
            for _, waiters in gathering.values():
                _answer(waiters, error)
            raise
        except BaseException:  # cancelled (or the process is stopping): the others try again
            for _, waiters in gathering.values():
                _answer(waiters, _AGAIN)
            raise
        for k, (_, waiters) in gathering.items():
            answer = answers.get(k)
            if self._share:
                _answer(waiters, answer)
            else:  # the key's first submission owns the answer: the leader, or its first waiter
                owners = 0 if k == key else 1
                _answer(waiters[:owners], answer)
                _answer(waiters[owners:], None)
        mine = answers.get(key)
        if isinstance(mine, Exception):
            raise mine
        return mine


def _answer(waiters: list[asyncio.Future[Any]], answer: Any) -> None:
    for waiter in waiters:
        if waiter.done():  # that follower's own request was cancelled
            continue
        if isinstance(answer, Exception):
            waiter.set_exception(answer)
        else:
            waiter.set_result(answer)
