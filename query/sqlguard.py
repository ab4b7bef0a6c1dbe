"""Decides whether a user's SQL is one read-only, harmless statement, before ClickHouse sees it.

Pure: no I/O. This guard is the real defence of POST /api/sql: ClickHouse 18.16's `readonly=1`
still lets some file access through, and chdb runs inside mlscope's own process. The query is
tokenized the way ClickHouse's lexer reads it, so keywords inside string literals do not trip the
guard and text inside comments cannot smuggle anything past it. Where ClickHouse versions differ
(nested /* */ comments in new versions, not in 18.16; $$heredoc$$ strings; backslash escapes in
quoted identifiers; a lone carriage return in a -- comment) the guard refuses rather than guess.

Allowed: one SELECT (also `WITH ... SELECT` and parenthesized unions), SHOW TABLES / DATABASES /
COLUMNS / CREATE (TABLE|VIEW|DATABASE), DESCRIBE / DESC, EXISTS, EXPLAIN; a trailing `;`.
Refused anywhere outside string literals: statement keywords that write or change state
(INSERT, DROP, SET, ...), SETTINGS, FORMAT, INTO OUTFILE, any reference to the `system` or
`information_schema` databases (they expose the server: users, processes, other queries), and
calls of functions that reach files, URLs, processes, other servers or dictionaries (`file(...)`,
`url(...)`, `remote(...)`, chdb's `Python(...)`, ...), whatever their case or quoting; functions
that tell about the machine rather than the data (`hostName()`, `version()`, `getSetting(...)`,
`filesystemAvailable()`, ...); table functions that generate rows of unbounded size
(`generateRandom`); and the tables and views the caller may not read (`hidden_tables`, each with
why: for callers without the admin scope, the physical tables behind the views and dispatch's
views).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from .errors import BadRequest


class RefusedQuery(BadRequest):
    """The query is not a single read-only statement the guard can vouch for."""


class Kind(Enum):
    WORD = "word"  # keyword or bare identifier
    QUOTED = "quoted"  # "identifier" or `identifier`; Token.value is the name it stands for
    STRING = "string"
    NUMBER = "number"
    PUNCT = "punct"


@dataclass(frozen=True)
class Token:
    kind: Kind
    value: str
    start: int
    end: int


ALLOWED_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN"})
# SHOW also lists users, grants, processes and settings: only these forms are harmless.
ALLOWED_SHOW = frozenset({"TABLES", "DATABASES", "COLUMNS", "CREATE"})
ALLOWED_SHOW_CREATE = frozenset({"TABLE", "VIEW", "DATABASE", "TEMPORARY"})

_READ_ONLY = "/api/sql is read-only"
# Keywords refused wherever they stand as a bare word, and why (a column of such a name can
# still be read when quoted: "check"). SYSTEM statements fail the statement check, and the
# word as a database name fails the database check.
REFUSED_KEYWORDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "INSERT", "ALTER", "DROP", "CREATE", "TRUNCATE", "RENAME", "OPTIMIZE", "ATTACH", "DETACH",
            "KILL", "GRANT", "REVOKE", "SET", "USE", "DELETE", "UPDATE", "EXCHANGE", "UNDROP", "BACKUP",
            "RESTORE", "MOVE", "CHECK", "WATCH", "BEGIN", "COMMIT", "ROLLBACK",
        ),
        _READ_ONLY,
    ),
    "SETTINGS": "queries cannot change settings: the server sets the limits",
    "FORMAT": "the API chooses the result format",
    "INTO": "results cannot be written anywhere",
    "OUTFILE": "results cannot be written to files",
    "INFILE": "files cannot be read",
}
# Words that are refused as keywords but are also ordinary functions when called.
KEYWORD_FUNCTIONS = frozenset({"format", "truncate"})

REFUSED_DATABASES = frozenset({"system", "information_schema"})

# Functions (table functions or not) that reach outside the database; names are compared in
# lower case, and a prefix refuses a whole family (icebergS3Cluster, dictGetString, ...).
REFUSED_FUNCTIONS = frozenset({
    "url", "urlcluster", "gcs", "cosn", "oss", "mysql", "postgresql", "mongodb", "redis", "sqlite",
    "jdbc", "odbc", "bigquery", "ytsaurus", "arrowflight", "arrowstream", "python", "eval", "input",
    "merge", "loop", "catboostpool", "catboostevaluate", "modelevaluate", "shardbyhash", "fuzzjson",
    "fuzzquery", "viewexplain", "viewifpermitted", "sqlstandardvalues",
    # One row of random nested arrays can take gigabytes before any limit sees it.
    "generaterandom", "generaterandomstructure",
    # Writes to the server's log.
    "logtrace",
})
# Functions that reveal the machine, the server's configuration or other sessions (host name,
# kernel and build, data path through settings, disks, users, query ids), not mlscope's data.
ENVIRONMENT_FUNCTIONS = frozenset({
    "hostname", "fqdn", "version", "revision", "buildid", "uptime", "serveruuid", "getoskernelversion",
    "getsetting", "getsettingordefault", "getserversetting", "getmergetreesetting", "getmacro",
    "getserverport", "tcpport", "displayname", "currentuser", "user", "current_user", "sessionuser",
    "session_user", "currentprofiles", "currentroles", "enabledroles", "defaultroles", "queryid",
    "initialqueryid", "query_id", "initial_query_id", "initialquerystarttime", "connectionid",
    "connection_id", "getclienthttpheader", "zookeepersessionuptime", "shardnum", "shardcount",
    "filesystemavailable", "filesystemcapacity", "filesystemfree", "filesystemunreserved",
    "currentschemas", "current_schemas", "gethttpheader",
})
REFUSED_FUNCTION_PREFIXES = (
    "file", "remote", "cluster", "s3", "hdfs", "azure", "executable", "dict", "iceberg", "deltalake",
    "hudi", "paimon", "hive", "mergetree", "timeseries", "prometheus",
)
# Table functions that only generate or reshape data; every table function an engine lists must
# be here or refused (a test checks both backends' system.table_functions).
SAFE_TABLE_FUNCTIONS = frozenset({
    "numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateseries",
    "values", "null", "view", "primes", "format",
})


def is_refused_function(name: str) -> bool:
    lowered = name.lower()
    return lowered in REFUSED_FUNCTIONS or lowered.startswith(REFUSED_FUNCTION_PREFIXES)


# --- tokenizer --------------------------------------------------------------------------------

_WHITESPACE = " \t\n\r\f\v"
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"0[xX][0-9A-Fa-f]+|0[bB][01]+|[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9]+)?")
_PUNCT = frozenset("()[]{},.;+-*/%=<>!|?:")


def _refuse(message: str, offset: int) -> RefusedQuery:
    return RefusedQuery(f"{message} (at offset {offset})")


def _quoted_end(text: str, start: int, quote: str) -> int:
    """The index just past the closing quote of a literal opened at `start`; a doubled quote
    and (in strings) a backslash escape do not close it."""
    pos = start + 1
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            pos += 2
        elif char == quote:
            if text.startswith(quote, pos + 1):
                pos += 2
            else:
                return pos + 1
        else:
            pos += 1
    raise _refuse(f"unterminated {quote}...{quote}", start)


def _skip_comment(text: str, pos: int) -> int | None:
    """The index after a comment starting at `pos`, or None if none starts there."""
    if text.startswith("--", pos) or text.startswith(("# ", "#!"), pos):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        # ClickHouse ends a line comment at \n only; anything else that could end a line is
        # ambiguous, so the guard refuses it (a CRLF line end is fine).
        body = text[pos:end].removesuffix("\r") if end < len(text) else text[pos:end]
        if "\r" in body:
            raise _refuse("a carriage return inside a comment", pos + body.index("\r"))
        return end
    if text.startswith("/*", pos):
        end = text.find("*/", pos + 2)
        if end < 0:
            raise _refuse("unterminated /* comment", pos)
        if "/*" in text[pos + 2 : end]:
            raise _refuse("nested /* comments are read differently by ClickHouse versions", pos)
        return end + 2
    return None


def tokenize(text: str) -> list[Token]:
    """Splits `text` into tokens, dropping whitespace and comments; refuses what it cannot read
    exactly as ClickHouse would."""
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in _WHITESPACE:
            pos += 1
            continue
        comment_end = _skip_comment(text, pos)
        if comment_end is not None:
            pos = comment_end
            continue
        if char == "'":
            end = _quoted_end(text, pos, char)
            tokens.append(Token(Kind.STRING, text[pos:end], pos, end))
        elif char in "\"`":
            end = _quoted_end(text, pos, char)
            body = text[pos + 1 : end - 1]
            if "\\" in body:
                # ClickHouse decodes escapes in identifiers: "fi\x6ce" is file.
                raise _refuse("a backslash inside a quoted identifier", pos)
            tokens.append(Token(Kind.QUOTED, body.replace(char * 2, char), pos, end))
        elif match := _WORD.match(text, pos):
            end = match.end()
            tokens.append(Token(Kind.WORD, match.group(), pos, end))
        elif match := _NUMBER.match(text, pos):
            end = match.end()
            if end < len(text) and (text[end].isalnum() or text[end] == "_"):
                raise _refuse("a name cannot start with a digit", pos)
            tokens.append(Token(Kind.NUMBER, match.group(), pos, end))
        elif char in _PUNCT:
            end = pos + 1
            tokens.append(Token(Kind.PUNCT, char, pos, end))
        else:
            raise _refuse(f"unexpected character {char!r} outside a string literal", pos)
        pos = end
    return tokens


# --- the rules --------------------------------------------------------------------------------


def _is_name(token: Token) -> bool:
    return token.kind in (Kind.WORD, Kind.QUOTED)


def _statement_prefix(tokens: list[Token]) -> int:
    """Checks the statement type; returns how many leading tokens it consumed (those may be
    keywords the later scan refuses, like CREATE in SHOW CREATE TABLE)."""
    index = 0
    while index < len(tokens) and tokens[index].value == "(" and tokens[index].kind is Kind.PUNCT:
        index += 1
    first = tokens[index] if index < len(tokens) else None
    if first is None or first.kind is not Kind.WORD or first.value.upper() not in ALLOWED_STATEMENTS:
        shown = first.value if first else "nothing"
        raise _refuse(
            f"only read-only statements are allowed (SELECT, WITH ... SELECT, SHOW, DESCRIBE, EXISTS, "
            f"EXPLAIN), not {shown}",
            first.start if first else 0,
        )
    if first.value.upper() != "SHOW":
        return index + 1
    words = [token.value.upper() if token.kind is Kind.WORD else "" for token in tokens[index + 1 : index + 3]]
    if not words or words[0] not in ALLOWED_SHOW:
        raise _refuse(f"only SHOW {' / '.join(sorted(ALLOWED_SHOW))} are allowed", first.start)
    if words[0] != "CREATE":
        return index + 2
    if len(words) < 2 or words[1] not in ALLOWED_SHOW_CREATE:
        raise _refuse(f"only SHOW CREATE {' / '.join(sorted(ALLOWED_SHOW_CREATE))} are allowed", first.start)
    return index + 3


def _check_token(
    token: Token, following: Token | None, previous: Token | None, hidden_tables: Mapping[str, str]
) -> None:
    called = following is not None and following.kind is Kind.PUNCT and following.value == "("
    if token.kind is Kind.WORD:
        keyword = token.value.upper()
        if keyword in REFUSED_KEYWORDS and not (called and token.value.lower() in KEYWORD_FUNCTIONS):
            raise _refuse(f"{keyword} is not allowed: {REFUSED_KEYWORDS[keyword]}", token.start)
    if not _is_name(token):
        return
    qualified = previous is not None and previous.kind is Kind.PUNCT and previous.value == "."
    if token.value.lower() in REFUSED_DATABASES and not qualified:
        raise _refuse(f"the {token.value} database is not readable through /api/sql", token.start)
    if called and is_refused_function(token.value):
        raise _refuse(
            f"function {token.value}() is not allowed: it reaches files, URLs, processes, "
            "dictionaries or other servers, or generates rows of unbounded size",
            token.start,
        )
    if called and token.value.lower() in ENVIRONMENT_FUNCTIONS:
        raise _refuse(f"function {token.value}() is not allowed: it tells about the server, not the data", token.start)
    if token.value.lower() in hidden_tables and not called:
        raise _refuse(f"{token.value} is {hidden_tables[token.value.lower()]}", token.start)


def check_query(text: str, hidden_tables: Mapping[str, str] = MappingProxyType({})) -> str:
    """Returns the statement to run (the text from its first to its last token: no trailing
    comment or `;`, so settings appended after it cannot end up inside a comment), or raises
    RefusedQuery saying why it is not allowed. A name in `hidden_tables` (name -> what it is, for
    the refusal: "<name> is <that>") is refused wherever it stands, in any case or quoting (a
    column of that name too: the guard does not resolve names, and no view has such a column)."""
    hidden_tables = {name.lower(): why for name, why in hidden_tables.items()}
    tokens = tokenize(text)
    if not tokens:
        raise RefusedQuery("the query is empty")
    semicolons = [i for i, token in enumerate(tokens) if token.kind is Kind.PUNCT and token.value == ";"]
    if semicolons and any(tokens[i].value != ";" for i in range(semicolons[0], len(tokens))):
        raise _refuse("only one statement is allowed", tokens[semicolons[0]].start)
    statement = tokens[: semicolons[0]] if semicolons else tokens
    if not statement:
        raise RefusedQuery("the query is empty")
    for index in range(_statement_prefix(statement), len(statement)):
        following = statement[index + 1] if index + 1 < len(statement) else None
        previous = statement[index - 1] if index else None
        _check_token(statement[index], following, previous, hidden_tables)
    return text[statement[0].start : statement[-1].end]
