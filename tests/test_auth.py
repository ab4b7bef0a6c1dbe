"""mlscope.auth's pure core (the token file, bearer parsing, scope checks, route marks) and the
CLI's refusals: a non-loopback --host without --auth, a bad token file. No server is started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlscope.auth import (
    NO_AUTH, BadTokenFile, Scope, Verdict, bearer_token, load_token_file, parse_token_file, public, requires,
    route_scope,
)
from mlscope.cli.main import main
from mlscope.client import ServiceClient
from mlscope.conventions import ENV_AUTH_FILE, ENV_OTLP_HEADERS, ENV_TOKEN, otlp_headers, service_token

TOKENS = """
tokens:
  - {token: "ingest-1", scopes: [ingest]}
  - {token: "reader-1", scopes: [read]}
  - {token: "predictor-1", scopes: [predictor, ingest]}
  - {token: "admin-1", scopes: [admin]}
"""
POLICY = parse_token_file(TOKENS, "tokens.yaml")


def test_each_scope_is_granted_to_its_tokens_and_admin_to_every_scope() -> None:
    def verdicts(scope: Scope) -> dict[str, Verdict]:
        return {token: POLICY.check(f"Bearer {token}", scope) for token in ("ingest-1", "reader-1", "predictor-1", "admin-1")}

    allowed, forbidden = Verdict.ALLOWED, Verdict.FORBIDDEN
    assert verdicts(Scope.INGEST) == {"ingest-1": allowed, "reader-1": forbidden, "predictor-1": allowed, "admin-1": allowed}
    assert verdicts(Scope.READ) == {"ingest-1": forbidden, "reader-1": allowed, "predictor-1": forbidden, "admin-1": allowed}
    assert verdicts(Scope.PREDICTOR) == {"ingest-1": forbidden, "reader-1": forbidden, "predictor-1": allowed, "admin-1": allowed}
    assert verdicts(Scope.ADMIN) == {"ingest-1": forbidden, "reader-1": forbidden, "predictor-1": forbidden, "admin-1": allowed}


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Basic reader-1", "reader-1",
                                           "Bearer reader-2", "Bearer reader-", "Bearer reader-1x"])
def test_no_token_another_scheme_or_an_unknown_token_is_unauthenticated(authorization: str | None) -> None:
    assert POLICY.check(authorization, Scope.READ) is Verdict.UNAUTHENTICATED


def test_the_scheme_is_case_insensitive_and_no_auth_allows_everything() -> None:
    assert POLICY.check("bearer reader-1", Scope.READ) is Verdict.ALLOWED
    assert bearer_token("BEARER  abc ") == b"abc"
    assert NO_AUTH.check(None, Scope.ADMIN) is Verdict.ALLOWED


@pytest.mark.parametrize("text, fault", [
    ("tokens: [", "not valid YAML"),
    ("{}", "at least one entry"),
    ("tokens: []", "at least one entry"),
    ("tokens: [{token: a, scopes: [write]}]", "unknown scope"),
    ("tokens: [{token: '', scopes: [read]}]", "non-empty string"),
    ("tokens: [{token: 'a b', scopes: [read]}]", "without blanks"),
    ("tokens: [{token: 12, scopes: [read]}]", "non-empty string"),
    ("tokens: [{token: a, scopes: []}]", "non-empty list"),
    ("tokens: [{token: a, scope: [read]}]", "exactly the keys"),
    ("tokens: [{token: a, scopes: [read]}, {token: a, scopes: [admin]}]", "listed twice"),
])
def test_a_malformed_token_file_is_refused_in_one_line_naming_the_file(text: str, fault: str) -> None:
    with pytest.raises(BadTokenFile) as refused:
        parse_token_file(text, "/etc/tokens.yaml")
    message = str(refused.value)
    assert message.startswith("/etc/tokens.yaml: ") and fault in message and "\n" not in message


def test_a_token_file_readable_by_others_loads_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(TOKENS)
    os.chmod(path, 0o600)
    assert load_token_file(str(path))[1] is None
    os.chmod(path, 0o644)
    policy, warning = load_token_file(str(path))
    assert policy == POLICY and "readable by other users" in warning


def test_routes_declare_their_scope_and_an_undeclared_route_needs_admin() -> None:
    @requires(Scope.READ)
    async def reads() -> None: ...

    @public
    async def health() -> None: ...

    async def forgotten() -> None: ...

    assert (route_scope(reads), route_scope(health), route_scope(forgotten)) == (Scope.READ, None, Scope.ADMIN)


def test_clients_take_their_tokens_from_the_environment() -> None:
    assert otlp_headers({ENV_OTLP_HEADERS: "Authorization=Bearer%20abc, x-team = ml"}) == {
        "authorization": "Bearer abc", "x-team": "ml"}
    assert service_token({ENV_TOKEN: "abc"}) == "abc" and service_token({}) is None
    assert ServiceClient("http://x", token="abc")._auth_headers == {"Authorization": "Bearer abc"}


# --- the CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "collector", "query"])
def test_a_non_loopback_host_without_auth_exits_2_in_one_line(command: str, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_AUTH_FILE, raising=False)
    assert main([command, "--host", "0.0.0.0", "--store", "embedded:///nonexistent/never-opened"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "refusing to serve 0.0.0.0 without tokens" in error and "--insecure" in error


def test_a_bad_token_file_exits_2_before_the_store_is_opened(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("tokens: [{token: a, scopes: [everything]}]")
    monkeypatch.setenv(ENV_AUTH_FILE, str(path))
    store_dir = tmp_path / "store"
    assert main(["serve", "--host", "0.0.0.0", "--store", f"embedded://{store_dir}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown scope" in error and not store_dir.exists()
