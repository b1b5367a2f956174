"""Replica death and overload become 503 (with ``Retry-After``), never 500.

When a model replica dies mid-request (a crash, an OOM kill, a node lost), the handle call raises a Ray actor
error; a lost store entry raises ``ObjectLostError``; a full queue raises Serve's ``BackPressureError``. These
are the server's transient faults, not bugs, and clients should retry: Serve replaces the replica and later
requests succeed (see ``tests/test_serve_faults.py`` for the measured recovery).
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray.exceptions import ObjectLostError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

UNAVAILABLE: tuple[type[BaseException], ...] = (RayActorError, ObjectLostError, BackPressureError,
                                                DeploymentUnavailableError)
RETRY_AFTER_S = 1


def unavailable_response(exc: BaseException) -> JSONResponse:
    return JSONResponse({"error": f"a model replica is unavailable ({type(exc).__name__}); retry shortly"},
                        status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def add_unavailable_handlers(api: FastAPI) -> None:
    """Map every :data:`UNAVAILABLE` error raised by a route to 503."""

    async def on_unavailable(_: Request, exc: Exception) -> JSONResponse:
        return unavailable_response(exc)

    for cls in UNAVAILABLE:
        api.add_exception_handler(cls, on_unavailable)
