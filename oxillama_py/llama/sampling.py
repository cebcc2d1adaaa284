"""A llama.cpp sampler chain built from :class:`~oxillama_py.SamplerConfig`, optionally under a grammar."""

from __future__ import annotations

import ctypes
from collections import deque

import llama_cpp
import numpy as np
import numpy.typing as npt

from ..config import SamplerConfig
from .guidance import Matcher
from .model import Model

__all__ = ["Sampler"]

_MIROSTAT_M = 100  # what llama-cpp-python passes for Mirostat v1


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

    def selected(self) -> int:
        return int(self.items[self.array.selected].id)


class Sampler:
    """One sequence's sampler chain; its state (penalty window, RNG, grammar) is per sequence.

    Under a grammar the chain sees exactly the tokens the grammar allows: the
    mask over the whole vocabulary comes first, then the chain, as in
    llama.cpp's ``grammar_first`` order. Greedy decoding keeps the best token
    when the grammar takes it (one token to check, no mask) and otherwise takes
    the best allowed one. With ``top_k`` (or greedy) the chain only ever keeps the ``k``
    best allowed tokens, so it is handed those (plus the allowed tokens whose
    logits the chain changes first: the penalty window's and the biased ones,
    as many more by raw logit as there are of them): the same choice as over
    the whole masked vocabulary, at a fraction of the cost. The chain's order is
    llama-cpp-python's: logit bias, penalties, then the sampling steps.
    """

    def __init__(self, model: Model, config: SamplerConfig, seed: int, matcher: Matcher | None = None) -> None:
        self.config = config
        self.seed = seed
        self.n_vocab = model.n_vocab
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.ptr = chain
        self.matcher = matcher
        self._all: _Candidates | None = None
        greedy = config.temperature == 0.0
        penalised = config.penalised
        self._plain_greedy = greedy and not config.adjusts_logits
        self._keep = 1 if greedy else (config.top_k if config.top_k > 0 and not config.mirostat else 0)
        self._window: deque[int] | None = deque(maxlen=config.repeat_last_n) if penalised else None
        pairs = [(token, bias) for token, bias in config.logit_bias if bias != 0.0]
        self._biased = np.asarray([token for token, _ in pairs], dtype=np.int64) if pairs else None

        def add(sampler: object) -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)

        if pairs:
            table = (llama_cpp.llama_logit_bias * len(pairs))(*(llama_cpp.llama_logit_bias(t, b) for t, b in pairs))
            add(llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(pairs), table))
        if penalised:
            add(
                llama_cpp.llama_sampler_init_penalties(
                    model.n_vocab,
                    config.repeat_last_n,
                    config.repeat_penalty,
                    config.frequency_penalty,
                    config.presence_penalty,
                )
            )
        if greedy:
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
        if matcher is not None:
            self._all = _Candidates(model.n_vocab)

    def sample(self, ctx_ptr: object, index: int) -> int:
        """Pick the next token from batch entry ``index``'s logits and record it in the chain."""
        matcher = self.matcher
        if matcher is None:
            return int(llama_cpp.llama_sampler_sample(self.ptr, ctx_ptr, index))
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx_ptr, index), shape=(self.n_vocab,))
        if self._plain_greedy:
            token = int(np.argmax(logits))  # the chain is argmax: numpy's is the same token, 25x cheaper
            if not matcher.takes(token):  # only then is the whole mask needed
                matcher.mask()
                token = int(np.argmax(matcher.restrict(logits)))
        else:
            matcher.mask()
            token = self._choose(logits, matcher)
        self.accept(token)
        return token

    def _choose(self, logits: npt.NDArray[np.float32], matcher: Matcher) -> int:
        ids = np.flatnonzero(matcher.allowed())
        changed = self._changed()
        keep = self._keep + (0 if changed is None else changed.size)
        if self._keep and ids.size > keep:
            # Only the changed tokens can move up or down: the k best after the change are among them
            # and the k + len(changed) best unchanged by raw logit.
            best = ids[np.argpartition(logits[ids], -keep)[-keep:]]
            ids = np.union1d(best, np.intersect1d(changed, ids)) if changed is not None else np.sort(best)
        candidates = self._all
        assert candidates is not None
        candidates.resize(ids.size)
        candidates.fill(logits, ids.astype(np.int32))
        llama_cpp.llama_sampler_apply(self.ptr, candidates.pointer)
        return candidates.selected()

    def _changed(self) -> npt.NDArray[np.int64] | None:
        """The tokens whose logits the chain changes before choosing: the penalty window's and the biased."""
        window = np.fromiter(self._window, dtype=np.int64) if self._window else None
        if window is None:
            return self._biased
        return np.unique(window if self._biased is None else np.concatenate((window, self._biased)))

    def accept(self, token: int) -> None:
        """Record ``token`` as chosen: the chain's state, the penalty window and the grammar move past it."""
        llama_cpp.llama_sampler_accept(self.ptr, token)
        if self.matcher is not None:
            self.matcher.consume(token)
            if self._window is not None:
                self._window.append(token)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None
