"""Routing on Ray Serve: Serve's prefix-aware router against its default one, behind the app's ingress.

One local Ray instance for the module holds two apps of two replicas each:
``router="prefix"`` at ``/`` and ``router="pow2"`` at ``/pow2``. Marked ``ray``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import free_port, serve_cli

from oxillama_py import EngineConfig

ray = pytest.importorskip("ray", reason="Ray Serve is the optional extra 'ray': pip install 'oxillama-py[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra 'ray': pip install 'oxillama-py[ray]'")

from oxillama_py.ray import REPLICA_HEADER, RayServeConfig, build, prefix_router_class  # noqa: E402
from oxillama_py.ray_ingress import routing_text  # noqa: E402

pytestmark = pytest.mark.ray

TOPICS = ("lighthouses and the sea", "bread baking and ovens")


def system_prompt(topic: str) -> str:
    """A long system prompt of its own per user (a few hundred tokens)."""
    rules = " ".join(f"Rule {i}: when asked about {topic}, answer in one short sentence." for i in range(25))
    return f"You are an assistant who knows everything about {topic}. {rules}"


@dataclass
class Apps:
    base_url: str

    def chat(self, prefix: str, topic: str, question: str) -> tuple[str, dict[str, Any]]:
        """(replica, usage) of one greedy chat request to the app at ``prefix``."""
        messages = [{"role": "system", "content": system_prompt(topic)}, {"role": "user", "content": question}]
        response = httpx.post(
            f"{self.base_url}{prefix}/v1/chat/completions",
            json={"messages": messages, "max_tokens": 3, "temperature": 0},
            timeout=120,
        )
        assert response.status_code == 200, response.text
        return response.headers[REPLICA_HEADER], response.json()["usage"]


@pytest.fixture(scope="module")
def apps(model_path: Path) -> Iterator[Apps]:
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for router, prefix in (("prefix", "/"), ("pow2", "/pow2")):
            config = RayServeConfig(
                engine=EngineConfig(model_path, n_ctx=4096, max_concurrency=4, prefix_cache_tokens=2048),
                replicas=2,
                num_cpus=0.5,
                n_threads=1,
                name=f"routing-{router}",
                router=router,
            )
            serve.run(build(config), name=config.name, route_prefix=prefix)
        yield Apps(f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        ray.shutdown()


def test_a_users_turns_stay_on_one_replica_whose_cache_hits_grow(apps: Apps) -> None:
    served: dict[str, list[str]] = {topic: [] for topic in TOPICS}
    cached: dict[str, list[int]] = {topic: [] for topic in TOPICS}
    for turn in range(4):
        for topic in TOPICS:
            replica, usage = apps.chat("", topic, f"Question {turn}: tell me one fact.")
            served[topic].append(replica)
            cached[topic].append(usage["prompt_tokens_details"]["cached_tokens"])
            system_tokens = usage["prompt_tokens"] - 20
    for topic in TOPICS:
        assert len(set(served[topic])) == 1, served  # every turn on the replica that holds the prefix
        assert all(count >= system_tokens for count in cached[topic][1:]), cached
    # The second user's first prompt matched nothing: the router gave it the replica holding the fewest prefixes.
    assert served[TOPICS[0]][0] != served[TOPICS[1]][0]

    health = httpx.get(apps.base_url + "/health", timeout=30).json()
    table = health["replicas"]  # every replica's numbers, as its answers brought them to the ingress
    assert health["replica"] in table
    metrics = httpx.get(apps.base_url + "/metrics", timeout=30).text
    assert "oxillama:prefix_cache_hit_tokens_total" in metrics  # the answering replica's own counters
    for topic in TOPICS:
        numbers = table[served[topic][0]]["prefix_cache"]
        assert numbers["hits"] >= 3 and numbers["hit_tokens"] >= sum(cached[topic])
        hits = re.search(rf'oxillama:replica_prefix_cache_hits_total{{replica="{served[topic][0]}"}} (\S+)', metrics)
        assert hits is not None and float(hits.group(1)) >= sum(cached[topic])


def test_pow2_spreads_a_users_turns(apps: Apps) -> None:
    """Serve's default router picks the less busy of two replicas: idle ones alike, so a prefix lands anywhere."""
    served = [apps.chat("/pow2", TOPICS[0], f"Question {turn}: tell me one fact.")[0] for turn in range(16)]
    assert len(set(served)) == 2, served


def test_a_stream_through_the_ingress_keeps_the_replica_header(apps: Apps) -> None:
    messages = [{"role": "system", "content": system_prompt(TOPICS[0])}, {"role": "user", "content": "Hello"}]
    with httpx.stream(
        "POST",
        apps.base_url + "/v1/chat/completions",
        json={"messages": messages, "max_tokens": 6, "temperature": 0, "stream": True},
        timeout=120,
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        replica = response.headers[REPLICA_HEADER]
    assert lines[-1] == "data: [DONE]" and len(lines) > 2
    assert replica in httpx.get(apps.base_url + "/health", timeout=30).json()["replicas"]


def test_the_ingress_reads_the_routers_text() -> None:
    chat = b'{"model": "m", "messages": [{"role": "system", "content": "Be brief."}, '
    chat += b'{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}'
    assert routing_text("/v1/chat/completions", chat) == ("Be brief.Hi", "m")
    assert routing_text("/v1/completions", b'{"prompt": ["Once", "Twice"]}') == ("Once", None)
    assert routing_text("/v1/completions", b"not json") == ("", None)
    assert routing_text("/health", b"") == ("", None)


def test_router_config_and_cli() -> None:
    prefix = RayServeConfig(router="prefix").deployment_options()["request_router_config"]
    router = prefix_router_class()
    assert router.__name__ == "PrefixCacheAffinityRouter"  # Serve's, not ours
    assert prefix.request_router_class == f"{router.__module__}.{router.__qualname__}"
    assert prefix.request_router_kwargs == {"imbalanced_threshold": 8}  # half the default 16 slots
    assert "request_router_config" not in RayServeConfig(router="pow2").deployment_options()
    assert RayServeConfig(imbalance=1).deployment_options()["request_router_config"].request_router_kwargs == {
        "imbalanced_threshold": 1
    }
    with pytest.raises(ValueError, match="router must be one of 'prefix', 'pow2'"):
        RayServeConfig(router="random")
    with pytest.raises(ValueError, match="imbalance must be >= 0"):
        RayServeConfig(imbalance=-1)

    run = serve_cli
    bad = run("--ray", "--router", "random")
    assert bad.returncode == 2 and "invalid choice: 'random'" in bad.stderr
    alone = run("--router", "pow2")
    assert alone.returncode == 2 and "need --ray" in alone.stderr
