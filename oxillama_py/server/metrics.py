"""``GET /metrics``: the server's Prometheus metrics, kept as plain numbers and exposed with ``prometheus_client``.

The counts live in plain Python objects that only the event loop's thread
updates, so recording costs no lock: a request's :class:`MetricsTap` appends
its tokens' times as they come (one list append per token) and folds them into
the histograms once, when its generation is finalised. The gauges (slots busy,
queue length) are read from the engine's stats at scrape time. Names follow
vLLM's (``vllm:`` becomes ``oxillama:``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import pairwise
from typing import Any

from ..bus import Finished, Step, Subscriber
from ..bus.events import Event
from ..bus.subscriber import Outcome
from ..engine import AsyncEngine
from .observe import RequestInfo

__all__ = ["CONTENT_TYPE", "Histogram", "Metrics", "MetricsTap"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
_TTFT = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
_ITL = (0.001, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


class Histogram:
    """Bucket counts, a sum and a count; cumulated into Prometheus' ``le`` buckets only when scraped."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        total = 0
        out = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class Metrics:
    """Everything ``/metrics`` shows for one app (each app has its own: several can share a process)."""

    def __init__(self, engine: AsyncEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.requests: Counter[tuple[str, str]] = Counter()
        """HTTP requests by (endpoint, status)."""
        self.finished: Counter[str] = Counter()
        """Sequences (choices) by finish reason."""
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cached_tokens = 0
        self.drafted = 0
        self.accepted = 0
        self.ttft = Histogram(_TTFT)
        self.itl = Histogram(_ITL)
        self.e2e = Histogram(_LATENCY)
        self.queue = Histogram((0.0005, 0.001, 0.005, *_LATENCY))

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, str(status))] += 1

    def tap(self, choices_per_prompt: int, info: RequestInfo | None) -> MetricsTap:
        """A subscriber that records one engine call's choices (and fills ``info`` for the request's log line)."""
        return MetricsTap(self, choices_per_prompt, info)

    def record(self, finished: Sequence[Finished | None], times: dict[int, list[float]], n: int) -> None:
        """Fold one finished engine call into the counters; prompts count once per prompt, as ``usage`` does."""
        for end in finished:
            if end is None:
                continue
            self.finished[end.reason] += 1
            if end.sequence % n == 0:
                self.prompt_tokens += end.prompt_tokens
                self.cached_tokens += end.cached_tokens
            stamps = times.get(end.sequence, ())
            self.generation_tokens += len(stamps)
            if end.admitted is not None:
                self.queue.observe(max(0.0, end.admitted - end.submitted))
            if end.first_token is not None:
                self.ttft.observe(max(0.0, end.first_token - end.submitted))
            self.e2e.observe(max(0.0, end.time - end.submitted))
            observe = self.itl.observe
            for before, after in pairwise(stamps):
                observe(after - before)
            if end.speculative is not None:
                self.drafted += end.speculative.drafted
                self.accepted += end.speculative.accepted

    def exposition(self) -> bytes:
        """The text format, as ``prometheus_client`` writes it."""
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        return generate_latest(registry)


class _Collector:
    """The :class:`Metrics` as ``prometheus_client`` metric families (built at scrape time)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.metrics
        model = [m.model_name]
        requests = CounterMetricFamily(
            "oxillama:http_requests", "HTTP requests answered, by endpoint and status.", labels=["endpoint", "status"]
        )
        for (endpoint, status), count in sorted(m.requests.items()):
            requests.add_metric([endpoint, status], count)
        yield requests
        finished = CounterMetricFamily(
            "oxillama:request_success",
            "Generated sequences (choices) that ended, by finish reason.",
            labels=["model_name", "finished_reason"],
        )
        for reason, count in sorted(m.finished.items()):
            finished.add_metric([m.model_name, reason], count)
        yield finished
        counters = (
            (
                "oxillama:prompt_tokens",
                "Prompt tokens of the requests (once per prompt, as usage counts).",
                m.prompt_tokens,
            ),
            ("oxillama:generation_tokens", "Tokens generated.", m.generation_tokens),
            ("oxillama:prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache.", m.cached_tokens),
            ("oxillama:spec_decode_num_draft_tokens", "Draft tokens proposed (speculative decoding).", m.drafted),
            ("oxillama:spec_decode_num_accepted_tokens", "Draft tokens accepted (speculative decoding).", m.accepted),
        )
        for name, doc, value in counters:
            family = CounterMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(model, value)
            yield family
        histograms = (
            ("oxillama:time_to_first_token_seconds", "From arrival to the first token, per choice.", m.ttft),
            ("oxillama:inter_token_latency_seconds", "Between two tokens of one choice.", m.itl),
            ("oxillama:e2e_request_latency_seconds", "From arrival to the end, per choice.", m.e2e),
            ("oxillama:request_queue_time_seconds", "From arrival until a decode slot, per choice.", m.queue),
        )
        for name, doc, histogram in histograms:
            spread = HistogramMetricFamily(name, doc, labels=["model_name"])
            spread.add_metric(model, histogram.buckets(), histogram.sum)
            yield spread
        stats = m.engine.stats
        gauges = (
            ("oxillama:num_requests_running", "Sequences decoding now (slots busy).", stats.active),
            ("oxillama:num_requests_waiting", "Sequences waiting for a slot (queue length).", stats.waiting),
            ("oxillama:num_slots", "Decode slots.", stats.slots or m.engine.config.max_concurrency),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=["model_name"])
            gauge.add_metric(model, value)
            yield gauge


class MetricsTap(Subscriber):
    """Records one engine call: its tokens' times as they come, the rest from its terminal events at the end."""

    def __init__(self, metrics: Metrics, choices_per_prompt: int, info: RequestInfo | None) -> None:
        self.metrics = metrics
        self.n = max(1, choices_per_prompt)
        self.info = info
        self.times: dict[int, list[float]] = {}

    async def feed(self, events: Sequence[Event]) -> None:
        times = self.times
        for event in events:
            if isinstance(event, Step) and event.tokens:
                sequence = event.tokens[0].sequence  # a step is one request's
                stamps = times.get(sequence)
                if stamps is None:
                    stamps = times[sequence] = []
                for token in event.tokens:
                    stamps.append(token.time)

    def finalise(self, outcome: Outcome) -> None:
        self.metrics.record(outcome.finished, self.times, self.n)
        info = self.info
        if info is None:
            return
        ends = [end for end in outcome.finished if end is not None]
        info.prompt_tokens += sum(end.prompt_tokens for end in ends if end.sequence % self.n == 0)
        info.completion_tokens += sum(len(stamps) for stamps in self.times.values())
        firsts = [end.first_token - end.submitted for end in ends if end.first_token is not None]
        if firsts:
            info.time_to_first_token = min(firsts)
        if outcome.reason == "cancelled":
            info.cancelled = True
