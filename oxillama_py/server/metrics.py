"""``GET /metrics``: the server's Prometheus metrics, kept as plain numbers and exposed with ``prometheus_client``.

The counts live in plain Python objects that only the event loop's thread
updates, so recording costs no lock: a request's :class:`MetricsTap` appends
its tokens' times as they come (one list append per token) and folds them into
its model's histograms once, when its generation is finalised. The gauges
(loaded, slots busy, queue length) are read from the models' state at scrape
time. Names and the ``model_name`` label follow vLLM's (``vllm:`` becomes
``oxillama:``); several models served by one app each have their samples.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from ..bus import Finished, Step, Subscriber
from ..bus.events import Event
from ..bus.subscriber import Outcome
from .observe import RequestInfo

__all__ = ["CONTENT_TYPE", "Histogram", "Metrics", "MetricsTap", "ModelCounts", "ModelGauges"]

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


@dataclass(frozen=True)
class ModelGauges:
    """One model's state at scrape time: loaded or not, its slots busy, its queue, its slots."""

    name: str
    loaded: bool
    running: int
    waiting: int
    slots: int


class ModelCounts:
    """The counters and histograms of one model name (one ``model_name`` label)."""

    def __init__(self) -> None:
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


class Metrics:
    """Everything ``/metrics`` shows for one app (each app has its own: several can share a process).

    HTTP requests are counted per app; the rest per model name, as vLLM
    labels them (``model_name``). ``gauges()`` reads the models' state when
    scraped.
    """

    def __init__(self, names: Sequence[str], gauges: Callable[[], Iterable[ModelGauges]]) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        """HTTP requests by (endpoint, status)."""
        self.models = {name: ModelCounts() for name in names}
        self.gauges = gauges

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, str(status))] += 1

    def tap(self, model: str, choices_per_prompt: int, info: RequestInfo | None) -> MetricsTap:
        """A subscriber that records one engine call's choices (and fills ``info`` for the request's log line)."""
        return MetricsTap(self.models[model], choices_per_prompt, info)

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
        for name, counts in m.models.items():
            for reason, count in sorted(counts.finished.items()):
                finished.add_metric([name, reason], count)
        yield finished
        counters: tuple[tuple[str, str, Callable[[ModelCounts], float]], ...] = (
            (
                "oxillama:prompt_tokens",
                "Prompt tokens of the requests (once per prompt, as usage counts).",
                lambda c: c.prompt_tokens,
            ),
            ("oxillama:generation_tokens", "Tokens generated.", lambda c: c.generation_tokens),
            (
                "oxillama:prefix_cache_hit_tokens",
                "Prompt tokens served from the prefix cache.",
                lambda c: c.cached_tokens,
            ),
            (
                "oxillama:spec_decode_num_draft_tokens",
                "Draft tokens proposed (speculative decoding).",
                lambda c: c.drafted,
            ),
            (
                "oxillama:spec_decode_num_accepted_tokens",
                "Draft tokens accepted (speculative decoding).",
                lambda c: c.accepted,
            ),
        )
        for metric, doc, read in counters:
            family = CounterMetricFamily(metric, doc, labels=["model_name"])
            for name, counts in m.models.items():
                family.add_metric([name], read(counts))
            yield family
        histograms: tuple[tuple[str, str, Callable[[ModelCounts], Histogram]], ...] = (
            ("oxillama:time_to_first_token_seconds", "From arrival to the first token, per choice.", lambda c: c.ttft),
            ("oxillama:inter_token_latency_seconds", "Between two tokens of one choice.", lambda c: c.itl),
            ("oxillama:e2e_request_latency_seconds", "From arrival to the end, per choice.", lambda c: c.e2e),
            ("oxillama:request_queue_time_seconds", "From arrival until a decode slot, per choice.", lambda c: c.queue),
        )
        for metric, doc, pick in histograms:
            spread = HistogramMetricFamily(metric, doc, labels=["model_name"])
            for name, counts in m.models.items():
                histogram = pick(counts)
                spread.add_metric([name], histogram.buckets(), histogram.sum)
            yield spread
        states = list(m.gauges())
        gauges: tuple[tuple[str, str, Callable[[ModelGauges], float]], ...] = (
            ("oxillama:num_requests_running", "Sequences decoding now (slots busy).", lambda g: g.running),
            ("oxillama:num_requests_waiting", "Sequences waiting for a slot (queue length).", lambda g: g.waiting),
            ("oxillama:num_slots", "Decode slots.", lambda g: g.slots),
            ("oxillama:model_loaded", "1 while the model is loaded, else 0.", lambda g: int(g.loaded)),
        )
        for metric, doc, read_gauge in gauges:
            gauge = GaugeMetricFamily(metric, doc, labels=["model_name"])
            for state in states:
                gauge.add_metric([state.name], read_gauge(state))
            yield gauge


class MetricsTap(Subscriber):
    """Records one engine call: its tokens' times as they come, the rest from its terminal events at the end."""

    def __init__(self, counts: ModelCounts, choices_per_prompt: int, info: RequestInfo | None) -> None:
        self.counts = counts
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
        self.counts.record(outcome.finished, self.times, self.n)
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
