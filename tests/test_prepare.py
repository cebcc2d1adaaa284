"""The public prepared call (``AsyncEngine.prepare``, ``prepare_chat``): what generate, the server and Ray build on."""

from __future__ import annotations

import pytest

from oxillama_py import AsyncEngine, Engine, GrammarError, KvCacheFullError
from oxillama_py.bus import Finished, Step, Subscriber
from oxillama_py.engine import Call

pytestmark = pytest.mark.anyio

COUNT = "1, 2, 3, 4, 5,"


class Pieces(Subscriber):
    """A subscriber of our own: every piece and every end, with the choice it belongs to."""

    def __init__(self) -> None:
        self.pieces: dict[int, str] = {}
        self.ends: list[tuple[int, str]] = []

    async def on_step(self, step: Step) -> None:
        for token in step.tokens:
            self.pieces[token.sequence] = self.pieces.get(token.sequence, "") + token.piece

    async def on_finished(self, finished: Finished) -> None:
        self.pieces[finished.sequence] = self.pieces.get(finished.sequence, "") + finished.tail
        self.ends.append((finished.sequence, finished.reason))


async def test_prepare_runs_choices_with_our_subscriber(aengine: AsyncEngine) -> None:
    expected = await aengine.generate(COUNT, 8, temperature=0)
    mine = Pieces()
    call = await aengine.prepare([COUNT], 8, n=2, subscribers=[mine], temperature=0)
    assert isinstance(call, Call) and call.prompts == (COUNT, COUNT)
    assert mine.ends == []  # prepared, not started
    results = await call.run()
    assert [r.text for r in results] == [expected, expected]
    assert mine.pieces == {0: expected, 1: expected}
    assert sorted(mine.ends) == [(0, "length"), (1, "length")]


async def test_prepare_pumped_by_its_consumer(aengine: AsyncEngine) -> None:
    expected = await aengine.generate(COUNT, 6, temperature=0)
    mine = Pieces()
    call = await aengine.prepare([COUNT], 6, subscribers=[mine], temperature=0)
    call.generation.start()
    try:
        while await call.generation.pump():
            pass
    finally:
        await call.generation.aclose()
    assert [r.text for r in call.results()] == [expected] and mine.pieces == {0: expected}


async def test_prepare_chat_renders_like_chat_and_counts_its_tokens(aengine: AsyncEngine) -> None:
    messages = [{"role": "user", "content": "Count from one to five."}]
    reply = await aengine.chat(messages, 12, temperature=0)
    call = await aengine.prepare_chat(messages, 12, temperature=0)
    (result,) = await call.run()
    assert result.text == reply.text
    rendered = await aengine.apply_chat_template(messages)
    assert call.prompts[0] in rendered and rendered.endswith(call.prompts[0])
    assert await aengine.count_chat_tokens(messages) == len(await aengine.tokenize(call.prompts[0]))


async def test_prepare_refuses_bad_input_before_any_work(aengine: AsyncEngine) -> None:
    with pytest.raises(TypeError, match="prompts must be a sequence of strings"):
        await aengine.prepare("one prompt, not a list", 4)
    with pytest.raises(ValueError, match="n must be >= 1"):
        await aengine.prepare([COUNT], 4, n=0)
    with pytest.raises(TypeError, match="n must be an int"):
        await aengine.prepare([COUNT], 4, n=True)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        await aengine.prepare([COUNT], -1)
    with pytest.raises(KvCacheFullError):
        await aengine.prepare([COUNT], 10**6)
    with pytest.raises(GrammarError, match="no-such-format"):
        await aengine.prepare([COUNT], 4, json_schema={"type": "string", "format": "no-such-format"})
    assert aengine.stats.active == 0


def test_engine_counts_chat_tokens_as_async_does(engine: Engine) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    prompt = engine.apply_chat_template(messages)
    assert engine.count_chat_tokens(messages) == len(engine.tokenize(prompt, add_special=False))
