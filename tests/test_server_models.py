"""Several models and LoRA adapters in one server process: ``serve --model NAME=PATH ... --lora NAME=PATH``.

Two names are two files of the default model (hard links); a third is a LoRA
adapter over the first, built with ``gguf`` as the LoRA tests build theirs.
Routing is proven by each model's own counters in ``/health`` and by the
adapter's text, which differs from the base's; greedy texts are checked
against the in-process ``Engine`` (with ``apply_lora`` for the adapter).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from lora_gguf import write_lora
from server_process import ServerProcess, model_copies, model_flags, running_server
from test_batching import CONFIDENT

from oxillama_py import Engine, EngineConfig

openai = pytest.importorskip("openai", reason="the server tests drive it with the openai client (test extra)")
pytest.importorskip("uvicorn", reason="the server extra is not installed")

PROMPT = "The capital of France is"  # the LoRA tests' prompt: the adapter changes its greedy text
ADAPTER = "alpha-sql"
LIMITS = ("--n-ctx", "2048", "--max-concurrency", "4")


@pytest.fixture(scope="module")
def files(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {**model_copies(model_path, root, "alpha", "beta"), ADAPTER: write_lora(root / "adapter.gguf", model_path)}


@pytest.fixture(scope="module")
def expected(files: dict[str, Path], model_path: Path) -> dict[str, str]:
    """Greedy texts of ``PROMPT``: the base model's, and the adapter's (``Engine`` + ``apply_lora``)."""
    with Engine(EngineConfig(model_path, n_ctx=1024, max_concurrency=1)) as engine:
        base = engine.generate(PROMPT, 16, temperature=0)
        engine.apply_lora(files[ADAPTER], 1.0)
        adapted = engine.generate(PROMPT, 16, temperature=0)
    assert adapted != base  # else the adapter could not tell routing apart
    return {"alpha": base, "beta": base, ADAPTER: adapted}


@pytest.fixture(scope="module")
def server(files: dict[str, Path]) -> Iterator[ServerProcess]:
    flags = model_flags({"alpha": files["alpha"], "beta": files["beta"]}, {ADAPTER: files[ADAPTER]})
    with running_server(*flags, *LIMITS) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Any]:
    with openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=300) as c:
        yield c


def served(server: ServerProcess) -> dict[str, int]:
    """Requests each model has answered (its own counter in ``/health``)."""
    models: dict[str, dict[str, Any]] = server.health()["models"]  # type: ignore[assignment]
    return {name: int(model["requests_served"]) for name, model in models.items()}


def test_v1_models_lists_every_name_and_the_adapters_base(client: Any, server: ServerProcess) -> None:
    cards = client.models.list().data
    assert [card.id for card in cards] == ["alpha", "beta", ADAPTER]
    by_id = {card.id: card.model_dump() for card in cards}
    assert by_id[ADAPTER]["parent"] == "alpha" and by_id[ADAPTER]["root"] == "alpha"
    assert by_id["beta"]["parent"] is None and by_id["beta"]["root"] == "beta"
    assert {card.owned_by for card in cards} == {"oxillama_py"}
    assert client.models.retrieve(ADAPTER).id == ADAPTER
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gamma")
    health: dict[str, Any] = server.health()
    assert health["model"] == "alpha" and list(health["models"]) == ["alpha", "beta", ADAPTER]
    assert health["models"][ADAPTER]["parent"] == "alpha" and "parent" not in health["models"]["beta"]


def test_each_request_is_answered_by_the_model_it_names(
    client: Any, server: ServerProcess, expected: dict[str, str]
) -> None:
    for name in ("beta", ADAPTER, "alpha"):
        before = served(server)
        response = client.completions.create(model=name, prompt=PROMPT, max_tokens=16, temperature=0)
        assert response.model == name and response.choices[0].text == expected[name], name
        moved = {model: count - before[model] for model, count in served(server).items()}
        assert moved == {model: int(model == name) for model in moved}, name
    assert server.health()["models"][ADAPTER]["loaded"]  # type: ignore[index]
    before = served(server)
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0}  # no "model": the first one answers
    unnamed = httpx.post(server.api_url + "/completions", json=body, timeout=300).json()
    assert unnamed["model"] == "alpha" and unnamed["choices"][0]["text"] == expected["alpha"]
    assert served(server)["alpha"] == before["alpha"] + 1


def test_metrics_carry_each_models_name(client: Any, server: ServerProcess) -> None:
    from prometheus_client import parser

    client.completions.create(model="beta", prompt="Hi", max_tokens=2, temperature=0)
    text = httpx.get(server.base_url + "/metrics", timeout=30).text
    samples = {
        (sample.name, sample.labels.get("model_name")): sample.value
        for family in parser.text_string_to_metric_families(text)
        for sample in family.samples
    }
    for name in ("alpha", "beta", ADAPTER):
        assert ("oxillama:num_slots", name) in samples and ("oxillama:model_loaded", name) in samples
    assert samples[("oxillama:generation_tokens_total", "beta")] >= 2
    assert samples[("oxillama:model_loaded", "beta")] == 1


def test_an_unknown_name_is_a_404_before_any_work(client: Any, server: ServerProcess) -> None:
    before = server.health()
    for call in (
        lambda: client.completions.create(model="gamma", prompt=PROMPT, max_tokens=4),
        lambda: client.chat.completions.create(model="gamma", messages=[{"role": "user", "content": "Hi"}]),
        lambda: client.embeddings.create(model="gamma", input="Hi"),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    tokenize = httpx.post(server.base_url + "/tokenize", json={"content": "Hi", "model": "gamma"}, timeout=30)
    assert tokenize.status_code == 404 and tokenize.json()["error"]["param"] == "model"
    after = server.health()
    assert after["decode_steps"] == before["decode_steps"] and served(server) == {
        name: int(model["requests_served"])
        for name, model in before["models"].items()  # type: ignore[attr-defined]
    }


def test_tokenize_and_embeddings_honour_model(client: Any, server: ServerProcess, engine: Engine) -> None:
    ids = httpx.post(server.base_url + "/tokenize", json={"content": PROMPT, "model": "beta"}, timeout=30).json()
    assert ids == {"tokens": engine.tokenize(PROMPT, add_special=False)}
    response = client.embeddings.create(model="beta", input=PROMPT, encoding_format="float")
    assert response.model == "beta" and len(response.data[0].embedding) == engine.hidden_size()


def test_concurrent_requests_for_both_names(client: Any, server: ServerProcess, engine: Engine) -> None:
    prompts = list(CONFIDENT)[:2]
    want = {prompt: engine.generate(prompt, 12, temperature=0) for prompt in prompts}
    jobs = [(name, prompt) for prompt in prompts for name in ("alpha", "beta")]
    server.wait_idle()
    before = served(server)

    def ask(job: tuple[str, str]) -> tuple[str, str]:
        name, prompt = job
        response = client.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0)
        return response.model, response.choices[0].text

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [(name, want[prompt]) for name, prompt in jobs]
    after = served(server)
    assert (after["alpha"] - before["alpha"], after["beta"] - before["beta"]) == (2, 2)


def test_the_adapter_and_the_base_decode_in_the_same_seconds(server: ServerProcess, expected: dict[str, str]) -> None:
    """Streams for the adapter and for its base run together: each one's tokens arrive while the other's do."""

    async def stream(client: Any, name: str) -> tuple[str, list[float]]:
        chunks = await client.completions.create(model=name, prompt=PROMPT, max_tokens=16, temperature=0, stream=True)
        text, stamps = "", []
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].text:
                text += chunk.choices[0].text
                stamps.append(time.monotonic())
        return text, stamps

    async def both() -> list[tuple[str, list[float]]]:
        async with openai.AsyncOpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=300) as c:
            return list(await asyncio.gather(stream(c, ADAPTER), stream(c, "alpha")))

    server.wait_idle()
    (lora_text, lora_times), (base_text, base_times) = asyncio.run(both())
    assert lora_text == expected[ADAPTER] and base_text == expected["alpha"]
    # Overlap: each stream had sent a token before the other sent its last one.
    assert base_times[0] < lora_times[-1] and lora_times[0] < base_times[-1], (lora_times, base_times)


# -- at most one model loaded (hypercorn + trio) -------------------------------------------------


def test_max_loaded_models_unloads_the_least_recently_used(
    files: dict[str, Path], engine: Engine, expected: dict[str, str]
) -> None:
    pytest.importorskip("hypercorn", reason="the server extra is not installed")
    flags = model_flags({"alpha": files["alpha"], "beta": files["beta"]})
    with (
        running_server(*flags, *LIMITS, "--max-loaded-models", "1", backend="trio") as server,
        openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=300) as client,
    ):

        def loaded() -> list[str]:
            models: dict[str, dict[str, Any]] = server.health()["models"]  # type: ignore[assignment]
            return [name for name, model in models.items() if model["loaded"]]

        assert loaded() == []  # loaded on first use
        for name in ("beta", "alpha", "beta"):
            response = client.completions.create(model=name, prompt=PROMPT, max_tokens=16, temperature=0)
            assert response.choices[0].text == expected[name]
            assert loaded() == [name]
        # Requests for both at once: one model at a time, each request waits for its own.
        prompt = next(iter(CONFIDENT))
        want = engine.generate(prompt, 12, temperature=0)
        jobs = ["alpha", "beta"]
        with ThreadPoolExecutor(len(jobs)) as pool:
            texts = list(
                pool.map(
                    lambda name: client.completions.create(model=name, prompt=prompt, max_tokens=12, temperature=0),
                    jobs,
                )
            )
        assert [(r.model, r.choices[0].text) for r in texts] == [(name, want) for name in jobs]
        assert len(loaded()) == 1
        # A stream holds its model until it ends: here the client goes away after the first token,
        # which releases alpha, so beta can take its place (else this request would wait for ever).
        body = {"model": "alpha", "prompt": PROMPT, "max_tokens": 400, "temperature": 0, "stream": True}
        with httpx.stream("POST", server.api_url + "/completions", json=body, timeout=300) as stream:
            assert next(line for line in stream.iter_lines() if line.startswith("data: "))
        assert loaded() == ["alpha"]
        later = client.with_options(timeout=120).completions.create(model="beta", prompt=PROMPT, max_tokens=4)
        assert later.model == "beta" and loaded() == ["beta"]
        assert served(server) == {"alpha": 3, "beta": 4}


@pytest.mark.anyio
async def test_an_app_over_a_registry_leaves_the_registry_to_its_owner(model_path: Path) -> None:
    from oxillama_py import ModelRegistry
    from oxillama_py.server import ServerSettings, create_app

    registry = ModelRegistry()
    with pytest.raises(ValueError, match="registry"):
        create_app(registry)  # no name yet
    registry.add("solo", EngineConfig(model_path, n_ctx=512, max_concurrency=1))
    with pytest.raises(ValueError, match="model_name"):
        create_app(registry, ServerSettings(model_name="other"))
    app = create_app(registry)
    assert app.state.server.registry is registry
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                assert (await http.get("/health")).json()["models"]["solo"]["loaded"] is False
                body = {"prompt": PROMPT, "max_tokens": 3, "temperature": 0}
                answer = await http.post("/v1/completions", json={**body, "model": "solo"})
                assert answer.status_code == 200 and answer.json()["model"] == "solo"
                missing = await http.post("/v1/completions", json={**body, "model": "duo"})
                assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        assert registry.loaded == ("solo",)  # the app's shutdown left the caller's registry open
    finally:
        await registry.aclose()
    assert registry.loaded == ()


# -- the command line ------------------------------------------------------------------------


def serve_command(*args: str) -> tuple[int, str]:
    """``python -m oxillama_py serve ARGS`` in this process, for arguments it refuses before serving."""
    import contextlib
    import io

    from oxillama_py.server.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's own refusals
            code = int(exit_.code or 0)
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-loaded-models", "0"), "--max-loaded-models: must be an integer >= 1, got 0"),
        (("--max-loaded-models", "two"), "must be an integer >= 1, got 'two'"),
        (("--lora", "{adapter}"), "--lora must be NAME=PATH[:SCALE]"),
        (("--lora", "bad name={adapter}"), "--lora must be NAME=PATH[:SCALE]"),
        (("--lora", "sql=/nonexistent/adapter.gguf"), "no such file: /nonexistent/adapter.gguf"),
        (("--lora", "sql={adapter}:nan"), "the scale must be a finite number"),
        (("--lora", "sql="), "no path after 'sql='"),
        (("--model", "a=/nonexistent/model.gguf"), "no such file: /nonexistent/model.gguf"),
        (("--model", "a={model}", "--model", "a={model}"), "two models are named 'a'"),
        (("--model", "{model}", "--model", "{model}"), "name them with --model NAME=PATH"),
        (("--model", "a={model}", "--lora", "a={adapter}"), "a model of that name is served already"),
        (("--model-name", "x", "--model", "a={model}", "--model", "b={model}"), "--model-name names the one"),
    ],
)
def test_cli_refuses_bad_model_flags(args: tuple[str, ...], message: str, files: dict[str, Path]) -> None:
    values = {"model": str(files["alpha"]), "adapter": str(files[ADAPTER])}
    code, err = serve_command(*(arg.format(**values) for arg in args))
    assert code == 2, err
    assert "error:" in err and message in err, err


def test_cli_naming_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oxillama_py.server.model_args import parse_lora, parse_model

    odd = tmp_path / "x=y.gguf"
    odd.write_bytes(b"")
    scaled = tmp_path / "ad:0.5"
    scaled.write_bytes(b"")
    assert parse_model(f"name={odd}").name == "name"  # NAME=PATH: the path may hold '=' too
    assert parse_model(str(odd)).name is None  # '/...' is no model name: a bare path
    monkeypatch.chdir(tmp_path)
    assert parse_model("x=y.gguf").path == "x=y.gguf"  # an existing file is a bare path
    with pytest.raises(ValueError, match=r"no such file: C:\\models\\a=b.gguf"):
        parse_model("C:\\models\\a=b.gguf")  # a backslash is no model name: a bare (missing) path
    assert (parse_lora(f"sql={odd}:0.25").path, parse_lora(f"sql={odd}:0.25").scale) == (str(odd), 0.25)
    assert parse_lora(f"sql={scaled}").path == str(scaled) and parse_lora(f"sql={scaled}").scale == 1.0
    assert parse_lora("sql=ad:0.5:2").scale == 2.0  # the last ':' only
