"""Duck-typed displays: a bar with only ``update``, ``set_postfix_str`` and ``close`` is closed exactly once.

The specification duck-types tqdm bars by those three methods alone, so the
adapters may use anything else (``n``, ``total``, ``reset``, ``refresh``) only
where it is present and usable, and finalisation reaches ``close()`` whatever
else fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from oxillama_py import (
    AsyncEngine,
    CancellationToken,
    Engine,
    EngineConfig,
    GenerationCancelled,
    PromptLookup,
    SpeculativeConfig,
    SpeculativeEngine,
)
from oxillama_py.progress import ProgressEvent, make_progress_adapter

pytestmark = pytest.mark.anyio

PROMPT = "Count: 1, 2, 3,"
KINDS = ["upstream", "slots"]


class DisplayBroken(Exception):
    """What a broken display method raises."""


@dataclass
class Record:
    """What a duck bar was asked to do (a ``__slots__ = ()`` bar cannot keep it itself)."""

    closes: int = 0
    tokens: int = 0
    postfixes: list[str] = field(default_factory=list)


def duck_bar(kind: str, fail: str = "") -> tuple[Any, Record]:
    """``"upstream"``: upstream oxillama-py's test double (the three methods and a plain ``total``);
    ``"slots"``: the three methods and nothing else, not even settable attributes.
    The method named by ``fail`` raises :class:`DisplayBroken` after recording its call."""
    record = Record()

    def check(name: str) -> None:
        if name == fail:
            raise DisplayBroken(name)

    class ThreeMethods:
        __slots__ = ()

        def update(self, n: int = 1) -> None:
            record.tokens += n
            check("update")

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            record.postfixes.append(s)
            check("set_postfix_str")

        def close(self) -> None:
            record.closes += 1
            check("close")

    class Upstream(ThreeMethods):
        def __init__(self) -> None:
            self.total: int | None = None

    return (Upstream() if kind == "upstream" else ThreeMethods()), record


@pytest.fixture(scope="module")
def spec_engine(model_path: Path) -> Iterator[SpeculativeEngine]:
    with SpeculativeEngine(SpeculativeConfig(EngineConfig(model_path, seed=1234), PromptLookup())) as engine:
        engine.load_model()
        yield engine


@pytest.fixture(params=["engine", "spec_engine"])
def any_engine(request: pytest.FixtureRequest) -> Engine:
    engine: Engine = request.getfixturevalue(request.param)
    return engine


@pytest.fixture(params=["engine", "spec_engine"])
def any_aengine(request: pytest.FixtureRequest) -> AsyncEngine:
    engine: Engine = request.getfixturevalue(request.param)
    return engine.async_engine()


def explode(piece: str) -> None:
    raise RuntimeError("callback exploded")


def _event(count: int) -> ProgressEvent:
    return ProgressEvent(count, 8, 0.5, count / 0.5, None, False)


# -- the blocking engines ------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_closed_once_on_success(any_engine: Engine, kind: str) -> None:
    bar, record = duck_bar(kind)
    result = any_engine.complete(PROMPT, 8, temperature=0, progress=bar)
    assert result.completion_tokens == record.tokens == 8
    assert record.closes == 1
    assert any("tok/s" in p for p in record.postfixes)
    if kind == "upstream":
        assert bar.total == 8


@pytest.mark.parametrize("kind", KINDS)
def test_closed_once_when_stopped_early(any_engine: Engine, kind: str) -> None:
    bar, record = duck_bar(kind)
    result = any_engine.complete(PROMPT, 40, temperature=0, stop=", 6", progress=bar)
    assert result.finish_reason == "stop" and record.tokens == result.completion_tokens < 40
    assert record.closes == 1


@pytest.mark.parametrize("kind", KINDS)
def test_closed_once_on_error(any_engine: Engine, kind: str) -> None:
    bar, record = duck_bar(kind)
    with pytest.raises(RuntimeError, match="exploded"):
        any_engine.generate_streaming(PROMPT, 32, explode, temperature=0, progress=bar)
    assert record.closes == 1
    assert record.postfixes[-1].startswith("error: RuntimeError")


@pytest.mark.parametrize("kind", KINDS)
def test_closed_once_on_cancellation_token(any_engine: Engine, kind: str) -> None:
    bar, record = duck_bar(kind)
    token = CancellationToken()
    with pytest.raises(GenerationCancelled):
        any_engine.generate_streaming(
            PROMPT, 64, lambda piece: token.cancel(), temperature=0, progress=bar, cancel_token=token
        )
    assert record.closes == 1
    assert record.postfixes[-1] == "cancelled"
    assert record.tokens < 64


@pytest.mark.parametrize("fail", ["update", "set_postfix_str", "close"])
@pytest.mark.parametrize("kind", KINDS)
def test_closed_once_when_the_bar_itself_fails(any_engine: Engine, kind: str, fail: str) -> None:
    bar, record = duck_bar(kind, fail=fail)
    expected = any_engine.generate(PROMPT, 8, temperature=0)
    assert any_engine.generate(PROMPT, 8, temperature=0, progress=bar) == expected  # swallowed by default
    assert record.closes == 1
    bar, record = duck_bar(kind, fail=fail)
    with pytest.raises(DisplayBroken, match=fail):
        any_engine.generate(PROMPT, 8, temperature=0, progress=bar, strict_progress=True)
    assert record.closes == 1


# -- the async engines, on every backend ---------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
async def test_async_closed_once_on_success(any_aengine: AsyncEngine, kind: str) -> None:
    bar, record = duck_bar(kind)
    result = await any_aengine.complete(PROMPT, 8, temperature=0, progress=bar)
    assert result.completion_tokens == record.tokens == 8
    assert record.closes == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_async_closed_once_on_error(any_aengine: AsyncEngine, kind: str) -> None:
    bar, record = duck_bar(kind)
    with pytest.raises(RuntimeError, match="exploded"):
        await any_aengine.generate_streaming(PROMPT, 32, explode, temperature=0, progress=bar)
    assert record.closes == 1
    assert record.postfixes[-1].startswith("error: RuntimeError")


@pytest.mark.parametrize("kind", KINDS)
async def test_async_closed_once_on_cancellation_token(any_aengine: AsyncEngine, kind: str) -> None:
    bar, record = duck_bar(kind)
    token = CancellationToken()
    with pytest.raises(GenerationCancelled):
        await any_aengine.generate_streaming(
            PROMPT, 64, lambda piece: token.cancel(), temperature=0, progress=bar, cancel_token=token
        )
    assert record.closes == 1 and record.postfixes[-1] == "cancelled"


@pytest.mark.parametrize("kind", KINDS)
async def test_async_closed_once_on_cancel_scope(any_aengine: AsyncEngine, kind: str) -> None:
    bar, record = duck_bar(kind)
    with anyio.CancelScope() as scope:
        await any_aengine.generate_streaming(PROMPT, 64, lambda piece: scope.cancel(), temperature=0, progress=bar)
    assert scope.cancelled_caught
    assert record.closes == 1 and record.postfixes[-1] == "cancelled"
    assert record.tokens < 64


# -- the adapters alone --------------------------------------------------------------------
@pytest.mark.parametrize("status", ["success", "cancelled", "error"])
@pytest.mark.parametrize("kind", KINDS)
def test_finaliser_closes_when_set_postfix_str_raises(kind: str, status: str) -> None:
    bar, record = duck_bar(kind, fail="set_postfix_str")
    callback, finaliser = make_progress_adapter(bar, 8)
    assert callback is not None and finaliser is not None
    with pytest.raises(DisplayBroken):
        callback(_event(3))
    assert record.tokens == 3  # the count still moved
    if status == "success":
        finaliser(status, None)
    else:
        with pytest.raises(DisplayBroken):  # reported, after the bar was closed
            finaliser(status, ValueError("bad") if status == "error" else None)
    assert record.closes == 1


class RefreshFails:
    """A tqdm-like bar whose ``refresh`` raises and which has ``n`` and ``total`` (no ``reset``)."""

    def __init__(self) -> None:
        self.n, self.total, self.closes, self.postfix = 0, 5, 0, ""

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def refresh(self) -> None:
        raise DisplayBroken("refresh")

    def close(self) -> None:
        self.closes += 1


@pytest.mark.parametrize("status", ["cancelled", "error"])
def test_finaliser_closes_when_refresh_raises(status: str) -> None:
    bar = RefreshFails()
    callback, finaliser = make_progress_adapter(bar, 8)
    assert callback is not None and finaliser is not None
    assert bar.total == 8
    with pytest.raises(DisplayBroken):
        finaliser(status, None)
    assert bar.closes == 1 and bar.postfix.startswith(status[:5])


def test_success_snaps_a_bar_with_n_and_total_to_full() -> None:
    bar = RefreshFails()
    callback, finaliser = make_progress_adapter(bar, 8)
    assert callback is not None and finaliser is not None
    callback(_event(5))
    finaliser("success", None)
    assert bar.n == bar.total == 5 and bar.closes == 1


class BrokenProgress:
    """An ipywidgets-like progress bar; the setter named by ``fail`` raises once the generation is finalised."""

    def __init__(self, fail: str) -> None:
        self._fail = fail
        self.min, self.max, self._value, self._style = 0, 3, 0.0, ""

    def _check(self, name: str, new: object) -> None:
        if name == self._fail and new in (8, "success", "warning", "danger"):
            raise DisplayBroken(name)

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, new: float) -> None:
        self._check("value", new)
        self._value = new

    @property
    def bar_style(self) -> str:
        return self._style

    @bar_style.setter
    def bar_style(self, new: str) -> None:
        self._check("bar_style", new)
        self._style = new


@pytest.mark.parametrize("fail", ["value", "bar_style"])
def test_widget_gets_its_final_value_and_style_whichever_setter_fails(fail: str) -> None:
    widget = BrokenProgress(fail)
    callback, finaliser = make_progress_adapter(widget, 8)
    assert callback is not None and finaliser is not None
    assert widget.max == 8
    callback(_event(5))
    with pytest.raises(DisplayBroken):
        finaliser("success", None)
    if fail == "value":
        assert widget.bar_style == "success"
    else:
        assert widget.value == 8
