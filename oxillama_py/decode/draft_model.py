"""A draft model: a smaller model of the same vocabulary, its context, and the drafter that decodes with it."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..bus import Request
from ..config import EngineConfig, SamplerConfig
from ..errors import LoadError
from ..llama import Context, Model
from ..llama.context import BatchEntry
from ..llama.model import resolve_model_path
from .distribution import Distribution
from .drafters import Draft

__all__ = ["DraftModel", "ModelDrafter", "check_same_vocabulary"]


class DraftModel:
    """The draft model of a speculating engine: one ``seq_id`` of its context per slot."""

    def __init__(self, config: EngineConfig, target: Model, n_slots: int) -> None:
        model = Model(resolve_model_path(config.model_path))
        try:
            check_same_vocabulary(target, model)
            self.context = Context(
                model,
                n_ctx=config.n_ctx,
                n_batch=config.n_batch,
                n_threads=config.n_threads,
                n_seq_max=n_slots,
                flash_attn=config.flash_attn,
            )
        except BaseException:
            model.close()
            raise
        self.model = model

    def drafter(self, request: Request, slot: int) -> ModelDrafter:
        drafter = ModelDrafter(self.model, self.context, request.sampler, seq_id=slot)
        drafter.reset()
        return drafter

    def close(self) -> None:
        self.context.close()
        self.model.close()


class ModelDrafter:
    """A smaller model (same vocabulary) decodes ``k`` tokens ahead, one at a time, greedily.

    Each sequence has its own ``seq_id`` in the draft context, kept in step
    with its accepted text: what it decoded beyond the accepted prefix is
    removed, what it never decoded is caught up at the next draft.
    :attr:`seconds_per_token` is what one of its single-token decodes took
    lately (the worker's plan counts it as the price of a drafted token).
    """

    def __init__(self, model: Model, context: Context, config: SamplerConfig, seq_id: int = 0) -> None:
        self.model = model
        self.context = context
        self.seq_id = seq_id
        self.dist = Distribution(config.with_overrides(temperature=0.0), model.n_vocab)
        self.n_cached = 0
        self.decode_calls = 0
        self.seconds_per_token = 0.0

    def _decode(self, tokens: Sequence[int], start: int, *, logits: bool = True) -> int:
        """Decode ``tokens`` from position ``start`` in chunks; the batch index of the last row."""
        n_batch = self.context.n_batch
        last = 0
        for offset in range(0, len(tokens), n_batch):
            chunk = tokens[offset : offset + n_batch]
            final = logits and offset + len(chunk) == len(tokens)
            began = time.perf_counter()
            self.context.decode(
                [
                    BatchEntry(t, start + offset + i, self.seq_id, final and i == len(chunk) - 1)
                    for i, t in enumerate(chunk)
                ]
            )
            if len(chunk) == 1:
                spent = time.perf_counter() - began
                self.seconds_per_token = (
                    spent if not self.seconds_per_token else 0.8 * self.seconds_per_token + 0.2 * spent
                )
            self.decode_calls += 1
            last = len(chunk) - 1
        return last

    def prefill(self, tokens: Sequence[int], end: int) -> None:
        if end > self.n_cached:
            self._decode(tokens[self.n_cached : end], self.n_cached, logits=False)
            self.n_cached = end

    def draft(self, tokens: Sequence[int], k: int, generated: Sequence[int]) -> Draft:
        if k <= 0:
            return Draft([])
        pending = list(tokens[self.n_cached :])
        index = self._decode(pending, self.n_cached)
        self.n_cached = len(tokens)
        history = list(generated)
        drafted: list[int] = []
        while True:
            token = self.dist.argmax(self.context.logits_array(index), history)
            drafted.append(token)
            history.append(token)
            if len(drafted) == k or self.model.is_eog(token):
                break
            index = self._decode([token], self.n_cached)
            self.n_cached += 1
        return Draft(drafted)

    def accepted(self, n_tokens: int) -> None:
        if self.n_cached > n_tokens:
            self.context.remove(self.seq_id, n_tokens, -1)
            self.n_cached = n_tokens

    def reset(self) -> None:
        self.context.remove(self.seq_id)
        self.n_cached = 0


def check_same_vocabulary(target: Model, draft: Model) -> None:
    """Drafts are token ids: they only mean the same thing if both models share a vocabulary."""
    if target.n_vocab != draft.n_vocab:
        raise LoadError(
            f"the draft model's vocabulary ({draft.n_vocab} tokens, {draft.path}) differs from the "
            f"target's ({target.n_vocab} tokens, {target.path}); speculative decoding needs the same vocabulary"
        )
    probe = list(range(0, target.n_vocab, max(1, target.n_vocab // 512)))[:512]
    for token in probe:
        if target.piece(token) != draft.piece(token):
            raise LoadError(
                f"the draft model's vocabulary differs from the target's at token {token} "
                f"({draft.path} vs {target.path}); speculative decoding needs the same vocabulary"
            )
