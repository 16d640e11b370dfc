"""`/v1/types` and `/v1/validation`: the catalog of event types and how strictly it is enforced."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field

from tidings import groups
from tidings.api.auth import authenticate
from tidings.api.state import AppState, state_of
from tidings.api.storable import Body
from tidings.catalog import TENANT_MODE_SETTING, EventType, check_mode, type_from_spec
from tidings.errors import Conflict, Forbidden, NotFound
from tidings.tokens import Principal

router = APIRouter(tags=["types"])


class TypeCreate(Body):
    """A tenant's own event type."""

    type: str
    description: str = ""
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema", description="JSON Schema of data.body"
    )
    example: dict[str, Any] | None = Field(default=None, description="event data: {actor, body}")
    validation: str | None = Field(default=None, description="strict, warn or off")


class TypeUpdate(Body):
    """Changes to a type: for built-in and catalog types, only its validation mode."""

    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    example: dict[str, Any] | None = None
    validation: str | None = None


class ValidationMode(Body):
    """A tenant's default validation mode."""

    mode: str = Field(description="strict, warn or off")


def _tenant_owner(principal: Principal) -> str:
    """The tenant of a principal that owns its root group, else Forbidden."""
    principal.require("owner")
    if principal.group != groups.root_of(principal.group):
        raise Forbidden("event types are managed by an owner of the tenant's root group")
    return principal.group


async def _catalog(state: AppState, principal: Principal) -> tuple[dict[str, EventType], str]:
    return await state.catalog.for_tenant(groups.root_of(principal.group))


@router.get("/v1/types")
async def list_types(request: Request) -> dict[str, Any]:
    """Every type the tenant knows: built in, from the catalog file, and its own."""
    principal = await authenticate(request)
    types, mode = await _catalog(state_of(request), principal)
    return {"types": [t.to_dict(t.validation or mode) for t in types.values()], "validation": mode}


@router.post("/v1/types", status_code=201)
async def create_type(request: Request, spec: TypeCreate) -> dict[str, Any]:
    """Register a tenant's own event type."""
    principal = await authenticate(request)
    tenant = _tenant_owner(principal)
    state = state_of(request)
    event_type = type_from_spec(spec.model_dump(by_alias=True, exclude_none=True), "tenant")
    types, mode = await _catalog(state, principal)
    if event_type.type in types:
        raise Conflict(
            f"type {event_type.type!r} exists ({types[event_type.type].origin}); PATCH it instead"
        )
    await state.storage.put_tenant_type(tenant, event_type, state.clock())
    state.catalog.invalidate(tenant)
    return event_type.to_dict(event_type.validation or mode)


@router.get("/v1/types/{event_type:path}")
async def get_type(request: Request, event_type: str) -> dict[str, Any]:
    """One event type."""
    principal = await authenticate(request)
    types, mode = await _catalog(state_of(request), principal)
    found = types.get(event_type)
    if found is None:
        raise NotFound(f"no event type {event_type!r} in the catalog")
    return found.to_dict(found.validation or mode)


@router.patch("/v1/types/{event_type:path}")
async def update_type(request: Request, event_type: str, spec: TypeUpdate) -> dict[str, Any]:
    """Change a tenant type, or set the validation mode of any type for the tenant."""
    principal = await authenticate(request)
    tenant = _tenant_owner(principal)
    state = state_of(request)
    types, mode = await _catalog(state, principal)
    found = types.get(event_type)
    if found is None:
        raise NotFound(f"no event type {event_type!r} in the catalog")
    changes = spec.model_dump(by_alias=True, exclude_unset=True)
    if found.origin != "tenant":
        if set(changes) - {"validation"}:
            raise Forbidden(
                f"type {event_type!r} is {found.origin}: only its validation can be set"
            )
        stored = EventType(
            type=event_type, description="", validation=check_mode(changes.get("validation"))
        )
    else:
        current = {
            "type": event_type,
            "description": found.description,
            "schema": found.schema,
            "example": found.examples[0] if found.examples else None,
            "validation": found.validation,
        }
        stored = type_from_spec({**current, **changes}, "tenant")
    await state.storage.put_tenant_type(tenant, stored, state.clock())
    state.catalog.invalidate(tenant)
    updated = replace(found, validation=stored.validation) if found.origin != "tenant" else stored
    return updated.to_dict(updated.validation or mode)


@router.delete("/v1/types/{event_type:path}", status_code=204, response_class=Response)
async def delete_type(request: Request, event_type: str) -> Response:
    """Forget a tenant type (or the tenant's validation setting of another type)."""
    principal = await authenticate(request)
    tenant = _tenant_owner(principal)
    state = state_of(request)
    if not await state.storage.delete_tenant_type(tenant, event_type):
        raise NotFound(f"the tenant has no type or setting {event_type!r}")
    state.catalog.invalidate(tenant)
    return Response(status_code=204)


@router.get("/v1/validation")
async def get_validation(request: Request) -> dict[str, str]:
    """The tenant's default validation mode."""
    principal = await authenticate(request)
    _, mode = await _catalog(state_of(request), principal)
    return {"mode": mode}


@router.put("/v1/validation")
async def set_validation(request: Request, spec: ValidationMode) -> dict[str, str]:
    """Set the tenant's default validation mode (types may set their own)."""
    principal = await authenticate(request)
    tenant = _tenant_owner(principal)
    state = state_of(request)
    await state.storage.put_setting(TENANT_MODE_SETTING + tenant, check_mode(spec.mode, "mode"))
    state.catalog.invalidate(tenant)
    return {"mode": spec.mode}
