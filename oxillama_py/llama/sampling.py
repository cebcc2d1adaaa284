"""A llama.cpp sampler chain built from :class:`~oxillama_py.SamplerConfig`, optionally under a grammar."""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..config import SamplerConfig
from ..errors import GrammarError
from ..grammar import Grammar
from .model import Model

__all__ = ["Sampler", "check_grammar"]

_MIROSTAT_M = 100  # what llama-cpp-python passes for Mirostat v1
SHORTLIST = 1024
"""At most this many tokens a refused choice is retried among, under the grammar, before the whole vocabulary."""
SHORTLIST_MARGIN = 10.0
"""The shortlist is the tokens whose logit is within this of the best (e^-10: 5e-5 of its probability at T=1)."""


def _grammar_sampler(model: Model, grammar: Grammar) -> ctypes.c_void_p:
    ptr = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.gbnf.encode("utf-8"), grammar.root.encode("utf-8"))
    if not ptr:
        raise GrammarError(
            "llama.cpp could not parse the grammar (malformed GBNF, an undefined rule, "
            f"or no rule named {grammar.root!r}); its log has the details"
        )
    return ptr  # type: ignore[no-any-return]


def check_grammar(model: Model, grammar: Grammar) -> None:
    """Parse ``grammar`` against ``model``'s vocabulary now, so a bad one fails before any decoding."""
    llama_cpp.llama_sampler_free(_grammar_sampler(model, grammar))


class _Candidates:
    """A reusable ``llama_token_data_array`` over a whole vocabulary (or over one token)."""

    def __init__(self, n: int) -> None:
        self.items = (llama_cpp.llama_token_data * n)()
        self.view = np.ctypeslib.as_array(self.items)
        self.ids = np.arange(n, dtype=np.int32)
        self.array = llama_cpp.llama_token_data_array(
            ctypes.cast(self.items, ctypes.POINTER(llama_cpp.llama_token_data)), n, -1, False
        )
        self.pointer = ctypes.pointer(self.array)
        self.n = n

    def resize(self, n: int) -> None:
        """Use the first ``n`` entries only (at most the capacity)."""
        self.n = n

    def fill(self, logits: npt.NDArray[np.float32], ids: npt.NDArray[np.int32] | None = None) -> None:
        """All of ``logits``, or (with ``ids``) those tokens' logits; samplers sort and shrink it, so reset all."""
        view = self.view[: self.n]
        if ids is None:
            view["id"] = self.ids
            view["logit"] = logits
        else:
            view["id"] = ids
            view["logit"] = logits[ids]
        view["p"] = 0.0
        self.array.size = self.n
        self.array.selected = -1
        self.array.sorted = False

    def any_allowed(self) -> bool:
        return bool(np.isfinite(self.view["logit"][: self.array.size]).any())

    def selected(self) -> int:
        return int(self.items[self.array.selected].id)


