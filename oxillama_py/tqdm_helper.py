"""Upstream's module path of the deprecated v0.1.1 helpers; they live in :mod:`oxillama_py.compat`.

``from oxillama_py.tqdm_helper import TqdmProgress`` (upstream's spelling)
keeps working without a warning; reaching them from the package top level
(``oxillama_py.TqdmProgress``) emits a ``DeprecationWarning``. Pass
``progress=`` instead.
"""

from __future__ import annotations

from .compat import CollectTokens, TqdmProgress

__all__ = ["TqdmProgress", "CollectTokens"]
