"""The package's shape as tests: module sizes, no import cycles, public seams, and one engine surface.

These read the source (``ast``) and the classes (``inspect``); no model is loaded.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from oxillama_py import AsyncEngine, Engine

PACKAGE = Path(__file__).resolve().parent.parent / "oxillama_py"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module of the package that ``name`` imports: top level, under ``TYPE_CHECKING`` and inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        edges.update(t for t in targets if t in MODULES and t != name)
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_module_is_over_450_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_no_import_cycle() -> None:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert graph["oxillama_py.engine.async_engine"], "the import parser found no imports"
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_says_what_it_owns() -> None:
    missing = [name for name, path in MODULES.items() if not ast.get_docstring(ast.parse(path.read_text("utf-8")))]
    assert missing == []


def _private_reach(path: Path) -> list[str]:
    """Private names of other modules used in ``path``: ``x._name`` (but ``self._name``, ``cls._name``) and imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names if _private(a.name)]
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


@pytest.mark.parametrize(
    "path",
    [
        *sorted((PACKAGE / "server").glob("*.py")),
        PACKAGE / "ray.py",
        PACKAGE / "ray_ingress.py",
        PACKAGE / "ray_replica.py",
        PACKAGE / "__main__.py",
    ],
    ids=lambda p: p.relative_to(PACKAGE).as_posix(),
)
def test_server_ray_and_cli_use_no_private_name_of_another_module(path: Path) -> None:
    assert _private_reach(path) == []


def test_the_private_reach_check_sees_a_reach(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from .engine import _x\nengine._options()\nself._fine()\n", encoding="utf-8")
    assert _private_reach(sample) == ["sample.py:1 import _x", "sample.py:2 ._options"]


# -- one surface ---------------------------------------------------------------------------
ASYNC_ONLY = {
    "aclose": "Engine has close()",
    "prepare": "a Call is run or pumped on an event loop",
    "prepare_chat": "a Call is run or pumped on an event loop",
}
SYNC_ONLY = {
    "close": "AsyncEngine has aclose()",
    "async_engine": "the AsyncEngine the facade drives",
}
OTHER_RETURN = {
    "stream": ("AsyncGenerator[str, None]", "Iterator[str]"),
    "stream_chat": ("AsyncGenerator[str, None]", "Iterator[str]"),
    "restore": ("AsyncEngine", "Engine"),
    "from_hub": ("AsyncEngine", "Engine"),
    "from_snapshot_with_hub": ("AsyncEngine", "Engine"),
}


def _surface(cls: type) -> dict[str, object]:
    return {name: value for name, value in inspect.getmembers(cls) if not name.startswith("_")}


def test_engine_and_async_engine_have_one_surface() -> None:
    sync, async_ = _surface(Engine), _surface(AsyncEngine)
    assert set(async_) - set(sync) == set(ASYNC_ONLY)
    assert set(sync) - set(async_) == set(SYNC_ONLY)
    for name in sorted(set(sync) & set(async_)):
        a, s = async_[name], sync[name]
        if isinstance(a, property) or isinstance(s, property):
            assert isinstance(a, property) and isinstance(s, property), name
            continue
        a_sig, s_sig = inspect.signature(a), inspect.signature(s)  # type: ignore[arg-type]
        assert list(a_sig.parameters.values()) == list(s_sig.parameters.values()), name
        if name in OTHER_RETURN:
            assert (a_sig.return_annotation, s_sig.return_annotation) == OTHER_RETURN[name], name
        else:
            assert a_sig.return_annotation == s_sig.return_annotation, name
    assert inspect.iscoroutinefunction(AsyncEngine.generate) and not inspect.iscoroutinefunction(Engine.generate)


def test_engine_wraps_a_given_async_engine() -> None:
    inner = AsyncEngine()
    with Engine(inner) as engine:
        assert engine.async_engine() is inner and engine.config is inner.config
    assert engine.closed and inner.closed
    with pytest.raises(TypeError, match="config must be an EngineConfig, an AsyncEngine or None"):
        Engine("model.gguf")  # type: ignore[arg-type]
