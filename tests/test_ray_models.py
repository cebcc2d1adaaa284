"""Several models on Ray Serve: each replica's ``ModelRegistry``, and Serve's model multiplexing in front of them.

One local Ray instance: two replicas of one llama.cpp thread, two model names
(two copies of the default model's file), at most one loaded per replica.
Marked ``ray``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from server_process import free_port, serve_cli
from test_batching import CONFIDENT

from oxillama_py import Engine, EngineConfig

ray = pytest.importorskip("ray", reason="Ray Serve is the optional extra 'ray': pip install 'oxillama-py[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra 'ray': pip install 'oxillama-py[ray]'")

from oxillama_py.ray import REPLICA_HEADER, RayServeConfig, build  # noqa: E402

pytestmark = pytest.mark.ray

NAMES = ("alpha", "beta")
PROMPTS = list(CONFIDENT)[:3]  # fewer at once than a replica's 4 slots: none spills to the other
TOKENS = 8


@pytest.fixture(scope="module")
def base_url(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    copy = tmp_path_factory.mktemp("models") / "beta.gguf"
    shutil.copyfile(model_path, copy)
    engine = EngineConfig(model_path, n_ctx=2048, max_concurrency=4)
    models = ((NAMES[0], engine), (NAMES[1], EngineConfig(copy, n_ctx=2048, max_concurrency=4)))
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = RayServeConfig(
            engine=engine, models=models, max_loaded_models=1, replicas=2, num_cpus=0.5, n_threads=1, name="models"
        )
        serve.run(build(config), name=config.name, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def complete(base_url: str, model: str, prompt: str) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0}
    return httpx.post(base_url + "/v1/completions", json=body, timeout=180)


def test_each_name_is_answered_by_its_model_and_serve_keeps_it_on_one_replica(base_url: str, engine: Engine) -> None:
    listed = httpx.get(base_url + "/v1/models", timeout=30).json()
    assert [m["id"] for m in listed["data"]] == list(NAMES)
    served: dict[str, list[str]] = {name: [] for name in NAMES}
    for name in NAMES:  # one at a time first: Serve learns where each is loaded
        response = complete(base_url, name, PROMPTS[0])
        assert response.status_code == 200, response.text
        served[name].append(response.headers[REPLICA_HEADER])
        time.sleep(2.0)

    def one(job: tuple[str, str]) -> tuple[str, str, str, str]:
        name, prompt = job
        response = complete(base_url, name, prompt)
        assert response.status_code == 200, response.text
        body = response.json()
        return name, prompt, response.headers[REPLICA_HEADER], body["model"] + "|" + body["choices"][0]["text"]

    jobs = [(name, prompt) for prompt in PROMPTS for name in NAMES]
    with ThreadPoolExecutor(len(jobs)) as pool:  # both names at once
        results = list(pool.map(one, jobs))
    for name, prompt, replica, answer in results:
        assert answer == f"{name}|{engine.generate(prompt, TOKENS, temperature=0)}", (name, prompt)
        served[name].append(replica)
    # Serve's multiplexing sent each name to the replica that holds it: one load of each, no unloading.
    assert all(len(set(replicas)) == 1 for replicas in served.values()), served
    assert served[NAMES[0]][0] != served[NAMES[1]][0], served
    table = httpx.get(base_url + "/health", timeout=30).json()["replicas"]
    for name in NAMES:
        assert table[served[name][0]]["models_loaded"] == [name]


def test_an_unknown_name_is_a_404(base_url: str) -> None:
    response = complete(base_url, "gamma", PROMPTS[0])
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_cli_hands_several_models_to_ray(model_path: Path) -> None:
    """``serve --ray --model a=P --model b=P``: rejected only for bad values (the deployment itself is above)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return serve_cli("--ray", *args)

    bad = run("--model", f"a={model_path}", "--model", f"b={model_path}", "--max-loaded-models", "0")
    assert bad.returncode == 2 and "error:" in bad.stderr
