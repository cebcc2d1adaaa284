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


# -- the web backend ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
                *("--n-ctx", "4096", "--max-concurrency", "8", "--max-tokens", "8"),
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
                if httpx.get(f"{base}/health", timeout=2).json().get("model_loaded"):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the web backend did not start:\n{log_path.read_text(encoding='utf-8')}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()  # SIGTERM: uvicorn shuts down gracefully, the lifespan closes the engine
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log_text = log_path.read_text(encoding="utf-8")
    assert "Traceback" not in log_text, log_text
    assert "Application shutdown complete" in log_text, log_text


async def _read_events(
    client: httpx.AsyncClient, url: str, params: dict[str, Any], *, stop_after_token: bool = False
) -> list[tuple[str, Any, float]]:
    """Parse the server-sent events of one request into ``(event, data, arrival time)``."""
    events: list[tuple[str, Any, float]] = []
    async with client.stream("GET", url, params=params) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        name, data = "message", []
        async for line in response.aiter_lines():
            if line == "":
                if data:
                    events.append((name, json.loads("\n".join(data)), time.perf_counter()))
                    if stop_after_token and name == "token":
                        break  # leaving the block closes the connection mid-stream
                name, data = "message", []
            elif line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].removeprefix(" "))
    return events


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


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_web_backend_streams_concurrent_clients(web_server: str) -> None:
    max_tokens = 10
    results: dict[int, list[tuple[str, Any, float]]] = {}

    async with httpx.AsyncClient(timeout=httpx.Timeout(SCRIPT_TIMEOUT)) as client:

        async def one(index: int) -> None:
            params = {"prompt": PROMPTS[index], "max_tokens": max_tokens, "temperature": 0}
            results[index] = await _read_events(client, f"{web_server}/generate", params)

        async with anyio.create_task_group() as group:
            for index in range(len(PROMPTS)):
                group.start_soon(one, index)

    assert sorted(results) == list(range(len(PROMPTS)))
    for index, events in results.items():
        names = [name for name, _, _ in events]
        assert "error" not in names, events
        tokens = [data["text"] for name, data, _ in events if name == "token"]
        progress = [data for name, data, _ in events if name == "progress"]
        assert tokens, f"client {index} got no token: {events}"
        assert names[-1] == "done", events
        done_text = events[-1][1]["text"]
        assert "".join(tokens) == done_text, (tokens, done_text)
        assert progress and progress[-1]["is_final"] is True, progress
        assert [p["is_final"] for p in progress].count(True) == 1, progress
        final = progress[-1]
        assert final["tokens_total"] == max_tokens
        assert 1 <= final["tokens_generated"] <= max_tokens
        assert set(final) >= {"tokens_generated", "tokens_total", "elapsed_secs", "tokens_per_sec", "eta_secs"}
        counts = [p["tokens_generated"] for p in progress]
        assert counts == sorted(counts), counts

    # One shared engine batches the requests: every client saw its first token before any finished.
    first_tokens = [next(t for name, _, t in events if name == "token") for events in results.values()]
    dones = [events[-1][2] for events in results.values()]
    assert max(first_tokens) < min(dones)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_web_backend_client_disconnect_and_bad_requests(web_server: str) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(SCRIPT_TIMEOUT)) as client:
        before = (await client.get(f"{web_server}/health")).json()["requests"]
        # Leave mid-stream: the server cancels that generation (it would run 480 tokens) and keeps serving.
        params = {"prompt": "Write a very long story about a dragon.", "max_tokens": 480, "temperature": 0}
        events = await _read_events(client, f"{web_server}/generate", params, stop_after_token=True)
        assert events and events[-1][0] == "token"
        with anyio.fail_after(60):
            while True:
                stats = (await client.get(f"{web_server}/health")).json()["requests"]
                if stats["disconnected"] > before["disconnected"]:
                    break
                await anyio.sleep(0.05)
        assert stats["active"] == 0, stats
        assert stats["disconnected"] == before["disconnected"] + 1, stats

        events = await _read_events(client, f"{web_server}/generate", {"prompt": "Hello", "temperature": 0})
        assert events[-1][0] == "done"
        final = [data for name, data, _ in events if name == "progress"][-1]
        assert final["is_final"] and final["tokens_total"] == 8  # the server's --max-tokens default

        page = await client.get(f"{web_server}/")
        assert page.status_code == 200 and "EventSource" in page.text

        for params in ({}, {"prompt": "Hi", "max_tokens": "many"}, {"prompt": "Hi", "max_tokens": 0}):
            response = await client.get(f"{web_server}/generate", params=params)
            assert response.status_code == 400, response.text
            assert "error" in response.json()


def test_web_backend_create_app_is_importable() -> None:
    spec = importlib.util.spec_from_file_location("web_backend_example", EXAMPLES / "web_backend.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from starlette.applications import Starlette

    from oxillama_py import EngineConfig

    app = module.create_app(EngineConfig(n_ctx=2048))  # builds only; the lifespan loads the model
    assert isinstance(app, Starlette)
    assert {"/", "/health", "/generate"} <= {route.path for route in app.routes}
