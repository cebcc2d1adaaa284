"""Sphinx configuration for the oxillama_py documentation.

Build with ``python -m sphinx -W -b html docs docs/_build/html`` (or ``nox -s docs``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import oxillama_py  # noqa: E402 (needs the path above)

project = "oxillama_py"
author = "oxillama_py contributors"
copyright = "oxillama_py contributors"
release = oxillama_py.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

nitpicky = False
exclude_patterns = ["_build"]
templates_path: list[str] = []

html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {
    "description": "GGUF text generation over llama.cpp, native to structured concurrency",
    "fixed_sidebar": True,
}
