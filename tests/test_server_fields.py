"""Every request field honoured, a no-op, or refused, as ``docs/server.rst``'s field table says; and the sampler fields.

The table is read back from the docs and each row is sent, one by one, to a real
server: an honoured or no-op field is answered 200, a refused one 400 naming it,
a field the endpoint does not have 400 "Unrecognized request argument". The
sampler fields (``logit_bias``, the penalties, ``top_k``, ``min_p``,
``repetition_penalty``) give the library's output for the same options.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import ServerProcess, running_server

from oxillama_py import Engine
from oxillama_py.server.fields import CHAT_FIELDS, COMPLETION_FIELDS, STREAM_OPTIONS_FIELDS

openai = pytest.importorskip("openai", reason="the server tests drive it with the openai client (test extra)")
pytest.importorskip("uvicorn", reason="the server extra is not installed")

DOCS = Path(__file__).resolve().parent.parent / "docs" / "server.rst"
NAME = "fields-model"
PROMPT = "Once upon a time there was a little"
MESSAGES = [{"role": "user", "content": "Hi"}]
BASE = {"chat": {"messages": MESSAGES, "max_tokens": 1}, "completions": {"prompt": "Hi", "max_tokens": 1}}
PATH = {"chat": "/chat/completions", "completions": "/completions"}

OTHER_PARTS = {"tools", "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs", "echo"}
"""Rows whose behaviour other parts (tool calling, log-probabilities) test: here, only that they are known."""

STREAMED = {"stream": True}
ACCEPTED: dict[str, Any] = {
    "model": NAME,
    "messages": MESSAGES,
    "prompt": "Hi",
    "max_tokens": 2,
    "max_completion_tokens": 2,
    "n": 2,
    "best_of": 1,
    "stream": True,
    "stream_options": {"include_usage": True},
    "stream_options.include_usage": True,
    "stream_options.include_progress": True,
    "stream_options.include_obfuscation": True,
    "stop": ["\n"],
    "temperature": 0.5,
    "top_p": 0.9,
    "seed": 7,
    "presence_penalty": 1.0,
    "frequency_penalty": -1.0,
    "logit_bias": {"10": -100, "11": 5.5},
    "top_k": 5,
    "min_p": 0.1,
    "repetition_penalty": 1.2,
    "response_format": {"type": "json_object"},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "logprobs": True,
    "top_logprobs": 2,
    "echo": True,
    "modalities": ["text"],
    "user": "user-1",
    "metadata": {"team": "a"},
    "store": True,
    "service_tier": "auto",
    "prompt_cache_key": "key",
    "prompt_cache_options": {"mode": "implicit"},
    "prompt_cache_retention": "24h",
    "safety_identifier": "id-1",
    "prediction": {"type": "content", "content": "Hello"},
}
"""A value of each field that the server takes (for a refused field: one it refuses)."""
REFUSED: dict[str, Any] = {
    "suffix": " The end.",
    "audio": {"voice": "alloy", "format": "wav"},
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "function_call": "auto",
    "moderation": {"model": "omni-moderation-latest"},
    "reasoning_effort": "low",
    "verbosity": "low",
    "web_search_options": {},
}


def field_table() -> list[tuple[str, str, str]]:
    """The rows (field, chat, completions) of the "Request fields" table in docs/server.rst."""
    text = DOCS.read_text()
    section = text[text.index("\nRequest fields\n") :]
    lines = section.splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("=====")]
    rows = []
    for line in lines[borders[1] + 1 : borders[2]]:
        field, chat, completions, _ = re.split(r"\s{2,}", line.strip(), maxsplit=3)
        rows.append((field.strip("`"), chat, completions))
    return rows


ROWS = field_table()
CASES = [
    pytest.param(endpoint, field, status, id=f"{endpoint}-{field}")
    for field, chat, completions in ROWS
    for endpoint, status in (("chat", chat), ("completions", completions))
]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--n-ctx", "2048", "--max-concurrency", "4", "--model-name", NAME) as srv:
        yield srv


def post(server: ServerProcess, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.api_url + PATH[endpoint], json=body, timeout=120)


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error


def body_with(endpoint: str, field: str, value: Any) -> dict[str, Any]:
    body = dict(BASE[endpoint])
    if field.startswith("stream_options."):
        body.update(STREAMED, stream_options={field.split(".", 1)[1]: value})
    else:
        body[field] = value
        if field == "stream_options":
            body.update(STREAMED)
    return body


def test_the_table_is_the_server_s() -> None:
    """The docs list exactly the fields the server knows, with the same status."""
    top = [row for row in ROWS if "." not in row[0]]
    assert {f: c for f, c, _ in top if c != "—"} == CHAT_FIELDS
    assert {f: c for f, _, c in top if c != "—"} == COMPLETION_FIELDS
    nested = {f.split(".", 1)[1]: c for f, c, _ in ROWS if f.startswith("stream_options.")}
    assert nested == STREAM_OPTIONS_FIELDS
    assert set(ACCEPTED) | set(REFUSED) == {f for f, _, _ in ROWS}


@pytest.mark.parametrize(("endpoint", "field", "status"), CASES)
def test_each_field_is_handled_as_the_table_says(server: ServerProcess, endpoint: str, field: str, status: str) -> None:
    value = REFUSED[field] if status == "refused" else ACCEPTED.get(field, REFUSED.get(field))
    response = post(server, endpoint, body_with(endpoint, field, value))
    if status == "—":
        error = error_of(response)
        assert (error["param"], error["message"]) == (field, f"Unrecognized request argument supplied: {field}")
    elif field in OTHER_PARTS:
        assert "Unrecognized" not in response.text, response.text
    elif status == "refused":
        error = error_of(response)
        assert error["param"] == field, error
        assert field in error["message"]
    else:
        assert response.status_code == 200, response.text


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temprature": 0.5}, "temprature"),
        ({"stream": True, "stream_options": {"include_usage": True, "foo": 1}}, "stream_options.foo"),
        ({"stream": True, "stream_options": {"continuous_usage_stats": True}}, "stream_options.continuous_usage_stats"),
    ],
)
def test_unknown_fields_are_named(server: ServerProcess, endpoint: str, extra: dict[str, Any], param: str) -> None:
    error = error_of(post(server, endpoint, {**BASE[endpoint], **extra}))
    assert error["param"] == param
    assert error["message"] == f"Unrecognized request argument supplied: {param}"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_object", "foo": 1}}, "response_format.foo"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "foo": 1}}},
            "response_format.json_schema.foo",
        ),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"store": "yes"}, "store"),
        ({"metadata": "team-a"}, "metadata"),
        ({"user": 5}, "user"),
        ({"stream": True, "stream_options": {"include_obfuscation": "no"}}, "stream_options.include_obfuscation"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"-5": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"5": "1"}}, "logit_bias"),
        ({"logit_bias": [5]}, "logit_bias"),
        ({"logit_bias": {"999999999": -100}}, "logit_bias"),
        ({"frequency_penalty": -2.5}, "frequency_penalty"),
        ({"presence_penalty": "1"}, "presence_penalty"),
        ({"top_k": 1.5}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
    ],
)
def test_bad_values_are_named(server: ServerProcess, extra: dict[str, Any], param: str) -> None:
    steps = server.health()["decode_steps"]
    error = error_of(post(server, "chat", {**BASE["chat"], **extra}))
    assert error["param"] == param, error
    assert server.health()["decode_steps"] == steps


def test_best_of_other_than_n_is_refused(server: ServerProcess) -> None:
    assert error_of(post(server, "completions", {**BASE["completions"], "best_of": 3}))["param"] == "best_of"
    assert error_of(post(server, "completions", {**BASE["completions"], "best_of": True}))["param"] == "best_of"
    for n in (None, 1):  # null is the same as leaving n out
        response = post(server, "completions", {**BASE["completions"], "best_of": 1, "n": n})
        assert response.status_code == 200, response.text


def completion_text(server: ServerProcess, **fields: Any) -> str:
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0, **fields}
    response = post(server, "completions", body)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


def test_sampler_fields_give_the_library_s_output(server: ServerProcess, engine: Engine) -> None:
    plain = engine.complete(PROMPT, 16, temperature=0)
    banned = plain.token_ids[0]
    assert completion_text(server) == plain.text
    for fields, options in [
        ({"presence_penalty": 2.0}, {"presence_penalty": 2.0}),
        ({"frequency_penalty": 0.5}, {"frequency_penalty": 0.5}),
        ({"repetition_penalty": 1.5}, {"repeat_penalty": 1.5}),
        ({"logit_bias": {str(banned): -100}}, {"logit_bias": {banned: -100}}),
    ]:
        expected = engine.generate(PROMPT, 16, temperature=0, **options)
        assert expected != plain.text, fields
        assert completion_text(server, **fields) == expected, fields
    # top_k 1 (or min_p 1: only the most likely token) makes sampling greedy.
    assert completion_text(server, temperature=1.0, seed=3, top_k=1) == plain.text
    assert completion_text(server, temperature=1.0, seed=3, min_p=1.0) == plain.text


def test_openai_client_sends_the_sampler_fields(server: ServerProcess, engine: Engine) -> None:
    """Through the openai client: its own keywords, and the extensions through ``extra_body``."""
    forced = engine.tokenize(" dragon", add_special=False)[0]
    client = openai.OpenAI(base_url=server.api_url, api_key="unused")
    out = client.completions.create(
        model=NAME, prompt=PROMPT, max_tokens=4, temperature=0, logit_bias={str(forced): 100}
    )
    assert out.choices[0].text == " dragon" * 4
    chat = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "Say a word."}],
        max_tokens=8,
        temperature=0.9,
        seed=1,
        presence_penalty=1.5,
        frequency_penalty=0.5,
        extra_body={"top_k": 1, "min_p": 0.0, "repetition_penalty": 1.0},
    )
    greedy = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "Say a word."}],
        max_tokens=8,
        temperature=0,
        presence_penalty=1.5,
        frequency_penalty=0.5,
    )
    assert chat.choices[0].message.content == greedy.choices[0].message.content


CLIENT_BODIES = [
    pytest.param({"stream": False, "n": 1, "temperature": 0.7}, id="langchain-invoke"),
    pytest.param({"stream": True, "stream_options": {"include_usage": True}, "n": 1}, id="langchain-stream"),
    pytest.param({"stream": True, "stream_options": {"include_usage": True}}, id="pydantic-ai-stream"),
    pytest.param({"store": True, "metadata": {"run": "1"}, "top_logprobs": None}, id="openai-agents"),
    pytest.param({"stream": True, "stream_options": {"include_usage": True}, "store": True}, id="agents-stream"),
    pytest.param({"prompt_cache_key": "k", "prompt_cache_retention": "24h", "service_tier": "auto"}, id="cache"),
    pytest.param({"user": "u", "safety_identifier": "s", "reasoning_effort": None, "verbosity": None}, id="nulls"),
]


@pytest.mark.parametrize("extra", CLIENT_BODIES)
def test_what_clients_send_by_default_is_accepted(server: ServerProcess, extra: dict[str, Any]) -> None:
    response = post(server, "chat", {**BASE["chat"], "model": NAME, **extra})
    assert response.status_code == 200, response.text


def test_langchain_chat_model(server: ServerProcess) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(
        base_url=server.api_url, api_key="unused", model=NAME, max_tokens=3, temperature=0, stream_usage=True
    )
    assert isinstance(chat.invoke("Hi").content, str)
    chunks = list(chat.stream("Hi"))
    assert any(chunk.usage_metadata for chunk in chunks)  # stream_options.include_usage was honoured
