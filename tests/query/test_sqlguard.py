"""The SQL guard, table-driven: what passes (and the statement it hands on), what is refused and
the reason given. Pure: the engines' own view of the same queries is in test_api.py."""

from __future__ import annotations

import pytest

from mlscope.query.sqlguard import (
    SAFE_TABLE_FUNCTIONS,
    Kind,
    RefusedQuery,
    check_query,
    is_refused_function,
    tokenize,
)

# Queries handed on exactly as written.
ALLOWED: list[str] = [
    "SELECT 1",
    "WITH 2 AS x SELECT x",
    "(SELECT 1) UNION ALL (SELECT 2)",
    "SELECT 'DROP TABLE spans; file(1)'",
    "SELECT 'it''s', 'a\\'b -- not a comment', 'x\\\\'",
    'SELECT "drop", `insert` FROM spans',
    "SELECT 1 -- file('/etc/passwd') in a comment\n, 2",
    "SELECT 1 -- windows line end\r\n, 2",
    "SELECT format('{} ms', 1), truncate(1.5)",
    "SELECT uniqExactMerge(span_count) FROM trace_index GROUP BY trace_id",
    "SELECT attr_values[indexOf(attr_keys, 'k')] FROM spans",
    "SELECT x -> x + 1, 0x1F, 1.5e-3, 2e10, .5",
    "SELECT t.system FROM spans AS t",
    "SELECT * FROM numbers(3)",
    "SHOW TABLES",
    "show create table spans",
    "DESCRIBE spans",
    "DESC TABLE spans",
    "EXISTS TABLE spans",
    "EXPLAIN SELECT 1",
]

# Queries handed on without their trailing comments and semicolons.
TRIMMED: list[tuple[str, str]] = [
    ("  select count() from spans ;  ", "select count() from spans"),
    ("SELECT 1;;", "SELECT 1"),
    ("SELECT 1 -- a trailing comment", "SELECT 1"),
    ("SELECT 1 /* trailing */", "SELECT 1"),
    ("SELECT 1 /* url('http://x') */", "SELECT 1"),
    ("SELECT 1 # a hash comment\n", "SELECT 1"),
]


@pytest.mark.parametrize("query", ALLOWED)
def test_allowed(query: str) -> None:
    assert check_query(query) == query


@pytest.mark.parametrize("query, statement", TRIMMED)
def test_allowed_and_trimmed(query: str, statement: str) -> None:
    assert check_query(query) == statement


