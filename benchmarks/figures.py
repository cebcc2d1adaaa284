"""The benchmarks' figures from ``results/*.json``: the tables and PNGs, and the README and docs blocks.

The README and ``docs/`` quote the benchmarks; quoting them by hand goes stale the first time a benchmark is
re-run. Each benchmark is one ``Figure``: a title, the facts of its caption, its table, a sentence after it, its
checks and the panels of its plot. One template writes it between the ``FIGURES`` markers, as markdown in the
README and as RST in the docs; ``--check`` (run by the test suite) fails when a block no longer matches its JSON.
A benchmark prints the same table when it ends and draws the same plot (``Run.report``).

    python benchmarks/figures.py           # rewrite the blocks
    python benchmarks/figures.py --check   # exit 1 if any block is stale
    python benchmarks/figures.py --plots   # also re-draw results/*.png from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MODEL = "Gemma 3 270M Q4_K_M"
Rows = list[list[str]]
Data = dict[str, Any]


def _setting(d: Data, key: str) -> Any:
    """A run setting: top-level in most JSON, under ``settings`` in ``prefix_cache`` and ``scale``."""
    return d[key] if key in d else d["settings"][key]


def _ms(summary: Data) -> Data:
    return {key: summary[key] * 1000.0 for key in ("median", "min", "max")}


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, dict):  # a summary: the table shows its median
        value = value["median"]
    if isinstance(value, str):
        return value
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


@dataclass
class Column:
    """One column of a figure's table; with a ``panel``, also a series of bars in that panel of its plot.

    ``values`` holds a cell per row: a number, a summary (the table shows its median, the plot its min-max as an
    error bar), a string, or ``None`` ("n/a", no bar). ``targets`` (a target or ``None`` per row) are drawn as dashed
    lines across the bars. A panel of 2-digit columns shows ratios: each bar is labelled, with a line at 1.
    """

    header: str
    values: list[Any]
    digits: int = 1
    panel: str = ""
    targets: list[Any] | None = None


@dataclass
class Panel:
    """One plot panel of grouped bars: a group per table row, in each a bar per column of the panel."""

    title: str
    groups: list[str]
    series: dict[str, list[Any]] = field(default_factory=dict)
    targets: dict[str, list[Any]] = field(default_factory=dict)
    ratio: bool = False
    log: bool = False


class Figure:
    """How a benchmark's JSON reads. A subclass per benchmark; ``FIGURES`` has one of each by name.

    ``columns`` describes the table and, through each column's ``panel``, the plot: the README's numbers and the
    PNG's bars come from one description. ``facts`` (the caption after the machine and the rounds) and ``after``
    (the sentence between the table and the checks) are ``str.format`` templates of the JSON as ``d``
    (``{d[max_tokens]}``) and of ``values(d)``.
    """

    name = ""
    title = ""
    facts = ""
    after = ""
    named_by = 1  # the leading columns that name a row (and the group of bars it makes)
    log: ClassVar[tuple[str, ...]] = ()  # the panels on a log scale

    def columns(self, d: Data) -> list[Column]:
        raise NotImplementedError

    def checks(self, d: Data) -> Data:
        """``{name: {value, target, verdict[, below]}}``: as most scripts store them."""
        return dict(d["checks"] if "checks" in d else d["targets"])

    def values(self, d: Data) -> Data:
        return {}

    def rows(self, d: Data) -> Rows:
        columns = self.columns(d)
        cells = [[_cell(value, c.digits) for value in c.values] for c in columns]
        return [[c.header for c in columns], *map(list, zip(*cells, strict=True))]

    def panels(self, d: Data) -> list[Panel]:
        columns = self.columns(d)
        names = zip(*(c.values for c in columns[: self.named_by]), strict=True)
        groups = ["\n".join(textwrap.wrap(" ".join(name), 15)) for name in names]
        panels: dict[str, Panel] = {}
        for c in (c for c in columns if c.panel):
            panel = panels.setdefault(c.panel, Panel(c.panel, groups, ratio=c.digits == 2, log=c.panel in self.log))
            panel.series[c.header] = c.values
            panel.targets[c.header] = c.targets or [None] * len(groups)
        return list(panels.values())


class Overhead(Figure):
    name, title = "overhead", "One request"
    facts = "{d[max_tokens]} greedy tokens; ratio = oxillama_py / raw llama-cpp-python"
    adapters: ClassVar[dict[str, str]] = {
        "none": "none",
        "tqdm": "tqdm",
        "widget": "ipywidgets",
        "callable": "callable",
    }

    def columns(self, d: Data) -> list[Column]:
        res = [d["results"][name] for name in self.adapters]
        raw, targets = d["results"]["raw"]["tok_per_sec"], [r["target"] for r in res]
        rates = "tok/s (median, min-max)"
        return [
            Column("progress attached", list(self.adapters.values())),
            Column("raw tok/s", [raw] * len(res), panel=rates),
            Column("oxillama_py tok/s", [r["tok_per_sec"] for r in res], panel=rates),
            Column("ratio", [r["ratio_vs_raw"] for r in res], 2, "oxillama_py / raw", targets),
            Column("target", [f">= {t}" for t in targets]),
        ]

    def checks(self, d: Data) -> Data:
        res = {name: d["results"][name] for name in self.adapters}
        return {n: {"value": r["ratio_vs_raw"], "target": r["target"], "verdict": r["verdict"]} for n, r in res.items()}


class Batching(Figure):
    name, title = "batching", "Concurrent requests"
    facts = (
        "{d[max_tokens]} greedy tokens a request, aggregate tok/s; event-loop p99 lag with 8 requests: "
        "{d[checks][p99_loop_lag_ms_8][value]:.1f} ms"
    )
    after = (
        "With 16 requests the default 8 slots decode 8 at a time and queue the rest; `max_concurrency=16` decodes "
        "all 16 together; *tasks*: a task per request awaiting `complete`, the rest `complete_batch`."
    )
    contenders: ClassVar[dict[str, str]] = {
        "raw_sequential": "raw sequential",
        "raw_batched": "raw batched loop",
        "engine8_batch": "engine (8 slots)",
        "engine8_tasks": "engine (8 slots, tasks)",
        "engine16_batch": "engine (16 slots)",
    }

    def columns(self, d: Data) -> list[Column]:
        levels, res, vs = list(map(str, d["levels"])), d["results"], d["ratios"]["engine8_batch"]
        target = d["checks"]["engine8_vs_raw_batched_8"]["target"]
        targets = [target if k == "8" else None for k in levels]
        ratio = "engine(8) / raw"
        rates = [
            Column(header, [res[name][k]["tok_per_sec"] for k in levels], panel="aggregate tok/s (median, min-max)")
            for name, header in self.contenders.items()
        ]
        return [
            Column("concurrent requests", levels),
            *rates,
            Column("engine(8) / sequential", [vs[k]["vs_raw_sequential"] for k in levels], 2, ratio),
            Column("engine(8) / batched", [vs[k]["vs_raw_batched"] for k in levels], 2, ratio, targets),
        ]


class Speculative(Figure):
    name, title = "speculative", "Speculative decoding"
    facts = "{d[max_tokens]} greedy tokens"
    after = (
        "Texts differing from plain decoding's: {differ} (verifying a draft is a multi-token llama_decode, whose "
        "logits differ slightly from a single-token one; see docs/speculative.rst)."
    )

    def columns(self, d: Data) -> list[Column]:
        tasks, rates = ["copying", "free"], "tok/s (median, min-max)"

        def tps(name: str, header: str) -> Column:
            return Column(header, [d["tok_per_sec"][task][name] for task in tasks], panel=rates)

        return [
            Column("task", tasks),
            tps("plain", "plain Engine"),
            tps("lookup", "SpeculativeEngine, default settings"),
            Column("its acceptance rate", [d["lookup_acceptance_rate"][task] for task in tasks], 2),
            tps("raw_lookup", "llama-cpp-python prompt lookup"),
            tps("raw_plain", "raw plain"),
        ]

    def values(self, d: Data) -> Data:
        by_task = d["same_text_as_plain"].items()
        return {"differ": ", ".join(f"{c} on {t}" for t, by in by_task for c, same in by.items() if not same) or "none"}


class Coexistence(Figure):
    name, title = "coexistence", "A second model in the same process"
    facts = "llama-cpp-python {build}; {d[max_tokens]} greedy tokens; each round runs every scenario in a fresh process"
    scenarios: ClassVar[dict[str, str]] = {
        "nothing (oxillama_py Engine alone)": "engine_alone",
        "a second Engine": "engine_beside_engine",
        "a SpeculativeEngine": "engine_beside_speculative",
        "a second Engine, each computing on its own thread": "engine_beside_engine_unshared",
        "nothing (raw Llama alone)": "raw_alone",
        "a second raw Llama": "raw_beside_raw",
    }

    def columns(self, d: Data) -> list[Column]:
        tps, names = d["median_tok_per_sec"], list(self.scenarios.values())
        alone = [tps["raw_alone" if name.startswith("raw") else "engine_alone"] for name in names]
        return [
            Column("the process also holds", list(self.scenarios)),
            Column("first model's tok/s", [d["tok_per_sec"][n] for n in names], panel="tok/s (median, min-max)"),
            Column("ratio to alone", [tps[n] / a for n, a in zip(names, alone, strict=True)], 2),
        ]

    def values(self, d: Data) -> Data:
        return {"build": "with OpenMP, as pip builds it" if d["machine"]["openmp_build"] else "without OpenMP"}


class Server(Figure):
    name, title = "server", "OpenAI-compatible servers"
    facts = "streaming `/v1/completions` clients, {d[max_tokens]} greedy tokens each"
    after = (
        "The oxillama_py server runs its defaults ({slots} slots); llama.cpp's `llama-server` runs {d[slots]} slots "
        "of {d[slot_ctx]} cells; llama-cpp-python's server has one slot by design and serves one request at a time. "
        "*in-process engine*: the same requests as one `complete_batch` on an `AsyncEngine` of the default config, "
        "no HTTP. *{mixed_key}*: {mixed} (our server on both backends; its trio / asyncio rate is requests/s)."
    )
    labels: ClassVar[dict[str, str]] = {
        "oxillama": "oxillama_py",
        "oxillama_trio": "oxillama_py on trio",
        "engine": "in-process engine",
        "llama_cpp_server": "llama-cpp-python",
        "llama_server": "llama-server (C++)",
    }
    log = ("time to first token p50 (ms)", "time to first token p99 (ms)")

    def values(self, d: Data) -> Data:
        mixed = d.get("mixed", "not run")
        return {
            "slots": d.get("oxillama_slots") or d["slots"],
            "mixed_key": d.get("scenarios", ["mixed"])[-1],
            "mixed": mixed,
        }

    def columns(self, d: Data) -> list[Column]:
        levels, res, checks = d.get("scenarios") or list(map(str, d["levels"])), d["results"], d["checks"]

        def per_level(name: str, pick: Callable[[Data], Any]) -> list[Any]:
            return [pick(res[name][k]) if k in res.get(name, {}) else None for k in levels]

        def target(check: str) -> Any:
            return checks[check]["target"] if check in checks else None

        columns = [Column("concurrent clients", levels)]
        for name, label in self.labels.items():
            rates = per_level(name, lambda e: e["tok_per_sec"])
            columns.append(Column(f"{label} tok/s", rates, panel="aggregate tok/s (median, min-max)"))
        servers = [name for name in self.labels if name != "engine"]
        for p in ("p50", "p99"):
            for name in servers:
                times = per_level(name, lambda e, p=p: e["ttft_ms"][p])
                columns.append(Column(f"{self.labels[name]} TTFT {p} ms", times, 0, f"time to first token {p} (ms)"))
        for name in ("oxillama", "oxillama_trio"):
            latency = per_level(name, lambda e: e.get("latency_secs", {}).get("p99"))
            columns.append(Column(f"{self.labels[name]} latency p99 s", latency, 1))
        ratios = d["ratios"]
        for other in ("llama_cpp_server", "llama_server", "engine"):
            targets = [target(f"oxillama_vs_{other}_{k}") for k in levels]
            values = [ratios.get(f"vs_{other}", {}).get(k, {}).get("tok_per_sec") for k in levels]
            columns.append(Column(f"oxillama / {self.labels[other]}", values, 2, "oxillama_py / other", targets))
        trio, mixed = ratios.get("trio_vs_asyncio", {}), d.get("scenarios", [None])[-1]
        rates = {k: ("requests_per_sec", "mixed") if k == mixed else ("tok_per_sec", k) for k in levels}
        rate = [trio.get(k, {}).get(rates[k][0]) for k in levels]
        rate_targets = [target(f"trio_vs_asyncio_{rates[k][0]}_{rates[k][1]}") for k in levels]
        columns.append(Column("trio / asyncio rate", rate, 2, "oxillama_py / other", rate_targets))
        p99 = [trio.get(k, {}).get("latency_p99") for k in levels]
        p99_targets = [target(f"trio_vs_asyncio_latency_p99_{rates[k][1]}") for k in levels]
        columns.append(Column("trio / asyncio latency p99", p99, 2, "", p99_targets))
        return columns


class Structured(Figure):
    name, title = "structured", "Structured output"
    facts = "a JSON Schema with bounded strings, integers and an enum array; {d[batch_rounds]} rounds with 8 requests"
    after = (
        "oxillama_py's outputs that validated against the schema: {valid} of {total} (llama-cpp-python's own "
        "grammar for the schema, which both run as `ox_gbnf`/`raw_json`, is looser: {raw_valid} of {raw_total}); "
        "greedy text on that same grammar {same}. A mask: {mask} µs (greedy: only where the best token is refused)."
    )
    log = ("ratios (dashed: target)",)
    scenarios: ClassVar[dict[str, str]] = {
        "one_greedy": "1 request, greedy",
        "one_sampled": "1 request, temperature 1.0",
        "eight_greedy": "8 requests, greedy (aggregate; llama-cpp-python one after another)",
    }
    contenders: ClassVar[dict[str, str]] = {
        "ox_free": "oxillama_py unconstrained",
        "ox_json": "oxillama_py json_schema",
        "ox_gbnf": "oxillama_py, llama-cpp-python's GBNF",
        "raw_json": "llama-cpp-python LlamaGrammar",
        "raw_free": "llama-cpp-python unconstrained",
    }
    # each ratio: its header, and the suffix of the checks that hold it to a target
    ratios: ClassVar[dict[str, tuple[str, str]]] = {
        "ox_json_vs_ox_free": ("oxillama_py json / unconstrained (paired)", "constrained_vs_unconstrained"),
        "ox_json_vs_raw_json": ("json: oxillama_py / llama-cpp-python", "constrained_vs_llama_cpp"),
        "ox_gbnf_vs_raw_json": ("same GBNF: oxillama_py / llama-cpp-python", "same_gbnf_vs_llama_cpp"),
        "raw_json_vs_raw_free": ("llama-cpp-python json / unconstrained", ""),
    }

    def columns(self, d: Data) -> list[Column]:
        res, names, rates = d["results"], list(self.scenarios), "tok/s (median, min-max; 8 requests: aggregate)"
        counts = [[n for sample in res[s]["ox_json"]["tokens_per_sequence"][:1] for n in sample] for s in names]
        columns = [Column("scenario", list(self.scenarios.values()))]
        columns += [
            Column(label, [res[s].get(c, {}).get("tok_per_sec") for s in names], panel=rates)
            for c, label in self.contenders.items()
        ]
        for key, (header, check) in self.ratios.items():
            targets = [d["checks"].get(f"{s}_{check}", {}).get("target") for s in names]
            ratios = [d["ratios"][s][key]["paired_median" if key == "ox_json_vs_ox_free" else "median"] for s in names]
            columns.append(Column(header, ratios, 2, "ratios (dashed: target)", targets))
        tokens = [str(c[0]) if len(c) == 1 else f"{min(c)}-{max(c)}" for c in counts]
        return [*columns, Column("tokens per JSON output", tokens)]

    def values(self, d: Data) -> Data:
        ours, raw = ({k: v for k, v in d["validation"].items() if k.startswith(c)} for c in ("ox_json", "raw_json"))
        counts = {key: sum(v[key] for v in ours.values()) for key in ("valid", "total")}
        counts |= {f"raw_{key}": sum(v[key] for v in raw.values()) for key in ("valid", "total")}
        masks = [
            v["mask_us_per_token"] for v in d["profile"].values() if isinstance(v, dict) and "mask_us_per_token" in v
        ]
        mask = f"{min(masks):.0f}-{max(masks):.0f}" if masks else "n/a"
        same = "equal" if d["same_text"]["one_greedy"].get("ox_gbnf_equals_raw_json") else "not equal"
        return counts | {"same": same, "mask": mask}


class PrefixCache(Figure):
    name, title = "prefix_cache", "Prefix cache"
    facts = (
        "{d[settings][max_tokens]} greedy tokens a request; a {d[settings][system_prompt_tokens]}-token system "
        "prompt shared by requests, and turns 2-10 of a chat"
    )
    after = "Greedy texts of cache hits that differ from a cold run: {mismatches}."
    named_by, log = 2, ("ms (median, min-max)",)
    contenders: ClassVar[dict[str, str]] = {
        "ox_cached": "oxillama_py, prefix cache",
        "ox_cold": "oxillama_py, cache off",
        "raw_reuse": "llama-cpp-python, own prefix reuse",
        "raw_ramcache": "llama-cpp-python, LlamaRAMCache",
        "raw_cold": "llama-cpp-python, reset",
    }

    def columns(self, d: Data) -> list[Column]:
        titles = {"system": f"{d['settings']['system_prompt_tokens']}-token system prompt", "chat": "10-turn chat"}
        runs = [(w, name, d["results"][w][name]) for w in titles for name in self.contenders]
        hit = {w: d["results"][w]["ox_cached"]["ttft_secs"]["median"] for w in titles}
        faster = [None if name == "ox_cached" else r["ttft_secs"]["median"] / hit[w] for w, name, r in runs]
        return [
            Column("workload", [titles[w] for w, _, _ in runs]),
            Column("contender", [self.contenders[name] for _, name, _ in runs]),
            Column("first token (ms)", [_ms(r["ttft_secs"]) for _, _, r in runs], 0, "ms (median, min-max)"),
            Column("total (ms)", [_ms(r["total_secs"]) for _, _, r in runs], 0, "ms (median, min-max)"),
            Column("first token: x faster than it", faster, 2),
        ]

    def checks(self, d: Data) -> Data:
        return {key: {"value": d["results"]["system"]["ratios"][key], **t} for key, t in d["targets"].items()}

    def values(self, d: Data) -> Data:
        return {"mismatches": len(d["text_mismatches"])}


class SpeculativeBatch(Figure):
    name, title = "speculative_batch", "Speculation inside the batch"
    facts = (
        "{d[max_tokens]} greedy tokens a request; N concurrent requests on one engine with "
        "`EngineConfig(speculative=PromptLookup())`, each request with `speculative=False` (plain) or the default"
    )
    after = (
        "For one copying request, llama-cpp-python gives {raw[raw_plain]:.1f} tok/s plain and "
        "{raw[raw_lookup]:.1f} with its prompt lookup."
    )
    named_by = 2

    def columns(self, d: Data) -> list[Column]:
        runs = [(task, str(n)) for task in ("copying", "free") for n in d["concurrency"]]
        targets = {tuple(name.split("_")[:2]): c["target"] for name, c in d["targets"].items()}  # copying_1_...
        ratios = [d["ratios"][task][n] for task, n in runs]
        rates, tps = "aggregate tok/s (median, min-max)", d["tok_per_sec"]
        return [
            Column("workload", [task for task, _ in runs]),
            Column("requests", [n for _, n in runs]),
            Column("plain batching tok/s", [tps[task][n]["plain"] for task, n in runs], panel=rates),
            Column("speculative batching tok/s", [tps[task][n]["speculative"] for task, n in runs], panel=rates),
            Column("ratio", ratios, 2, "speculative / plain", [targets.get(run) for run in runs]),
            Column("acceptance", [d["acceptance_rate"][task][n] for task, n in runs], 2),
        ]

    def values(self, d: Data) -> Data:
        return {"raw": d["llama_cpp_python_one_request"]["copying"]}


class Scale(Figure):
    name, title = "scale", "One server process against two Ray Serve replicas"
    facts = "{d[settings][clients]} streaming clients, {d[settings][max_tokens]} greedy tokens each"
    after = (
        "One process with 16 slots runs one batch of 16 where the replicas run two of 8: ray / that process = "
        "{d[ratio_ray_over_process16]:.2f}."
    )
    setups: ClassVar[dict[str, str]] = {
        "process": "1 process, 2 threads, 8 slots",
        "ray": "Ray Serve, 2 replicas x (1 thread, 8 slots)",
        "process16": "1 process, 2 threads, 16 slots",
    }

    def columns(self, d: Data) -> list[Column]:
        res = [d["results"][name] for name in self.setups]
        ttft = [r["ttft_p50_secs"] * 1000 for r in res]
        return [
            Column("set-up", list(self.setups.values())),
            Column("aggregate tok/s", [r["aggregate_tok_per_sec"] for r in res], panel="tok/s (median, min-max)"),
            Column("time to first token p50 (ms)", ttft, 0, "time to first token p50 (ms)"),
        ]

    def checks(self, d: Data) -> Data:
        target = d["target"]
        check = {"value": d["ratio_ray_over_process"], "target": target["ratio"], "verdict": target["verdict"]}
        return {"ray_over_process": check}


def _percent(summary: Any) -> Any:
    """A summary (or ``None``, in results from before it was measured) as percentages."""
    if not isinstance(summary, dict):
        return None
    return {k: v * 100 for k, v in summary.items() if k != "samples"}


class Routing(Figure):
    name, title = "routing", "Prefix-aware routing on Ray Serve"
    facts = (
        "{d[settings][users]} chat users at once, each with its own system prompt (~{tokens} tokens) and "
        "{d[settings][turns]} turns of {d[max_tokens]} greedy tokens; no-shared-prefix throughput: "
        "{d[settings][clients]} chats at once with prompts that share no prefix"
    )
    after = (
        "Ray set-ups: 2 replicas x 1 llama.cpp thread behind the app's ingress; the process: 2 threads, twice the KV. "
        "All serve with --no-prefix-cache-exact (turns decoded beside other users' stay cached)."
    )
    setups: ClassVar[dict[str, str]] = {
        "process": "1 process, 2 threads",
        "pow2": "Ray, 2 replicas, power of two choices",
        "prefix": "Ray, 2 replicas, prefix-aware",
    }

    def columns(self, d: Data) -> list[Column]:
        res = [d["results"][name] for name in self.setups]
        share = [{k: v * 100 for k, v in r["hit_share"].items() if k != "samples"} for r in res]
        return [
            Column("set-up", list(self.setups.values())),
            Column("prompt tokens from the prefix cache (%)", share, 1, "prefix-cache hit share (%)"),
            Column("turns on the replica of the turn before (%)", [_percent(r.get("affinity")) for r in res], 0),
            Column("TTFT p50 (ms)", [r["ttft_p50_ms"] for r in res], 0, "time to first token (ms)"),
            Column("TTFT p95 (ms)", [r["ttft_p95_ms"] for r in res], 0, "time to first token (ms)"),
            Column("no shared prefix: tok/s", [r["unique_tok_per_sec"] for r in res], 1, "aggregate tok/s"),
        ]

    def values(self, d: Data) -> Data:
        return {"tokens": round(d["results"]["process"]["prompt_tokens_first_turn"])}


class Adapters(Figure):
    name, title = "adapters", "LoRA adapters as models"
    facts = (
        "{d[settings][requests]} requests queued at once, base model and two adapters interleaved, "
        "{d[max_tokens]} greedy tokens each, {d[settings][slots]} slots per engine"
    )
    after = (
        "The per-adapter engines share one load of the weights ({d[settings][engines_sharing_weights]} engines in "
        "the process); the groups engine serves the queued requests of one adapter, switches with apply_lora, and "
        "serves the next. Texts equal to the groups engine's, of {d[settings][requests]}: {same} (free text: "
        "prefills fall into other steps, which decides near-ties either way)."
    )
    setups: ClassVar[dict[str, str]] = {
        "engines": "an engine per adapter, all threads each",
        "engines_split": "an engine per adapter, threads split",
        "groups": "one engine, adapter groups in turn",
    }

    def columns(self, d: Data) -> list[Column]:
        ttft = [d["ttft_secs"][name] for name in self.setups]
        return [
            Column("set-up", list(self.setups.values())),
            Column("threads", [str(d["settings"]["threads"][name]) for name in self.setups]),
            Column("aggregate tok/s", [d["tok_per_sec"][n] for n in self.setups], panel="tok/s (median, min-max)"),
            Column("TTFT p50 (ms)", [t["p50"] * 1000 for t in ttft], 0, "time to first token (ms)"),
            Column("TTFT p95 (ms)", [t["p95"] * 1000 for t in ttft], 0, "time to first token (ms)"),
        ]

    def values(self, d: Data) -> Data:
        same = d["same_text_as_groups"]
        return {"same": ", ".join(f"{same[name]} ({name})" for name in ("engines", "engines_split"))}


class MixedLoad(Figure):
    name, title = "mixed_load", "A long prompt arrives while streams decode"
    facts = (
        "{d[settings][streams]} greedy streams decoding when a {d[settings][long_prompt_tokens]}-token prompt "
        "arrives; no prefix cache"
    )
    after = (
        "Gaps: the time between two tokens of a running stream, before the long prompt (p50) and while it prefills. "
        "llama-cpp-python's own time to first token for a prompt of that size, idle: {raw:.1f} s."
    )
    log = ("inter-token gap (ms)",)

    def columns(self, d: Data) -> list[Column]:
        keys = d["settings"]["setups"]
        res = [d["results"][key] for key in keys]
        labels = {"engine": "engine", "engine_whole_batch": "engine, whole batch per step", "server": "server"}
        return [
            Column("set-up", [labels.get(key, key) for key in keys]),
            Column("gap p50 (ms)", [r["steady_p50_ms"] for r in res], 0, "inter-token gap (ms)"),
            Column("gap p99 in prefill (ms)", [r["window_p99_ms"] for r in res], 0, "inter-token gap (ms)"),
            Column("p99 / p50", [r["p99_over_median"] for r in res], 2),
            Column("long prompt TTFT (s)", [r["ttft_secs"] for r in res], 1, "long prompt's TTFT (s)"),
            Column("idle TTFT (s)", [r["idle_ttft_secs"] for r in res], 1, "long prompt's TTFT (s)"),
            Column("TTFT / idle", [r["ttft_over_idle"] for r in res], 2),
        ]

    def values(self, d: Data) -> Data:
        return {"raw": d["raw_idle_ttft_secs"]["median"]}


FIGURES: dict[str, Figure] = {cls.name: cls() for cls in Figure.__subclasses__()}


def bars(ax: Any, panel: Panel) -> None:
    """Draw ``panel`` onto ``ax``: for each series a bar per group, shifted so that a group's bars sit together."""
    step = 0.8 / len(panel.series)
    for i, (name, values) in enumerate(panel.series.items()):
        offset = (i - (len(panel.series) - 1) / 2) * step
        have = [(j, v) for j, v in enumerate(values) if _cell(v, 1) != "n/a"]
        xs = [j + offset for j, _ in have]
        tops = [v["median"] if isinstance(v, dict) else v for _, v in have]
        spans = [[v["median"] - v["min"], v["max"] - v["median"]] for _, v in have if isinstance(v, dict)]
        ax.bar(xs, tops, step, yerr=list(zip(*spans, strict=True)) if spans else None, capsize=3, label=name)
        for (j, _), x, top in zip(have, xs, tops, strict=True):
            if panel.ratio:
                ax.annotate(f"{top:.2f}", (x, top), ha="center", va="bottom", fontsize=7)
            if (target := panel.targets[name][j]) is not None:
                ax.hlines(target, x - step / 2, x + step / 2, colors="black", linestyles="--", linewidth=0.9)
    if panel.ratio:
        ax.axhline(1.0, color="#777777", linewidth=0.8)
    ax.set_xticks(range(len(panel.groups)), panel.groups, fontsize=7)
    ax.set(title=panel.title + (" (dashed: target)" if panel.ratio else ""), yscale="log" if panel.log else "linear")
    if panel.log:  # plain numbers (0.5, 2, 300) on the log axis, not powers of ten
        ax.yaxis.set_major_formatter("{x:g}")
        ax.yaxis.set_minor_formatter("{x:g}")
    if len(panel.series) > 1:
        ax.legend(fontsize=7)


