"""Records and tables agree: the hot-path look-up builds records by column position."""

from __future__ import annotations

from dataclasses import fields

import pytest

from keyturn.storage.records import Session, User
from keyturn.storage.schema import sessions, users


@pytest.mark.parametrize(("record", "table"), [(Session, sessions), (User, users)])
def test_record_fields_follow_the_table_column_order(record: type, table: object) -> None:
    assert [f.name for f in fields(record)] == [c.name for c in table.c]  # type: ignore[attr-defined]
