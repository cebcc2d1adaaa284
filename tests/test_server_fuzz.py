"""Any JSON in any request field gets an answer below 500, in OpenAI's error shape when it is an error.

Property-based (hypothesis): arbitrary JSON values (huge integers, deep
nesting, odd strings, NaN and infinities that Python's JSON writes) are put
in every field of both endpoints' tables, and whole bodies are arbitrary JSON
too, sent to a real server process. A body the server takes starts a
generation of at most one token, streamed, and is dropped after its first
bytes; one it refuses must be a 4xx whose body is OpenAI's error object with
no traceback or file path in it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from server_process import ServerProcess, running_server

from oxillama_py.server.fields import CHAT_FIELDS, COMPLETION_FIELDS

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need hypothesis (test extra)")
pytest.importorskip("uvicorn", reason="the server extra is not installed")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = 300
BASE = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stream": True},
    "/v1/completions": {"prompt": "Hi", "max_tokens": 1, "stream": True},
}
FIELDS = {"/v1/chat/completions": sorted(CHAT_FIELDS), "/v1/completions": sorted(COMPLETION_FIELDS)}
LEAKS = ("Traceback", 'File "', ".py", "/work/", "/tmp/", "site-packages", "object at 0x")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**500), max_value=10**500),  # beyond a float: OverflowError territory
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "auto", "none", "required", "text", "json_object", "user", "0", "-1", "1e400"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--n-ctx", "1024", "--max-concurrency", "2", "--max-queue", "64") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        yield http


def check_answer(client: httpx.Client, path: str, content: bytes) -> None:
    """Send ``content``; below 500 always; an error is OpenAI's shape and leaks nothing."""
    headers = {"content-type": "application/json"}
    with client.stream("POST", path, content=content, headers=headers) as response:
        if response.status_code == 200:
            next(response.iter_bytes(), b"")  # the request was taken: drop it after its first bytes
            return
        body = response.read()
    assert response.status_code < 500, (response.status_code, body[:500], content[:500])
    assert 400 <= response.status_code < 500, (response.status_code, body[:500])
    error = json.loads(body)["error"]
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str), body
    assert set(error) <= {"message", "type", "param", "code"}, body
    assert not any(leak in error["message"] for leak in LEAKS), error["message"]


@pytest.mark.parametrize("path", sorted(BASE))
def test_any_value_in_any_field(client: httpx.Client, path: str) -> None:
    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
    )
    @given(field=st.sampled_from(FIELDS[path]), value=json_values)
    def run(field: str, value: Any) -> None:
        body = {**BASE[path], field: value}
        check_answer(client, path, json.dumps(body).encode())

    run()


@pytest.mark.parametrize("path", sorted(BASE))
def test_any_json_as_the_whole_body(client: httpx.Client, path: str) -> None:
    @settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
    @given(body=json_values | st.binary(max_size=64).map(lambda raw: raw.decode("latin-1")))
    def run(body: Any) -> None:
        check_answer(client, path, json.dumps(body).encode())

    run()


EDGES = [10**400, -(10**400), 10**30, 2**63, -(2**31) - 1, 1e308, -1e308, float("nan"), float("inf"), "1", [], {}]
"""Values at the edges of every numeric type: past a float, past int64 and int32, and JSON's non-numbers."""


@pytest.mark.parametrize("path", sorted(BASE))
def test_edge_values_in_every_field(client: httpx.Client, path: str) -> None:
    for field in FIELDS[path]:
        for value in EDGES:
            check_answer(client, path, json.dumps({**BASE[path], field: value}).encode())


def test_bytes_that_are_not_json(client: httpx.Client) -> None:
    for content in (b"", b"{", b"\xff\xfe", b'{"prompt": "Hi", "max_tokens": 1e999}', b"[]" * 1000):
        check_answer(client, "/v1/completions", content)
