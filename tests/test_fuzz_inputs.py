"""Seeded mutation fuzzers over the two parsers that read text straight from the network
(issue 11, item 9): the manifest loader (a job's manifests: YAML text -> Manifest) and the SQL
guard (/api/sql). Whatever the input, only the documented refusal comes out, ManifestError or
RefusedQuery (a 400), never another exception (a 500, or a guard that lets a crash decide).
CI runs a few thousand inputs each; MLSCOPE_FUZZ_INPUTS raises the count (as for the decoder's
fuzzer, tests/collector/test_decoder_hostile.py)."""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from mlscope.manifests.loader import ManifestError, builtin_manifests, manifest_from_text, substitute_env
from mlscope.query.reader import HIDDEN_FROM_READERS
from mlscope.query.sqlguard import RefusedQuery, check_query
from tests.query.test_docs_sql import EXAMPLES
from tests.query.test_sqlguard import ALLOWED, REFUSED

FUZZ_INPUTS = int(os.environ.get("MLSCOPE_FUZZ_INPUTS", "4000"))

# Pieces that mean something to YAML (anchors, tags, flow collections, documents, merge keys)
# or to Python's handling of what it builds (huge integers, non-finite floats, lone surrogates).
YAML_PIECES = ("&a ", "*a", "!!python/object/apply:os.system ['true']", "!!binary AAAA", "{", "}", "[", "]",
               ": ", "- ", "? ", "<<: ", "|\n", ">-\n", "---\n", "...\n", "%YAML 1.1\n", "\t", "'", '"', "#",
               "\x00", "\ud800", "\ufeff", "~", "9" * 5000, "1e400", ".nan", "-.inf", "0o17", "0x1F",
               "2001-12-14t21:59:43.10-05:00", "${X}", "${UNSET}", "${X:-d}", "\n  ", "\r\n")
ODD_VALUES: tuple[Any, ...] = (None, True, -1, 0, 2**70, 1e308, math.nan, "", "x" * 300, [], {}, [[[]]],
                               {"a": {"b": []}}, "onnxruntime", "os:system", "../../etc/passwd", "http://127.0.0.1/")
# Pieces that mean something to ClickHouse's lexer or to the guard's rules.
SQL_PIECES = ("'", '"', "`", "\\", "--", "/*", "*/", "#", "#!", ";", "\r", "\n", "\x00", "\ud800", "é", " ", "(", ")",
              "file(", "url('http://x')", "system.", "span_rows", "job_states", "SETTINGS max_threads=1 ",
              "INTO OUTFILE 'x' ", "FORMAT JSON ", "UNION ALL SELECT ", "0x", "1e", "$$", "{", "}", "?", "@",
              ":", "::", "INSERT ", "DROP ", "SHOW ", "CREATE ", "hostName()", "generateRandom(", "q'", "e'\\")


def _mutate_text(text: str, pieces: tuple[str, ...], rng: random.Random) -> str:
    """1-4 edits: a character replaced, a piece inserted, a run deleted or a run duplicated."""
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        at, choice = rng.randrange(len(chars) + 1), rng.random()
        if choice < 0.25 and chars:
            chars[min(at, len(chars) - 1)] = chr(rng.choice((rng.randrange(128), rng.randrange(0x110000))))
        elif choice < 0.65:
            chars[at:at] = rng.choice(pieces)
        elif choice < 0.85 and chars:
            del chars[at:at + rng.randint(1, 16)]
        else:
            chars[at:at] = chars[rng.randrange(len(chars) or 1):][: rng.randint(1, 64)]
    return "".join(chars)


def _mutate_tree(node: Any, rng: random.Random) -> Any:
    """A parsed manifest with some values swapped for odd ones of another type or size."""
    if isinstance(node, dict) and node:
        key = rng.choice(list(node))
        if rng.random() < 0.1:
            del node[key]
        else:
            node[key] = _mutate_tree(node[key], rng) if rng.random() < 0.7 else rng.choice(ODD_VALUES)
    elif isinstance(node, list) and node:
        at = rng.randrange(len(node))
        node[at] = _mutate_tree(node[at], rng) if rng.random() < 0.7 else rng.choice(ODD_VALUES)
    else:
        return rng.choice(ODD_VALUES)
    return node


def _fuzz(name: str, inputs: list[str], attempt: Callable[[str], object], refusal: type[Exception]) -> None:
    """Runs `attempt` on every input; anything it raises but `refusal` fails the test, naming
    the input. Prints the count, the split and the time (for docs/RELIABILITY.md)."""
    accepted = refused = 0
    started = time.perf_counter()
    for text in inputs:
        try:
            attempt(text)
        except refusal:
            refused += 1
        except Exception as exc:  # the property under test: nothing else may come out
            pytest.fail(f"{name}: {type(exc).__name__}: {exc!s:.200} for input {text[:300]!r}")
        else:
            accepted += 1
    print(f"{name}: {len(inputs)} inputs, {accepted} accepted, {refused} refused, "
          f"{time.perf_counter() - started:.1f} s, no other exception")


def _manifest_inputs(count: int, rng: random.Random) -> list[str]:
    seeds = [path.read_text() for path in builtin_manifests().values()]
    inputs = []
    for index in range(count):
        seed = rng.choice(seeds)
        if index % 2:
            inputs.append(_mutate_text(seed, YAML_PIECES, rng))
        else:
            tree = _mutate_tree(yaml.safe_load(seed), rng)
            inputs.append(yaml.safe_dump(tree, allow_unicode=True, sort_keys=False))
    return inputs


def _load_manifest(text: str) -> object:
    # As a job's manifest is read on a predictor: variables substituted, then parsed and checked.
    return manifest_from_text("fuzz.yaml", substitute_env(text, {"X": "1"}, "fuzz.yaml"))


def test_mutated_manifests_raise_only_manifest_errors() -> None:
    _fuzz("manifest loader", _manifest_inputs(FUZZ_INPUTS, random.Random(11)), _load_manifest, ManifestError)


def test_mutated_queries_raise_only_refusals() -> None:
    rng = random.Random(12)
    seeds = [*ALLOWED, *(query for query, _ in REFUSED), *EXAMPLES]
    inputs = [_mutate_text(rng.choice(seeds), SQL_PIECES, rng) for _ in range(FUZZ_INPUTS)]
    _fuzz("SQL guard", inputs, lambda text: check_query(text, HIDDEN_FROM_READERS), RefusedQuery)
