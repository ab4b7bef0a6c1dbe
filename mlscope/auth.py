"""Bearer tokens with scopes: the token file (`--auth FILE`) and the check every server applies.

    policy = load_token_file("/etc/mlscope/tokens.yaml")     # BadTokenFile: exit 2, one line
    policy.check(request.headers.get("Authorization"), Scope.READ)   # -> Verdict

The file is YAML, `tokens: [{token: "...", scopes: [ingest, read, admin]}, ...]`. Scopes:
`ingest` the OTLP paths; `read` the query API, the viewer's data and SQL on the public tables;
`predictor` what a predictor does (its heartbeat, pulling jobs, changing their state); `admin`
everything, jobs and the predictor list included. `admin` implies every other scope, so that one
operator token does all.

Shared by the collector, the query service and dispatch, so it sits in the kernel package beside
the conventions: pure (parsing and comparisons; only `load_token_file` reads a file), importing
nothing of mlscope's components. Routes declare what they need with `requires` / `public`; a
route that declares nothing needs `admin` (closed unless said otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import yaml


class Scope(Enum):
    INGEST = "ingest"
    READ = "read"
    PREDICTOR = "predictor"
    ADMIN = "admin"


class Verdict(Enum):
    ALLOWED = "allowed"
    UNAUTHENTICATED = "unauthenticated"  # no token, or not one of the file's: HTTP 401
    FORBIDDEN = "forbidden"  # a valid token without the scope: HTTP 403


class BadTokenFile(ValueError):
    """The token file cannot be used; the message is one line naming the file and the fault."""


BEARER = "bearer"
"""The authorization scheme (compared case-insensitively, as RFC 7235 says)."""


@dataclass(frozen=True)
class Grant:
    token: bytes
    scopes: frozenset[Scope]

    def allows(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


@dataclass(frozen=True)
class AuthPolicy:
    """Who may do what. `enforced` False (no token file) allows every request: the CLI only
    allows that on loopback addresses or with --insecure."""

    grants: tuple[Grant, ...]
    enforced: bool = True

    def check(self, authorization: str | None, scope: Scope) -> Verdict:
        """The verdict on a request carrying `authorization` (the header's or gRPC metadata's
        value, None when absent) for an action that needs `scope`."""
        if not self.enforced:
            return Verdict.ALLOWED
        grant = self._grant_for(bearer_token(authorization))
        if grant is None:
            return Verdict.UNAUTHENTICATED
        return Verdict.ALLOWED if grant.allows(scope) else Verdict.FORBIDDEN

    def caller(self, authorization: str | None) -> Caller:
        """Who sent a request `check` allowed. With auth off every request is the same anonymous
        admin, as before tokens (the CLI allows that on loopback or with --insecure only)."""
        if not self.enforced:
            return Caller(owner="", admin=True)
        grant = self._grant_for(bearer_token(authorization))
        if grant is None:
            return Caller(owner="", admin=False)
        return Caller(owner=token_fingerprint(grant.token), admin=Scope.ADMIN in grant.scopes)

    def _grant_for(self, token: bytes | None) -> Grant | None:
        if token is None:
            return None
        found = None
        # Every grant is compared, each in constant time: the answer's timing says nothing about
        # how much of a token matched, nor which entry did.
        for grant in self.grants:
            if hmac.compare_digest(grant.token, token):
                found = grant
        return found


NO_AUTH = AuthPolicy(grants=(), enforced=False)


@dataclass(frozen=True)
class Caller:
    """Who sent a request, for the checks a scope cannot express (a predictor token acts as the
    predictors it registered, no other). `owner` is a fingerprint of the token, safe to store:
    it names the token without revealing it."""

    owner: str
    admin: bool  # acts for every owner: an `admin` token, or any request when auth is off


def token_fingerprint(token: bytes) -> str:
    """32 hex digits naming a token; a SHA-256 prefix, so the stored value cannot be replayed."""
    return hashlib.sha256(token).hexdigest()[:32]


def bearer_token(authorization: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` value; None for another scheme or none."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER or not token:
        return None
    return token.encode("utf-8", "surrogateescape")


def parse_token_file(text: str, source: str) -> AuthPolicy:
    """The policy a token file's text describes; BadTokenFile (naming `source`) for anything
    but a list of entries each with a non-empty token and known scopes."""

    def bad(reason: str) -> BadTokenFile:
        return BadTokenFile(f"{source}: {reason}")

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise bad(f"not valid YAML ({' '.join(str(exc).split())[:200]})") from exc
    entries = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise bad('expected "tokens: [{token: ..., scopes: [...]}, ...]" with at least one entry')
    known = ", ".join(scope.value for scope in Scope)
    grants = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or set(entry) - {"token", "scopes"}:
            raise bad(f"token entry {number}: expected exactly the keys token and scopes")
        token, scopes = entry.get("token"), entry.get("scopes")
        if not isinstance(token, str) or not token.strip() or token != token.strip() or " " in token:
            raise bad(f"token entry {number}: the token must be a non-empty string without blanks")
        if not isinstance(scopes, list) or not scopes:
            raise bad(f"token entry {number}: scopes must be a non-empty list of {known}")
        try:
            grants.append(Grant(token.encode("utf-8", "surrogateescape"), frozenset(Scope(str(s)) for s in scopes)))
        except ValueError:
            raise bad(f"token entry {number}: unknown scope in {scopes!r}; expected {known}") from None
    if len({grant.token for grant in grants}) != len(grants):
        raise bad("the same token is listed twice")
    return AuthPolicy(tuple(grants))


def load_token_file(path: str) -> tuple[AuthPolicy, str | None]:
    """The policy in the file at `path`, and a warning when others than its owner may read it
    (None otherwise); BadTokenFile when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
            mode = os.fstat(file.fileno()).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise BadTokenFile(f"{path}: cannot read the token file ({exc})") from exc
    warning = None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warning = f"{path}: the token file is readable by other users; chmod 600 it"
    return parse_token_file(text, path), warning


Handler = TypeVar("Handler", bound=Callable[..., Any])
_SCOPE_ATTRIBUTE = "mlscope_scope"
_PUBLIC = "public"


def requires(scope: Scope) -> Callable[[Handler], Handler]:
    """Marks a route handler as needing `scope`."""

    def mark(handler: Handler) -> Handler:
        setattr(handler, _SCOPE_ATTRIBUTE, scope)
        return handler

    return mark


def public(handler: Handler) -> Handler:
    """Marks a route handler as open to anyone (health, the viewer's static files)."""
    setattr(handler, _SCOPE_ATTRIBUTE, _PUBLIC)
    return handler


def route_scope(handler: Callable[..., Any]) -> Scope | None:
    """The scope a handler needs; None when it is public; `admin` when it declares nothing."""
    declared = getattr(handler, _SCOPE_ATTRIBUTE, Scope.ADMIN)
    return None if declared == _PUBLIC else declared
