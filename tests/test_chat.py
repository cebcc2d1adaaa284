"""Chat through the public API: templates, the Gemma default, end of turn, bad messages."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from gguf_factory import write_tiny_llama

from oxillama_py import AsyncEngine, Engine, EngineConfig
from oxillama_py.chat import BUILTIN_TEMPLATES

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "Name three colours."}]
FEW_SHOT = [
    {"role": "user", "content": "Reply with the word OK."},
    {"role": "assistant", "content": "OK"},
    {"role": "user", "content": "Reply with the word OK."},
]


def llama_cpp_gemma_prompt(messages: list[dict[str, str]]) -> str:
    """llama-cpp-python's own ``chat_format="gemma"`` rendering (no system messages there)."""
    from llama_cpp.llama_chat_format import format_gemma

    return format_gemma(messages).prompt  # type: ignore[arg-type]


def test_default_template_is_gemma_turns(engine: Engine) -> None:
    prompt = engine.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *FEW_SHOT], add_generation_prompt=True
    )
    assert prompt == (
        "<bos><start_of_turn>user\nBe brief.\n\nReply with the word OK.<end_of_turn>\n"
        "<start_of_turn>model\nOK<end_of_turn>\n"
        "<start_of_turn>user\nReply with the word OK.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert engine.apply_chat_template(USER, add_generation_prompt=False).endswith("<end_of_turn>\n")
    # Without a system message it is exactly llama-cpp-python's Gemma format (after the BOS).
    assert engine.apply_chat_template(FEW_SHOT) == "<bos>" + llama_cpp_gemma_prompt(FEW_SHOT)


def test_greedy_chat_equals_llama_cpp_python_on_the_gemma_prompt(engine: Engine, reference: object) -> None:
    result = engine.chat(FEW_SHOT, 24, temperature=0)
    expected = reference.complete(llama_cpp_gemma_prompt(FEW_SHOT), 24)  # type: ignore[attr-defined]
    assert result.text == expected
    assert result.prompt_tokens == len(engine.tokenize(llama_cpp_gemma_prompt(FEW_SHOT)))


def test_end_of_turn_ends_the_answer(engine: Engine) -> None:
    # The base Gemma 270M rarely closes a turn itself; under ChatML it copies the few-shot
    # answers' "OK<|im_end|>" as text, and the template's end marker ends the answer there.
    few_shot = [{"role": "user", "content": "Reply with the word OK."}, {"role": "assistant", "content": "OK"}] * 3
    result = engine.chat([*few_shot, FEW_SHOT[0]], 40, temperature=0, chat_template="chatml")
    assert result.text == "OK"
    assert result.finish_reason == "stop" and result.completion_tokens < 40
    # Gemma's end of turn is a control token that llama.cpp ends generation on, and a stop string too.
    assert BUILTIN_TEMPLATES["gemma"].stop == ("<end_of_turn>",)
    assert len(engine.tokenize("<end_of_turn>", add_special=False)) == 1


async def test_stream_chat_joins_to_chat(aengine: AsyncEngine) -> None:
    whole = await aengine.chat(USER, 20, temperature=0)
    async with aclosing(aengine.stream_chat(USER, 20, temperature=0)) as pieces:
        streamed = "".join([piece async for piece in pieces])
    assert streamed == whole.text


def test_sync_stream_chat_and_options(engine: Engine) -> None:
    events = []
    result = engine.chat(USER, 12, temperature=0.8, seed=7, progress=events.append, stop=["\n\n\n"])
    again = engine.chat(USER, 12, temperature=0.8, seed=7)
    assert result.text == again.text  # seeded sampling is reproducible
    assert events and events[-1].is_final
    assert "".join(engine.stream_chat(USER, 12, temperature=0)) == engine.chat(USER, 12, temperature=0).text


def test_closing_a_sync_stream_finalises_before_it_returns(engine: Engine) -> None:
    events: list[Any] = []
    pieces = engine.stream_chat(USER, 200, temperature=0, progress=events.append)
    next(pieces)
    next(pieces)
    pieces.close()  # type: ignore[attr-defined]
    assert events and events[-1].is_final  # the display was finalised before close() returned
    plain: list[Any] = []
    stream = engine.stream("Once upon a time", 200, temperature=0, progress=plain.append)
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert plain and plain[-1].is_final


def test_chat_template_choice(engine: Engine) -> None:
    chatml = engine.apply_chat_template(USER, chat_template="chatml")
    assert chatml == "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"
    custom = (
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    assert engine.apply_chat_template(USER, chat_template=custom) == "[user] Name three colours.\n>"
    result = engine.chat(USER, 8, temperature=0, chat_template=custom)
    assert result.prompt_tokens == len(engine.tokenize("[user] Name three colours.\n>"))
    assert set(BUILTIN_TEMPLATES) >= {"gemma", "chatml", "llama3"}


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "must not be empty"),
        ([{"role": "wizard", "content": "hi"}], "unknown role"),
        ([{"role": "user", "content": 5}], "must be a str"),
        ([{"role": "user", "content": ["hi"]}], "must be a str"),
        ([{"role": "user"}], "must be a str"),
        (["hello"], "must be a dict"),
    ],
)
def test_bad_messages_raise_before_any_work(config: EngineConfig, messages: list[object], match: str) -> None:
    with Engine(config) as fresh:
        with pytest.raises(ValueError, match=match):
            fresh.chat(messages, 8)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=match):
            fresh.stream_chat(messages, 8)  # type: ignore[arg-type]
        assert not fresh.is_loaded()  # rejected before the model was even loaded


def test_bad_templates_are_value_errors(engine: Engine) -> None:
    with pytest.raises(ValueError, match="unknown chat template"):
        engine.chat(USER, 8, chat_template="no-such-template")
    with pytest.raises(ValueError, match="not valid Jinja2"):
        engine.chat(USER, 8, chat_template="{% for %}")
    with pytest.raises(ValueError, match="alternate"):  # the template's own raise_exception
        engine.chat([{"role": "assistant", "content": "hi"}], 8)
    with pytest.raises(TypeError):
        EngineConfig(chat_template=3)  # type: ignore[arg-type]
    assert engine.generate("Hello", 2, temperature=0)  # still usable


def test_gguf_template_wins_and_vocabulary_fallback(tmp_path: Path) -> None:
    own = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    own += "{% if add_generation_prompt %}<reply>{% endif %}"
    with Engine(
        EngineConfig(write_tiny_llama(tmp_path / "own.gguf", chat_template=own), n_ctx=256, max_concurrency=1)
    ) as tiny:
        assert tiny.apply_chat_template(USER) == "<user>Name three colours.<reply>"
        assert tiny.chat(USER, 4, temperature=0).completion_tokens >= 1
        assert tiny.apply_chat_template(USER, chat_template="gemma").startswith("<s><start_of_turn>user\n")
    with Engine(EngineConfig(write_tiny_llama(tmp_path / "bare.gguf"), n_ctx=256, max_concurrency=1)) as bare:
        # No template and no known turn markers in the vocabulary: ChatML, llama.cpp's own fallback.
        assert bare.apply_chat_template(USER) == BUILTIN_TEMPLATES["chatml"].render(USER)
    with Engine(
        EngineConfig(write_tiny_llama(tmp_path / "cfg.gguf"), n_ctx=256, max_concurrency=1, chat_template="llama3")
    ) as chosen:
        assert "<|start_header_id|>user<|end_header_id|>" in chosen.apply_chat_template(USER)
