"""The server's operations side, as a real process on each backend: embeddings, tokenize, metrics, CORS, ids, logs.

One server per backend serves the module, with one slot (so a second request
waits in the queue), an API key, JSON logs at INFO, one allowed CORS origin
and a 0.2 s stream keepalive. Embeddings are checked against the in-process
``Engine`` on the same model, through the openai client and LangChain.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from server_process import ServerProcess, running_server

from oxillama_py import Engine, EngineConfig
from oxillama_py.server import ServerSettings, create_app

openai = pytest.importorskip("openai", reason="the server tests drive it with the openai client (test extra)")
parser = pytest.importorskip("prometheus_client.parser", reason="the server extra brings prometheus_client")
pytest.importorskip("uvicorn", reason="the server extra is not installed")
pytest.importorskip("hypercorn", reason="the server extra is not installed")

KEY = "ops-test-key"
ORIGIN = "http://allowed.example"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVER_PARAMS = [
    pytest.param("asyncio", id="uvicorn-asyncio"),
    pytest.param(
        "uvloop", id="uvicorn-uvloop", marks=pytest.mark.skipif(sys.platform == "win32", reason="no uvloop on Windows")
    ),
    pytest.param("trio", id="hypercorn-trio"),
]
T = 120.0
"""Seconds an HTTP call may take: the machine may be busy."""
TEXTS = ["A cat sat on the mat.", "Quarterly revenue grew by four percent."]


@pytest.fixture(scope="module", params=SERVER_PARAMS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    args = ["--n-ctx", "2048", "--max-concurrency", "1", "--api-key", KEY, "--log-level", "info"]
    args += ["--log-format", "json", "--cors-origin", ORIGIN, "--sse-keepalive", "0.2"]
    with running_server(*args, backend=request.param) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Any]:
    with openai.OpenAI(base_url=server.api_url, api_key=KEY, max_retries=0) as c:
        yield c


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, timeout=T, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=T, **kwargs)


def options(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.options(url, timeout=T, **kwargs)


def model_name(server: ServerProcess) -> str:
    return str(server.health()["model"])


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's own parser."""
    response = get(server.base_url + "/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in parser.text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """One sample's value; 0 when it is not there yet (a counter never moved), ignoring ``model_name``."""
    for (sample, found), number in samples.items():
        rest = {k: v for k, v in found if k not in ("model_name", "le")}
        if sample == name and rest == labels and ("le", "+Inf") not in found:
            return number
    return 0.0


# -- embeddings, tokenize ----------------------------------------------------------------------


def test_embeddings_float_and_base64_equal_the_library(server: ServerProcess, client: Any, engine: Engine) -> None:
    expected = np.stack([engine.embed_numpy(text) for text in TEXTS])
    floats = client.embeddings.create(model=model_name(server), input=TEXTS, encoding_format="float")
    default = client.embeddings.create(model=model_name(server), input=TEXTS)  # base64 on the wire, as openai asks
    raw = post(
        server.api_url + "/embeddings", json={"input": TEXTS[0], "encoding_format": "base64"}, headers=AUTH
    ).json()
    assert isinstance(raw["data"][0]["embedding"], str)
    assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding" and raw["model"] == model_name(server)
    for response in (floats, default):
        assert [d.index for d in response.data] == [0, 1]
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        assert got.shape == (2, engine.hidden_size())
        np.testing.assert_allclose(got, expected, atol=1e-4)
        counts = sum(len(engine.tokenize(text)) for text in TEXTS)
        assert response.usage.prompt_tokens == response.usage.total_tokens == counts


def test_embeddings_of_token_ids(server: ServerProcess, client: Any, engine: Engine) -> None:
    ids = engine.tokenize(TEXTS[0])
    one = client.embeddings.create(model=model_name(server), input=ids, encoding_format="float")
    many = client.embeddings.create(model=model_name(server), input=[ids, ids[:3]], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, engine.embed_numpy(TEXTS[0]), atol=1e-4)
    np.testing.assert_allclose(many.data[0].embedding, one.data[0].embedding, atol=1e-4)
    assert one.usage.prompt_tokens == len(ids) and many.usage.prompt_tokens == len(ids) + 3


def test_langchain_openai_embeddings(server: ServerProcess, engine: Engine) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    embedder = langchain_openai.OpenAIEmbeddings(
        model=model_name(server), base_url=server.api_url, api_key=KEY, check_embedding_ctx_length=False
    )
    documents = embedder.embed_documents(TEXTS)
    query = embedder.embed_query(TEXTS[1])
    np.testing.assert_allclose(documents, np.stack([engine.embed_numpy(t) for t in TEXTS]), atol=1e-4)
    np.testing.assert_allclose(query, engine.embed_numpy(TEXTS[1]), atol=1e-4)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": ["fine", ""]}, "input"),
        ({"input": []}, "input"),
        ({"input": ["text", 3]}, "input"),
        ({"input": [[1, 2], []]}, "input"),
        ({"input": [10**9]}, "input"),
        ({"input": "word " * 3000}, "input"),
        ({"input": "x", "dimensions": 7}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "color": "red"}, "color"),
    ],
)
def test_embeddings_bad_input_is_a_400(server: ServerProcess, body: dict[str, Any], param: str) -> None:
    response = post(server.api_url + "/embeddings", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_embeddings_dimensions_equal_to_the_model_is_fine(server: ServerProcess, client: Any, engine: Engine) -> None:
    response = client.embeddings.create(model=model_name(server), input="x", dimensions=engine.hidden_size())
    assert len(response.data[0].embedding) == engine.hidden_size()


def test_tokenize_and_detokenize_as_llama_cpp(server: ServerProcess, engine: Engine) -> None:
    text = "Hello world, again"
    plain = post(server.base_url + "/tokenize", json={"content": text}, headers=AUTH).json()
    assert plain == {"tokens": engine.tokenize(text, add_special=False)}
    special = post(server.base_url + "/tokenize", json={"content": text, "add_special": True}, headers=AUTH)
    assert special.json()["tokens"] == engine.tokenize(text)
    pieces = post(server.base_url + "/tokenize", json={"content": text, "with_pieces": True}, headers=AUTH)
    assert [p["id"] for p in pieces.json()["tokens"]] == plain["tokens"]
    assert "".join(p["piece"] for p in pieces.json()["tokens"]) == text
    back = post(server.base_url + "/detokenize", json={"tokens": plain["tokens"]}, headers=AUTH)
    assert back.json() == {"content": text}
    assert post(server.base_url + "/tokenize", json={"content": text}).status_code == 401
    bad = post(server.base_url + "/detokenize", json={"tokens": [-1]}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_counters_move_by_the_requests(server: ServerProcess, client: Any) -> None:
    server.wait_idle()
    before = scrape(server)
    name = model_name(server)
    usages = [
        client.completions.create(model=name, prompt="The sky is", max_tokens=4, temperature=0).usage,
        client.completions.create(model=name, prompt="Two plus two is", max_tokens=3, temperature=0).usage,
        client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
        ).usage,
    ]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=name, prompt="x", max_tokens=0)
    after = scrape(server)

    def moved(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert moved("oxillama:http_requests_total", endpoint="/v1/completions", status="200") == 2
    assert moved("oxillama:http_requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert moved("oxillama:http_requests_total", endpoint="/v1/completions", status="400") == 1
    assert moved("oxillama:prompt_tokens_total") == sum(u.prompt_tokens for u in usages)
    assert moved("oxillama:generation_tokens_total") == sum(u.completion_tokens for u in usages)
    for histogram in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
        assert moved(f"oxillama:{histogram}_seconds_count") == 3
    assert moved("oxillama:inter_token_latency_seconds_count") == sum(max(0, u.completion_tokens - 1) for u in usages)
    ended = moved("oxillama:request_success_total", finished_reason="length")
    assert ended + moved("oxillama:request_success_total", finished_reason="stop") == 3
    assert value(after, "oxillama:num_requests_running") == 0
    assert value(after, "oxillama:num_requests_waiting") == 0
    assert value(after, "oxillama:num_slots") == 1
    for counter in ("prefix_cache_hit_tokens", "spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens"):
        assert (f"oxillama:{counter}_total", (("model_name", name),)) in after
    assert get(server.base_url + "/metrics").status_code == 401  # behind the key by default


# -- CORS, request ids, logs, keepalive --------------------------------------------------------


def test_cors_preflight_from_the_allowed_origin_only(server: ServerProcess) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-request-id",
    }
    allowed = options(server.api_url + "/chat/completions", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "x-stainless-os" in allowed.headers["access-control-allow-headers"].lower()
    other = options(server.api_url + "/chat/completions", headers={"Origin": "http://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    simple = get(server.api_url + "/models", headers={"Origin": ORIGIN, **AUTH})
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line of the server's log: each must be one JSON object."""
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def test_request_ids_on_every_response_and_in_the_log(server: ServerProcess) -> None:
    given = f"client-id-{server.backend}-{time.monotonic_ns()}"
    ok = post(
        server.api_url + "/completions",
        json={"prompt": "Hello", "max_tokens": 2},
        headers={**AUTH, "X-Request-Id": given},
    )
    assert ok.status_code == 200 and ok.headers["x-request-id"] == given
    bad = post(server.api_url + "/completions", json={"prompt": 3}, headers=AUTH)
    missing = get(server.base_url + "/no/such/page")
    unauthorized = get(server.api_url + "/models")
    insane = get(server.base_url + "/health", headers={"X-Request-Id": "has spaces\tand tabs"})
    with httpx.stream(
        "POST",
        server.api_url + "/completions",
        json={"prompt": "Hello", "max_tokens": 2, "stream": True},
        headers=AUTH,
        timeout=T,
    ) as stream:
        stream.read()
    ids = {r.headers.get("x-request-id") for r in (bad, missing, unauthorized, insane, stream)}
    assert [bad.status_code, missing.status_code, unauthorized.status_code] == [400, 404, 401]
    assert None not in ids and len(ids) == 5 and all(len(i) == 32 for i in ids if i)  # generated, all different
    deadline = time.monotonic() + 10
    while True:  # a line is written once its response is out
        lines = log_lines(server)
        logged = {entry.get("request_id") for entry in lines if entry.get("route")}
        if {given, *ids} <= logged or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    mine = [line for line in lines if line.get("request_id") == given and line.get("route")]
    (line,) = mine
    assert line["logger"] == "oxillama_py.server.access" and line["level"] == "info"
    assert line["method"] == "POST" and line["route"] == "/v1/completions" and line["status"] == 200
    assert line["prompt_tokens"] == ok.json()["usage"]["prompt_tokens"]
    assert line["completion_tokens"] == ok.json()["usage"]["completion_tokens"]
    assert line["time_to_first_token"] > 0 and line["total_secs"] >= line["time_to_first_token"]
    assert line["cancelled"] is False
    assert ids <= logged  # the errors and the stream have their line too


def test_a_queued_stream_gets_keepalive_comments(server: ServerProcess) -> None:
    """One slot: while a long request holds it, a streamed one waits and hears ``: keepalive``."""
    server.wait_idle()
    hold = threading.Thread(
        target=post,
        args=(server.api_url + "/completions",),
        kwargs={
            "json": {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 48, "temperature": 0},
            "headers": AUTH,
        },
    )
    hold.start()
    try:
        deadline = time.monotonic() + 60
        while server.health()["slots_busy"] == 0:
            assert time.monotonic() < deadline and hold.is_alive(), "the holding request never got its slot"
            time.sleep(0.01)
        body = {"prompt": "Hello", "max_tokens": 2, "stream": True}
        lines = []
        with httpx.stream("POST", server.api_url + "/completions", json=body, headers=AUTH, timeout=T) as response:
            for line in response.iter_lines():
                lines.append(line)
        first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
        assert ": keepalive" in lines[:first_data]
        assert "data: [DONE]" in lines
    finally:
        hold.join()


@pytest.mark.anyio
@pytest.mark.parametrize("public", [False, True])
async def test_metrics_public_serves_metrics_without_the_key(model_path: Path, public: bool) -> None:
    """In process, model not loaded: the key guards ``/metrics`` unless ``metrics_public``."""
    app = create_app(EngineConfig(model_path), ServerSettings(api_key=KEY, metrics_public=public))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        anonymous = await http.get("/metrics")
        keyed = await http.get("/metrics", headers=AUTH)
    assert anonymous.status_code == (200 if public else 401)
    assert keyed.status_code == 200 and "oxillama:http_requests_total" in keyed.text
    assert anonymous.headers["x-request-id"]


def test_settings_are_checked() -> None:
    assert ServerSettings(cors_origins=("http://a.example",)).cors_origins == ("http://a.example",)
    with pytest.raises(TypeError, match="cors_origins"):
        ServerSettings(cors_origins="http://a.example")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keepalive_secs"):
        ServerSettings(keepalive_secs=-1)
    with pytest.raises(TypeError, match="metrics_public"):
        ServerSettings(metrics_public="yes")  # type: ignore[arg-type]


def test_a_client_that_leaves_is_logged_as_cancelled(server: ServerProcess) -> None:
    server.wait_idle()
    given = f"leaving-{server.backend}-{time.monotonic_ns()}"
    body = {"prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 400, "stream": True}
    headers = {**AUTH, "X-Request-Id": given}
    with httpx.stream("POST", server.api_url + "/completions", json=body, headers=headers, timeout=T) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break  # one token, then hang up
    deadline = time.monotonic() + T
    while not (mine := [e for e in log_lines(server) if e.get("request_id") == given and e.get("route")]):
        assert time.monotonic() < deadline, "no log line for the request that left"
        time.sleep(0.05)
    assert mine[0]["cancelled"] is True and mine[0]["status"] == 200
    server.wait_idle()


@pytest.mark.anyio
async def test_keepalive_comments_fill_the_silences_of_a_stream() -> None:
    """In process, no model: a body that waits gets ``: keepalive`` between its events, on every backend."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from oxillama_py.server.sse import DONE, EventStream, event

    closed = []

    async def body() -> Any:
        yield event({"n": 1})
        await anyio.sleep(0.35)
        yield event({"n": 2})
        yield DONE

    async def endpoint(request: Any) -> EventStream:
        return EventStream(body(), on_close=lambda: closed.append(True), keepalive=0.1)

    app = Starlette(routes=[Route("/s", endpoint)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        text = (await http.get("/s")).text
    first, rest = text.split('data: {"n":2}')
    assert first.startswith('data: {"n":1}\n\n') and ": keepalive\n\n" in first
    assert rest == "\n\ndata: [DONE]\n\n" and closed == [True]


@pytest.mark.anyio
async def test_an_unexpected_error_is_a_500_with_the_request_id(model_path: Path) -> None:
    from starlette.routing import Route

    app = create_app(EngineConfig(model_path))

    async def boom(request: Any) -> Any:
        raise RuntimeError("a bug")

    app.router.routes.append(Route("/boom", boom))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        response = await http.get("/boom", headers={"X-Request-Id": "bug-42"})
    assert response.status_code == 500 and response.headers["x-request-id"] == "bug-42"
    assert response.json()["error"] == {
        "message": "internal server error",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_metrics_fold_finished_calls(model_path: Path) -> None:
    """No model: terminal events folded in as the tap does (prompts once per prompt, drafts, cache hits)."""
    from oxillama_py import AsyncEngine
    from oxillama_py.bus import Finished
    from oxillama_py.results import SpeculativeStats
    from oxillama_py.server.metrics import Metrics
    from oxillama_py.server.models import OneModel

    served = OneModel(AsyncEngine(EngineConfig(model_path)), "m", max_queue=4, owns=True)
    registry = Metrics(served.names, served.gauges)
    metrics = registry.models["m"]
    spec = SpeculativeStats(drafted=5, accepted=3, target_calls=2, emitted=4)
    ends = [  # one prompt, n=2: both choices share the prompt's 7 tokens
        Finished("length", 2.0, 7, submitted=0.0, admitted=0.5, first_token=1.0, sequence=0, cached_tokens=4),
        Finished("stop", 3.0, 7, submitted=0.0, admitted=0.5, first_token=1.5, sequence=1, speculative=spec),
        None,
    ]
    metrics.record(ends, {0: [1.0, 1.25, 2.0], 1: [1.5]}, 2)
    assert (metrics.prompt_tokens, metrics.generation_tokens, metrics.cached_tokens) == (7, 4, 4)
    assert (metrics.drafted, metrics.accepted) == (5, 3)
    assert metrics.finished == {"length": 1, "stop": 1}
    assert (metrics.ttft.count, metrics.ttft.sum) == (2, 2.5)
    assert (metrics.itl.count, metrics.itl.sum) == (2, 1.0)
    assert (metrics.e2e.count, metrics.queue.count) == (2, 2)
    buckets = dict(metrics.itl.buckets())
    assert buckets["0.2"] == 0 and buckets["0.3"] == 1 and buckets["0.75"] == 2 and buckets["+Inf"] == 2
    text = registry.exposition().decode()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families["oxillama:spec_decode_num_accepted_tokens"].samples[0].value == 3
    assert families["oxillama:num_slots"].samples[0].value == 16  # not loaded: the config's slots (the default)


@pytest.mark.anyio
async def test_the_request_line_in_process(model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No model: the access line's fields, the JSON format, and a path that tries to fake a second line."""
    import logging

    from oxillama_py.server.observe import JsonFormatter, RequestIdFilter

    app = create_app(EngineConfig(model_path))
    caplog.set_level(logging.INFO, logger="oxillama_py.server.access")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        await http.get("/v1/models", headers={"X-Request-Id": "in-process-1"})
        await http.get("/nothing%0AERROR forged", headers={"X-Request-Id": "in-process-2"})
    first, second = (r for r in caplog.records if r.name == "oxillama_py.server.access")
    RequestIdFilter().filter(first)  # outside the request now: the line carries its id in its fields
    line = json.loads(JsonFormatter().format(first))
    assert line["request_id"] == "in-process-1" and line["route"] == "/v1/models" and line["status"] == 200
    assert set(line) >= {"time", "level", "logger", "message", "method", "prompt_tokens", "completion_tokens"}
    assert set(line) >= {"time_to_first_token", "total_secs", "cancelled"}
    assert "\n" not in second.getMessage() and "\\x0a" in second.getMessage()
