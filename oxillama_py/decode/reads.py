"""Embeddings and logits: texts decoded for what the model outputs, between the generation steps.

A :class:`ReadJob` is work the scheduler admits beside the generations: each
turn of the decode loop advances it by one ``llama_decode`` of at most
``n_batch`` tokens, so the generations wait at most one step for it. Each
text leases a spare ``seq_id`` from the pool while it is decoded (a causal
model attends to the text's earlier tokens, so its cells stay until it is
done); a job withdrawn through its future gives them back at the next turn.

Pooling: a model that declares one (``llama_pooling_type``) is pooled by
llama.cpp; otherwise (a causal language model such as Gemma) the text's
vector is the mean of the last hidden states (after the final norm) of all
its tokens, BOS included. Every vector is L2-normalised. A job for logits
keeps the raw logits after each text's last token instead.

A job whose texts were decoded partly before the adapters changed starts
again, so all its rows come from the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from ..errors import GenerateError
from ..llama.context import BatchEntry

if TYPE_CHECKING:
    from ..llama import Context, Model
    from .adapters import AdapterSet
    from .ids import Lease, SeqIdPool
    from .prefix_cache import PrefixCache

__all__ = ["POOLING_NONE", "Decoder", "ReadJob"]

POOLING_NONE = 0


class Decoder(Protocol):
    """What a read decodes with (the runner): its context, ids, cache and weights, and a decode that makes room."""

    @property
    def context(self) -> Context: ...

    @property
    def model(self) -> Model: ...

    @property
    def ids(self) -> SeqIdPool: ...

    @property
    def cache(self) -> PrefixCache: ...

    @property
    def adapters(self) -> AdapterSet: ...

    def decode(self, entries: Sequence[BatchEntry], held: int = 0) -> None: ...


@dataclass(eq=False)
class _Text:
    tokens: list[int]
    lease: Lease | None = None
    done: int = 0  # tokens decoded so far
    total: npt.NDArray[np.float64] | None = None
    vector: npt.NDArray[np.float32] | None = None


@dataclass(eq=False)
class ReadJob:
    """The texts of one embedding or logits call, how far each has been decoded, and the caller's future."""

    texts: list[_Text]
    logits: bool = False
    """Keep the logits after each text's last token rather than its pooled hidden states."""
    weights_version: int | None = None
    future: Future[npt.NDArray[np.float32]] = field(default_factory=Future)
    """Its rows, shape ``(len(texts), n_embd or n_vocab)``; cancel it to withdraw the job."""

    @classmethod
    def of(cls, token_lists: list[list[int]], *, logits: bool = False) -> ReadJob:
        return cls([_Text(list(tokens)) for tokens in token_lists], logits)

    @property
    def finished(self) -> bool:
        return all(text.vector is not None for text in self.texts)

    def vectors(self) -> npt.NDArray[np.float32]:
        rows = [text.vector for text in self.texts]
        assert all(row is not None for row in rows), "the job has not finished"
        return np.stack(rows)  # type: ignore[arg-type]

    def cells(self) -> tuple[int, int]:
        """KV cells its texts hold now, and the most its next decode adds (what the KV budget counts)."""
        held = sum(t.done for t in self.texts if t.lease is not None and t.vector is None)
        rest = sum(len(t.tokens) - t.done for t in self.texts if t.vector is None)
        return held, rest

    def advance(self, runner: Decoder) -> None:
        """One decode of this job's next tokens; the future is answered once every text has its row, or on error."""
        try:
            finished = self._step(runner)
        except Exception as exc:
            self.fail(exc, runner.cache)
            return
        if finished and not self.future.done() and self.future.set_running_or_notify_cancel():
            self.future.set_result(self.vectors())

    def _step(self, runner: Decoder) -> bool:
        context = runner.context
        version = runner.adapters.version
        if self.weights_version != version:
            if self.weights_version is not None:
                self.release(runner.cache)
                self.texts = [_Text(text.tokens) for text in self.texts]
            self.weights_version = version
        if runner.ids.n_spare == 0:
            raise GenerateError("no sequence id is left for embeddings or logits: lower max_concurrency below 256")
        logits = self.logits
        pooled = context.pooling != POOLING_NONE and not logits
        for text in self.texts:  # texts waiting for a sequence id get the free ones, in order
            if text.vector is None and text.lease is None and runner.ids.free_spares():
                if pooled and len(text.tokens) > context.n_batch:
                    raise GenerateError(
                        f"a text of {len(text.tokens)} tokens does not fit one batch (n_batch={context.n_batch}), "
                        "which llama.cpp's pooling needs"
                    )
                text.lease = runner.ids.spare()
        entries: list[BatchEntry] = []
        spans: list[tuple[_Text, int, int]] = []  # (text, first entry, count)
        for text in self.texts:
            if text.lease is None or text.vector is not None:
                continue
            room = context.n_batch - len(entries)
            if room <= 0 or (pooled and len(text.tokens) > room):
                break
            chunk = text.tokens[text.done : text.done + room]
            spans.append((text, len(entries), len(chunk)))
            last = len(text.tokens) - 1
            seq_id = text.lease.seq_id
            entries.extend(
                BatchEntry(token, text.done + i, seq_id, not logits or text.done + i == last)
                for i, token in enumerate(chunk)
            )
        if not entries:
            return self.finished
        held = sum(t.done for t in self.texts if t.lease is not None and t.vector is None)
        context.set_embeddings(not logits)
        try:
            runner.decode(entries, held)
            for text, first, count in spans:
                assert text.lease is not None
                if logits:
                    text.done += count
                    if text.done == len(text.tokens):
                        text.vector = context.logits_array(first + count - 1).copy()
                elif pooled:
                    pooled_row = context.sequence_embedding(text.lease.seq_id)
                    text.vector = _unit(np.array(pooled_row, dtype=np.float64))
                else:
                    part = np.zeros(runner.model.n_embd, dtype=np.float64)
                    for index in range(first, first + count):
                        part += context.embedding_array(index)
                    text.total = part if text.total is None else text.total + part
                    text.done += count
                    if text.done == len(text.tokens):
                        text.vector = _unit(text.total / len(text.tokens))
                if text.vector is not None:
                    _free(runner.cache, text)
        finally:
            context.set_embeddings(False)
        return self.finished

    def release(self, cache: PrefixCache) -> None:
        """Free the cells and ids of texts still being decoded (the caller gave up, or the weights changed)."""
        for text in self.texts:
            if text.lease is not None:
                _free(cache, text)

    def fail(self, error: BaseException, cache: PrefixCache) -> None:
        """Give everything back and answer with ``error``."""
        self.release(cache)
        if not self.future.done() and self.future.set_running_or_notify_cancel():
            self.future.set_exception(error)


def _free(cache: PrefixCache, text: _Text) -> None:
    assert text.lease is not None
    cache.free_cells(text.lease.seq_id)
    text.lease.release()
    text.lease = None


def _unit(vector: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise GenerateError("the model produced a zero or non-finite embedding")
    return (vector / norm).astype(np.float32)
