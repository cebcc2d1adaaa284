"""First come, first served through the server, on uvicorn + asyncio, uvloop and hypercorn + trio.

A request's place in the engine's waiting line is taken when the server
admits it. With one slot requests run one after another, so the order their
answers end in is the order they started in.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest
from server_process import SERVER_BACKENDS, ServerProcess, running_server
from test_admission_order import BLOCKER, ORDERED

pytest.importorskip("uvicorn", reason="the server extra is not installed")
pytest.importorskip("hypercorn", reason="the server extra is not installed")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the client side; the server's backend is the parameter that matters below


@pytest.fixture(scope="module", params=SERVER_BACKENDS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    # No --max-concurrency: the default from a context of 1024 cells is one slot.
    with running_server("--n-ctx", "1024", "--max-queue", "16", backend=request.param) as srv:
        yield srv


async def wait_admitted(client: httpx.AsyncClient, server: ServerProcess, count: int) -> None:
    with anyio.fail_after(60):
        while (await client.get(server.base_url + "/health")).json()["admitted"] < count:
            await anyio.sleep(0.005)


async def test_the_server_admits_first_come_first_served(server: ServerProcess) -> None:
    """Requests (chat and completions mixed) sent one after another start in the order they came."""
    finished: list[int] = []
    async with httpx.AsyncClient(timeout=120) as client:
        health = (await client.get(server.base_url + "/health")).json()
        assert health["slots"] == 1  # the default max_concurrency of --n-ctx 1024

        async def send(index: int, body: dict[str, object]) -> None:
            chat = "messages" in body
            url = server.api_url + ("/chat/completions" if chat else "/completions")
            response = await client.post(url, json={**body, "temperature": 0})
            assert response.status_code == 200, response.text
            finished.append(index)

        async with anyio.create_task_group() as group:
            group.start_soon(send, -1, {"prompt": BLOCKER, "max_tokens": 24})
            await wait_admitted(client, server, 1)
            for index, prompt in enumerate(ORDERED):
                body = {"messages": [{"role": "user", "content": prompt}]} if index % 2 else {"prompt": prompt}
                group.start_soon(send, index, {**body, "max_tokens": 2})
                await wait_admitted(client, server, index + 2)
        assert finished == [-1, *range(len(ORDERED))]
    server.wait_idle()
