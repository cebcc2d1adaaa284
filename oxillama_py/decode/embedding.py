"""Embeddings and logits: texts decoded for what the model outputs, between the generation steps of the worker.

An :class:`EmbedJob` is advanced by :meth:`DecodeWorker.run`, one
``llama_decode`` of at most ``n_batch`` tokens per call, so the generations
the worker is decoding wait at most one step for it. Each text holds one of
the worker's embedding ``seq_id`` values while it is decoded (a causal model
attends to the text's earlier tokens, so its cells stay until it is done).

Pooling: a model that declares one (``llama_pooling_type``) is pooled by
llama.cpp; otherwise (a causal language model such as Gemma) the text's
vector is the mean of the last hidden states (after the final norm) of all
its tokens, BOS included. Every vector is L2-normalised. A job for logits
keeps the raw logits after each text's last token instead.

A job whose texts were decoded partly before the adapters changed starts
again, so all its rows come from the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import GenerateError
from ..llama.context import BatchEntry

if TYPE_CHECKING:
    from .worker import DecodeWorker

__all__ = ["EmbedJob", "POOLING_NONE"]

POOLING_NONE = 0


@dataclass(eq=False)
class _Text:
    tokens: list[int]
    seq_id: int | None = None
    done: int = 0  # tokens decoded so far
    total: npt.NDArray[np.float64] | None = None
    vector: npt.NDArray[np.float32] | None = None


@dataclass(eq=False)
class EmbedJob:
    """The texts of one embedding call and how far each has been decoded (decode thread only)."""

    texts: list[_Text] = field(default_factory=list)
    logits: bool = False
    """Keep the logits after each text's last token rather than its pooled hidden states."""
    weights_version: int | None = None

    @classmethod
    def of(cls, token_lists: list[list[int]], *, logits: bool = False) -> EmbedJob:
        return cls([_Text(list(tokens)) for tokens in token_lists], logits)

    @property
    def finished(self) -> bool:
        return all(text.vector is not None for text in self.texts)

    def vectors(self) -> npt.NDArray[np.float32]:
        rows = [text.vector for text in self.texts]
        assert all(row is not None for row in rows), "the job has not finished"
        return np.stack(rows)  # type: ignore[arg-type]

    def step(self, worker: DecodeWorker) -> bool:
        """Decode the next batch of this job's tokens; ``True`` once every text has its vector."""
        context = worker.context
        assert context is not None
        if self.weights_version != worker.weights_version:
            if self.weights_version is not None:
                self.release(worker)
                self.texts = [_Text(text.tokens) for text in self.texts]
            self.weights_version = worker.weights_version
        logits = self.logits
        pooled = context.pooling != POOLING_NONE and not logits
        for text in self.texts:  # texts waiting for a sequence id get the free ones, in order
            if text.vector is None and text.seq_id is None and worker.embed_ids:
                if pooled and len(text.tokens) > context.n_batch:
                    raise GenerateError(
                        f"a text of {len(text.tokens)} tokens does not fit one batch (n_batch={context.n_batch}), "
                        "which llama.cpp's pooling needs"
                    )
                text.seq_id = worker.embed_ids.pop()
        entries: list[BatchEntry] = []
        spans: list[tuple[_Text, int, int]] = []  # (text, first entry, count)
        for text in self.texts:
            if text.seq_id is None or text.vector is not None:
                continue
            room = context.n_batch - len(entries)
            if room <= 0 or (pooled and len(text.tokens) > room):
                break
            chunk = text.tokens[text.done : text.done + room]
            spans.append((text, len(entries), len(chunk)))
            last = len(text.tokens) - 1
            entries.extend(
                BatchEntry(token, text.done + i, text.seq_id, not logits or text.done + i == last)
                for i, token in enumerate(chunk)
            )
        if not entries:
            return self.finished
        held = sum(t.done for t in self.texts if t.seq_id is not None and t.vector is None)
        context.set_embeddings(not logits)
        try:
            worker.decode_extra(entries, held)
            for text, first, count in spans:
                if logits:
                    text.done += count
                    if text.done == len(text.tokens):
                        text.vector = context.logits_array(first + count - 1).copy()
                elif pooled:
                    text.vector = _unit(np.array(context.sequence_embedding(text.seq_id), dtype=np.float64))  # type: ignore[arg-type]
                else:
                    part = np.zeros(worker.model.n_embd, dtype=np.float64)
                    for index in range(first, first + count):
                        part += context.embedding_array(index)
                    text.total = part if text.total is None else text.total + part
                    text.done += count
                    if text.done == len(text.tokens):
                        text.vector = _unit(text.total / len(text.tokens))
                if text.vector is not None:
                    self._free(worker, text)
        finally:
            context.set_embeddings(False)
        return self.finished

    def release(self, worker: DecodeWorker) -> None:
        """Free the cells and ids of texts still being decoded (the caller gave up)."""
        for text in self.texts:
            if text.seq_id is not None:
                self._free(worker, text)

    @staticmethod
    def _free(worker: DecodeWorker, text: _Text) -> None:
        assert worker.context is not None and text.seq_id is not None
        worker.context.remove(text.seq_id)
        worker.embed_ids.append(text.seq_id)
        text.seq_id = None


def _unit(vector: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise GenerateError("the model produced a zero or non-finite embedding")
    return (vector / norm).astype(np.float32)
