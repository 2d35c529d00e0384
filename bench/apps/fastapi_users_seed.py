"""Seed the fastapi-users app's tables through its own models: users and a database token each.

Run in the fastapi-users venv with the app's `FU_DATABASE_URL`; emails come as a JSON list on
standard input, the tokens go out as a JSON list. The rows are what fastapi-users itself writes
(`password_helper.hash`, `secrets.token_urlsafe()` as `DatabaseStrategy.write_token` does), but
one hash serves every user, so set-up does not spend a minute in argon2.
"""

import asyncio
import json
import secrets
import sys
import uuid

from fastapi_users_app import AccessToken, Base, User, engine, password_helper, session_maker


async def seed(emails: list[str], password: str) -> list[str]:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    hashed = password_helper.hash(password)
    users = [
        User(
            id=uuid.uuid4(),
            email=email,
            hashed_password=hashed,
            is_active=True,
            is_superuser=False,
            is_verified=False,
        )
        for email in emails
    ]
    tokens = [secrets.token_urlsafe() for _ in users]
    async with session_maker() as session:
        session.add_all(users)
        await session.flush()  # users first: no relationship tells the unit of work the order
        session.add_all(
            [
                AccessToken(token=token, user_id=user.id)
                for user, token in zip(users, tokens, strict=True)
            ]
        )
        await session.commit()
    await engine.dispose()
    return tokens


if __name__ == "__main__":
    print(json.dumps(asyncio.run(seed(json.load(sys.stdin), sys.argv[1]))))
