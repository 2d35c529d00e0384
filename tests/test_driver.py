"""The hot-path statement plans (storage/driver.py): compiled once, bound like SQLAlchemy binds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Dialect, bindparam, select, update
from sqlalchemy.dialects.sqlite import DATETIME

from keyturn.storage import sessions as session_store
from keyturn.storage.driver import POSTGRESQL, SQLITE, _plan
from keyturn.storage.schema import UTCDateTime, refresh_tokens, sessions

NOW = datetime(2026, 11, 27, 5, 30, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize("dialect", [SQLITE, POSTGRESQL], ids=["sqlite", "postgresql"])
def test_a_statement_is_compiled_once_per_dialect_and_inserted_columns(dialect: Dialect) -> None:
    claim = session_store._CLAIM  # an UPDATE ... RETURNING: result columns of its own
    parameters = {"b_hash": "h", "b_now": NOW}
    assert _plan(claim, parameters, dialect) is _plan(claim, parameters, dialect)
    insert = session_store._INSERT_TOKEN
    row = {c.name: None for c in refresh_tokens.c}
    assert _plan(insert, row, dialect) is _plan(insert, [row, row], dialect)
    fewer = {k: v for k, v in row.items() if k != "rotated_at"}
    assert _plan(insert, fewer, dialect) is not _plan(insert, row, dialect)


def test_arguments_are_the_values_given_else_those_compiled_into_the_statement() -> None:
    statement = (
        update(sessions)
        .where(sessions.c.id == "fixed-id", sessions.c.last_seen_at <= bindparam("b_since"))
        .values(revoke_reason=bindparam("b_reason"), last_seen_at=NOW)
    )
    plan = _plan(statement, {"b_since": NOW, "b_reason": "r"}, SQLITE)
    arguments = plan.args({"b_since": NOW, "b_reason": "logout"})
    assert sorted(map(str, arguments)) == sorted(
        ["logout", "2026-11-27 05:30:00.123456", "fixed-id", "2026-11-27 05:30:00.123456"]
    )
    # The same order SQLAlchemy's own parameter construction gives.
    compiled = statement.compile(dialect=SQLITE, compile_kwargs={"render_postcompile": True})
    values = compiled.construct_params({"b_since": NOW, "b_reason": "logout"})
    processors: dict[str, Any] = dict(compiled._bind_processors)
    expected = [
        processors[n](values[n]) if n in processors else values[n]
        for n in compiled.positiontup or ()
    ]
    assert arguments == expected


def test_rows_come_back_with_their_column_names() -> None:
    plan = _plan(select(sessions.c.id, sessions.c.user_id), None, SQLITE)
    assert plan.keys == ("id", "user_id")
    assert plan.returns_rows


@pytest.mark.parametrize(
    "moment",
    [
        NOW,
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),  # no microseconds: still written
        datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(2026, 6, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))),  # stored as UTC
    ],
)
def test_timestamps_are_written_to_sqlite_as_its_datetime_type_writes_them(
    moment: datetime,
) -> None:
    ours = UTCDateTime().bind_processor(SQLITE)
    theirs = DATETIME().bind_processor(SQLITE)  # type: ignore[no-untyped-call]
    assert ours is not None
    assert theirs is not None
    assert ours(moment) == theirs(moment.astimezone(UTC).replace(tzinfo=None))
    assert ours(None) is None