REFUSED: list[tuple[str, str]] = [
    # (query, part of the reason)
    ("", "empty"),
    ("  -- only a comment", "empty"),
    (";", "empty"),
    ("SELECT 1; DROP TABLE spans", "only one statement"),
    ("SELECT 1; SELECT 2", "only one statement"),
    ("INSERT INTO span_rows VALUES (1)", "not INSERT"),
    ("insert into span_rows select * from span_rows", "not insert"),
    ("DROP TABLE spans", "not DROP"),
    ("ALTER TABLE span_rows DELETE WHERE 1", "not ALTER"),
    ("CREATE TABLE t (x UInt8) ENGINE = Memory", "not CREATE"),
    ("TRUNCATE TABLE span_rows", "not TRUNCATE"),
    ("RENAME TABLE spans TO s", "not RENAME"),
    ("OPTIMIZE TABLE span_rows FINAL", "not OPTIMIZE"),
    ("ATTACH TABLE x", "not ATTACH"),
    ("DETACH TABLE spans", "not DETACH"),
    ("KILL QUERY WHERE 1", "not KILL"),
    ("SYSTEM SHUTDOWN", "not SYSTEM"),
    ("GRANT ALL ON *.* TO default", "not GRANT"),
    ("SET readonly = 0", "not SET"),
    ("USE system", "not USE"),
    ("/* SELECT */ DROP TABLE spans", "not DROP"),
    ("SELECT * FROM spans SETTINGS readonly = 0", "SETTINGS is not allowed"),
    ("SELECT 1 SETTINGS max_execution_time = 100000", "SETTINGS is not allowed"),
    ("SELECT 1 FORMAT TSV", "FORMAT is not allowed"),
    ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO is not allowed"),
    ("WITH 1 AS x INSERT INTO t SELECT x", "INSERT is not allowed"),
    ("EXPLAIN AST DROP TABLE spans", "DROP is not allowed"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "function file() is not allowed"),
    ("SELECT * FROM FiLe ('/etc/passwd')", "function FiLe() is not allowed"),
    ("SELECT file /* */ ('/etc/passwd')", "function file() is not allowed"),
    ('SELECT "file"(\'/etc/passwd\')', "function file() is not allowed"),
    ("SELECT `FILE`('/etc/passwd')", "function FILE() is not allowed"),
    ('SELECT "fi\\x6ce"(\'/etc/passwd\')', "backslash inside a quoted identifier"),
    ("SELECT * FROM url('http://example.com/', CSV)", "function url() is not allowed"),
    ("SELECT * FROM remote('10.0.0.1', system.one)", "function remote() is not allowed"),
    ("SELECT * FROM remoteSecure('h', db.t)", "remoteSecure() is not allowed"),
    ("SELECT * FROM cluster('c', db.t)", "cluster() is not allowed"),
    ("SELECT * FROM clusterAllReplicas('c', db.t)", "clusterAllReplicas() is not allowed"),
    ("SELECT * FROM s3('https://b/x.csv')", "s3() is not allowed"),
    ("SELECT * FROM s3Cluster('c', 'https://b/x.csv')", "s3Cluster() is not allowed"),
    ("SELECT * FROM gcs('https://b/x.csv')", "gcs() is not allowed"),
    ("SELECT * FROM hdfs('hdfs://h/x', CSV)", "hdfs() is not allowed"),
    ("SELECT * FROM azureBlobStorage('x')", "azureBlobStorage() is not allowed"),
    ("SELECT * FROM mysql('h:3306', 'db', 't', 'u', 'p')", "mysql() is not allowed"),
    ("SELECT * FROM postgresql('h', 'db', 't', 'u', 'p')", "postgresql() is not allowed"),
    ("SELECT * FROM mongodb('h', 'db', 'c', 'u', 'p', 'x String')", "mongodb() is not allowed"),
    ("SELECT * FROM redis('h', 'k', 'k String')", "redis() is not allowed"),
    ("SELECT * FROM sqlite('/tmp/db', 't')", "sqlite() is not allowed"),
    ("SELECT * FROM jdbc('x', 't')", "jdbc() is not allowed"),
    ("SELECT * FROM odbc('x', 't')", "odbc() is not allowed"),
    ("SELECT * FROM executable('rm -rf /', CSV, 'x String')", "executable() is not allowed"),
    ("SELECT * FROM Python(self)", "Python() is not allowed"),
    ("SELECT * FROM input('x String')", "input() is not allowed"),
    ("SELECT * FROM fileCluster('c', '/etc/*')", "fileCluster() is not allowed"),
    ("SELECT * FROM urlCluster('c', 'http://x')", "urlCluster() is not allowed"),
    ("SELECT * FROM icebergS3('x')", "icebergS3() is not allowed"),
    ("SELECT * FROM deltaLake('x')", "deltaLake() is not allowed"),
    ("SELECT * FROM hudi('x')", "hudi() is not allowed"),
    ("SELECT * FROM merge(currentDatabase(), '.*')", "merge() is not allowed"),
    ("SELECT * FROM dictionary('d')", "dictionary() is not allowed"),
    ("SELECT dictGet('d', 'a', 1)", "dictGet() is not allowed"),
    ("SELECT * FROM system.settings", "system database is not readable"),
    ('SELECT * FROM "system".users', "system database is not readable"),
    ("SELECT * FROM INFORMATION_SCHEMA.TABLES", "INFORMATION_SCHEMA database is not readable"),
    ("SHOW TABLES FROM system", "system database is not readable"),
    ("SHOW USERS", "only SHOW"),
    ("SHOW GRANTS", "only SHOW"),
    ("SHOW PROCESSLIST", "only SHOW"),
    ("SHOW CREATE USER default", "only SHOW CREATE"),
    ("SHOW", "only SHOW"),
    # Text the guard cannot read the way every ClickHouse version does:
    ("SELECT 1 /* /* */ , file('/etc/passwd') */", "nested /* comments"),
    ("SELECT $$'$$, file('/etc/passwd'), $$'$$", "unexpected character '$'"),
    ("SELECT 1 -- x\r, file('/etc/passwd')", "carriage return inside a comment"),
    ("SELECT 1 #x", "unexpected character '#'"),
    ("SELECT 1file('/etc/passwd')", "cannot start with a digit"),
    ("SELECT 'unterminated", "unterminated '"),
    ('SELECT "unterminated', 'unterminated "'),
    ("SELECT 1 /* unterminated", "unterminated /*"),
    ("SELECT 1 AS привет", "unexpected character"),
    ("SELECT @x", "unexpected character '@'"),
    ("FROM spans SELECT name", "not FROM"),
    ("VALUES (1)", "not VALUES"),
]


