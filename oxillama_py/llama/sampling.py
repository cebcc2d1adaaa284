"""A llama.cpp sampler chain built from :class:`~oxillama_py.SamplerConfig`."""

from __future__ import annotations

import llama_cpp

from ..config import SamplerConfig
from .model import Model

__all__ = ["Sampler"]

_MIROSTAT_M = 100  # what llama-cpp-python passes for Mirostat v1


class Sampler:
    """One sequence's sampler chain; its state (penalty window, RNG) is per sequence."""

    def __init__(self, model: Model, config: SamplerConfig, seed: int) -> None:
        self.config = config
        self.seed = seed
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.ptr = chain

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

    def sample(self, ctx_ptr: object, index: int) -> int:
        """Pick the next token from batch entry ``index``'s logits and record it in the chain."""
        return int(llama_cpp.llama_sampler_sample(self.ptr, ctx_ptr, index))

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.ptr, token)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None
