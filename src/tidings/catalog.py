"""The catalog of event types: descriptions, JSON Schemas of the body, examples, and validation.

Types come from three places, merged per tenant: built in (the 46 Chainguard
types, from every example of the two Chainguard documents; 16 appear in both,
so a type may carry several examples), the operator's catalog file
(`TIDINGS_CATALOG`, YAML or JSON, for every tenant), and each tenant's own
(`POST /v1/types`). A type's body schema is enforced by its validation mode:
`strict` refuses a non-conforming event (422, naming the JSON pointer and the
rule), `warn` stores it marked with a `validationerror` attribute, `off`
ignores the schema. The mode is set per type, else per tenant, else `warn`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema_rs
import yaml

from tidings import groups
from tidings.errors import BadRequest, Unprocessable
from tidings.model import EventInput
from tidings.wire import VALIDATION_ERROR

MODES = ("strict", "warn", "off")
DEFAULT_MODE = "warn"
TENANT_MODE_SETTING = "validation:"


@dataclass(frozen=True, slots=True, kw_only=True)
class EventType:
    """A known event type."""

    type: str
    description: str
    schema: dict[str, Any] | None = None
    examples: tuple[dict[str, Any], ...] = ()
    validation: str | None = None
    origin: str = "builtin"
    service: str | None = None
    method: str | None = None
    source: str | None = None

    def to_dict(self, effective_mode: str | None = None) -> dict[str, Any]:
        """The JSON form served by `GET /v1/types`."""
        body: dict[str, Any] = {
            "type": self.type,
            "description": self.description,
            "origin": self.origin,
            "schema": self.schema,
            "example": self.examples[0] if self.examples else None,
            "examples": list(self.examples),
            "validation": effective_mode or self.validation or DEFAULT_MODE,
        }
        for name in ("service", "method", "source"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        return body


def check_mode(mode: object, what: str = "validation") -> str:
    """A validation mode, or BadRequest."""
    if mode not in MODES:
        raise BadRequest(f"{what} must be one of {list(MODES)}, got {mode!r}")
    return str(mode)


def check_schema(schema: object, what: str = "schema") -> dict[str, Any]:
    """A valid JSON Schema (draft 2020-12) object, or BadRequest saying what is wrong.

    Compiling the validator checks the schema against the draft 2020-12 meta-schema, compiles
    its patterns, and resolves its references (never fetching one); the validator is kept for
    `body_errors`.
    """
    if not isinstance(schema, dict):
        raise BadRequest(f"{what} must be a JSON Schema object")
    _validator(schema, what)
    return schema


def _resource(name: str) -> Any:
    return json.loads(resources.files("tidings.data").joinpath(name).read_text("utf-8"))


@cache
def chainguard_examples() -> list[dict[str, Any]]:
    """Every example event of the Chainguard documents, as parsed from them."""
    examples: list[dict[str, Any]] = _resource("chainguard-examples.json")["examples"]
    return examples


@cache
def builtin_types() -> dict[str, EventType]:
    """The built-in types by name, in the order the documents list them."""
    schemas: dict[str, dict[str, Any]] = _resource("chainguard-schemas.json")["schemas"]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for example in chainguard_examples():
        grouped.setdefault(example["ce_type"], []).append(example)
    types = {}
    for name, examples in grouped.items():
        # The newer document (001) describes the current shape; list it first.
        examples.sort(key=lambda example: example["seed"], reverse=True)
        first = examples[0]
        types[name] = EventType(
            type=name,
            description=f"{first['service']}: {first['method']}",
            service=first["service"],
            method=first["method"],
            source=first["ce_source"],
            schema=schemas.get(name),
            examples=tuple(example["data"] for example in examples),
        )
    return types


def type_from_spec(spec: dict[str, Any], origin: str) -> EventType:
    """An event type from its JSON/YAML description: type, description, schema, example, validation."""
    name = spec.get("type")
    if not isinstance(name, str) or not name or any(c.isspace() for c in name) or len(name) > 256:
        raise BadRequest(f"type must be a non-empty name without spaces, got {name!r}")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise BadRequest(f"{name}: description must be a string")
    schema = None if spec.get("schema") is None else check_schema(spec["schema"], f"{name}: schema")
    example = spec.get("example")
    examples: tuple[dict[str, Any], ...] = ()
    if example is not None:
        if not isinstance(example, dict) or not isinstance(example.get("body"), dict):
            raise BadRequest(
                f"{name}: example must be event data, an object with 'actor' and 'body'"
            )
        if schema is not None:
            errors = body_errors(schema, example["body"])
            if errors:
                raise Unprocessable(
                    f"{name}: the example does not match the schema: {errors[0]['message']}", errors
                )
        examples = (example,)
    mode = spec.get("validation")
    return EventType(
        type=name,
        description=description,
        schema=schema,
        examples=examples,
        validation=None if mode is None else check_mode(mode, f"{name}: validation"),
        origin=origin,
    )


@dataclass(frozen=True, slots=True)
class CatalogFile:
    """The operator's catalog: types for every tenant, and a default validation mode."""

    types: dict[str, EventType] = field(default_factory=dict)
    validation: str | None = None


