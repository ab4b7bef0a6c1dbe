"""The structure the tree promises: no import cycles between modules (imports inside functions
included) nor between the top-level components, and the shared names written only in
mlscope.conventions. Pure: reads the source files, imports nothing of mlscope."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
CONVENTIONS = REPO / "mlscope" / "conventions.py"


def _package_dirs() -> dict[str, Path]:
    """mlscope's packages as pyproject.toml installs them: import name -> folder."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: REPO / folder for name, folder in config["package-dir"].items()}


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, folder in _package_dirs().items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def _imported(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The mlscope modules `name` imports, anywhere in the file (a `from package import module`
    counts as the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
            targets = targets or [source]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: set(_imported(name, path, modules)) for name, path in modules.items()}


def _component(module: str) -> str:
    """mlscope.query.api -> mlscope.query; mlscope.conventions (the kernel) stays itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that starts and ends at the same node, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == 1:
                return path[path.index(successor):] + [successor]
            if successor not in state and (found := visit(successor)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_find_cycle_finds_one_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_between_modules() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "mlscope.agents.api" in graph["mlscope.agents.bootstrap"]
    assert find_cycle(graph) is None


def test_no_import_cycle_between_components() -> None:
    """agents, collector, store, query, dispatch, ui, evaluation, manifests, cli: the folders are
    the architecture, so none may need another that needs it back. The package itself
    (`mlscope`, holding only the conventions and the entry point) is the kernel every one uses."""
    components: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        source = _component(module)
        components.setdefault(source, set()).update(
            _component(target) for target in imported if _component(target) != source
        )
    assert find_cycle(components) is None
    assert components["mlscope.conventions"] == set()


# --- names written once --------------------------------------------------------------------

_SHARED_NAME = re.compile(
    r"""["'](mlscope\.(?:level|model|framework|layer|library|hw|host|leveled|evaluation|predictor|batch|agent|torch|onnxruntime|gpu|execution_provider|batch_size|queries|samples|dropped|phase)\b[\w.]*"""
    r"""|service\.name|host\.name|host\.arch|os\.description|process\.(?:pid|exit\.code|command_line|executable\.path|cpu\.utilization|memory\.usage)"""
    r"""|(?:MLSCOPE|OTEL)_[A-Z_]+)["']"""
)
_SHARED_PORT = re.compile(r"\b(?:4317|4318|8765)\b")


def _source_files() -> Iterator[Path]:
    for folder in _package_dirs().values():
        for path in folder.rglob("*"):
            if path.suffix in (".py", ".js") and path != CONVENTIONS:
                yield path


def test_no_shared_name_written_outside_the_conventions_module() -> None:
    """Attribute, metric and environment-variable names, and the default ports, are written in
    mlscope/conventions.py only (tests and the schema's .sql files, which cannot import it,
    aside: tests/store checks those against the conventions)."""
    found = []
    for path in _source_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0] if path.suffix == ".py" else line
            if _SHARED_NAME.search(code) or _SHARED_PORT.search(code):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


def test_the_literal_check_sees_a_literal() -> None:
    assert _SHARED_NAME.search('attributes["mlscope.layer.path"] = path')
    assert _SHARED_NAME.search("os.environ.get('MLSCOPE_LEVEL')")
    assert not _SHARED_NAME.search("from mlscope.conventions import LAYER_PATH")
