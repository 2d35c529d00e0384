"""`TurnBatch`: submissions made in one turn of the event loop share one call, and each gets
its own answer (or error)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from keyturn.storage.batching import TurnBatch


class Recorder:
    """A `run` that answers each key with its item doubled, and records every call."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.calls: list[dict[str, int]] = []
        self.fail = fail or {}

    async def __call__(self, items: dict[str, int]) -> dict[str, int | Exception]:
        self.calls.append(dict(items))
        await asyncio.sleep(0)  # a real round trip suspends
        return {k: self.fail.get(k, v * 2) for k, v in items.items() if k != "missing"}


async def test_submissions_of_one_turn_share_one_call_and_get_their_own_answers() -> None:
    run = Recorder()
    batch = TurnBatch(run)
    answers = await asyncio.gather(
        batch.submit("a", 1), batch.submit("b", 2), batch.submit("a", 5), batch.submit("missing", 3)
    )
    assert list(answers) == [2, 4, 2, None]  # the second "a" shares the first one's answer
    assert run.calls == [{"a": 1, "b": 2, "missing": 3}]
    assert await batch.submit("c", 4) == 8  # a later turn: a batch of its own
    assert len(run.calls) == 2


async def test_with_until_submissions_of_later_turns_join_until_it_returns() -> None:
    """SQLite: refreshes that arrive while a commit is being flushed would only queue behind
    it, so they join the batch waiting for it instead of forming batches of their own."""
    run = Recorder()
    flushed = asyncio.Event()
    batch = TurnBatch(run, until=flushed.wait)
    first = asyncio.create_task(batch.submit("a", 1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # a later turn
    second = asyncio.create_task(batch.submit("b", 2))
    await asyncio.sleep(0)
    assert run.calls == []  # still gathering
    flushed.set()
    assert list(await asyncio.gather(first, second)) == [2, 4]
    assert run.calls == [{"a": 1, "b": 2}]


async def test_without_sharing_a_repeated_key_is_answered_as_after_the_batch() -> None:
    run = Recorder()
    batch = TurnBatch(run, share=False)
    answers = await asyncio.gather(
        batch.submit("a", 1), batch.submit("b", 2), batch.submit("a", 5), batch.submit("b", 6)
    )
    assert list(answers) == [2, 4, None, None]
    assert run.calls == [{"a": 1, "b": 2}]


async def test_an_error_for_one_key_reaches_only_its_submissions() -> None:
    batch = TurnBatch(Recorder(fail={"b": ValueError("b alone")}))
    answers = await asyncio.gather(
        batch.submit("a", 1), batch.submit("b", 2), batch.submit("c", 3), return_exceptions=True
    )
    assert answers[0] == 2
    assert answers[2] == 6
    assert isinstance(answers[1], ValueError)


async def test_an_error_of_the_whole_batch_reaches_every_submission() -> None:
    async def broken(items: dict[str, int]) -> dict[str, int | Exception]:
        raise ConnectionError("down")

    batch = TurnBatch(broken)
    answers = await asyncio.gather(
        batch.submit("a", 1), batch.submit("b", 2), return_exceptions=True
    )
    assert all(isinstance(a, ConnectionError) for a in answers)


async def test_a_cancelled_leader_leaves_the_others_to_try_again() -> None:
    run = Recorder()
    batch = TurnBatch(run)
    tasks = [asyncio.create_task(batch.submit(k, v)) for k, v in (("a", 1), ("b", 2), ("c", 3))]
    await asyncio.sleep(0)  # all three have started: the first leads, the others joined
    tasks[0].cancel()
    answers = await asyncio.wait_for(asyncio.gather(*tasks[1:]), timeout=5)
    assert answers == [4, 6]
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]


async def test_an_error_answer_its_cancelled_request_never_reads_is_not_reported_lost() -> None:
    """A request cancelled after its batch answered it with an error never reads the answer;
    asyncio would log that error as never retrieved (a false alarm, once per such request)."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    tasks: list[asyncio.Task[int | None]] = []

    async def run(items: dict[str, int]) -> dict[str, int | Exception]:
        loop.call_soon(tasks[1].cancel)  # next turn: the follower's answer is set by then
        return {"k": ValueError("refused")}

    batch: TurnBatch[str, int, int] = TurnBatch(run)
    tasks += [loop.create_task(batch.submit("k", 1)), loop.create_task(batch.submit("k", 2))]
    leader, follower = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(leader, ValueError)
    assert isinstance(follower, asyncio.CancelledError)
    tasks.clear()
    try:
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert reported == []
