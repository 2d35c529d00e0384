"""The same shape built with fastapi-users: /users/me, login, register, /users/me under logins."""

from __future__ import annotations

from bench import rows
from bench.context import Context
from bench.keyturn_rows import during_logins, load
from bench.process import Server
from bench.rows import Row
from bench.users import PASSWORD, LuaFiles


def fastapi_users_rows(ctx: Context, server: Server, files: LuaFiles) -> list[Row]:
    me = load(ctx, server, "bearer.lua", "/users/me", str(files.access_tokens), "/users/me")
    credentials = str(files.credentials)
    login = load(
        ctx, server, "login.lua", "/auth/login", credentials, "/auth/login", "form", slow=True
    )
    register_args = (f"{ctx.run_id}f", "/auth/register", PASSWORD)
    system = "fastapi-users"
    measured = [
        rows.single(ctx.wrk, server, me, "fu_me", "fastapi-users GET /users/me", system),
        rows.single(ctx.wrk, server, login, "fu_login", "fastapi-users POST /auth/login", system),
        rows.single(
            ctx.wrk,
            server,
            load(ctx, server, "register.lua", "/auth/register", *register_args, slow=True),
            "fu_register",
            "fastapi-users POST /auth/register",
            system,
        ),
    ]
    return measured + during_logins(ctx, server, me, login, "fu_me", system)
