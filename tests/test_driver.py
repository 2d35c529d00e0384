"""The hot-path statement plans (storage/driver.py): compiled once, bound like SQLAlchemy binds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Dialect, bindparam, insert, select, update
from sqlalchemy.dialects.sqlite import DATETIME
from sqlalchemy.exc import MultipleResultsFound, NoResultFound

from keyturn.storage import sessions as session_store
from keyturn.storage.database import Database
from keyturn.storage.driver import POSTGRESQL, SQLITE, _plan
from keyturn.storage.schema import UTCDateTime, metadata, refresh_tokens, sessions, users

NOW = datetime(2026, 11, 27, 5, 30, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize("dialect", [SQLITE, POSTGRESQL], ids=["sqlite", "postgresql"])
def test_a_statement_is_compiled_once_per_dialect_and_inserted_columns(dialect: Dialect) -> None:
    joined = session_store._TOKEN_SESSION_AND_USER  # a join: result columns of its own
    parameters = {"b_hash": "h"}
    assert _plan(joined, parameters, dialect) is _plan(joined, parameters, dialect)
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


@pytest.mark.parametrize(
    ("stored", "moment"),
    [
        ("2026-11-27 05:30:00.123456", NOW),  # as keyturn writes it: naive text in UTC
        ("2026-11-27 05:30:00", NOW.replace(microsecond=0)),
        ("2026-11-27T07:30:00.123456+02:00", NOW),  # with an offset of its own: converted
        ("2026-11-27T05:30:00.123456Z", NOW),
        ("2026-11-27", NOW.replace(hour=0, minute=0, second=0, microsecond=0)),  # a date alone
    ],
)
def test_timestamps_read_from_sqlite_are_aware_and_in_utc(stored: str, moment: datetime) -> None:
    process = UTCDateTime().result_processor(SQLITE, None)
    read = process(stored)
    assert read == moment
    assert read.tzinfo is UTC
    assert process(None) is None


async def test_results_answer_like_sqlalchemys_own(tmp_path: Path) -> None:
    """The driver's results against SQLAlchemy's, for the same statements on the same file."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'rows.db'}"
    database = Database(url)
    try:
        async with database.connect() as theirs:
            await theirs.run_sync(metadata.create_all)
            await theirs.commit()
        async with database.write() as ours:
            await ours.execute(
                insert(users),
                [
                    {"id": f"u{n}", "email": f"u{n}@example.com", "name": None,
                     "password_hash": "h", "email_verified": n == 1, "is_admin": False,
                     "is_disabled": False, "created_at": NOW, "updated_at": NOW,
                     "deleted_at": None}
                    for n in range(2)
                ],
            )  # fmt: skip
        by_id = select(users).order_by(users.c.id)
        none = by_id.where(users.c.id == "none")
        async with database.write() as ours, database.read() as theirs:
            for statement in (by_id, none):
                mine, reference = await ours.execute(statement), await theirs.execute(statement)
                assert mine.fetchall() == reference.fetchall()
            first = (await ours.execute(by_id)).first()
            assert first is not None
            assert first == (await theirs.execute(by_id)).first()
            assert first._mapping["created_at"] == first.created_at == first[7] == NOW
            assert first.email_verified is False
            assert (await ours.execute(by_id)).scalar() == "u0"
            assert (await ours.execute(none)).first() is None
            assert (await ours.execute(none)).scalar() is None
            assert (await ours.execute(by_id)).all() == (await theirs.execute(by_id)).all()
            assert (await ours.execute(none)).one_or_none() is None
            with pytest.raises(MultipleResultsFound):
                (await ours.execute(by_id)).one_or_none()
            with pytest.raises(NoResultFound):
                (await ours.execute(none)).one()
            with pytest.raises(MultipleResultsFound):
                (await ours.execute(by_id)).scalar_one()
    finally:
        await database.dispose()
