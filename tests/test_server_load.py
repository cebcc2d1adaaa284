"""Clients that go away, a server that shuts down, and a bounded load test, on real server processes.

The server's backend is the parameter (uvicorn + asyncio, hypercorn + trio);
the clients are httpx on the test's own loop.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from server_process import ServerProcess, running_server

pytest.importorskip("uvicorn", reason="the server extra is not installed")
pytest.importorskip("hypercorn", reason="the server extra is not installed")

pytestmark = pytest.mark.anyio

SERVER_PARAMS = [pytest.param("asyncio", id="uvicorn-asyncio"), pytest.param("trio", id="hypercorn-trio")]
LONG_PROMPT = "The history of the city begins"  # greedy, it runs to max_tokens


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the client side; the server's backend is the parameter that matters here


@pytest.fixture(scope="module", params=SERVER_PARAMS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with running_server("--n-ctx", "4096", "--max-concurrency", "8", "--max-queue", "32", backend=request.param) as srv:
        yield srv


def rss_kib(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Stream:
    """One streaming completion, read event by event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.text = ""
        self.done = False
        self.finish: str | None = None
        self.usage: dict[str, int] | None = None
        self.chunks = 0

    async def next_chunk(self) -> bool:
        """Read up to the next data line; False at the end of the body."""
        async for line in self.lines:
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                self.done = True
                return False
            chunk = json.loads(data)
            assert "error" not in chunk, chunk
            if chunk.get("usage"):
                self.usage = chunk["usage"]
            for choice in chunk["choices"]:
                self.text += choice["text"]
                self.finish = choice["finish_reason"] or self.finish
            self.chunks += 1
            return True
        return False


def body(prompt: str, max_tokens: int) -> dict[str, object]:
    return {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_dropped_streams_free_their_slots(server: ServerProcess) -> None:
    """8 streams decode together; 4 are dropped mid-stream: their slots free, the other 4 finish intact."""
    server.wait_idle()
    max_tokens = 300
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=16)) as http:
        contexts = [http.stream("POST", server.api_url + "/completions", json=body(LONG_PROMPT, max_tokens))]
        contexts += [
            http.stream("POST", server.api_url + "/completions", json=body(f"{LONG_PROMPT} {i}", max_tokens))
            for i in range(7)
        ]
        streams = [Stream(await context.__aenter__()) for context in contexts]
        try:
            for stream in streams:
                assert stream.response.status_code == 200
                assert await stream.next_chunk()
            assert server.health()["slots_busy"] == 8
            for context in contexts[4:]:  # the client goes away mid-stream
                await context.__aexit__(None, None, None)
            deadline = time.monotonic() + 60
            while (health := server.health())["slots_busy"] > 4 or health["admitted"] > 4:
                assert time.monotonic() < deadline, health
                await anyio.sleep(0.02)
            for stream in streams[:4]:
                while await stream.next_chunk():
                    pass
        finally:
            for context in contexts[:4]:
                await context.__aexit__(None, None, None)
    for stream in streams[:4]:
        assert stream.done and stream.finish == "length"
        assert stream.usage is not None and stream.usage["completion_tokens"] == max_tokens
        assert stream.text
    server.wait_idle()


async def test_dropped_plain_request_frees_its_slot(server: ServerProcess) -> None:
    server.wait_idle()
    served = server.health()["requests_served"]
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, read=1.0)) as http:
        with pytest.raises(httpx.ReadTimeout):  # gives up and closes the connection
            await http.post(server.api_url + "/completions", json={"prompt": LONG_PROMPT, "max_tokens": 400})
    health = server.wait_idle(timeout=60)
    assert health["requests_served"] == served + 1  # ended, not still decoding for nobody


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_graceful_shutdown_finishes_short_requests_and_cancels_long_ones(backend: str) -> None:
    # The short request needs far less than the grace period, the long one far more, on any machine.
    args = ("--n-ctx", "16384", "--max-concurrency", "2", "--shutdown-grace", "8")
    with running_server(*args, backend=backend) as srv:
        results: dict[str, Stream] = {}

        async def client(name: str, max_tokens: int, started: anyio.Event) -> None:
            async with (
                httpx.AsyncClient(timeout=120) as http,
                http.stream("POST", srv.api_url + "/completions", json=body(LONG_PROMPT, max_tokens)) as response,
            ):
                stream = results[name] = Stream(response)
                await stream.next_chunk()
                started.set()
                try:
                    while await stream.next_chunk():
                        pass
                except httpx.HTTPError:
                    pass  # the connection is cut when the grace period ends

        async def main() -> int:
            async with anyio.create_task_group() as group:
                short, long = anyio.Event(), anyio.Event()
                group.start_soon(client, "short", 10, short)
                group.start_soon(client, "long", 8000, long)
                await short.wait()
                await long.wait()
                srv.process.send_signal(signal.SIGTERM)
                at_signal = results["long"].chunks
            return at_signal

        at_signal = anyio.run(main)
        code = srv.process.wait(60)
        assert code == 0, srv.log()
        assert results["short"].done and results["short"].finish == "length"  # finished within the grace
        assert results["short"].usage is not None and results["short"].usage["completion_tokens"] == 10
        assert not results["long"].done  # cut when the grace ran out
        # ...not at the signal: the server went on decoding it through the grace period (8 s: far more
        # than the few chunks that could be in flight when the signal came).
        assert results["long"].chunks > at_signal + 5
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.base_url + "/health", timeout=5)  # no longer accepting


async def test_load_with_drops(server: ServerProcess) -> None:
    """32 clients, 1,000 requests, a quarter dropped mid-stream: no 5xx, nothing hung, memory flat."""
    rng = random.Random(7)
    server.wait_idle()
    failures: list[str] = []
    counts = {"done": 0, "dropped": 0}

    async def one(http: httpx.AsyncClient, index: int) -> None:
        drop = rng.random() < 0.25
        prompt = f"Item {index}: the colour"
        with anyio.fail_after(120):  # a hung connection fails the test
            async with http.stream("POST", server.api_url + "/completions", json=body(prompt, 6)) as response:
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {(await response.aread())[:200]!r}")
                    return
                stream = Stream(response)
                if drop:
                    await stream.next_chunk()
                    counts["dropped"] += 1
                    return  # leaving the block closes the connection mid-stream
                while await stream.next_chunk():
                    pass
                if not stream.done or stream.usage is None:
                    failures.append(f"request {index} ended without [DONE]")
                counts["done"] += 1

    async def run(total: int, start: int) -> None:
        queue = iter(range(start, start + total))
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=32)) as http:

            async def worker() -> None:
                for index in queue:
                    await one(http, index)

            async with anyio.create_task_group() as group:
                for _ in range(32):
                    group.start_soon(worker)

    await run(100, 0)  # warm up: allocator, caches, connection handling
    server.wait_idle(timeout=60)
    before = rss_kib(server)
    await run(1000, 100)
    health = server.wait_idle(timeout=60)
    growth_mib = (rss_kib(server) - before) / 1024
    assert not failures, failures[:5]
    assert counts["done"] + counts["dropped"] == 1100 and counts["dropped"] > 150
    assert health["slots_busy"] == 0 and health["queue"] == 0 and health["admitted"] == 0
    assert growth_mib < 20, f"RSS grew by {growth_mib:.1f} MiB over 1,000 requests"