def load_catalog_file(path: str | Path) -> CatalogFile:
    """Read a catalog file (YAML or JSON): `{"validation": mode?, "types": [{type, ...}, ...]}`."""
    text = Path(path).read_text("utf-8")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"the catalog file {path} is not valid YAML or JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("types", []), list):
        raise ValueError(f"the catalog file {path} must be an object with a list 'types'")
    try:
        _known_keys(document, _FILE_KEYS, "the file")
        types: dict[str, EventType] = {}
        for spec in document.get("types", []):
            if not isinstance(spec, dict):
                raise BadRequest(f"each of 'types' must be a mapping with 'type', got {spec!r}")
            _known_keys(spec, _TYPE_KEYS, f"type {spec.get('type')!r}")
            event_type = type_from_spec(spec, "catalog")
            if event_type.type in types:
                raise BadRequest(f"type {event_type.type!r} is listed twice")
            types[event_type.type] = event_type
        mode = None if document.get("validation") is None else check_mode(document["validation"])
    except (BadRequest, Unprocessable) as exc:
        raise ValueError(f"the catalog file {path}: {exc.message}") from exc
    return CatalogFile(types, mode)


_FILE_KEYS = frozenset({"validation", "types"})
_TYPE_KEYS = frozenset({"type", "description", "schema", "example", "validation"})


def _known_keys(spec: dict[str, Any], known: frozenset[str], what: str) -> None:
    """BadRequest naming the keys of `spec` outside `known` (a misspelt `shema` would leave a
    type without its schema, unnoticed)."""
    unknown = sorted(set(map(str, spec)) - known)
    if unknown:
        raise BadRequest(f"{what} has unknown keys {unknown}; it may hold {sorted(known)}")


# Patterns (`pattern`, `patternProperties`) are matched by Rust's `regex` crate, which runs in
# linear time, so a tenant's schema cannot stall the service with a pattern that backtracks
# (`^(a+)+$`); the price is that look-arounds and back-references are not supported.
_PATTERNS = jsonschema_rs.RegexOptions()
_UNSUPPORTED_PATTERN = (
    "patterns are matched in linear time, without look-arounds or back-references"
    " (or it is not a valid regular expression)"
)
_VALIDATORS_MAX = 1024
# Compiled validators by the `id` of their schema. Each entry holds its schema, so that id is
# not reused while the entry lives; a schema is not changed once it is in an EventType.
_validators: dict[int, tuple[dict[str, Any], jsonschema_rs.Validator]] = {}


def _compile(schema: dict[str, Any], what: str) -> jsonschema_rs.Validator:
    """A draft 2020-12 validator of `schema` (whatever its `$schema`), or BadRequest."""
    try:
        return jsonschema_rs.Draft202012Validator(schema, pattern_options=_PATTERNS, offline=True)
    except jsonschema_rs.ValidationError as exc:
        kind = exc.kind
        if isinstance(kind, jsonschema_rs.ValidationErrorKind.Format) and kind.format == "regex":
            raise BadRequest(
                f"{what}: pattern {exc.instance!r} is not supported: {_UNSUPPORTED_PATTERN}"
            ) from exc
        where = _pointer("", exc.instance_path)
        raise BadRequest(
            f"{what} is not a valid JSON Schema: {where + ': ' if where else ''}{exc.message}"
        ) from exc
    except ValueError as exc:  # a value JSON cannot hold (a YAML date, say)
        raise BadRequest(f"{what} is not a valid JSON Schema: {exc}") from exc


def _validator(schema: dict[str, Any], what: str = "schema") -> jsonschema_rs.Validator:
    """The compiled validator of `schema`, cached."""
    cached = _validators.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    validator = _compile(schema, what)
    if len(_validators) >= _VALIDATORS_MAX:
        _validators.clear()  # tenants' types are read anew as they change: start afresh
    _validators[id(schema)] = (schema, validator)
    return validator


def _pointer(prefix: str, path: Sequence[str | int]) -> str:
    """A JSON pointer: `prefix` followed by `path`, `~` and `/` escaped."""
    return prefix + "".join(f"/{str(part).replace('~', '~0').replace('/', '~1')}" for part in path)


