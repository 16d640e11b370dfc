"""Bearer-token authentication: a token found is kept for a second (see `TokenCache`)."""

from __future__ import annotations

from starlette.requests import Request

from tidings.api.state import state_of
from tidings.errors import Unauthenticated
from tidings.tokens import Principal, hash_secret


async def authenticate(request: Request) -> Principal:
    """The principal of the request's bearer token, or Unauthenticated."""
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated("an Authorization: Bearer <token> header is required")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    state = state_of(request)
    secret_hash = hash_secret(secret.strip())
    token = state.tokens.get(secret_hash)
    if token is None:
        token = await state.storage.token_by_hash(secret_hash)
        if token is None:
            raise Unauthenticated("the token is unknown or was deleted")
        state.tokens.put(secret_hash, token)
    if token.expires_ns is not None and token.expires_ns <= state.clock():
        raise Unauthenticated("the token has expired")
    return Principal.of(token)
