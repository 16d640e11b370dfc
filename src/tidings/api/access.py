"""`/v1/groups` and `/v1/tokens`: minting groups and managing credentials (owner only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field

from tidings import groups
from tidings.api.auth import authenticate
from tidings.api.state import state_of
from tidings.api.storable import Body
from tidings.errors import BadRequest, NotFound
from tidings.model import Group, Token
from tidings.timestamps import from_ns, parse_stored
from tidings.tokens import new_token

router = APIRouter(tags=["access"])


class GroupCreate(Body):
    """A new child group under `parent` (by default the token's group)."""

    name: str | None = Field(default=None, max_length=200)
    parent: str | None = None


class TokenCreate(Body):
    """A new token for `group` (by default the token's group) with `roles`."""

    roles: list[str] = Field(min_length=1)
    group: str | None = None
    name: str | None = Field(default=None, max_length=200)
    subject: str | None = Field(default=None, max_length=1024)
    expires_at: str | None = Field(default=None, description="RFC 3339")


def group_json(group: Group) -> dict[str, Any]:
    """The JSON form of a group."""
    return {
        "path": group.path,
        "name": group.name,
        "created_at": from_ns(group.created_ns).render(),
    }


def token_json(token: Token, secret: str | None = None) -> dict[str, Any]:
    """The JSON form of a token; the secret appears only when it is created."""
    body: dict[str, Any] = {
        "id": token.id,
        "group": token.group,
        "roles": list(token.roles),
        "name": token.name,
        "subject": token.subject,
        "expires_at": None if token.expires_ns is None else from_ns(token.expires_ns).render(),
        "created_at": from_ns(token.created_ns).render(),
    }
    if secret is not None:
        body["token"] = secret
    return body


@router.post("/v1/groups", status_code=201)
async def create_group(request: Request, spec: GroupCreate) -> dict[str, Any]:
    """Mint a child group (a UIDP) under a group the token owns."""
    principal = await authenticate(request)
    parent = principal.group if spec.parent is None else groups.parse_group(spec.parent, "parent")
    principal.require("owner", parent)
    state = state_of(request)
    group = Group(path=groups.new_child(parent), name=spec.name, created_ns=state.clock())
    await state.storage.create_group(group)
    return group_json(group)


@router.post("/v1/tokens", status_code=201)
async def create_token(request: Request, spec: TokenCreate) -> dict[str, Any]:
    """Create a token within the caller's subtree; its secret is shown only here."""
    principal = await authenticate(request)
    group = principal.group if spec.group is None else groups.parse_group(spec.group, "group")
    principal.require("owner", group)
    state = state_of(request)
    now = state.clock()
    expires_ns = None if spec.expires_at is None else parse_stored(spec.expires_at, "expires_at").ns
    if expires_ns is not None and expires_ns <= now:
        raise BadRequest("expires_at must be in the future")
    if principal.expires_ns is not None:
        # A token never outlives the token that made it.
        if expires_ns is not None and expires_ns > principal.expires_ns:
            raise BadRequest("expires_at may not be later than the expiry of the token creating it")
        expires_ns = principal.expires_ns if expires_ns is None else expires_ns
    token, secret = new_token(group, spec.roles, spec.name, spec.subject, expires_ns, now)
    await state.storage.create_token(token)
    return token_json(token, secret)


@router.get("/v1/tokens")
async def list_tokens(request: Request) -> dict[str, Any]:
    """The tokens of the caller's subtree, without their secrets."""
    principal = await authenticate(request)
    principal.require("owner")
    found = await state_of(request).storage.list_tokens(principal.group)
    return {
        "tokens": [token_json(token) for token in found],
        "has_more": False,
        "next_cursor": None,
    }


@router.delete("/v1/tokens/{token_id}", status_code=204, response_class=Response)
async def delete_token(request: Request, token_id: str) -> Response:
    """Delete a token of the caller's subtree; it stops working at once."""
    principal = await authenticate(request)
    principal.require("owner")
    state = state_of(request)
    deleted = await state.storage.delete_token(principal.group, token_id)
    state.tokens.clear()
    if not deleted:
        raise NotFound(f"no token {token_id!r} in the token's subtree")
    return Response(status_code=204)
