"""The examples run: every script as a subprocess, the notebook headless, the web backend over HTTP.

Each uses the real default model with a small token budget, so the whole file
stays well under two minutes on two cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPT_TIMEOUT = 240  # seconds; generous, shared CI machines can be slow


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1", **extra}


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=SCRIPT_TIMEOUT,
        env=_env(),
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, (
        f"{name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


def test_every_example_is_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    covered = {
        "progress_tqdm.py",
        "progress_callback.py",
        "batch_prompts.py",
        "trio_app.py",
        "web_backend.py",
        "speculative.py",
        "prefix_cache.py",
        "snapshot_restore.py",
    }
    assert scripts <= covered, f"untested examples: {sorted(scripts - covered)}"
    for path in EXAMPLES.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert source.startswith('"""'), f"{path.name} has no module docstring"
        assert "--model" in source and "--max-tokens" in source, path.name


def test_progress_tqdm() -> None:
    proc = run_example("progress_tqdm.py", "--max-tokens", "8", "--seed", "1", "--prompt", "Once upon a time")
    assert proc.stdout.startswith("Once upon a time")
    assert len(proc.stdout.strip()) > len("Once upon a time")
    counts = [int(n) for n in re.findall(r"Generating:.*?\|\s*(\d+)/8 \[", proc.stderr)]
    assert counts, proc.stderr
    assert 1 <= counts[-1] <= 8
    assert "tok/s" in proc.stderr


def test_progress_callback() -> None:
    proc = run_example("progress_callback.py", "--max-tokens", "8", "--seed", "1", "--throttle-tokens", "1")
    lines = proc.stdout.splitlines()
    ticks = [line for line in lines if line.startswith("[tick ]")]
    finals = [i for i, line in enumerate(lines) if line.startswith("[final]")]
    assert ticks, proc.stdout
    assert len(finals) == 1, proc.stdout
    # The final event comes after every tick and repeats the last count.
    assert all(lines.index(tick) < finals[0] for tick in ticks)
    count = int(re.search(r"(\d+)/8 tokens", lines[finals[0]]).group(1))  # type: ignore[union-attr]
    assert 1 <= count <= 8
    assert f"{count:>4}/8 tokens" in ticks[-1]
    assert "---" in lines


def test_batch_prompts() -> None:
    # More prompts than slots: the worker admits the waiting ones as slots free up.
    proc = run_example("batch_prompts.py", "--num-prompts", "6", "--max-tokens", "6", "--max-concurrency", "3")
    out = proc.stdout
    assert len(re.findall(r"^done #\s*\d+", out, flags=re.MULTILINE)) == 6, out
    assert all(f"--- #{i}\n" in out for i in range(6)), out
    assert "=== 6 completions" in out
    assert re.search(r"6 prompts:.*\|\s*\d+/36 \[", proc.stderr), proc.stderr


def test_prefix_cache() -> None:
    proc = run_example("prefix_cache.py", "--questions", "2", "--max-tokens", "8")
    out = proc.stdout
    assert re.search(r"^pinned \d+ tokens", out, flags=re.MULTILINE), out
    reused = [int(n) for n in re.findall(r"^\s+(\d+)/\d+ prompt tokens from the cache", out, flags=re.MULTILINE)]
    assert len(reused) == 2 and all(n > 300 for n in reused), out
    assert "hit rate 100%" in out, out


def test_snapshot_restore(tmp_path: Path) -> None:
    proc = run_example("snapshot_restore.py", "--max-tokens", "8", "--snapshot", str(tmp_path / "bot.snap"))
    out = proc.stdout
    before, after = (int(n) for n in re.findall(r"(\d+) prompt tokens cached", out))
    assert before > 300 and after >= before - 64, out  # the restored cells are a hit (cut to the 64-token grid)
    assert "same answer: True" in out, out
    assert (tmp_path / "bot.snap").exists()


def test_speculative() -> None:
    proc = run_example("speculative.py", "--max-tokens", "24", "--compare")
    assert "quick brown fox" in proc.stdout
    assert "[speculative] 24 tokens" in proc.stdout
    assert "the texts are identical" in proc.stdout


