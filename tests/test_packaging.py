"""What ``pip install oxillama-py`` pulls in: the optional extras stay optional."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]


def project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        data: dict[str, object] = tomllib.load(file)["project"]
    return data


def test_ray_and_the_server_are_extras_not_dependencies() -> None:
    base = " ".join(project()["dependencies"]).lower()  # type: ignore[arg-type]
    for name in ("ray", "starlette", "uvicorn", "tqdm"):
        assert name not in base
    extras = project()["optional-dependencies"]
    assert any(req.startswith("ray[serve]") for req in extras["ray"])  # type: ignore[index]


def test_the_package_imports_without_ray() -> None:
    """Importing the package (and its server) never imports Ray; only ``oxillama_py.ray`` does."""
    code = (
        "import sys, oxillama_py, oxillama_py.server, oxillama_py.server.cli\n"
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
