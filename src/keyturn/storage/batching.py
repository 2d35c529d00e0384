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
    then runs the batch and hands every follower its answer. Submissions with the same key
    share one answer (`run` sees the first one's item). A key missing from `run`'s answer is
    answered None; an error reaches every submission of the batch.
    """

    def __init__(self, run: Callable[[dict[K, T]], Awaitable[Mapping[K, V]]]) -> None:
        self._run = run
        self._gathering: dict[K, tuple[T, list[asyncio.Future[Any]]]] | None = None

    async def submit(self, key: K, item: T) -> V | None:
        gathering = self._gathering
        if gathering is not None:  # another request's batch is gathering: join it
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
            finally:
                self._gathering = None
            answers = await self._run({k: entry[0] for k, entry in gathering.items()})
        except asyncio.CancelledError:
            for _, waiters in gathering.values():
                _answer(waiters, _AGAIN)
            raise
        except Exception as error:
            for _, waiters in gathering.values():
                _answer(waiters, error=error)
            raise
        for k, (_, waiters) in gathering.items():
            _answer(waiters, answers.get(k))
        return answers.get(key)


def _answer(
    waiters: list[asyncio.Future[Any]], answer: Any = None, *, error: Exception | None = None
) -> None:
    for waiter in waiters:
        if waiter.done():  # that follower's own request was cancelled
            continue
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(answer)
