"""Write the measured figures from ``results/*.json`` into the README and the docs.

The README and ``docs/`` quote the benchmarks; quoting them by hand goes stale
the first time a benchmark is re-run. This script renders the blocks between
the ``FIGURES`` markers from the committed JSON, and ``--check`` (run by the
test suite) fails when a block no longer matches its JSON.

    python benchmarks/figures.py           # rewrite the blocks
    python benchmarks/figures.py --check   # exit 1 if any block is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


def _load(name: str, results: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((results / f"{name}.json").read_text(encoding="utf-8"))
    return data


def _f(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def _machine(data: dict[str, Any]) -> str:
    m = data["machine"]
    return f"{m['cpu_count']} CPU cores, {m['threads']} llama.cpp threads, llama-cpp-python {m['llama_cpp_python']}"


def _rows_md(rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(" --- " for _ in rows[0]) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return out


def _rows_rst(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return [rule, line(rows[0]), rule, *(line(r) for r in rows[1:]), rule]


def overhead_rows(d: dict[str, Any]) -> list[list[str]]:
    res = d["results"]
    rows = [["progress attached", "raw tok/s", "oxillama_py tok/s", "ratio", "target"]]
    raw = res["raw"]["tok_per_sec"]["median"]
    for name, label in (("none", "none"), ("tqdm", "tqdm"), ("widget", "ipywidgets"), ("callable", "callable")):
        r = res[name]
        rows.append([label, _f(raw), _f(r["tok_per_sec"]["median"]), _f(r["ratio_vs_raw"], 2), f">= {r['target']}"])
    return rows


def batching_rows(d: dict[str, Any]) -> list[list[str]]:
    res, ratios = d["results"], d["ratios"]
    rows = [
        [
            "concurrent requests",
            "raw sequential",
            "raw batched loop",
            "engine (8 slots)",
            "engine (16 slots)",
            "engine(8) / sequential",
            "engine(8) / batched",
        ]
    ]
    for level in d["levels"]:
        k = str(level)
        rows.append(
            [
                k,
                _f(res["raw_sequential"][k]["tok_per_sec"]["median"]),
                _f(res["raw_batched"][k]["tok_per_sec"]["median"]),
                _f(res["engine8_batch"][k]["tok_per_sec"]["median"]),
                _f(res["engine16_batch"][k]["tok_per_sec"]["median"]),
                _f(ratios["engine8_batch"][k]["vs_raw_sequential"], 2),
                _f(ratios["engine8_batch"][k]["vs_raw_batched"], 2),
            ]
        )
    return rows


def speculative_rows(d: dict[str, Any]) -> list[list[str]]:
    tps = d["median_tok_per_sec"]
    accepted = d["lookup_acceptance_rate"]
    rows = [
        [
            "task",
            "plain Engine",
            "SpeculativeEngine, default settings",
            "its acceptance rate",
            "llama-cpp-python prompt lookup",
            "raw plain",
        ]
    ]
    for task in ("copying", "free"):
        t = tps[task]
        rows.append(
            [task, _f(t["plain"]), _f(t["lookup"]), _f(accepted[task], 2), _f(t["raw_lookup"]), _f(t["raw_plain"])]
        )
    return rows


def _same_text(s: dict[str, Any]) -> str:
    differ = [f"{c} on {task}" for task, by in s["same_text_as_plain"].items() for c, same in by.items() if not same]
    if not differ:
        return "every contender's text equal to plain decoding's"
    return (
        "texts differing from plain decoding's: " + ", ".join(differ) + " (verifying a draft is a multi-token "
        "llama_decode, whose logits differ slightly from a single-token one; see docs/speculative.rst)"
    )


def _check_line(checks: dict[str, Any]) -> str:
    parts = [
        f"{name} {c['value']:.2f} (target {'<' if 'below' in c else '>='} {c['target']}: {c['verdict']})"
        for name, c in checks.items()
    ]
    return "; ".join(parts)


def coexistence_rows(d: dict[str, Any]) -> list[list[str]]:
    tps = d["median_tok_per_sec"]
    rows = [["the process also holds", "first model's tok/s", "ratio to alone"]]
    for label, name, alone in (
        ("nothing (oxillama_py Engine alone)", "engine_alone", "engine_alone"),
        ("a second Engine", "engine_beside_engine", "engine_alone"),
        ("a SpeculativeEngine", "engine_beside_speculative", "engine_alone"),
        ("a second Engine, each computing on its own thread", "engine_beside_engine_unshared", "engine_alone"),
        ("nothing (raw Llama alone)", "raw_alone", "raw_alone"),
        ("a second raw Llama", "raw_beside_raw", "raw_alone"),
    ):
        rows.append([label, _f(tps[name]), _f(tps[name] / tps[alone], 2)])
    return rows


def readme_block(results: Path) -> list[str]:
    o, b, s, c = (_load(n, results) for n in ("overhead", "batching", "speculative", "coexistence"))
    build = "with OpenMP, as pip builds it" if c["machine"]["openmp_build"] else "without OpenMP"
    lag = b["checks"]["p99_loop_lag_ms_8"]["value"]
    lines = [
        f"Gemma 3 270M Q4_K_M, greedy, {_machine(o)}; medians of interleaved rounds "
        "(tokens per second; ratio = oxillama_py / raw llama-cpp-python).",
        "",
        f"**One request** ([`overhead.py`](benchmarks/overhead.py), {o['max_tokens']} tokens, {o['rounds']} rounds):",
        "",
        *_rows_md(overhead_rows(o)),
        "",
        f"**Concurrent requests** ([`batching.py`](benchmarks/batching.py), {b['max_tokens']} tokens each, "
        f"aggregate tok/s; event-loop p99 lag with 8 requests: {lag:.1f} ms, target < 10 ms):",
        "",
        *_rows_md(batching_rows(b)),
        "",
        "With 16 requests the default 8 slots decode 8 at a time and queue the rest; `max_concurrency=16` "
        "decodes all 16 together. Checks: " + _check_line(b["checks"]) + ".",
        "",
        "![aggregate throughput against concurrency](benchmarks/results/batching.png)",
        "",
        f"**Speculative decoding** ([`speculative.py`](benchmarks/speculative.py), {s['max_tokens']} tokens, "
        f"tok/s; {_same_text(s)}):",
        "",
        *_rows_md(speculative_rows(s)),
        "",
        "Checks: " + _check_line(s["targets"]) + ".",
        "",
        "![speculative decoding](benchmarks/results/speculative.png)",
        "",
        f"**A second model in the same process** ([`coexistence.py`](benchmarks/coexistence.py), "
        f"llama-cpp-python {build}, {c['max_tokens']} tokens, median of {c['rounds']} processes each):",
        "",
        *_rows_md(coexistence_rows(c)),
        "",
        "Checks: " + _check_line(c["targets"]) + ".",
    ]
    return lines


def batching_rst(results: Path) -> list[str]:
    b = _load("batching", results)
    lag = b["checks"]["p99_loop_lag_ms_8"]["value"]
    return [
        f"Aggregate tokens per second from ``benchmarks/batching.py`` (Gemma 3 270M Q4_K_M, greedy, "
        f"{b['max_tokens']} tokens per request, {_machine(b)}, median of {b['rounds']} interleaved rounds). "
        "*raw sequential* is llama-cpp-python's ``create_completion`` one prompt after another; *raw batched "
        "loop* is a minimal low-level llama.cpp loop decoding all sequences together, the ceiling. With "
        "16 requests and the default 8 slots, half of them queue; ``max_concurrency=16`` decodes them all "
        f"at once. The event loop's p99 lag with 8 requests was {lag:.1f} ms. Checks: {_check_line(b['checks'])}.",
        "",
        *_rows_rst(batching_rows(b)),
        "",
        ".. image:: ../benchmarks/results/batching.png",
        "   :alt: aggregate tokens per second against concurrent requests",
    ]


def speculative_rst(results: Path) -> list[str]:
    s = _load("speculative", results)
    return [
        f"Tokens per second from ``benchmarks/speculative.py`` (Gemma 3 270M Q4_K_M, greedy, "
        f"{s['max_tokens']} tokens, {_machine(s)}, median of {s['rounds']} interleaved rounds), on a "
        "copying task (repeat a given passage) and on free-form text (an essay's opening; the model's greedy "
        "text turns repetitive after a few dozen tokens, and lookup finds drafts in it too). "
        "*llama-cpp-python prompt lookup* is "
        f"``Llama(draft_model=LlamaPromptLookupDecoding(...))``; {_same_text(s)}.",
        "",
        *_rows_rst(speculative_rows(s)),
        "",
        "Checks: " + _check_line(s["targets"]) + ".",
        "",
        ".. image:: ../benchmarks/results/speculative.png",
        "   :alt: tokens per second of plain and speculative decoding",
    ]


def _cell(d: dict[str, Any], name: str, level: int, pick: Callable[[dict[str, Any]], float], digits: int) -> str:
    entry = d["results"].get(name, {}).get(str(level))
    return "-" if entry is None else _f(pick(entry), digits)


def server_rows(d: dict[str, Any]) -> list[list[str]]:
    names = ("oxillama", "llama_cpp_server", "llama_server")
    rows = [
        [
            "concurrent clients",
            "oxillama_py server tok/s",
            "llama-cpp-python server tok/s",
            "llama-server (C++) tok/s",
            "TTFT p50 ms (same order)",
            "TTFT p99 ms (same order)",
            "oxillama / llama-cpp-python",
            "oxillama / llama-server",
        ]
    ]
    for level in d["levels"]:
        k = str(level)
        rows.append(
            [
                k,
                *(_cell(d, n, level, lambda e: e["tok_per_sec"]["median"], 1) for n in names),
                " / ".join(_cell(d, n, level, lambda e: e["ttft_ms"]["p50"], 0) for n in names),
                " / ".join(_cell(d, n, level, lambda e: e["ttft_ms"]["p99"], 0) for n in names),
                _f(d["ratios"]["vs_llama_cpp_server"][k]["tok_per_sec"], 2),
                _f(d["ratios"]["vs_llama_server"][k]["tok_per_sec"], 2),
            ]
        )
    return rows


def server_readme(results: Path) -> list[str]:
    link = "[`server.py`](benchmarks/server.py)"
    if not (results / "server.json").is_file():
        return [
            f"**OpenAI-compatible servers** ({link}): not measured yet; run `python benchmarks/server.py`, "
            "then `python benchmarks/figures.py`."
        ]
    d = _load("server", results)
    quick = " (quick mode: a smoke run, too short to judge by)" if d["mode"] == "quick" else ""
    return [
        f"**OpenAI-compatible servers** ({link}, streaming `/v1/completions` clients, {d['max_tokens']} tokens "
        f"each, greedy, {_machine(d)}, median of {d['rounds']} rounds{quick}; aggregate tok/s and time to first "
        f"token). The oxillama_py server and llama.cpp's `llama-server` (built from the llama.cpp in the same "
        f"llama-cpp-python sdist) run {d['slots']} slots of {d['slot_ctx']} cells; llama-cpp-python's server "
        "has one slot by design and serves one request at a time:",
        "",
        *_rows_md(server_rows(d)),
        "",
        "Checks: " + _check_line(d["checks"]) + ".",
        "",
        "![streaming clients against three servers](benchmarks/results/server.png)",
    ]


def structured_rows(d: dict[str, Any]) -> list[list[str]]:
    res, ratios = d["results"], d["ratios"]
    rows = [
        [
            "scenario",
            "oxillama_py unconstrained",
            "oxillama_py `json_schema=`",
            "llama-cpp-python `LlamaGrammar`",
            "llama-cpp-python unconstrained",
            "oxillama_py json / unconstrained",
            "json: oxillama_py / llama-cpp-python",
            "tokens per JSON output",
        ]
    ]
    labels = {
        "one_greedy": "1 request, greedy",
        "one_sampled": "1 request, temperature 1.0",
        "eight_greedy": "8 requests, greedy (aggregate; llama-cpp-python one after another)",
    }
    for name, label in labels.items():
        per = res[name]
        counts = [n for sample in per["ox_json"]["tokens_per_sequence"][:1] for n in sample]
        rows.append(
            [
                label,
                *(
                    _f(per[c]["tok_per_sec"]["median"]) if c in per else "-"
                    for c in ("ox_free", "ox_json", "raw_json", "raw_free")
                ),
                _f(ratios[name]["ox_json_vs_ox_free"]["median"], 2),
                _f(ratios[name]["ox_json_vs_raw_json"]["median"], 2),
                str(counts[0]) if len(counts) == 1 else f"{min(counts)}-{max(counts)}",
            ]
        )
    return rows


def structured_readme(results: Path) -> list[str]:
    link = "[`structured.py`](benchmarks/structured.py)"
    if not (results / "structured.json").is_file():
        return [
            f"**Structured output** ({link}): not measured yet; run `python benchmarks/structured.py`, "
            "then `python benchmarks/figures.py`."
        ]
    d = _load("structured", results)
    quick = " (quick mode: a smoke run, too short to judge by)" if d["mode"] == "quick" else ""
    valid = sum(v["valid"] for v in d["validation"].values())
    total = sum(v["total"] for v in d["validation"].values())
    same = d["same_text"]["one_greedy"]["ox_json_equals_raw_json"]
    return [
        f"**Structured output** ({link}, a JSON Schema with bounded strings, integers and an enum array; "
        f"{_machine(d)}; tok/s, median of {d['rounds']} interleaved rounds, {d['batch_rounds']} with 8 "
        f"requests{quick}). Both constrained sides use the same GBNF grammar, "
        "`Grammar.from_json_schema(schema).gbnf`; the unconstrained calls decode as many tokens as the "
        "JSON outputs have:",
        "",
        *_rows_md(structured_rows(d)),
        "",
        f"Constrained outputs that parsed and validated against the schema (`jsonschema`): {valid} of {total}; "
        f"greedy JSON {'equal' if same else 'not equal'} to llama-cpp-python's. Checks: "
        + _check_line(d["checks"])
        + ".",
        "",
        "![constrained and unconstrained decoding](benchmarks/results/structured.png)",
    ]


def prefix_cache_rows(d: dict[str, Any]) -> list[list[str]]:
    res = d["results"]
    rows = [["workload", "contender", "first token (ms)", "total (ms)", "first token: x faster than it"]]
    names = {
        "ox_cached": "oxillama_py, prefix cache",
        "ox_cold": "oxillama_py, cache off",
        "raw_reuse": "llama-cpp-python, own prefix reuse",
        "raw_ramcache": "llama-cpp-python, LlamaRAMCache",
        "raw_cold": "llama-cpp-python, reset",
    }
    titles = {"system": f"{d['settings']['system_prompt_tokens']}-token system prompt", "chat": "10-turn chat"}
    for workload in ("system", "chat"):
        hit = res[workload]["ox_cached"]["ttft_secs"]["median"]
        for name, label in names.items():
            ttft = res[workload][name]["ttft_secs"]["median"]
            total = res[workload][name]["total_secs"]["median"]
            ratio = "" if name == "ox_cached" else _f(ttft / hit, 2 if ttft / hit < 10 else 1)
            rows.append([titles[workload], label, _f(ttft * 1000, 0), _f(total * 1000, 0), ratio])
    return rows


def _prefix_targets(d: dict[str, Any]) -> str:
    t = d["targets"]
    cold = t["ttft_cold_over_cached"]
    raw = t["ttft_raw_reuse_over_cached"]
    r = d["results"]["system"]["ratios"]
    return (
        f"time to first token with a hit {_f(r['ttft_cold_over_cached'])}x lower than cold "
        f"(target {_f(cold['target'], 0)}x: {cold['verdict']}), "
        f"{_f(r['ttft_raw_reuse_over_cached'], 2)}x llama-cpp-python's own reuse "
        f"(target {_f(raw['target'])}: {raw['verdict']})"
    )


def prefix_cache_readme(results: Path) -> list[str]:
    link = "[`prefix_cache.py`](benchmarks/prefix_cache.py)"
    if not (results / "prefix_cache.json").is_file():
        return [f"**Prefix cache** ({link}): not measured yet; run `python benchmarks/prefix_cache.py`."]
    d = _load("prefix_cache", results)
    s = d["settings"]
    return [
        f"**Prefix cache** ({link}; {_machine(d)}; medians of {s['rounds']} interleaved rounds, "
        f"{s['max_tokens']} greedy tokens per request): requests sharing a "
        f"{s['system_prompt_tokens']}-token system prompt, and turns 2-10 of a chat. "
        + _prefix_targets(d)
        + f"; greedy texts differing from a cold run: {len(d['text_mismatches'])}.",
        "",
        *_rows_md(prefix_cache_rows(d)),
        "",
        "![prefix cache: time to first token and total](benchmarks/results/prefix_cache.png)",
    ]


def prefix_cache_rst(results: Path) -> list[str]:
    if not (results / "prefix_cache.json").is_file():
        return ["Not measured yet: run ``python benchmarks/prefix_cache.py``."]
    d = _load("prefix_cache", results)
    s = d["settings"]
    return [
        f"Measured by ``benchmarks/prefix_cache.py`` ({_machine(d)}; medians of {s['rounds']} "
        f"interleaved rounds, {s['max_tokens']} greedy tokens per request): "
        + _prefix_targets(d)
        + f". Greedy texts of cache hits that differ from a cold run: {len(d['text_mismatches'])}.",
        "",
        *_rows_rst(prefix_cache_rows(d)),
        "",
        ".. image:: ../benchmarks/results/prefix_cache.png",
        "   :alt: time to first token and total time, cache off and on, beside llama-cpp-python",
    ]


def _scale_sentence(d: dict[str, Any]) -> str:
    s, r = d["settings"], d["results"]
    tps = {name: r[name]["aggregate_tok_per_sec"]["median"] for name in r}
    return (
        f"{s['clients']} streaming clients, {s['max_tokens']} greedy tokens each, medians of {s['rounds']} "
        f"rounds: one process with 2 llama.cpp threads and 8 slots {_f(tps['process'])} tok/s, two Ray "
        f"Serve replicas with 1 thread and 8 slots each {_f(tps['ray'])} tok/s: ratio "
        f"{_f(d['ratio_ray_over_process'], 2)} (target {d['target']['ratio']}: {d['target']['verdict']}). "
        f"One process with 16 slots, one batch of 16 where the replicas run two of 8, reaches "
        f"{_f(tps['process16'])} tok/s (ratio {_f(d['ratio_ray_over_process16'], 2)}). Time to first token "
        f"(p50): {_f(r['process']['ttft_p50_secs'] * 1000, 0)} ms, {_f(r['ray']['ttft_p50_secs'] * 1000, 0)} ms "
        f"and {_f(r['process16']['ttft_p50_secs'] * 1000, 0)} ms"
    )


def scale_rst(results: Path) -> list[str]:
    if not (results / "scale.json").is_file():
        return ["Not measured yet: run ``python benchmarks/scale.py``."]
    d = _load("scale", results)
    return [
        f"Measured by ``benchmarks/scale.py`` ({_machine(d)}): " + _scale_sentence(d) + ".",
        "",
        ".. image:: ../benchmarks/results/scale.png",
        "   :alt: aggregate tokens per second, one process against two Ray Serve replicas",
    ]


def speculative_batch_rows(d: dict[str, Any]) -> list[list[str]]:
    med, ratios, rate = d["median_tok_per_sec"], d["ratios"], d["acceptance_rate"]
    rows = [["workload", "requests", "plain batching tok/s", "speculative batching tok/s", "ratio", "acceptance"]]
    for task in ("copying", "free"):
        for n in d["concurrency"]:
            k = str(n)
            per = med[task][k]
            rows.append(
                [task, k, _f(per["plain"]), _f(per["speculative"]), _f(ratios[task][k], 2), _f(rate[task][k], 2)]
            )
    return rows


def _speculative_batch_intro(d: dict[str, Any]) -> str:
    raw = d["llama_cpp_python_one_request"]["copying"]
    return (
        f"{d['max_tokens']} tokens a request, greedy, {_machine(d)}, median of {d['rounds']} interleaved rounds; "
        "aggregate tok/s of N concurrent requests on one engine with `EngineConfig(speculative=PromptLookup())`, "
        "each request with `speculative=False` (plain) or the default. For one copying request, llama-cpp-python "
        f"gives {raw['raw_plain']:.1f} tok/s plain and {raw['raw_lookup']:.1f} with its prompt lookup"
    )


def speculative_batch_readme(results: Path) -> list[str]:
    link = "[`speculative_batch.py`](benchmarks/speculative_batch.py)"
    if not (results / "speculative_batch.json").is_file():
        return [
            f"**Speculation inside the batch** ({link}): not measured yet; run "
            "`python benchmarks/speculative_batch.py`, then `python benchmarks/figures.py`."
        ]
    d = _load("speculative_batch", results)
    return [
        f"**Speculation inside the batch** ({link}, {_speculative_batch_intro(d)}):",
        "",
        *_rows_md(speculative_batch_rows(d)),
        "",
        "Checks: " + _check_line(d["targets"]) + ".",
        "",
        "![speculation inside continuous batching](benchmarks/results/speculative_batch.png)",
    ]


def speculative_batch_rst(results: Path) -> list[str]:
    if not (results / "speculative_batch.json").is_file():
        return ["Not measured yet: run ``python benchmarks/speculative_batch.py``."]
    d = _load("speculative_batch", results)
    return [
        f"From ``benchmarks/speculative_batch.py`` ({_speculative_batch_intro(d).replace('`', '``')}).",
        "",
        *_rows_rst(speculative_batch_rows(d)),
        "",
        "Checks: " + _check_line(d["targets"]) + ".",
        "",
        ".. image:: ../benchmarks/results/speculative_batch.png",
        "   :alt: plain and speculative batching for 1, 2, 4 and 8 requests",
    ]


# (file, start marker, end marker, renderer)
TARGETS: list[tuple[Path, str, str, Callable[[Path], list[str]]]] = [
    (ROOT / "README.md", "<!-- FIGURES -->", "<!-- /FIGURES -->", readme_block),
    (ROOT / "README.md", "<!-- FIGURES:server -->", "<!-- /FIGURES:server -->", server_readme),
    (ROOT / "README.md", "<!-- FIGURES:structured -->", "<!-- /FIGURES:structured -->", structured_readme),
    (ROOT / "README.md", "<!-- FIGURES:prefix_cache -->", "<!-- /FIGURES:prefix_cache -->", prefix_cache_readme),
    (ROOT / "docs" / "batching.rst", ".. FIGURES", ".. /FIGURES", batching_rst),
    (ROOT / "docs" / "prefix-cache.rst", ".. FIGURES", ".. /FIGURES", prefix_cache_rst),
    (ROOT / "docs" / "speculative.rst", ".. FIGURES", ".. /FIGURES", speculative_rst),
    (
        ROOT / "README.md",
        "<!-- FIGURES:speculative_batch -->",
        "<!-- /FIGURES:speculative_batch -->",
        speculative_batch_readme,
    ),
    (
        ROOT / "docs" / "speculative.rst",
        ".. FIGURES:speculative_batch",
        ".. /FIGURES:speculative_batch",
        speculative_batch_rst,
    ),
    (ROOT / "docs" / "scaling.rst", ".. FIGURES", ".. /FIGURES", scale_rst),
]


def render(text: str, start: str, end: str, block: list[str]) -> str:
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"markers {start!r} ... {end!r} not found")
    replacement = "\n".join([start, "", *block, "", end])
    return pattern.sub(lambda _: replacement, text, count=1)


def rendered(results: Path = RESULTS) -> list[tuple[Path, str, str]]:
    """Each target file with its current text and the text its JSON calls for (all of its blocks)."""
    current: dict[Path, str] = {}
    wanted: dict[Path, str] = {}
    for path, start, end, renderer in TARGETS:
        if path not in current:
            current[path] = wanted[path] = path.read_text(encoding="utf-8")
        wanted[path] = render(wanted[path], start, end, renderer(results))
    return [(path, current[path], wanted[path]) for path in current]


def stale(results: Path = RESULTS) -> list[Path]:
    """The files whose figures block differs from what the JSON says."""
    return [path for path, text, new in rendered(results) if new != text]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report stale blocks; exit 1 if any")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder holding the benchmark JSON")
    args = parser.parse_args()
    if args.check:
        bad = stale(args.results)
        for path in bad:
            print(f"stale figures: {path.relative_to(ROOT)} (run python benchmarks/figures.py)")
        return 1 if bad else 0
    for path, text, new in rendered(args.results):
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
