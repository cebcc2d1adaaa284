"""The app on Ray Serve: a local Ray cluster started here, two replicas of one llama.cpp thread each.

Marked ``ray`` (``-m "not ray"`` deselects them on a small machine); skipped
with the reason where the ``ray`` extra is not installed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_process import free_port, serve_cli
from test_batching import CONFIDENT

from oxillama_py import CompletionResult, Engine, EngineConfig

ray = pytest.importorskip("ray", reason="Ray Serve is the optional extra 'ray': pip install 'oxillama-py[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra 'ray': pip install 'oxillama-py[ray]'")

from oxillama_py.ray import REPLICA_HEADER, RayServeConfig, build  # noqa: E402

pytestmark = pytest.mark.ray

APP = "oxillama-test"
PROMPTS = list(CONFIDENT)  # 16 prompts: greedy texts in a batch equal solo ones
TOKENS = 12


def test_cli_deploys_on_its_own_ray_instance_and_stops_on_sigterm(
    model_path: Path, engine: Engine, tmp_path: Path
) -> None:
    """``serve --ray``: a Ray instance of its own, the app deployed, served, and all of it gone on SIGTERM.

    First in the module: no Ray instance of the tests' own is running yet.
    """
    port = free_port()
    argv = [sys.executable, "-m", "oxillama_py", "serve", "--ray", "--replicas", "1", "--num-cpus", "1"]
    argv += ["--model", str(model_path), "--port", str(port), "--n-ctx", "2048", "--max-concurrency", "2"]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            try:
                health = httpx.get(base + "/health", timeout=5)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve --ray did not come up"
            time.sleep(0.5)
        assert health.json()["replica"] == health.headers[REPLICA_HEADER]
        replica, text = stream_one(openai.OpenAI(base_url=base + "/v1", api_key="unused"), PROMPTS[0], TOKENS)
        assert replica == health.json()["replica"] and text == engine.generate(PROMPTS[0], TOKENS, temperature=0)
    finally:
        process.terminate()
        code = process.wait(timeout=120)
    assert code == 0, log.read_text(errors="replace")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)


@dataclass
class Cluster:
    base_url: str
    handle: Any
    config: RayServeConfig

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key="unused", **kwargs)

    def replica_healths(self, expect: int = 2, tries: int = 200) -> dict[str, dict[str, Any]]:
        """``/health`` of every replica (Serve load-balances: ask until each has answered)."""
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(tries):
            response = httpx.get(self.base_url + "/health", timeout=30)
            body = response.json()
            assert response.headers[REPLICA_HEADER] == body["replica"]
            seen[body["replica"]] = body
            if len(seen) >= expect:
                return seen
        raise AssertionError(f"only {sorted(seen)} answered /health")

    def wait_idle(self, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            healths = self.replica_healths()
            if all(h["slots_busy"] == 0 and h["admitted"] == 0 for h in healths.values()):
                return healths
            assert time.monotonic() < deadline, healths
            time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(model_path: Path) -> Iterator[Cluster]:
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        config = RayServeConfig(
            engine=EngineConfig(model_path, n_ctx=4096, max_concurrency=8),
            replicas=2,
            num_cpus=1,
            n_threads=1,
            name=APP,
        )
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        handle = serve.run(build(config), name=APP, route_prefix="/")
        yield Cluster(f"http://127.0.0.1:{port}", handle, config)
    finally:
        serve.shutdown()
        ray.shutdown()


def stream_one(client: openai.OpenAI, prompt: str, max_tokens: int) -> tuple[str, str]:
    """(replica, text) of one streamed completion."""
    with client.completions.with_streaming_response.create(
        model=client.models.list().data[0].id, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
    ) as response:
        replica = response.headers[REPLICA_HEADER]
        text = "".join(chunk.choices[0].text for chunk in response.parse())
    return replica, text


def test_two_replicas_serve_sixteen_streams_with_engine_text(cluster: Cluster, engine: Engine) -> None:
    client = cluster.client()
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        served = list(pool.map(lambda p: stream_one(client, p, TOKENS), PROMPTS))
    replicas = {replica for replica, _ in served}
    assert len(replicas) == 2, served  # Serve spread them over both
    assert set(cluster.replica_healths()) == replicas
    for prompt, (_, text) in zip(PROMPTS, served, strict=True):
        assert text == engine.generate(prompt, TOKENS, temperature=0), prompt
    healths = cluster.wait_idle()
    assert sum(h["requests_served"] for h in healths.values()) >= len(PROMPTS)
    assert all(h["requests_served"] > 0 for h in healths.values())


def test_handle_api(cluster: Cluster, engine: Engine) -> None:
    handle = cluster.handle
    prompt = PROMPTS[0]
    expected = engine.generate(prompt, TOKENS, temperature=0)
    assert handle.generate.remote(prompt, TOKENS, temperature=0).result(timeout_s=120) == expected
    pieces = list(handle.options(stream=True).stream.remote(prompt, TOKENS, temperature=0))
    assert len(pieces) > 1 and "".join(pieces) == expected
    result = handle.complete.remote(prompt, TOKENS, temperature=0).result(timeout_s=120)
    assert isinstance(result, CompletionResult) and result.text == expected and result.finish_reason == "length"
    batch = handle.generate_batch.remote(PROMPTS[:3], TOKENS, temperature=0).result(timeout_s=120)
    assert batch == [engine.generate(p, TOKENS, temperature=0) for p in PROMPTS[:3]]
    health = handle.health.remote().result(timeout_s=60)
    assert health["model_loaded"] and health["replica"] in cluster.replica_healths()
    with pytest.raises(TypeError, match="cannot be passed through a deployment handle"):
        handle.generate.remote(prompt, TOKENS, progress=lambda event: None).result(timeout_s=60)


def test_client_disconnect_cancels_in_the_replica(cluster: Cluster) -> None:
    before = cluster.wait_idle()
    max_tokens = 400
    with httpx.stream(
        "POST",
        cluster.base_url + "/v1/completions",
        json={"prompt": "Write a long story about a lighthouse.", "max_tokens": max_tokens, "stream": True},
        timeout=60,
    ) as response:
        replica = response.headers[REPLICA_HEADER]
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False)]
        assert any(line.startswith("data: {") for line in received)
    after = cluster.wait_idle()  # the slot is free again long before 400 tokens
    steps = after[replica]["decode_steps"] - before[replica]["decode_steps"]
    assert 0 < steps < max_tokens


def test_a_dead_replica_fails_only_its_requests_and_serve_replaces_it(cluster: Cluster) -> None:
    cluster.wait_idle()
    client = cluster.client(max_retries=0, timeout=120)
    count = 12  # more than one replica's 8 slots: Serve must give both replicas some
    started = threading.Barrier(count + 1)
    replica_of: dict[int, str] = {}
    outcomes: dict[int, tuple[str, str | BaseException]] = {}

    def run(i: int) -> None:
        replica = "?"
        try:
            with client.completions.with_streaming_response.create(
                model=client.models.list().data[0].id,
                prompt=PROMPTS[i],
                max_tokens=120,
                temperature=0,
                stream=True,
            ) as response:
                replica = replica_of[i] = response.headers[REPLICA_HEADER]
                chunks = response.parse()
                text = next(iter(chunks)).choices[0].text
                started.wait(timeout=120)
                text += "".join(chunk.choices[0].text for chunk in chunks)
            outcomes[i] = (replica, text)
        except BaseException as exc:  # what the client of a dead replica sees
            outcomes[i] = (replica, exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    started.wait(timeout=120)  # every request is streaming
    victim = max(set(replica_of.values()), key=list(replica_of.values()).count)
    actor = ray.get_actor(f"SERVE_REPLICA::{APP}#OxiLlama#{victim}", namespace="serve")
    ray.kill(actor, no_restart=True)
    for thread in threads:
        thread.join(timeout=180)
        assert not thread.is_alive(), "a request of a dead replica hung"
    failed = {i for i, (_, outcome) in outcomes.items() if isinstance(outcome, BaseException)}
    on_victim = {i for i, (replica, _) in outcomes.items() if replica == victim}
    assert failed == on_victim, outcomes  # only the dead replica's requests failed...
    assert on_victim and len(on_victim) < count  # ...and both replicas had some
    for i, (_, outcome) in outcomes.items():
        if i not in failed:
            assert isinstance(outcome, str) and outcome.startswith(CONFIDENT[PROMPTS[i]])

    deadline = time.monotonic() + 180  # Serve starts a new replica, which loads the model
    while True:
        try:
            healths = cluster.replica_healths(tries=40)
            if victim not in healths and all(h["model_loaded"] for h in healths.values()):
                break
        except (AssertionError, httpx.HTTPError):
            pass
        assert time.monotonic() < deadline, "the deployment did not recover"
        time.sleep(1)
    replica, text = stream_one(client, PROMPTS[0], 4)
    assert replica != victim and text.strip()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        RayServeConfig(replicas=0)
    with pytest.raises(ValueError, match="must not exceed"):
        RayServeConfig(autoscale=(3, 2))
    with pytest.raises(TypeError, match="autoscale must be"):
        RayServeConfig(autoscale=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_cpus"):
        RayServeConfig(num_cpus=0)
    with pytest.raises(TypeError, match="engine must be an EngineConfig"):
        RayServeConfig(engine="model.gguf")  # type: ignore[arg-type]
    fixed = RayServeConfig(engine=EngineConfig(max_concurrency=4), replicas=3, num_cpus=2).deployment_options()
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"] == {"num_cpus": 2}
    scaled = RayServeConfig(engine=EngineConfig(max_concurrency=4), autoscale=(1, 5)).deployment_options()
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"]["target_ongoing_requests"] == 4  # the engine's slots
    assert (scaled["autoscaling_config"]["min_replicas"], scaled["autoscaling_config"]["max_replicas"]) == (1, 5)
    assert fixed["max_ongoing_requests"] == 4  # a replica takes its slots' worth; Serve queues the rest
    assert RayServeConfig(num_cpus=1.5).threads == 2 and RayServeConfig(num_cpus=2, n_threads=1).threads == 1
    for config in (RayServeConfig(replicas=2), RayServeConfig(autoscale=(0, 3))):
        build(config)  # Serve accepts the options (it validates them here, without a cluster)
    with pytest.raises(TypeError, match="RayServeConfig"):
        build({"replicas": 2})  # type: ignore[arg-type]


def test_cli_rejects_bad_ray_arguments() -> None:
    run = serve_cli
    bad = run("--ray", "--autoscale", "3")
    assert bad.returncode == 2 and "MIN:MAX" in bad.stderr
    alone = run("--replicas", "2")
    assert alone.returncode == 2 and "need --ray" in alone.stderr
    trio = run("--ray", "--backend", "trio")
    assert trio.returncode == 2 and "--backend does not apply" in trio.stderr