def _message(error: jsonschema_rs.ValidationError) -> str:
    """The error's message, with a long string that breaks a pattern cut short."""
    kind = error.kind
    if isinstance(kind, jsonschema_rs.ValidationErrorKind.Pattern) and isinstance(
        error.instance, str
    ):
        shown = error.instance if len(error.instance) <= 80 else error.instance[:77] + "..."
        return (
            f"{json.dumps(shown, ensure_ascii=False)} does not match"
            f" {json.dumps(kind.pattern, ensure_ascii=False)}"
        )
    return error.message


# Keywords whose value maps names to subschemas: in a schema path, a name follows them.
_NAMED_SUBSCHEMAS = frozenset(
    {"properties", "patternProperties", "dependentSchemas", "$defs", "definitions"}
)


def _false_rule(schema_path: Sequence[str | int]) -> str:
    """The rule a `false` subschema broke: the keyword it is the value of
    (`"additionalProperties": false`), else `false` (`"properties": {"x": false}`)."""
    rule, named = "false", False
    for part in schema_path:
        if isinstance(part, int) or named:  # an index or a name, not a keyword
            rule, named = "false", False
        else:
            rule, named = part, part in _NAMED_SUBSCHEMAS
    return rule


def body_errors(schema: dict[str, Any], body: Any) -> list[dict[str, Any]]:
    """Where `body` breaks `schema`: JSON pointers (within the event), rules and messages."""
    validator = _validator(schema)
    if validator.is_valid(body):
        return []
    errors = []
    for error in sorted(validator.iter_errors(body), key=lambda e: list(e.instance_path)):
        path = list(error.instance_path)
        kind = error.kind
        if isinstance(kind, jsonschema_rs.ValidationErrorKind.Required):
            # Point at the missing member itself, not at the object that lacks it.
            path.append(kind.property)
        if isinstance(kind, jsonschema_rs.ValidationErrorKind.FalseSchema):
            rule = _false_rule(error.schema_path)
        else:
            rule = str(error.schema_path[-1]) if error.schema_path else kind.name
        pointer = _pointer("/data/body", path)
        errors.append(
            {"pointer": pointer, "rule": rule, "message": f"{pointer}: {_message(error)} ({rule})"}
        )
    return errors


class Catalog:
    """The merged catalog of each tenant, cached for `ttl_s`, and the validation it enforces."""

    def __init__(
        self,
        storage: Any,
        catalog_file: CatalogFile | None = None,
        ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.storage = storage
        self.file = catalog_file or CatalogFile()
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, dict[str, EventType], str]] = {}

    def invalidate(self, tenant: str) -> None:
        """Forget a tenant's cached catalog (after it changed)."""
        self._cache.pop(tenant, None)

    async def for_tenant(self, tenant: str) -> tuple[dict[str, EventType], str]:
        """The tenant's types by name (built in, file, own), and its default mode."""
        cached = self._cache.get(tenant)
        if cached is not None and self.clock() - cached[0] < self.ttl_s:
            return cached[1], cached[2]
        types = dict(builtin_types())
        types.update(self.file.types)
        for own in await self.storage.tenant_types(tenant):
            base = types.get(own.type)
            if base is not None:  # a tenant's setting for a built-in or catalog-file type
                types[own.type] = replace(base, validation=own.validation or base.validation)
            else:
                types[own.type] = own
        mode = (
            await self.storage.setting(TENANT_MODE_SETTING + tenant)
            or self.file.validation
            or DEFAULT_MODE
        )
        self._cache[tenant] = (self.clock(), types, mode)
        return types, mode

    async def check(self, events: Sequence[EventInput], batch: bool = False) -> list[EventInput]:
        """Validate events by their types' schemas: refuse (strict), mark (warn) or pass (off)."""
        checked: list[EventInput] = []
        refused: list[dict[str, Any]] = []
        for index, event in enumerate(events):
            types, tenant_mode = await self.for_tenant(groups.root_of(event.group))
            known = types.get(event.type)
            if known is None or known.schema is None:
                checked.append(event)
                continue
            mode = known.validation or tenant_mode
            errors = [] if mode == "off" else body_errors(known.schema, event.data.get("body"))
            if not errors:
                checked.append(event)
            elif mode == "strict":
                refused.extend({"index": index, **error} if batch else error for error in errors)
            else:
                mark = "; ".join(error["message"] for error in errors)[:1000]
                checked.append(
                    replace(event, extensions={**event.extensions, VALIDATION_ERROR: mark})
                )
        if refused:
            first = refused[0]
            where = f"event {first['index']}: " if batch else ""
            raise Unprocessable(
                f"{where}{first['message']}: the body does not match the schema of its type"
                + _more(len(refused) - 1),
                details=refused,
            )
        return checked


def _more(count: int) -> str:
    """How many problems a message leaves unsaid, if any."""
    if count == 0:
        return ""
    return f" (and {count} more problem{'s' if count > 1 else ''})"
