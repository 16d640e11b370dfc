"""API tokens: 256 random bits, shown once, stored as a SHA-256 hash; roles and their reach."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tidings import groups, wire
from tidings.errors import BadRequest, Forbidden
from tidings.model import ROLES, Token

PREFIX = "tdg_"
# What each role includes besides itself.
_INCLUDES = {
    "owner": frozenset(ROLES),
    "editor": frozenset({"editor", "viewer"}),
    "producer": frozenset({"producer"}),
    "viewer": frozenset({"viewer"}),
}


def new_secret() -> str:
    """A new token secret: a prefix (for secret scanners) and 256 random bits."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """The SHA-256 hex digest under which a secret is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token_id() -> str:
    """A public identifier for a token (not a secret)."""
    return "tok_" + secrets.token_hex(8)


def parse_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Validate role names; keep their canonical order."""
    given = set(roles)
    unknown = sorted(given - set(ROLES))
    if unknown:
        raise BadRequest(f"unknown roles {unknown}; roles are {list(ROLES)}")
    if not given:
        raise BadRequest(f"at least one role is required; roles are {list(ROLES)}")
    return tuple(role for role in ROLES if role in given)


def effective_roles(roles: Iterable[str]) -> frozenset[str]:
    """Every role that `roles` include."""
    result: set[str] = set()
    for role in roles:
        result |= _INCLUDES[role]
    return frozenset(result)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a token's group, its roles and the subject it acts as."""

    token_id: str
    group: str
    roles: frozenset[str]
    subject: str | None = None
    expires_ns: int | None = None

    @classmethod
    def of(cls, token: Token) -> Principal:
        """The principal a stored token stands for."""
        return cls(
            token.id, token.group, effective_roles(token.roles), token.subject, token.expires_ns
        )

    def sees(self, group: str) -> bool:
        """Whether `group` lies in this principal's subtree."""
        return groups.contains(self.group, group)

    def require(self, role: str, group: str | None = None) -> None:
        """Raise Forbidden unless the principal holds `role` (over `group`, if given)."""
        if role not in self.roles:
            raise Forbidden(f"this needs the {role!r} role; the token has {sorted(self.roles)}")
        if group is not None and not self.sees(group):
            raise Forbidden(f"group {group!r} is outside the token's group {self.group!r}")


TOKEN_CACHE_S = 1.0
_CACHE_MAX = 10_000


class TokenCache:
    """Tokens by the hash of their secret, each kept for `ttl_s` (unknown ones are not kept).

    Every request needs its token's group and roles; looking the token up in the database
    each time cost an ingest about a tenth of its time. A token deleted through this
    process stops at once (the deletion empties the cache); one deleted through another
    process of the same database stops within `ttl_s`. Expiry is checked on every request.
    """

    def __init__(self, ttl_s: float = TOKEN_CACHE_S, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.clock = clock
        self._tokens: dict[str, tuple[float, Token]] = {}

    def get(self, secret_hash: str) -> Token | None:
        """The token kept under `secret_hash`, if it is still fresh."""
        kept = self._tokens.get(secret_hash)
        if kept is None:
            return None
        if self.clock() - kept[0] >= self.ttl_s:
            del self._tokens[secret_hash]
            return None
        return kept[1]

    def put(self, secret_hash: str, token: Token) -> None:
        """Keep a token found in the database."""
        if len(self._tokens) >= _CACHE_MAX:
            self._tokens.clear()
        self._tokens[secret_hash] = (self.clock(), token)

    def clear(self) -> None:
        """Forget every token (after one was deleted)."""
        self._tokens.clear()


def new_token(
    group: str,
    roles: list[str],
    name: str | None,
    subject: str | None,
    expires_ns: int | None,
    now_ns: int,
) -> tuple[Token, str]:
    """A new token record and its secret (which is not stored). The subject is the actor of
    the audit events the token causes, and is held to an actor's rules."""
    fault = None if not subject else wire.actor_subject_fault(subject)
    if fault is not None:
        raise BadRequest(f"subject {fault}: it is the actor of the audit events the token causes")
    secret = new_secret()
    token = Token(
        id=new_token_id(),
        group=group,
        roles=parse_roles(roles),
        name=name,
        subject=subject,
        expires_ns=expires_ns,
        created_ns=now_ns,
        secret_hash=hash_secret(secret),
    )
    return token, secret
