"""Every error row of the server, in OpenAI's error shape, and its "safe by default" points.

Each bad request is answered before any decoding: the server's decode-step
counter does not move. The servers run on uvicorn + asyncio and hypercorn + trio.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import ServerProcess, running_server

openai = pytest.importorskip("openai", reason="the server tests drive it with the openai client (test extra)")
pytest.importorskip("uvicorn", reason="the server extra is not installed")
pytest.importorskip("hypercorn", reason="the server extra is not installed")

KEY = "sk-test-0123456789"
MESSAGES = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    args = ("--n-ctx", "2048", "--max-concurrency", "4", "--max-body-bytes", "4096", "--api-key", KEY)
    with running_server(*args, backend=request.param) as srv:
        yield srv


def post(server: ServerProcess, path: str, body: object, *, key: str | None = KEY, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if isinstance(body, (bytes, str)):
        return httpx.post(server.api_url + path, content=body, headers=headers, timeout=120, **kwargs)
    return httpx.post(server.api_url + path, json=body, headers=headers, timeout=120, **kwargs)


def assert_error(response: httpx.Response, status: int, *, code: str | None = None, param: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return str(error["message"])


BAD_CHAT = [
    pytest.param(b"{not json", None, id="invalid-json"),
    pytest.param(b"[1, 2]", None, id="not-an-object"),
    pytest.param({"model": None}, "messages", id="no-messages"),
    pytest.param({"messages": []}, "messages", id="empty-messages"),
    pytest.param({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]", id="unknown-role"),
    pytest.param({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", id="content-not-str"),
    pytest.param({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, None, id="image-part"),
    pytest.param({"messages": MESSAGES, "max_tokens": -1}, "max_tokens", id="negative-max-tokens"),
    pytest.param({"messages": MESSAGES, "max_tokens": "10"}, "max_tokens", id="max-tokens-str"),
    pytest.param({"messages": MESSAGES, "max_completion_tokens": 0}, "max_completion_tokens", id="zero-max"),
    pytest.param({"messages": MESSAGES, "temperature": 5}, "temperature", id="temperature-range"),
    pytest.param({"messages": MESSAGES, "temperature": "hot"}, "temperature", id="temperature-type"),
    pytest.param({"messages": MESSAGES, "top_p": 0}, "top_p", id="top-p-zero"),
    pytest.param({"messages": MESSAGES, "seed": -1}, "seed", id="negative-seed"),
    pytest.param({"messages": MESSAGES, "n": 0}, "n", id="n-zero"),
    pytest.param({"messages": MESSAGES, "n": 1000}, "n", id="n-huge"),
    pytest.param({"messages": MESSAGES, "stream": "yes"}, "stream", id="stream-type"),
    pytest.param({"messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options", id="opts"),
    pytest.param({"messages": MESSAGES, "stop": 5}, "stop", id="stop-type"),
    pytest.param({"messages": MESSAGES, "logprobs": "yes"}, "logprobs", id="logprobs-type"),
    pytest.param({"messages": MESSAGES, "top_logprobs": 3}, "top_logprobs", id="top-logprobs-alone"),
    pytest.param({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools", id="tools"),
    pytest.param({"messages": MESSAGES, "presence_penalty": 3.0}, "presence_penalty", id="penalty-range"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CHAT)
def test_bad_chat_requests_are_400_before_decoding(server: ServerProcess, body: object, param: str | None) -> None:
    steps = server.health()["decode_steps"]
    assert_error(post(server, "/chat/completions", body), 400, param=param)
    assert server.health()["decode_steps"] == steps


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": [[1, 2, 3]]}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "echo": "yes"}, "echo"),
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
    ],
)
def test_bad_completion_requests_are_400(server: ServerProcess, body: object, param: str) -> None:
    steps = server.health()["decode_steps"]
    assert_error(post(server, "/completions", body), 400, param=param)
    assert server.health()["decode_steps"] == steps


def test_prompt_that_does_not_fit_the_context(server: ServerProcess) -> None:
    steps = server.health()["decode_steps"]
    long_prompt = "0123456789" * 215  # a token a digit: more than the whole context (2048 cells), in 4 KB
    message = assert_error(
        post(server, "/completions", {"prompt": long_prompt, "max_tokens": 4}), 400, code="context_length_exceeded"
    )
    assert "does not fit" in message
    chat = {"messages": [{"role": "user", "content": long_prompt}]}
    assert_error(post(server, "/chat/completions", chat), 400, code="context_length_exceeded")
    too_many = {"messages": MESSAGES, "max_tokens": 100_000}
    assert_error(post(server, "/chat/completions", too_many), 400, code="context_length_exceeded")
    assert server.health()["decode_steps"] == steps


def test_api_key(server: ServerProcess) -> None:
    body = {"prompt": "Hi", "max_tokens": 1}
    assert_error(post(server, "/completions", body, key=None), 401, code="invalid_api_key")
    assert_error(post(server, "/completions", body, key="sk-wrong"), 401, code="invalid_api_key")
    assert_error(post(server, "/completions", body, key=KEY + "x"), 401, code="invalid_api_key")
    assert_error(httpx.get(server.api_url + "/models", timeout=30), 401)
    assert post(server, "/completions", body).status_code == 200
    assert httpx.get(server.base_url + "/health", timeout=30).status_code == 200  # health needs no key
    with (
        openai.OpenAI(base_url=server.api_url, api_key="sk-wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.models.list()
    with openai.OpenAI(base_url=server.api_url, api_key=KEY, max_retries=0) as client:
        assert client.models.list().data


@pytest.mark.parametrize("name", ["no-such-model", "../../../etc/passwd", "/etc/passwd", "C:\\model.gguf", "x.gguf"])
def test_unknown_model_names_are_404_and_never_touch_the_filesystem(
    server: ServerProcess, name: str, model_path: Path
) -> None:
    response = post(server, "/chat/completions", {"model": name, "messages": MESSAGES})
    assert_error(response, 404, code="model_not_found", param="model")
    assert "root:" not in response.text and str(model_path) not in response.text
    assert_error(httpx.get(server.api_url + "/models/" + name, headers={"Authorization": f"Bearer {KEY}"}), 404)
    with (
        openai.OpenAI(base_url=server.api_url, api_key=KEY, max_retries=0) as client,
        pytest.raises(openai.NotFoundError),
    ):
        client.chat.completions.create(model=name, messages=MESSAGES)  # type: ignore[arg-type]


def test_unknown_route_and_method(server: ServerProcess) -> None:
    assert_error(httpx.get(server.api_url + "/engines", timeout=30), 404)
    assert_error(httpx.get(server.api_url + "/chat/completions", timeout=30), 405)


def test_oversized_bodies_are_413_before_parsing(server: ServerProcess) -> None:
    big = {"messages": [{"role": "user", "content": "x" * 10_000}]}
    assert_error(post(server, "/chat/completions", big), 413, code="request_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"y" * 100
        yield b'"}'

    response = httpx.post(
        server.api_url + "/completions", content=chunks(), headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    )
    assert_error(response, 413, code="request_too_large")
    # A lying Content-Length is refused before a byte of the body is read.
    with socket.create_connection(("127.0.0.1", int(server.base_url.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 999999999\r\n\r\n"
        )
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413")


def test_deeply_nested_json_is_400(server: ServerProcess) -> None:
    nested = b'{"messages":' + b"[" * 1900 + b"]" * 1900 + b"}"  # deeper than json allows, under 4 kB
    assert_error(post(server, "/chat/completions", nested), 400)


def test_more_choices_than_the_server_admits_is_400_not_429(server: ServerProcess) -> None:
    capacity = int(server.health()["capacity"])  # type: ignore[call-overload]
    body = {"prompt": ["a"] * (capacity // 16 + 1), "n": 16, "max_tokens": 1}
    assert_error(post(server, "/completions", body), 400, param="n")


def test_no_user_input_gives_500(server: ServerProcess) -> None:
    garbage: list[object] = [
        b"",
        b"null",
        b'"text"',
        b"\xff\xfe",
        {"messages": [None]},
        {"messages": "hi"},
        {"messages": MESSAGES, "stop": [1]},
        {"messages": MESSAGES, "stream_options": "x", "stream": True},
        {"messages": MESSAGES, "n": True},
        {"messages": MESSAGES, "top_p": 2},
        {"messages": MESSAGES, "response_format": {"type": "xml"}},
        {"messages": MESSAGES, "response_format": {"type": "json_schema", "json_schema": {"schema": {"not": {}}}}},
        {"prompt": ["a", 1]},
    ]
    for body in garbage:
        for path in ("/chat/completions", "/completions"):
            response = post(server, path, body)
            assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_queue_full_is_429_with_retry_after() -> None:
    with running_server("--n-ctx", "2048", "--max-concurrency", "1", "--max-queue", "1") as srv:
        # Greedy, this prompt runs to max_tokens (no end of text): the slot stays busy.
        long = {"prompt": "The history of the city begins", "max_tokens": 1500, "temperature": 0, "stream": True}
        with httpx.Client(timeout=300) as http:
            with http.stream("POST", srv.api_url + "/completions", json=long) as first:
                assert first.status_code == 200
                lines = first.iter_lines()  # kept: a dropped iterator closes its connection
                next(lines)  # decoding
                with http.stream("POST", srv.api_url + "/completions", json=long) as second:
                    assert second.status_code == 200  # queued: the queue holds one
                    third = http.post(srv.api_url + "/completions", json=dict(long, stream=False))
                    assert_error(third, 429, code="rate_limit_exceeded")
                    assert int(third.headers["retry-after"]) >= 1
                    n2 = http.post(srv.api_url + "/completions", json={"prompt": "x", "n": 2})
                    assert_error(n2, 429)
                    health = srv.health()
                    assert health["slots_busy"] == 1 and health["admitted"] == 2
            srv.wait_idle()  # the dropped streams were cancelled and let go of their places
            with openai.OpenAI(base_url=srv.api_url, api_key="x", max_retries=0) as client:
                assert client.completions.create(model=str(srv.health()["model"]), prompt="Hi", max_tokens=2)


def test_default_bind_is_loopback() -> None:
    from oxillama_py.server.cli import _parser

    assert _parser().parse_args([]).host == "127.0.0.1"


def test_api_key_from_environment() -> None:
    with running_server("--n-ctx", "1024", "--max-concurrency", "1", env={"OXILLAMA_API_KEY": KEY}) as srv:
        assert_error(httpx.post(srv.api_url + "/completions", json={"prompt": "x", "max_tokens": 1}), 401)
        ok = httpx.post(
            srv.api_url + "/completions",
            json={"prompt": "x", "max_tokens": 1},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=120,
        )
        assert ok.status_code == 200 and json.loads(ok.text)["usage"]["completion_tokens"] == 1


@pytest.mark.anyio
async def test_closed_engine_is_503_shutting_down(config: Any) -> None:
    """A mounted app has no lifespan of its own: its host closing the engine is its shutdown."""
    from oxillama_py import AsyncEngine
    from oxillama_py.server import create_app

    engine = AsyncEngine(config)
    await engine.aclose()
    transport = httpx.ASGITransport(app=create_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        health = await http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "shutting_down"
        assert_error(await http.post("/v1/completions", json={"prompt": "x"}), 503, code="shutting_down")