def test_trio_app() -> None:
    proc = run_example("trio_app.py", "--max-tokens", "8", "--cancel-after", "2", "--tasks", "2")
    out = proc.stdout
    assert out.startswith("[stream] ")
    assert "stopped by the cancel scope after 2 pieces (cancelled_caught=True)" in out, out
    assert "[nursery] task 0:" in out and "[nursery] task 1:" in out, out
    assert "[nursery] 2 concurrent generations" in out


# -- the notebook ------------------------------------------------------------------------


@pytest.fixture
def python3_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ``python3`` kernel spec that runs *this* interpreter, ahead of any other on the path.

    A ``python3`` spec installed elsewhere (the user's, a system one) may point at
    another Python without the package; ``JUPYTER_PATH`` comes first in the search.
    """
    import ipykernel  # noqa: F401  (in the 'test' extra: the kernel runs it)

    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    from jupyter_client.kernelspec import KernelSpecManager

    found = KernelSpecManager().get_kernel_spec("python3")
    assert found.argv[0] == sys.executable
    return "python3"


def test_progress_widgets_notebook(python3_kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("OXILLAMA_EXAMPLE_MAX_TOKENS", "8")
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")
    nb = nbformat.read(EXAMPLES / "progress_widgets.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=python3_kernel,
        timeout=SCRIPT_TIMEOUT,
        resources={"metadata": {"path": str(EXAMPLES)}},
    )
    client.execute()  # raises CellExecutionError if a cell (or its asserts) fails

    texts = [
        output.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "stream"
    ]
    joined = "".join(texts)
    assert "bar_style='success' value=8 max=8" in joined, joined
    assert re.search(r"tqdm: n=[1-8] total=8", joined), joined
    widget_views = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    ]
    assert len(widget_views) == 2  # the IntProgress and the tqdm.notebook bar


# -- the web backend: the server mounted in a user's own application ------------------------

WEB_MAX_TOKENS = 8  # the example's --max-tokens: /summarize's budget and a chat's default


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _load_web_backend() -> Any:
    spec = importlib.util.spec_from_file_location("web_backend_example", EXAMPLES / "web_backend.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python examples/web_backend.py`` on a free loopback port, with the default model."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("web") / "server.log"
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLES / "web_backend.py"),
                *("--host", "127.0.0.1", "--port", str(port)),
                *("--n-ctx", "4096", "--max-concurrency", "8", "--max-tokens", str(WEB_MAX_TOKENS)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=EXAMPLES.parent,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SCRIPT_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the web backend exited {proc.returncode}:\n{log_path.read_text(encoding='utf-8')}")
            try:
                # The user's lifespan loads the shared engine; the mounted server reports it.
                if httpx.get(f"{base}/llm/health", timeout=2).json().get("model_loaded"):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the web backend did not start:\n{log_path.read_text(encoding='utf-8')}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()  # SIGTERM: uvicorn shuts down gracefully, the user's lifespan closes the engine
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log_text = log_path.read_text(encoding="utf-8")
    assert "Traceback" not in log_text, log_text
    assert "Application shutdown complete" in log_text, log_text


def _health(base: str) -> dict[str, Any]:
    response = httpx.get(f"{base}/llm/health", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_idle(base: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll the mounted ``/health`` until no slot is busy and nothing is admitted or queued."""
    deadline = time.monotonic() + timeout
    while True:
        health = _health(base)
        if health["slots_busy"] == 0 and health["admitted"] == 0 and health["queue"] == 0:
            return health
        if time.monotonic() > deadline:
            pytest.fail(f"the server is still busy after {timeout} s: {health}")
        time.sleep(0.05)


PROMPTS = [
    "Once upon a time",
    "The capital of France is",
    "def fibonacci(n):",
    "The three primary colours are",
    "Water boils at a temperature of",
    "The quick brown fox",
    "To be, or not to be,",
    "Photosynthesis is the process by which",
]
TEXT = "The cat sat on the mat all afternoon, watching the birds in the garden and ignoring the dog."


def test_web_backend_own_routes_share_the_engine(web_server: str) -> None:
    openai = pytest.importorskip("openai", reason="the test extra installs it")
    hello = httpx.get(f"{web_server}/hello", timeout=30)
    assert hello.status_code == 200 and hello.text.startswith("Hello from my own application")

    before = _wait_idle(web_server)
    summary = httpx.get(f"{web_server}/summarize", params={"text": TEXT}, timeout=SCRIPT_TIMEOUT)
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert isinstance(body["summary"], str) and body["finish_reason"] in ("stop", "length")
    assert 1 <= body["completion_tokens"] <= WEB_MAX_TOKENS
    after = _wait_idle(web_server)
    # One engine: the user's route decoded on it (the mounted server's engine-wide counter moved),
    # but it is not one of the server's requests.
    assert after["decode_steps"] > before["decode_steps"], (before, after)
    assert after["requests_served"] == before["requests_served"]

    # The same conversation through the mounted OpenAI route: the same engine, template and greedy text.
    messages = _load_web_backend().summary_messages(TEXT)
    with openai.OpenAI(base_url=f"{web_server}/llm/v1", api_key="unused", max_retries=0, timeout=300) as client:
        chat = client.chat.completions.create(
            model=after["model"], messages=messages, max_tokens=WEB_MAX_TOKENS, temperature=0
        )
    assert chat.choices[0].message.content.strip() == body["summary"]
    assert chat.usage.completion_tokens == body["completion_tokens"]

    for params in ({}, {"text": "  "}, {"text": "x" * 5000}):
        response = httpx.get(f"{web_server}/summarize", params=params, timeout=30)
        assert response.status_code in (400, 413), response.text
        assert "error" in response.json()


def test_web_backend_mounted_openai_routes(web_server: str) -> None:
    openai = pytest.importorskip("openai", reason="the test extra installs it")
    health = _health(web_server)
    assert health["status"] == "ok" and health["model_loaded"] is True and health["slots"] == 8
    model = health["model"]
    with openai.OpenAI(base_url=f"{web_server}/llm/v1", api_key="unused", max_retries=0, timeout=300) as client:
        assert [m.id for m in client.models.list().data] == [model]
        completion = client.completions.create(
            model=model, prompt="The capital of France is", max_tokens=6, temperature=0
        )
        assert completion.choices[0].text and completion.usage.completion_tokens <= 6
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}], temperature=0)
        assert chat.choices[0].message.role == "assistant"
        assert 1 <= chat.usage.completion_tokens <= WEB_MAX_TOKENS  # no max_tokens: the example's default
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0, stream=True
        )
        chunks = list(stream)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] in (["stop"], ["length"])
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])

    # The mounted app answers its own unknown routes in OpenAI's error shape; the host's stay the host's.
    unknown = httpx.get(f"{web_server}/llm/v1/engines", timeout=30)
    assert unknown.status_code == 404 and set(unknown.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(f"{web_server}/v1/models", timeout=30).status_code == 404

    # The playground page sits at /llm/ and computes its API URLs from its own location.
    page = httpx.get(f"{web_server}/llm/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert model in page.text and 'fetch("/v1' not in page.text
    _wait_idle(web_server)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_web_backend_httpx_streams_concurrently_through_the_prefix(web_server: str) -> None:
    max_tokens = 10
    url = f"{web_server}/llm/v1/chat/completions"
    results: dict[int, list[tuple[str | None, str]]] = {}

    async with httpx.AsyncClient(timeout=httpx.Timeout(SCRIPT_TIMEOUT)) as client:

        async def one(index: int) -> None:
            body = {
                "messages": [{"role": "user", "content": PROMPTS[index]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True, "include_progress": True},
            }
            events: list[tuple[str | None, str]] = []
            async with client.stream("POST", url, json=body) as response:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                name: str | None = None
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        name = line[len("event: ") :]
                    elif line.startswith("data: "):
                        events.append((name, line[len("data: ") :]))
                        name = None
            results[index] = events

        async def summarize() -> None:  # the user's own route, decoding in the same batch
            response = await client.get(f"{web_server}/summarize", params={"text": TEXT})
            assert response.status_code == 200, response.text

        async with anyio.create_task_group() as group:
            for index in range(len(PROMPTS)):
                group.start_soon(one, index)
            group.start_soon(summarize)

    assert sorted(results) == list(range(len(PROMPTS)))
    for events in results.values():
        assert events[-1] == (None, "[DONE]"), events
        assert "error" not in {name for name, _ in events}, events
        chunks = [json.loads(data) for name, data in events[:-1] if name is None]
        progress = [json.loads(data) for name, data in events if name == "progress"]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        usage = chunks[-1]["usage"]
        assert chunks[-1]["choices"] == [] and 1 <= usage["completion_tokens"] <= max_tokens
        assert progress and [p["is_final"] for p in progress].count(True) == 1 and progress[-1]["is_final"]
        assert progress[-1]["tokens_total"] == max_tokens
        assert progress[-1]["tokens_generated"] == usage["completion_tokens"]
        counts = [p["tokens_generated"] for p in progress]
        assert counts == sorted(counts), counts
    _wait_idle(web_server)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_web_backend_client_disconnect_frees_the_slot(web_server: str) -> None:
    before = await anyio.to_thread.run_sync(_wait_idle, web_server)
    # Greedy, this prompt runs to max_tokens (no end of text): the stream is still decoding when we leave.
    budget = 480  # a slot holds 4096 / 8 = 512 cells
    body = {"prompt": "The history of the city begins", "max_tokens": budget, "temperature": 0, "stream": True}
    async with httpx.AsyncClient(timeout=httpx.Timeout(SCRIPT_TIMEOUT)) as client:
        async with client.stream("POST", f"{web_server}/llm/v1/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {") and json.loads(line[len("data: ") :])["choices"][0]["text"]:
                    break  # text arrived: leaving the block closes the connection mid-stream
            busy = (await client.get(f"{web_server}/llm/health")).json()
            assert busy["slots_busy"] == 1 and busy["admitted"] == 1, busy
        after = await anyio.to_thread.run_sync(_wait_idle, web_server)  # cancelled: slot and place freed
        assert after["requests_served"] == before["requests_served"] + 1, after
        assert after["decode_steps"] - before["decode_steps"] < budget, (before, after)  # it did not run to the end
        # The server keeps serving.
        again = await client.post(
            f"{web_server}/llm/v1/completions", json={"prompt": "Hello", "max_tokens": 2, "temperature": 0}
        )
        assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 2


def test_web_backend_playground_works_under_the_prefix(web_server: str, tmp_path: Path) -> None:
    """The mounted playground, in headless Chromium: its requests go to /llm/v1/..., not /v1/...."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, chromedriver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.is_file() and chromedriver.is_file()):
        pytest.skip("headless Chromium is missing (Debian's 'chromium' and 'chromium-driver' packages)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(flag)
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(chromedriver)), options=options)
    try:
        driver.set_page_load_timeout(60)
        for page in (f"{web_server}/llm/", f"{web_server}/llm"):  # without the slash: redirected to it
            driver.get(page)
            assert driver.current_url == f"{web_server}/llm/"
            wait = WebDriverWait(driver, SCRIPT_TIMEOUT, poll_frequency=0.05)
            wait.until(lambda d: d.find_element(By.ID, "send").is_enabled())
            field = driver.find_element(By.ID, "max-tokens")
            field.clear()
            field.send_keys("4")
            driver.find_element(By.ID, "prompt").send_keys("Name three colours.")
            driver.find_element(By.ID, "send").click()
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") != "running")
            status = driver.find_element(By.ID, "status").text
            assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", status
            assert status.startswith("done: "), status
            sent = driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name).filter(u => u.includes('/v1/'))"
            )
            assert sent == [f"{web_server}/llm/v1/chat/completions"], sent
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == [], errors
    finally:
        driver.quit()
    _wait_idle(web_server)


def test_web_backend_build_app_is_importable() -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from oxillama_py import EngineConfig

    module = _load_web_backend()
    app = module.build_app(EngineConfig(n_ctx=2048))  # builds only; the lifespan loads the model
    assert isinstance(app, Starlette)
    assert {"/hello", "/summarize"} <= {getattr(route, "path", None) for route in app.routes}
    (mount,) = [route for route in app.routes if isinstance(route, Mount)]
    assert mount.path == "/llm"
    assert {"/", "/health", "/v1/chat/completions", "/v1/completions"} <= {
        getattr(r, "path", None) for r in mount.routes
    }
