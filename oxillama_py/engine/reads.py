"""What the model outputs for a text, rather than a generation: embeddings and next-token logits.

A read is work the decode worker's scheduler admits between generation steps
(at most ``n_batch`` tokens per step), so generations beside it keep their pace.
The arrays are NumPy's; DLPack consumers (``torch.from_dlpack``) take them
without a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt

from ..bus.post import wait_future
from ..checks import check_sequence
from ..config import EngineConfig
from ..errors import GenerateError, KvCacheFullError
from ..llama.model import Model
from .base import EngineBase
from .prepare import check_text

__all__ = ["Reads", "to_torch"]


class Reads(EngineBase):
    """Embeddings and logits of an :class:`~oxillama_py.AsyncEngine`."""

    async def embed(self, text: str) -> list[float]:
        """The L2-normalised embedding of ``text`` (see :meth:`embed_batch_numpy` for the pooling)."""
        return [float(x) for x in await self.embed_numpy(text)]

    async def embed_numpy(self, text: str) -> npt.NDArray[np.float32]:
        """:meth:`embed` as a ``float32`` array of ``hidden_size()`` values."""
        rows = await self.embed_batch_numpy([text])
        row: npt.NDArray[np.float32] = rows[0]
        return row

    async def embed_batch_numpy(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One L2-normalised row per text, ``float32``, shape ``(len(texts), hidden_size())``.

        The texts are decoded together, up to ``n_batch`` tokens per
        ``llama_decode``, between the steps of the generations running on the
        engine (each waits at most one step per batch). Pooling: the model's
        own if it declares one, else the mean of the last hidden states of all
        of a text's tokens (BOS included).
        """
        checked = check_sequence("texts", texts, "a sequence of str")
        return await self._read([check_text(text) for text in checked], logits=False)

    async def embed_tokens_numpy(self, token_lists: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """:meth:`embed_batch_numpy` for inputs already tokenized: each list is decoded as given (no BOS added).

        ``embed_tokens_numpy([await engine.tokenize(text)])`` equals
        ``embed_batch_numpy([text])``; the OpenAI server's token-id inputs take this path.
        """
        checked = check_sequence("token_lists", token_lists, "a sequence of token-id sequences")
        lists = [list(check_sequence(f"token_lists[{i}]", t, "a sequence of ints")) for i, t in enumerate(checked)]
        worker = await self._ready()
        budget = self.config.n_ctx
        vocab = worker.model.n_vocab
        for i, tokens in enumerate(lists):
            if not tokens:
                raise ValueError(f"token_lists[{i}] is empty")
            for token in tokens:
                if isinstance(token, bool) or not isinstance(token, int):
                    raise TypeError(f"token_lists[{i}] must hold ints, got {type(token).__name__} {token!r}")
                if not 0 <= token < vocab:
                    raise ValueError(f"token id {token} in token_lists[{i}] is outside the vocabulary (0..{vocab - 1})")
            if len(tokens) > budget:
                raise KvCacheFullError(
                    f"an input of {len(tokens)} tokens does not fit the context of n_ctx={budget} cells"
                )
        return await self._read_tokens(lists, logits=False)

    async def embeddings_dlpack(self, text: str) -> npt.NDArray[np.float32]:
        """:meth:`embed_numpy`'s vector as a ``(1, hidden_size())`` array, which DLPack consumers take without a copy.

        ``numpy.from_dlpack(x)`` and ``torch.from_dlpack(x)`` share its memory.
        """
        return (await self.embed_numpy(text)).reshape(1, -1)

    async def embeddings_torch(self, text: str, **kwargs: Any) -> Any:
        """:meth:`embeddings_dlpack` as a ``torch.Tensor`` (``kwargs`` go to ``Tensor.to``; needs torch)."""
        return to_torch(await self.embeddings_dlpack(text), kwargs)

    async def logits(self, text: str) -> npt.NDArray[np.float32]:
        """The model's next-token logits after ``text``: ``vocab_size()`` raw ``float32`` scores.

        No sampler is applied (a greedy generation picks their argmax). The text
        is decoded as a prompt (BOS first), between the steps of running
        generations, as :meth:`embed_batch_numpy` is.
        """
        rows = await self._read([check_text(text)], logits=True)
        row: npt.NDArray[np.float32] = rows[0]
        return row

    async def logits_dlpack(self, text: str) -> npt.NDArray[np.float32]:
        """:meth:`logits` as an array that ``numpy.from_dlpack`` and ``torch.from_dlpack`` take without a copy."""
        return await self.logits(text)

    async def logits_torch(self, text: str, **kwargs: Any) -> Any:
        """:meth:`logits` as a ``torch.Tensor`` (``kwargs`` go to ``Tensor.to``; needs torch)."""
        return to_torch(await self.logits(text), kwargs)

    async def _read(self, texts: list[str], *, logits: bool) -> npt.NDArray[np.float32]:
        if self.config.max_concurrency >= 256:  # every sequence id is a slot
            raise GenerateError("no sequence id is left for embeddings or logits: lower max_concurrency below 256")
        worker = await self._ready()
        if not texts:
            return np.zeros((0, worker.model.n_vocab if logits else worker.model.n_embd), dtype=np.float32)
        tokens = await anyio.to_thread.run_sync(_tokens, self.config, worker.model, texts)
        return await self._read_tokens(tokens, logits=logits)

    async def _read_tokens(self, tokens: list[list[int]], *, logits: bool) -> npt.NDArray[np.float32]:
        if self.config.max_concurrency >= 256:
            raise GenerateError("no sequence id is left for embeddings or logits: lower max_concurrency below 256")
        worker = await self._ready()
        if not tokens:
            return np.zeros((0, worker.model.n_vocab if logits else worker.model.n_embd), dtype=np.float32)
        return await wait_future(worker.read(tokens, logits=logits))


def _tokens(config: EngineConfig, model: Model, texts: list[str]) -> list[list[int]]:
    """Each text's tokens, checked against the whole context, which one text may use (blocking)."""
    budget = config.n_ctx
    token_lists = []
    for text in texts:
        tokens = model.tokenize(text)
        if not tokens:
            raise ValueError("text is empty and the model adds no BOS token")
        if len(tokens) > budget:
            raise KvCacheFullError(f"a text of {len(tokens)} tokens does not fit the context of n_ctx={budget} cells")
        token_lists.append(tokens)
    return token_lists


def to_torch(array: npt.NDArray[np.float32], kwargs: dict[str, Any]) -> Any:
    """``array`` as a torch tensor sharing its memory (torch is not a dependency)."""
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise ImportError("this needs torch, which oxillama_py does not install: pip install torch") from None
    tensor = torch.from_dlpack(array)
    return tensor.to(**kwargs) if kwargs else tensor
