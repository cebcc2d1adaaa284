"""A GGUF file's tokenizer on its own: the vocabulary without the weights.

It tokenizes exactly as the engine does (llama.cpp's own tokenizer, read from
the same file), so token counts and ids match what a generation sees; and it
renders conversations with the same chat templates as ``chat()``. It is
upstream oxillama-py's ``Tokenizer`` (indexed in :data:`oxillama_py.compat.UPSTREAM`),
over a GGUF file instead of a ``tokenizer.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType

from .chat import Message, check_messages, render_messages
from .checks import check_sequence, check_type
from .errors import LoadError
from .llama.model import Model, resolve_model_path

__all__ = ["Tokenizer"]


class Tokenizer:
    """Encode, decode and template text with a model's vocabulary (upstream oxillama-py's ``Tokenizer``).

    Load it with :meth:`from_file` (a GGUF file; ``None`` for the default
    model); only the vocabulary is read, in a fraction of a second. Safe to use
    from several threads. :meth:`close` (or ``with``) frees it.
    """

    def __init__(self, model: Model) -> None:
        self._model = model

    @classmethod
    def from_file(cls, path: str | os.PathLike[str] | None = None) -> Tokenizer:
        """The tokenizer of a GGUF file (missing or corrupt: :class:`~oxillama_py.LoadError`)."""
        return cls(Model(resolve_model_path(path), vocab_only=True))

    @classmethod
    def from_json(cls, json: str) -> Tokenizer:
        """Not available: upstream reads a Hugging Face ``tokenizer.json``; a GGUF file carries its own."""
        raise LoadError(
            "Tokenizer.from_json is not supported: oxillama_py tokenizes with llama.cpp, from the vocabulary "
            "inside the GGUF file; use Tokenizer.from_file('model.gguf')"
        )

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids as the engine makes them (BOS when the model asks for it, special tokens parsed)."""
        check_type("text", text, str, "a str")
        return self._model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def encode_batch(self, texts: Sequence[str], *, add_special: bool = True) -> list[list[int]]:
        """:meth:`encode` of each text."""
        check_sequence("texts", texts, "a sequence of str")
        return [self.encode(text, add_special=add_special) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; control tokens render as nothing, as in generated text."""
        check_sequence("ids", ids, "a sequence of ints")
        return self._model.detokenize(list(ids))

    @property
    def vocab_size(self) -> int:
        return self._model.n_vocab

    def id_to_token(self, id: int) -> str | None:
        """The vocabulary's text of ``id`` (``"▁Hello"``, ``"<bos>"``); ``None`` outside the vocabulary."""
        if isinstance(id, bool) or not isinstance(id, int) or not 0 <= id < self._model.n_vocab:
            return None
        return self._model.token_text(id)

    def apply_chat_template(
        self, messages: Sequence[Message], template: str | None = None, add_generation_prompt: bool = True
    ) -> str:
        """The conversation as ``chat()`` would decode it (``template``: a built-in name or Jinja2)."""
        return render_messages(
            self._model, check_messages(messages), template, add_generation_prompt=add_generation_prompt
        )

    def close(self) -> None:
        self._model.close()

    def __enter__(self) -> Tokenizer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Tokenizer({str(self._model.path)!r}, vocab_size={self._model.n_vocab})"
