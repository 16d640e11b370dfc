"""The issuer's public documents: OpenID discovery and the JWKS it names.

Both may be cached for `JWKS_MAX_AGE_S`; a rotated key is published for longer
than that before it signs (see `tidings.issuer`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from tidings.errors import NotFound
from tidings.issuer import DISCOVERY_PATH, JWKS_MAX_AGE_S, JWKS_PATH, Issuer

router = APIRouter(tags=["issuer"])

CACHE_CONTROL = f"public, max-age={JWKS_MAX_AGE_S}"


def _issuer(request: Request) -> Issuer:
    issuer = getattr(request.app.state.tidings, "issuer", None)
    if not isinstance(issuer, Issuer):
        raise NotFound("this server issues no tokens")
    return issuer


def _cached(body: dict[str, object]) -> JSONResponse:
    return JSONResponse(body, headers={"Cache-Control": CACHE_CONTROL})


@router.get(DISCOVERY_PATH, response_class=JSONResponse)
async def openid_configuration(request: Request) -> JSONResponse:
    """The OpenID Provider configuration of tidings' token issuer."""
    return _cached(_issuer(request).discovery())


@router.get(JWKS_PATH, response_class=JSONResponse)
async def jwks(request: Request) -> JSONResponse:
    """The public keys that verify delivery tokens: every key published now."""
    issuer = _issuer(request)
    await issuer.refresh()
    return _cached(issuer.jwks(issuer.clock()))