class Sampler:
    """One sequence's sampler chain; its state (penalty window, RNG, grammar) is per sequence.

    Under a grammar, the token is first chosen without it and kept if the grammar
    allows it (checking one token is cheap); only otherwise is the grammar
    applied to the whole vocabulary and the token chosen again, as llama.cpp's
    own samplers do. The result is exactly the constrained choice: greedy picks
    the best allowed token, and sampling draws from the constrained distribution.
    """

    def __init__(self, model: Model, config: SamplerConfig, seed: int, grammar: Grammar | None = None) -> None:
        self.config = config
        self.seed = seed
        self.n_vocab = model.n_vocab
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.ptr = chain
        self.grammar_ptr = None
        self._all: _Candidates | None = None
        self._one: _Candidates | None = None
        self._short: _Candidates | None = None
        self._plain_greedy = False

        def add(sampler: object) -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)

        if config.repeat_penalty != 1.0:
            add(
                llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab, config.repeat_last_n, config.repeat_penalty, 0.0, 0.0
                )
            )
        if config.temperature == 0.0:
            add(llama_cpp.llama_sampler_init_greedy())
        elif config.mirostat == 1:
            add(llama_cpp.llama_sampler_init_temp(config.temperature))
            add(
                llama_cpp.llama_sampler_init_mirostat(
                    model.n_vocab, seed, config.mirostat_tau, config.mirostat_eta, _MIROSTAT_M
                )
            )
        elif config.mirostat == 2:
            add(llama_cpp.llama_sampler_init_temp(config.temperature))
            add(llama_cpp.llama_sampler_init_mirostat_v2(seed, config.mirostat_tau, config.mirostat_eta))
        else:
            if config.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(config.top_k))
            add(llama_cpp.llama_sampler_init_top_p(config.top_p, 1))
            add(llama_cpp.llama_sampler_init_min_p(config.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(config.temperature))
            add(llama_cpp.llama_sampler_init_dist(seed))
        if grammar is not None:
            try:
                self.grammar_ptr = _grammar_sampler(model, grammar)
            except GrammarError:
                self.close()
                raise
            self._all = _Candidates(model.n_vocab)
            self._one = _Candidates(1)
            self._short = _Candidates(SHORTLIST) if model.n_vocab > SHORTLIST else None
            self._plain_greedy = config.temperature == 0.0 and config.repeat_penalty == 1.0

    def sample(self, ctx_ptr: object, index: int) -> int:
        """Pick the next token from batch entry ``index``'s logits and record it in the chain."""
        if self.grammar_ptr is None:
            return int(llama_cpp.llama_sampler_sample(self.ptr, ctx_ptr, index))
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx_ptr, index), shape=(self.n_vocab,))
        # Plain greedy: the chain is argmax, and numpy's is 25x cheaper than filling the candidates.
        token = int(np.argmax(logits)) if self._plain_greedy else self._choose(logits, constrained=False)
        if not self._allowed(token, float(logits[token])):
            token = self._choose_constrained(logits)
        llama_cpp.llama_sampler_accept(self.grammar_ptr, token)
        llama_cpp.llama_sampler_accept(self.ptr, token)
        return token

    def _choose(self, logits: npt.NDArray[np.float32], *, constrained: bool) -> int:
        candidates = self._all
        assert candidates is not None
        candidates.fill(logits)
        if constrained:
            llama_cpp.llama_sampler_apply(self.grammar_ptr, candidates.pointer)
        llama_cpp.llama_sampler_apply(self.ptr, candidates.pointer)
        return candidates.selected()

    def _choose_constrained(self, logits: npt.NDArray[np.float32]) -> int:
        """The grammar over the shortlist of the most likely tokens, else over the whole vocabulary.

        Matching a token against the grammar is what costs (tens of ms for a
        262k vocabulary), so it is tried on the ``SHORTLIST`` tokens with the
        highest logits first: the best allowed token of the vocabulary is among
        them whenever any of them is allowed, so greedy decoding is exact, and
        sampling loses only the far tail of the allowed tokens.
        """
        shortlist = self._short
        if shortlist is not None:
            near = np.flatnonzero(logits >= logits.max() - SHORTLIST_MARGIN)  # cheap: no partial sort
            if len(near) > SHORTLIST:
                near = np.argpartition(logits, -SHORTLIST)[-SHORTLIST:]
            shortlist.resize(len(near))
            shortlist.fill(logits, near.astype(np.int32))
            llama_cpp.llama_sampler_apply(self.grammar_ptr, shortlist.pointer)
            if shortlist.any_allowed():
                llama_cpp.llama_sampler_apply(self.ptr, shortlist.pointer)
                return shortlist.selected()
        return self._choose(logits, constrained=True)

    def _allowed(self, token: int, logit: float) -> bool:
        one = self._one
        assert one is not None
        one.items[0] = llama_cpp.llama_token_data(token, logit, 0.0)
        one.array.size = 1
        one.array.selected = -1
        one.array.sorted = False
        llama_cpp.llama_sampler_apply(self.grammar_ptr, one.pointer)
        return bool(np.isfinite(one.items[0].logit))

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.ptr, token)
        if self.grammar_ptr is not None:
            llama_cpp.llama_sampler_accept(self.grammar_ptr, token)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None
        if self.grammar_ptr:
            llama_cpp.llama_sampler_free(self.grammar_ptr)
            self.grammar_ptr = None
