"""Deprecated v0.1.1 streaming-callback helpers; pass ``progress=`` instead.

They still work as ``callback=`` of ``generate_streaming``. Reaching them from the
package top level (``oxillama_py.TqdmProgress``) emits a ``DeprecationWarning``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TqdmProgress", "CollectTokens"]


class TqdmProgress:
    """Advance a tqdm bar by one per generated token (deprecated: use ``progress=bar``)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def __call__(self, token: str, token_id: int, is_final: bool) -> None:
        self.bar.update(1)
        if is_final:
            self.bar.refresh()


class CollectTokens:
    """Collect the streamed pieces and token ids (deprecated: use ``complete()``)."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.token_ids: list[int] = []
        self.finished = False

    def __call__(self, token: str, token_id: int, is_final: bool) -> None:
        self.tokens.append(token)
        self.token_ids.append(token_id)
        self.finished = self.finished or is_final

    @property
    def text(self) -> str:
        return "".join(self.tokens)