@pytest.mark.parametrize("query, reason", REFUSED)
def test_refused(query: str, reason: str) -> None:
    with pytest.raises(RefusedQuery) as refused:
        check_query(query)
    assert reason in str(refused.value)


def test_every_refusal_says_where() -> None:
    with pytest.raises(RefusedQuery, match=r"at offset 20"):
        check_query("SELECT 1, 2, 3 FROM file('x')")


def test_tokens_keep_strings_and_quoted_names_whole() -> None:
    tokens = tokenize("SELECT 'a -- b' AS \"we\"\"ird\", x/*c*/FROM `t`")
    assert [(t.kind, t.value) for t in tokens] == [
        (Kind.WORD, "SELECT"), (Kind.STRING, "'a -- b'"), (Kind.WORD, "AS"), (Kind.QUOTED, 'we"ird'),
        (Kind.PUNCT, ","), (Kind.WORD, "x"), (Kind.WORD, "FROM"), (Kind.QUOTED, "t"),
    ]


@pytest.mark.parametrize("name", ["numbers", "values", "view", "format", "count", "uniqExactMerge"])
def test_harmless_functions_pass(name: str) -> None:
    assert not is_refused_function(name)


def test_safe_and_refused_table_functions_do_not_overlap() -> None:
    assert not [name for name in SAFE_TABLE_FUNCTIONS if is_refused_function(name)]


HIDDEN = {"span_rows": "an internal table", "job_states": "an internal table"}


@pytest.mark.parametrize(
    "query",
    ["SELECT * FROM span_rows", 'SELECT * FROM "SPAN_ROWS"', "SELECT * FROM mlscope.`job_states`",
     "SELECT count() FROM spans WHERE span_id IN (SELECT span_id FROM Span_Rows)", "SHOW CREATE TABLE span_rows"],
)
def test_hidden_tables_are_refused_in_any_case_or_quoting(query: str) -> None:
    with pytest.raises(RefusedQuery, match="internal table"):
        check_query(query, hidden_tables=HIDDEN)
    check_query(query.replace("SHOW CREATE TABLE", "SELECT 1 FROM"))  # nothing hidden: an admin's read


@pytest.mark.parametrize(
    "query",
    ["SELECT hostName()", "SELECT FQDN()", "SELECT version()", "SELECT getSetting('max_threads')",
     "SELECT filesystemAvailable()", 'SELECT "getOSKernelVersion"()', "SELECT currentUser()", "SELECT uptime()"],
)
def test_functions_that_tell_about_the_server_are_refused(query: str) -> None:
    with pytest.raises(RefusedQuery, match="not allowed"):  # filesystem*() also falls under file*
        check_query(query)


def test_generate_random_is_refused() -> None:
    with pytest.raises(RefusedQuery, match="unbounded size"):
        check_query("SELECT * FROM generateRandom('a Array(Array(String))', 1, 1000000, 1000000) LIMIT 100")
