"""Development sessions: ``nox`` runs tests, lint, types and docs; ``nox -s bench`` the benchmarks.

Arguments after ``--`` go to the session's tool, e.g. ``nox -s tests -- -k progress -x``.
"""

from __future__ import annotations

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "types", "docs"]

BENCHMARKS = (
    "benchmarks/overhead.py",
    "benchmarks/batching.py",
    "benchmarks/speculative.py",
    "benchmarks/coexistence.py",
)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on asyncio, uvloop and trio (plus lint, types and docs via test_quality)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".", "mypy>=1.10")
    session.run("mypy", "--strict", "oxillama_py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The Sphinx docs; any warning fails the build."""
    session.install("-e", ".[docs]")
    session.run("python", "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmarks against raw llama-cpp-python (JSON and PNG into benchmarks/results/)."""
    session.install("-e", ".[bench]")
    for script in BENCHMARKS:
        session.run("python", script, *session.posargs)
