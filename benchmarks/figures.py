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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MODEL = "Gemma 3 270M Q4_K_M"
Rows = list[list[str]]
Data = dict[str, Any]


def _f(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def _cols(header: str) -> list[str]:
    return header.split("|")


def _setting(d: Data, key: str) -> Any:
    """A run setting: top-level in most JSON, under ``settings`` in ``prefix_cache`` and ``scale``."""
    return d[key] if key in d else d["settings"][key]


def _ms(summary: Data) -> Data:
    return {key: summary[key] * 1000.0 for key in ("median", "min", "max")}


def _requests(levels: list[int]) -> list[str]:
    return [f"{n} request{'s' if n > 1 else ''}" for n in levels]


@dataclass
class Panel:
    """One plot panel of grouped bars: a group per x tick, in each a bar per series.

    ``series`` maps a legend label to a value per group: a number, a summary (its median, its min-max as an error
    bar) or ``None``/NaN for no bar. ``targets`` maps a series to a target per group, a dashed line across the bar.
    A ``ratio`` panel labels each bar with its value and draws a line at 1.
    """

    title: str
    ylabel: str
    groups: list[str]
    series: dict[str, list[Any]]
    targets: dict[str, list[Any]] | None = None
    ratio: bool = False
    log: bool = False
    label: str = ""  # the format of each bar's value above it ("{:.2f}" in a ratio panel)


class Figure:
    """How a benchmark's JSON reads. A subclass per benchmark; ``FIGURES`` has one of each by name.

    ``facts`` (the caption after the machine and the rounds) and ``after`` (the sentence between the table and
    the checks) are ``str.format`` templates of the JSON as ``d`` (``{d[max_tokens]}``) and of ``values(d)``.
    """

    name = ""
    title = ""
    facts = ""
    after = ""

    def rows(self, d: Data) -> Rows:
        raise NotImplementedError

    def panels(self, d: Data) -> list[Panel]:
        raise NotImplementedError

    def checks(self, d: Data) -> Data:
        """``{name: {value, target, verdict[, below]}}``: as most scripts store them."""
        return dict(d["checks"] if "checks" in d else d["targets"])

    def values(self, d: Data) -> Data:
        return {}


class Overhead(Figure):
    name, title = "overhead", "One request"
    facts = "{d[max_tokens]} greedy tokens; ratio = oxillama_py / raw llama-cpp-python"
    adapters: ClassVar[dict[str, str]] = {
        "none": "none",
        "tqdm": "tqdm",
        "widget": "ipywidgets",
        "callable": "callable",
    }

    def rows(self, d: Data) -> Rows:
        res = d["results"]
        raw = _f(res["raw"]["tok_per_sec"]["median"])
        rows = [_cols("progress attached|raw tok/s|oxillama_py tok/s|ratio|target")]
        for name, label in self.adapters.items():
            r = res[name]
            rows.append([label, raw, _f(r["tok_per_sec"]["median"]), _f(r["ratio_vs_raw"], 2), f">= {r['target']}"])
        return rows

    def checks(self, d: Data) -> Data:
        res = {name: d["results"][name] for name in self.adapters}
        return {n: {"value": r["ratio_vs_raw"], "target": r["target"], "verdict": r["verdict"]} for n, r in res.items()}

    def panels(self, d: Data) -> list[Panel]:
        res, checks = d["results"], self.checks(d)
        rates = {"tok/s": [r["tok_per_sec"] for r in res.values()]}
        ratios = {"engine / raw": [c["value"] for c in checks.values()]}
        targets = {"engine / raw": [c["target"] for c in checks.values()]}
        return [
            Panel(f"one greedy generation, {d['max_tokens']} tokens", "tokens / s (median, min-max)", list(res), rates),
            Panel("ratio to raw (dashed: target)", "tok/s ratio", list(checks), ratios, targets, True),
        ]


class Batching(Figure):
    name, title = "batching", "Concurrent requests"
    facts = (
        "{d[max_tokens]} greedy tokens a request, aggregate tok/s; event-loop p99 lag with 8 requests: "
        "{d[checks][p99_loop_lag_ms_8][value]:.1f} ms"
    )
    after = (
        "With 16 requests the default 8 slots decode 8 at a time and queue the rest; `max_concurrency=16` decodes "
        "all 16 together."
    )
    columns = "engine (8 slots)|engine (16 slots)|engine(8) / sequential|engine(8) / batched"

    def rows(self, d: Data) -> Rows:
        rows = [_cols(f"concurrent requests|raw sequential|raw batched loop|{self.columns}")]
        names = ("raw_sequential", "raw_batched", "engine8_batch", "engine16_batch")
        for k in map(str, d["levels"]):
            vs = d["ratios"]["engine8_batch"][k]
            rates = [_f(d["results"][n][k]["tok_per_sec"]["median"]) for n in names]
            rows.append([k, *rates, _f(vs["vs_raw_sequential"], 2), _f(vs["vs_raw_batched"], 2)])
        return rows

    def panels(self, d: Data) -> list[Panel]:
        levels, res, target = d["levels"], d["results"], d["checks"]["engine8_vs_raw_batched_8"]["target"]
        rates = {name: [per[str(n)]["tok_per_sec"] for n in levels] for name, per in res.items()}
        engines = ("engine8_batch", "engine8_tasks", "engine16_batch")
        ratios = {name: [d["ratios"][name][str(n)]["vs_raw_batched"] for n in levels] for name in engines}
        targets = {"engine8_batch": [target if n == 8 else None for n in levels]}
        title = f"{d['max_tokens']} tokens per request"
        return [
            Panel(title, "aggregate tokens / s (median, min-max)", _requests(levels), rates),
            Panel(
                "engine / raw batched loop (dashed: target)", "tok/s ratio", _requests(levels), ratios, targets, True
            ),
        ]


class Speculative(Figure):
    name, title = "speculative", "Speculative decoding"
    facts = "{d[max_tokens]} greedy tokens"
    after = (
        "Texts differing from plain decoding's: {differ} (verifying a draft is a multi-token llama_decode, whose "
        "logits differ slightly from a single-token one; see docs/speculative.rst)."
    )
    columns = "its acceptance rate|llama-cpp-python prompt lookup|raw plain"

    def rows(self, d: Data) -> Rows:
        tps, accepted = d["median_tok_per_sec"], d["lookup_acceptance_rate"]
        rows = [_cols(f"task|plain Engine|SpeculativeEngine, default settings|{self.columns}")]
        for task, t in ((task, tps[task]) for task in ("copying", "free")):
            rates = [_f(t["plain"]), _f(t["lookup"]), _f(accepted[task], 2), _f(t["raw_lookup"]), _f(t["raw_plain"])]
            rows.append([task, *rates])
        return rows

    def values(self, d: Data) -> Data:
        by_task = d["same_text_as_plain"].items()
        return {"differ": ", ".join(f"{c} on {t}" for t, by in by_task for c, same in by.items() if not same) or "none"}

    def panels(self, d: Data) -> list[Panel]:
        tps = d["tok_per_sec"]
        rates = {c: [tps[task][c] for task in tps] for c in tps["copying"]}
        return [Panel("copying and free-form text", "tokens / s (median, min-max)", list(tps), rates)]


class Coexistence(Figure):
    name, title = "coexistence", "A second model in the same process"
    facts = "llama-cpp-python {build}; {d[max_tokens]} greedy tokens; each round runs every scenario in a fresh process"
    scenarios: ClassVar[dict[str, Any]] = {
        "nothing (oxillama_py Engine alone)": "engine_alone",
        "a second Engine": "engine_beside_engine",
        "a SpeculativeEngine": "engine_beside_speculative",
        "a second Engine, each computing on its own thread": "engine_beside_engine_unshared",
        "nothing (raw Llama alone)": "raw_alone",
        "a second raw Llama": "raw_beside_raw",
    }

    def rows(self, d: Data) -> Rows:
        tps = d["median_tok_per_sec"]
        rows = [_cols("the process also holds|first model's tok/s|ratio to alone")]
        for label, name in self.scenarios.items():
            alone = "raw_alone" if name.startswith("raw") else "engine_alone"
            rows.append([label, _f(tps[name]), _f(tps[name] / tps[alone], 2)])
        return rows

    def values(self, d: Data) -> Data:
        return {"build": "with OpenMP, as pip builds it" if d["machine"]["openmp_build"] else "without OpenMP"}

    def panels(self, d: Data) -> list[Panel]:
        rates = {"tok/s": [d["tok_per_sec"][name] for name in self.scenarios.values()]}
        groups = [label.replace(", ", ",\n") for label in self.scenarios]
        build = self.values(d)["build"]
        return [
            Panel(f"llama-cpp-python {build}", "first model's tok/s (median, min-max)", groups, rates, label="{:.1f}")
        ]


class Server(Figure):
    name, title = "server", "OpenAI-compatible servers"
    facts = "streaming `/v1/completions` clients, {d[max_tokens]} greedy tokens each"
    after = (
        "The oxillama_py server and llama.cpp's `llama-server` run {d[slots]} slots of {d[slot_ctx]} cells; "
        "llama-cpp-python's server has one slot by design and serves one request at a time."
    )
    labels: ClassVar[dict[str, Any]] = {
        "oxillama": "oxillama_py server",
        "llama_cpp_server": "llama-cpp-python server",
        "llama_server": "llama.cpp llama-server",
    }
    columns = (
        "concurrent clients|oxillama_py server tok/s|llama-cpp-python server tok/s|llama-server (C++) tok/s|"
        "TTFT p50 ms (same order)|TTFT p99 ms (same order)|oxillama / llama-cpp-python|oxillama / llama-server"
    )

    def rows(self, d: Data) -> Rows:
        rows = [_cols(self.columns)]

        def cells(k: str, pick: Callable[[Data], float], digits: int) -> list[str]:
            per = [d["results"].get(n, {}).get(k) for n in self.labels]
            return ["-" if e is None else _f(pick(e), digits) for e in per]

        for k in map(str, d["levels"]):
            p50 = " / ".join(cells(k, lambda e: e["ttft_ms"]["p50"], 0))
            p99 = " / ".join(cells(k, lambda e: e["ttft_ms"]["p99"], 0))
            ratios = [_f(d["ratios"][f"vs_{o}"][k]["tok_per_sec"], 2) for o in ("llama_cpp_server", "llama_server")]
            rows.append([k, *cells(k, lambda e: e["tok_per_sec"]["median"], 1), p50, p99, *ratios])
        return rows

    def panels(self, d: Data) -> list[Panel]:
        levels, res, groups = list(map(str, d["levels"])), d["results"], [f"{n} clients" for n in d["levels"]]

        def per_level(pick: Callable[[Data], Any]) -> dict[str, list[Any]]:
            return {
                label: [pick(res[n][k]) if k in res.get(n, {}) else None for k in levels]
                for n, label in self.labels.items()
            }

        others = {f"/ {self.labels[o]}": o for o in ("llama_cpp_server", "llama_server")}
        ratios = {label: [d["ratios"][f"vs_{o}"][k]["tok_per_sec"] for k in levels] for label, o in others.items()}
        targets = {
            label: [d["checks"][f"oxillama_vs_{o}_8"]["target"] if k == "8" else None for k in levels]
            for label, o in others.items()
        }
        return [
            Panel(
                f"{d['max_tokens']} tokens per request",
                "aggregate tokens / s (median, min-max)",
                groups,
                per_level(lambda e: e["tok_per_sec"]),
            ),
            Panel("time to first token, p50", "ms (log)", groups, per_level(lambda e: e["ttft_ms"]["p50"]), log=True),
            Panel("time to first token, p99", "ms (log)", groups, per_level(lambda e: e["ttft_ms"]["p99"]), log=True),
            Panel("oxillama_py server / other (dashed: target)", "tok/s ratio", groups, ratios, targets, True),
        ]


class Structured(Figure):
    name, title = "structured", "Structured output"
    facts = "a JSON Schema with bounded strings, integers and an enum array; {d[batch_rounds]} rounds with 8 requests"
    after = (
        "Constrained outputs that validated against the schema: {valid} of {total}; greedy JSON {same} to "
        "llama-cpp-python's (the same GBNF grammar, `Grammar.from_json_schema(schema).gbnf`)."
    )
    columns = (
        "scenario|oxillama_py unconstrained|oxillama_py `json_schema=`|llama-cpp-python `LlamaGrammar`|"
        "llama-cpp-python unconstrained|oxillama_py json / unconstrained|json: oxillama_py / llama-cpp-python|"
        "tokens per JSON output"
    )
    scenarios: ClassVar[dict[str, Any]] = {
        "one_greedy": "1 request, greedy",
        "one_sampled": "1 request, temperature 1.0",
        "eight_greedy": "8 requests, greedy (aggregate; llama-cpp-python one after another)",
    }
    contenders: ClassVar[dict[str, Any]] = {
        "ox_free": "oxillama_py unconstrained",
        "ox_json": "oxillama_py json_schema",
        "raw_json": "llama-cpp-python LlamaGrammar",
        "raw_free": "llama-cpp-python unconstrained",
    }
    # the ratio, its legend label, and the checks that hold it to a target
    ratios: ClassVar[dict[str, Any]] = {
        "ox_json_vs_ox_free": ("oxillama_py json / free", "constrained_vs_unconstrained"),
        "ox_json_vs_raw_json": ("json: oxillama_py / llama-cpp-python", "constrained_vs_llama_cpp"),
        "raw_json_vs_raw_free": ("llama-cpp-python json / free", ""),
    }

    def rows(self, d: Data) -> Rows:
        rows = [_cols(self.columns)]
        for name, label in self.scenarios.items():
            per, ratios = d["results"][name], d["ratios"][name]
            rates = [_f(per[c]["tok_per_sec"]["median"]) if c in per else "-" for c in self.contenders]
            counts = [n for sample in per["ox_json"]["tokens_per_sequence"][:1] for n in sample]
            tokens = str(counts[0]) if len(counts) == 1 else f"{min(counts)}-{max(counts)}"
            vs = [_f(ratios[f"ox_json_vs_{other}"]["median"], 2) for other in ("ox_free", "raw_json")]
            rows.append([label, *rates, *vs, tokens])
        return rows

    def values(self, d: Data) -> Data:
        counts = {key: sum(v[key] for v in d["validation"].values()) for key in ("valid", "total")}
        return counts | {"same": "equal" if d["same_text"]["one_greedy"]["ox_json_equals_raw_json"] else "not equal"}

    def panels(self, d: Data) -> list[Panel]:
        res, names, checks = d["results"], list(self.scenarios), d["checks"]
        groups = ["1 request, greedy", "1 request, T=1.0", "8 requests, greedy\n(llama-cpp-python: in turn)"]
        rates = {label: [res[s].get(c, {}).get("tok_per_sec") for s in names] for c, label in self.contenders.items()}
        ratios = {label: [d["ratios"][s][key]["median"] for s in names] for key, (label, _) in self.ratios.items()}
        targets = {
            label: [checks.get(f"{s}_{check}", {}).get("target") for s in names]
            for label, check in self.ratios.values()
        }
        return [
            Panel(
                "constrained by the same grammar, or not", "tokens / s (median, min-max; 8: aggregate)", groups, rates
            ),
            Panel("ratios (dashed: target)", "tok/s ratio (log)", groups, ratios, targets, ratio=True, log=True),
        ]


class PrefixCache(Figure):
    name, title = "prefix_cache", "Prefix cache"
    facts = (
        "{d[settings][max_tokens]} greedy tokens a request; a {d[settings][system_prompt_tokens]}-token system "
        "prompt shared by requests, and turns 2-10 of a chat"
    )
    after = "Greedy texts of cache hits that differ from a cold run: {mismatches}."
    contenders: ClassVar[dict[str, Any]] = {
        "ox_cached": "oxillama_py, prefix cache",
        "ox_cold": "oxillama_py, cache off",
        "raw_reuse": "llama-cpp-python, own prefix reuse",
        "raw_ramcache": "llama-cpp-python, LlamaRAMCache",
        "raw_cold": "llama-cpp-python, reset",
    }

    def workloads(self, d: Data) -> dict[str, str]:
        return {"system": f"{d['settings']['system_prompt_tokens']}-token system prompt", "chat": "10-turn chat"}

    def rows(self, d: Data) -> Rows:
        res = d["results"]
        rows = [_cols("workload|contender|first token (ms)|total (ms)|first token: x faster than it")]
        for (workload, title), name in ((w, n) for w in self.workloads(d).items() for n in self.contenders):
            hit, ttft = res[workload]["ox_cached"]["ttft_secs"]["median"], res[workload][name]["ttft_secs"]["median"]
            ratio = "" if name == "ox_cached" else _f(ttft / hit, 2 if ttft / hit < 10 else 1)
            total = res[workload][name]["total_secs"]["median"]
            rows.append([title, self.contenders[name], _f(ttft * 1000, 0), _f(total * 1000, 0), ratio])
        return rows

    def checks(self, d: Data) -> Data:
        return {key: {"value": d["results"]["system"]["ratios"][key], **t} for key, t in d["targets"].items()}

    def values(self, d: Data) -> Data:
        return {"mismatches": len(d["text_mismatches"])}

    def panels(self, d: Data) -> list[Panel]:
        groups = [label.replace(", ", ",\n") for label in self.contenders.values()]
        panels = []
        for workload, title in self.workloads(d).items():
            res = [d["results"][workload][name] for name in self.contenders]
            times = {"first token": [_ms(r["ttft_secs"]) for r in res], "total": [_ms(r["total_secs"]) for r in res]}
            panels.append(Panel(title, "ms (median, min-max, log)", groups, times, log=True, label="{:.0f}"))
        return panels


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

    def rows(self, d: Data) -> Rows:
        med, ratios, rate = d["median_tok_per_sec"], d["ratios"], d["acceptance_rate"]
        rows = [_cols("workload|requests|plain batching tok/s|speculative batching tok/s|ratio|acceptance")]
        for task, k in ((t, k) for t in ("copying", "free") for k in map(str, d["concurrency"])):
            per = med[task][k]
            cells = [_f(per["plain"]), _f(per["speculative"]), _f(ratios[task][k], 2), _f(rate[task][k], 2)]
            rows.append([task, k, *cells])
        return rows

    def values(self, d: Data) -> Data:
        return {"raw": d["llama_cpp_python_one_request"]["copying"]}

    def panels(self, d: Data) -> list[Panel]:
        levels, groups = list(map(str, d["concurrency"])), _requests(d["concurrency"])
        panels = [
            Panel(task, "aggregate tok/s (median, min-max)", groups, {c: [per[k][c] for k in levels] for c in per["1"]})
            for task, per in d["tok_per_sec"].items()
        ]
        ratios = {task: [per[k] for k in levels] for task, per in d["ratios"].items()}
        targets: dict[str, list[Any]] = {task: [None] * len(levels) for task in ratios}
        for check_name, check in d["targets"].items():  # copying_1_speculative_vs_plain: copying, 1 request
            task, requests = check_name.split("_")[:2]
            targets[task][levels.index(requests)] = check["target"]
        return [*panels, Panel("speculative / plain (dashed: target)", "tok/s ratio", groups, ratios, targets, True)]


class Scale(Figure):
    name, title = "scale", "One server process against two Ray Serve replicas"
    facts = "{d[settings][clients]} streaming clients, {d[settings][max_tokens]} greedy tokens each"
    after = (
        "One process with 16 slots runs one batch of 16 where the replicas run two of 8: ray / that process = "
        "{d[ratio_ray_over_process16]:.2f}."
    )
    setups: ClassVar[dict[str, Any]] = {
        "process": "1 process, 2 threads, 8 slots",
        "ray": "Ray Serve, 2 replicas x (1 thread, 8 slots)",
        "process16": "1 process, 2 threads, 16 slots",
    }

    def rows(self, d: Data) -> Rows:
        rows = [_cols("set-up|aggregate tok/s|time to first token p50 (ms)")]
        for name, label in self.setups.items():
            r = d["results"][name]
            rows.append([label, _f(r["aggregate_tok_per_sec"]["median"]), _f(r["ttft_p50_secs"] * 1000, 0)])
        return rows

    def checks(self, d: Data) -> Data:
        target = d["target"]
        check = {"value": d["ratio_ray_over_process"], "target": target["ratio"], "verdict": target["verdict"]}
        return {"ray_over_process": check}

    def panels(self, d: Data) -> list[Panel]:
        groups = [label.replace(", ", ",\n", 1) for label in self.setups.values()]
        rates = {"tok/s": [d["results"][name]["aggregate_tok_per_sec"] for name in self.setups]}
        title = f"{d['settings']['clients']} streaming clients on one machine"
        return [Panel(title, "aggregate tok/s (median, min-max)", groups, rates, label="{:.1f}")]


FIGURES: dict[str, Figure] = {cls.name: cls() for cls in Figure.__subclasses__()}


def bars(ax: Any, panel: Panel) -> None:
    """Draw ``panel`` onto ``ax`` (see ``Panel``)."""
    step = 0.8 / len(panel.series)
    for i, (name, values) in enumerate(panel.series.items()):
        offset = (i - (len(panel.series) - 1) / 2) * step
        have = [(j, v) for j, v in enumerate(values) if v is not None and not (isinstance(v, float) and math.isnan(v))]
        xs = [j + offset for j, _ in have]
        tops = [v["median"] if isinstance(v, dict) else v for _, v in have]
        spans = [[v["median"] - v["min"], v["max"] - v["median"]] for _, v in have if isinstance(v, dict)]
        ax.bar(xs, tops, step, yerr=list(zip(*spans, strict=True)) if spans else None, capsize=3, label=name)
        label = panel.label or ("{:.2f}" if panel.ratio else "")
        for (j, _), x, top in zip(have, xs, tops, strict=True):
            if label:
                ax.annotate(
                    label.format(top),
                    (x, top),
                    ha="center",
                    va="bottom",
                    xytext=(0, 2),
                    fontsize=7,
                    textcoords="offset points",
                )
            target = (panel.targets or {}).get(name, [None] * len(panel.groups))[j]
            if target is not None:
                ax.hlines(target, x - step / 2, x + step / 2, colors="black", linestyles="--", linewidth=0.9)
    if panel.ratio:
        ax.axhline(1.0, color="#777777", linewidth=0.8)
    ax.set_xticks(range(len(panel.groups)), panel.groups, fontsize=7)
    ax.set(title=panel.title, ylabel=panel.ylabel, yscale="log" if panel.log else "linear")
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
    fig, axes = plt.subplots(1, len(panels), figsize=(1 + 5 * len(panels), 4.6), squeeze=False)
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
    (DOCS / "batching.rst", "", ("batching",)),
    (DOCS / "prefix-cache.rst", "", ("prefix_cache",)),
    (DOCS / "speculative.rst", "", ("speculative",)),
    (DOCS / "speculative.rst", "speculative_batch", ("speculative_batch",)),
    (DOCS / "scaling.rst", "", ("scale",)),
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
