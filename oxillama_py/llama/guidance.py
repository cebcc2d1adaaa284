"""Token masks from llguidance: one tokenizer per loaded model, one matcher per constrained sequence.

The tokenizer reads the model's whole vocabulary (a second or two for 262k
tokens), so it is built on the first constrained request and kept as long as
the model; a compiled grammar is kept too (a server sees the same schema
again and again), and each sequence gets its own copy of its state.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from collections import OrderedDict

import llama_cpp
import llguidance
import numpy as np
import numpy.typing as npt

from ..errors import GrammarError
from .model import Model

__all__ = ["Matcher", "Vocabulary", "vocabularies_held", "vocabulary"]

_KEPT_GRAMMARS = 64
_PIECE_BYTES = 16 * 1024


class Vocabulary:
    """llguidance's view of one model's vocabulary, and the grammars compiled against it."""

    def __init__(self, model: Model) -> None:
        self._model = weakref.ref(model)  # the cache below is weak: a closed, dropped model takes this along
        self.n_vocab = model.n_vocab
        with model.hold():
            self.tokenizer = _tokenizer(model)
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, compiled: str) -> Matcher:
        """A fresh matcher for a grammar in llguidance's form; :class:`GrammarError` if the vocabulary can't meet it."""
        with self._lock:
            template = self._compiled.get(compiled)
            if template is not None:
                self._compiled.move_to_end(compiled)
        if template is None:
            model = self._model()
            if model is None:
                raise GrammarError("the model was closed")
            with model.hold():
                template = llguidance.LLMatcher(self.tokenizer, compiled, log_level=0)
            if template.is_error():
                raise GrammarError(f"the grammar cannot be used with this model's vocabulary: {template.get_error()}")
            with self._lock:
                self._compiled[compiled] = template
                while len(self._compiled) > _KEPT_GRAMMARS:
                    self._compiled.popitem(last=False)
        return Matcher(template.deep_copy(), self.n_vocab)


def _tokenizer(model: Model) -> llguidance.LLTokenizer:
    """Every token's bytes, control tokens marked as llguidance expects (a leading 0xFF), and llama.cpp's tokenizer."""
    vocab = model.vocab
    control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    user = llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    buffer = ctypes.create_string_buffer(_PIECE_BYTES)
    pieces = []
    for token in range(model.n_vocab):
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, _PIECE_BYTES, 0, True)
        if n < 0:
            raise GrammarError(f"token {token} of the vocabulary is longer than {_PIECE_BYTES} bytes")
        piece = ctypes.string_at(buffer, n)  # not .raw[:n]: that copies the whole buffer for every token
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attr & control or (attr & user and piece.startswith(b"<") and piece.endswith(b">")):
            piece = b"\xff" + piece
        pieces.append(piece)
    tokenize = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return llguidance.LLTokenizer.from_llamacpp(  # type: ignore[attr-defined, no-any-return]
        tokens=pieces, vocab_ptr=vocab, tokenize_fptr=tokenize, eos_token=model.eog_tokens(), slices=None
    )


_vocabularies: weakref.WeakKeyDictionary[Model, Vocabulary] = weakref.WeakKeyDictionary()
_building = threading.Lock()


def vocabulary(model: Model) -> Vocabulary:
    """The model's :class:`Vocabulary`, built on first use (blocking; once per model, whatever the threads)."""
    with _building:
        found = _vocabularies.get(model)
        if found is None:
            found = _vocabularies[model] = Vocabulary(model)
        return found


def vocabularies_held() -> int:
    """How many models' vocabularies are built and alive (one per loaded model; for tests)."""
    with _building:
        return len(_vocabularies)


class Matcher:
    """One sequence's place in its grammar, and the exact set of tokens it allows next.

    Used by the decode worker only: :meth:`mask` before each choice,
    :meth:`consume` with the chosen token. A token is never consumed before it
    is chosen, so a rejected draft needs no rollback.
    """

    __slots__ = ("_address", "_matcher", "bits", "n_vocab")

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int) -> None:
        self._matcher = matcher
        self.n_vocab = n_vocab
        self.bits = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
        self._address = self.bits.ctypes.data

    def mask(self) -> None:
        """Compute the allowed tokens of the next position over the whole vocabulary (the GIL released)."""
        self._matcher.unsafe_compute_mask_ptr(self._address, self.bits.nbytes)

    def takes(self, token: int) -> bool:
        """Whether the grammar takes ``token`` next: one token checked (a couple of microseconds), no mask."""
        return bool(self._matcher.validate_tokens([token]))

    def allowed(self) -> npt.NDArray[np.bool_]:
        """The last :meth:`mask` as one flag per token; :class:`GrammarError` when it allows none."""
        flags = np.unpackbits(self.bits.view(np.uint8), count=self.n_vocab, bitorder="little").view(np.bool_)
        if not flags.any():
            raise GrammarError(f"the grammar allows no token here: {self.error()}")
        return flags

    def restrict(self, logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``logits`` with every token the last :meth:`mask` refuses at minus infinity."""
        return np.where(self.allowed(), logits, np.float32(-np.inf)).astype(np.float32, copy=False)

    def consume(self, token: int) -> None:
        """Advance past the chosen ``token`` (which the last mask allowed)."""
        if not self._matcher.consume_token(token):
            raise GrammarError(f"the grammar refused token {token}: {self._matcher.get_error()}")

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of ``tokens`` the grammar would take from here, in order (the state is unchanged)."""
        return int(self._matcher.validate_tokens(tokens)) if tokens else 0

    def error(self) -> str:
        return self._matcher.get_error()
