"""The standalone server: a FastAPI app built from the same facade a host app uses."""

from __future__ import annotations

from fastapi import FastAPI

from keyturn.facade import Keyturn


def create_app(keyturn: Keyturn) -> FastAPI:
    app = FastAPI(
        title="keyturn",
        summary="User sessions and authentication",
        version="0.1.0",
        lifespan=keyturn.lifespan,
    )
    keyturn.install(app)
    # The server's own routes sit directly on the app: no included router to walk per request.
    app.router.routes.extend(keyturn.router.routes)
    return app
