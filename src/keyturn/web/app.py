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
        # keyturn reports through /metrics and its logs; FastAPI's OpenTelemetry bridge would
        # only ask, on every request, whether a provider has been configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    keyturn.install(app)
    # The server's own routes sit directly on the app, ahead of the documentation routes:
    # Starlette tries routes in order, and the protected ones are the hot ones.
    app.router.routes[:0] = keyturn.router.routes
    return app