def draw(name: str, d: Data, path: Path) -> None:
    """Plot benchmark ``name``'s JSON ``d`` into ``path``: its panels side by side, under what was compared."""
    import matplotlib

    matplotlib.use("Agg")  # no display: draw into files
    import matplotlib.pyplot as plt

    panels = FIGURES[name].panels(d)
    widths = [2 + 0.45 * len(panel.groups) * len(panel.series) for panel in panels]  # inches: room for every bar
    fig, axes = plt.subplots(1, len(panels), figsize=(max(8, sum(widths)), 5), width_ratios=widths, squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        bars(ax, panel)
    m, mode = d["machine"], d.get("mode", "default")
    versions = f"oxillama_py {m['oxillama_py']} vs llama-cpp-python {m['llama_cpp_python']}"
    fig.suptitle(
        f"{FIGURES[name].title}, {MODEL}: {versions}, {m['threads']} threads, {_setting(d, 'rounds')} rounds ({mode})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _check_line(checks: Data) -> str:
    parts = [
        f"{name} {c['value']:.2f} (target {'<' if c.get('below') else '>='} {c['target']}: {c['verdict']})"
        for name, c in checks.items()
    ]
    return "; ".join(parts)


def table(rows: Rows, rst: bool) -> list[str]:
    """``rows`` (header first) as a markdown pipe table, or as an RST simple table."""
    if not rst:
        rule = "|" + "|".join(" --- " for _ in rows[0]) + "|"
        return ["| " + " | ".join(rows[0]) + " |", rule, *("| " + " | ".join(r) + " |" for r in rows[1:])]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return [rule, line(rows[0]), rule, *(line(r) for r in rows[1:]), rule]


def figure(name: str, d: Data, rst: bool) -> list[str]:
    """One figure in markdown (the README) or RST (the docs): the same words, numbers and checks in both."""
    fig = FIGURES[name]
    code: Callable[[str], str] = (lambda s: s.replace("`", "``")) if rst else (lambda s: s)
    m = d["machine"]
    machine = f"{m['cpu_count']} CPU cores, {m['threads']} llama.cpp threads, llama-cpp-python {m['llama_cpp_python']}"
    quick = " (quick mode: a smoke run, too short to judge by)" if d.get("mode") == "quick" else ""
    rounds = f"medians of {_setting(d, 'rounds')} interleaved rounds{quick}"
    facts = "; ".join([f"{MODEL}, {machine}", rounds, fig.facts.format(d=d, **fig.values(d))])
    after = " ".join(filter(None, [fig.after.format(d=d, **fig.values(d)), f"Checks: {_check_line(fig.checks(d))}."]))
    script = f"``benchmarks/{name}.py``" if rst else f"[`{name}.py`](benchmarks/{name}.py)"
    png = f"benchmarks/results/{name}.png"
    image = [f".. image:: ../{png}", f"   :alt: {fig.title}"] if rst else [f"![{fig.title}]({png})"]
    return [f"**{fig.title}** ({script}; {code(facts)}):", "", *table(fig.rows(d), rst), "", code(after), "", *image]


def block(names: tuple[str, ...], results: Path, rst: bool) -> list[str]:
    """The figures of one block from their JSON, blank lines between; a note for a benchmark not run yet."""
    lines: list[str] = []
    for name in names:
        path = results / f"{name}.json"
        if not path.is_file():
            note = f"Not measured yet: run ``python benchmarks/{name}.py``."
            lines += ["", note if rst else note.replace("``", "`")]
        else:
            lines += ["", *figure(name, json.loads(path.read_text(encoding="utf-8")), rst)]
    return lines[1:]


README, DOCS = ROOT / "README.md", ROOT / "docs"
# (file, marker name, the benchmarks its block shows)
TARGETS: list[tuple[Path, str, tuple[str, ...]]] = [
    (README, "", ("overhead", "batching", "speculative", "coexistence")),
    (README, "server", ("server",)),
    (README, "structured", ("structured",)),
    (README, "prefix_cache", ("prefix_cache",)),
    (README, "speculative_batch", ("speculative_batch",)),
    (README, "adapters", ("adapters",)),
    (README, "mixed_load", ("mixed_load",)),
    (DOCS / "batching.rst", "mixed_load", ("mixed_load",)),
    (DOCS / "batching.rst", "", ("batching",)),
    (DOCS / "prefix-cache.rst", "", ("prefix_cache",)),
    (DOCS / "speculative.rst", "", ("speculative",)),
    (DOCS / "speculative.rst", "speculative_batch", ("speculative_batch",)),
    (DOCS / "scaling.rst", "", ("scale",)),
    (DOCS / "scaling.rst", "routing", ("routing",)),
    (README, "routing", ("routing",)),
    (DOCS / "models.rst", "", ("adapters",)),
    (DOCS / "server.rst", "server", ("server",)),
]


def render(text: str, start: str, end: str, lines: list[str]) -> str:
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"markers {start!r} ... {end!r} not found")
    replacement = "\n".join([start, "", *lines, "", end])
    return pattern.sub(lambda _: replacement, text, count=1)


def rendered(results: Path = RESULTS) -> list[tuple[Path, str, str]]:
    """Each target file with its current text and the text its JSON calls for (all of its blocks)."""
    current: dict[Path, str] = {}
    wanted: dict[Path, str] = {}
    for path, marker, names in TARGETS:
        if path not in current:
            current[path] = wanted[path] = path.read_text(encoding="utf-8")
        rst = path.suffix == ".rst"
        tag = f"FIGURES:{marker}" if marker else "FIGURES"
        start, end = (f".. {tag}", f".. /{tag}") if rst else (f"<!-- {tag} -->", f"<!-- /{tag} -->")
        wanted[path] = render(wanted[path], start, end, block(names, results, rst))
    return [(path, current[path], wanted[path]) for path in current]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report stale blocks; exit 1 if any")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder holding the benchmark JSON")
    parser.add_argument("--plots", action="store_true", help="also re-draw every results/<name>.png from its JSON")
    args = parser.parse_args()
    if args.check:
        bad = [path for path, text, new in rendered(args.results) if new != text]
        for path in bad:
            print(f"stale figures: {path.relative_to(ROOT)} (run python benchmarks/figures.py)")
        return 1 if bad else 0
    for name in FIGURES if args.plots else ():
        if (path := args.results / f"{name}.json").is_file():
            draw(name, json.loads(path.read_text(encoding="utf-8")), path.with_suffix(".png"))
    for path, text, new in rendered(args.results):
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
