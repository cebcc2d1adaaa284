"""Deprecated v0.1.1 streaming-callback helpers; pass ``progress=`` instead.

They still work as ``callback=`` of ``generate_streaming``, and called by hand
with one text piece at a time, as in v0.1.1. Reaching them from the package
top level (``oxillama_py.TqdmProgress``) emits a ``DeprecationWarning``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TqdmProgress", "CollectTokens"]


class CollectTokens:
    """Collect the streamed pieces (and token ids, when the engine gives them); deprecated: use ``complete()``."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.token_ids: list[int] = []
        self.finished = False

    def __call__(self, token: str, token_id: int | None = None, is_final: bool = False) -> None:
        self.tokens.append(token)
        if token_id is not None:
            self.token_ids.append(token_id)
        self.finished = self.finished or is_final

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def reset(self) -> None:
        self.tokens.clear()
        self.token_ids.clear()
        self.finished = False


class TqdmProgress(CollectTokens):
    """Advance a tqdm bar by one per piece, the piece in its postfix (deprecated: use ``progress=bar``).

    ``flush_on_newline``: refresh the bar when a piece holds a newline, so a
    notebook redraws it promptly (v0.1.1's behaviour). It collects what it is
    called with as :class:`CollectTokens` does.
    """

    def __init__(self, pbar: Any, flush_on_newline: bool = True) -> None:
        super().__init__()
        self.bar = pbar
        self.flush_on_newline = flush_on_newline

    def __call__(self, token: str, token_id: int | None = None, is_final: bool = False) -> None:
        super().__call__(token, token_id, is_final)
        self.bar.update(1)
        self.bar.set_postfix_str(repr(token)[:30], refresh=False)
        if is_final or (self.flush_on_newline and "\n" in token):
            self.bar.refresh()

    def reset(self) -> None:
        """Forget the text and reset the bar's count (to reuse both for another generation)."""
        super().reset()
        self.bar.reset()
