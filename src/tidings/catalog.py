"""The catalog of event types: each with a description and examples.

The 46 Chainguard types are built in, from every example of the two Chainguard
documents (`data/chainguard-examples.json`); 16 types appear in both, so a
type may carry several examples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class EventType:
    """A known event type."""

    type: str
    description: str
    service: str
    method: str
    source: str
    examples: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form served by `GET /v1/types`."""
        return {
            "type": self.type,
            "description": self.description,
            "service": self.service,
            "method": self.method,
            "source": self.source,
            "example": self.examples[0],
            "examples": list(self.examples),
        }


@cache
def chainguard_examples() -> list[dict[str, Any]]:
    """Every example event of the Chainguard documents, as parsed from them."""
    text = resources.files("tidings.data").joinpath("chainguard-examples.json").read_text("utf-8")
    examples: list[dict[str, Any]] = json.loads(text)["examples"]
    return examples


@cache
def builtin_types() -> dict[str, EventType]:
    """The built-in types by name, in the order the documents list them."""
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
            examples=tuple(example["data"] for example in examples),
        )
    return types
