"""Who may call a route: each route's one scope decision, as a dependency, and the audit line.

Every route declares one of `PUBLIC`, `ANY_KEY`, `CLASSIFY`, `TUNE`, `ADMIN`, `METRICS` (as
``dependencies=[Depends(...)]`` or a `ClassifyKey`/`TuneKey`/`AdminKey` parameter when it needs
the key itself); `SCOPE_OF` maps each dependency to its decision, and a test walks the app's
routes to see that none lacks one. With no key configured (`KeyRing.enabled` False) every
route is open and the key is None.

A missing or unknown key is a 401 ``unauthorized``; a known key without the scope is a 403
``forbidden`` naming it. A route with a ``{name}`` path parameter checks the key's classifier
prefix itself; routes that find the classifier in the body call `check_classifier`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from promptserve.service.api.deps import RuntimeDep
from promptserve.service.errors import ForbiddenError, UnauthorizedError
from promptserve.service.keys import Key, Scope

audit_log = logging.getLogger("promptserve.audit")

Decision = Scope | Literal["public", "any key"]
OPEN = "-"  # the key name in an audit line when no key is configured

_bearer = HTTPBearer(
    auto_error=False, description="a key of PROMPTSERVE_API_KEYS_FILE or the PROMPTSERVE_API_KEY"
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
SCOPE_OF: dict[Callable[..., object], Decision] = {}


def _needs(scope: Scope | None) -> Callable[..., Awaitable[Key | None]]:
    """The dependency of a route that needs a key with `scope` (None: any known key)."""

    async def check(request: Request, runtime: RuntimeDep, credentials: BearerDep) -> Key | None:
        ring = runtime.keys
        if not ring.enabled:
            return None
        key = ring.lookup(credentials.credentials) if credentials is not None else None
        if key is None:
            raise UnauthorizedError(
                "missing or unknown API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if scope is not None and not key.allows(scope):
            raise ForbiddenError(f"this key lacks the {scope!r} scope")
        name = request.path_params.get("name")
        if isinstance(name, str):
            check_classifier(key, [name])
        return key

    check.__name__ = f"needs_{scope or 'any_key'}"
    SCOPE_OF[check] = scope or "any key"
    return check


async def public() -> None:
    """The dependency of a route anyone may call (health, the playground page)."""


SCOPE_OF[public] = "public"
PUBLIC = public
ANY_KEY = _needs(None)
CLASSIFY = _needs("classify")
TUNE = _needs("tune")
ADMIN = _needs("admin")
METRICS = _needs("metrics")

ClassifyKey = Annotated[Key | None, Depends(CLASSIFY)]
TuneKey = Annotated[Key | None, Depends(TUNE)]
AdminKey = Annotated[Key | None, Depends(ADMIN)]


def unknown_caller(request: Request) -> bool:
    """Whether keys are configured and `request` carries none of them: such a caller learns
    nothing of the routes, so its 404 and 405 are answered 401 instead."""
    ring = request.app.state.runtime.keys
    if not ring.enabled:
        return False
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() != "bearer" or ring.lookup(token.strip()) is None


def check_classifier(key: Key | None, names: Iterable[str]) -> None:
    """403 unless `key` may use every classifier of `names` (names or ``name@ref``)."""
    if key is None:
        return
    for name in names:
        if not key.may_use(name):
            raise ForbiddenError(
                f"this key may only use classifiers whose name starts with {key.prefix!r}"
            )


def sees_every_job(key: Key | None) -> bool:
    """Whether `key` reads and cancels every job (admin, or no keys), not only its own."""
    return key is None or "admin" in key.scopes


def audit(key: Key | None, action: str, **fields: object) -> None:
    """One INFO line for a call that changes something, naming the key (never its secret)."""
    details = "".join(f" {name}={value}" for name, value in fields.items())
    audit_log.info("audit key=%s action=%s%s", key.name if key else OPEN, action, details)
