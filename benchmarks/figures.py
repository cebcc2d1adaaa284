"""Write the measured figures from ``results/*.json`` into the README and the docs.

The README and ``docs/`` quote the benchmarks; quoting them by hand goes stale the first time a benchmark is
re-run. This script renders the blocks between the ``FIGURES`` markers from the committed JSON, and ``--check``
(run by the test suite) fails when a block no longer matches its JSON. The ``*_rows`` tables are also what each
benchmark prints when it ends.

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
Rows = list[list[str]]
Data = dict[str, Any]


def _f(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def _cols(header: str) -> list[str]:
    return header.split("|")


def _machine(data: Data) -> str:
    m = data["machine"]
    return f"{m['cpu_count']} CPU cores, {m['threads']} llama.cpp threads, llama-cpp-python {m['llama_cpp_python']}"


def _rows_md(rows: Rows) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join(" --- " for _ in rows[0]) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def _rows_rst(rows: Rows) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return [rule, line(rows[0]), rule, *(line(r) for r in rows[1:]), rule]


def _table_md(rows: Rows) -> list[str]:
    return ["", *_rows_md(rows), ""]


def _table_rst(rows: Rows) -> list[str]:
    return ["", *_rows_rst(rows), ""]


def _check_line(checks: Data) -> str:
    parts = [
        f"{name} {c['value']:.2f} (target {'<' if 'below' in c else '>='} {c['target']}: {c['verdict']})"
        for name, c in checks.items()
    ]
    return "; ".join(parts)


def _checks(checks: Data) -> list[str]:
    return ["Checks: " + _check_line(checks) + ".", ""]


def _md_image(name: str, alt: str) -> list[str]:
    return [f"![{alt}](benchmarks/results/{name}.png)"]


def _rst_image(name: str, alt: str) -> list[str]:
    return [f".. image:: ../benchmarks/results/{name}.png", f"   :alt: {alt}"]


def overhead_rows(d: Data) -> Rows:
    res = d["results"]
    raw = _f(res["raw"]["tok_per_sec"]["median"])
    rows = [_cols("progress attached|raw tok/s|oxillama_py tok/s|ratio|target")]
    for name, label in (("none", "none"), ("tqdm", "tqdm"), ("widget", "ipywidgets"), ("callable", "callable")):
        r = res[name]
        rows.append([label, raw, _f(r["tok_per_sec"]["median"]), _f(r["ratio_vs_raw"], 2), f">= {r['target']}"])
    return rows


def batching_rows(d: Data) -> Rows:
    rows = [_cols(f"concurrent requests|raw sequential|raw batched loop|{ENGINE_COLUMNS}")]
    names = ("raw_sequential", "raw_batched", "engine8_batch", "engine16_batch")
    for k in map(str, d["levels"]):
        vs = d["ratios"]["engine8_batch"][k]
        rates = [_f(d["results"][n][k]["tok_per_sec"]["median"]) for n in names]
        rows.append([k, *rates, _f(vs["vs_raw_sequential"], 2), _f(vs["vs_raw_batched"], 2)])
    return rows


def speculative_rows(d: Data) -> Rows:
    tps, accepted = d["median_tok_per_sec"], d["lookup_acceptance_rate"]
    rows = [_cols(f"task|plain Engine|SpeculativeEngine, default settings|{LOOKUP_COLUMNS}")]
    for task, t in ((task, tps[task]) for task in ("copying", "free")):
        rates = [_f(t["plain"]), _f(t["lookup"]), _f(accepted[task], 2), _f(t["raw_lookup"]), _f(t["raw_plain"])]
        rows.append([task, *rates])
    return rows


def coexistence_rows(d: Data) -> Rows:
    tps = d["median_tok_per_sec"]
    rows = [_cols("the process also holds|first model's tok/s|ratio to alone")]
    for label, name in COEXISTENCE.items():
        alone = "raw_alone" if name.startswith("raw") else "engine_alone"
        rows.append([label, _f(tps[name]), _f(tps[name] / tps[alone], 2)])
    return rows


def server_rows(d: Data) -> Rows:
    rows = [_cols(SERVER_COLUMNS)]

    def cells(k: str, pick: Callable[[Data], float], digits: int) -> list[str]:
        per = [d["results"].get(n, {}).get(k) for n in ("oxillama", "llama_cpp_server", "llama_server")]
        return ["-" if e is None else _f(pick(e), digits) for e in per]

    for k in map(str, d["levels"]):
        p50 = " / ".join(cells(k, lambda e: e["ttft_ms"]["p50"], 0))
        p99 = " / ".join(cells(k, lambda e: e["ttft_ms"]["p99"], 0))
        ratios = [_f(d["ratios"][f"vs_{o}"][k]["tok_per_sec"], 2) for o in ("llama_cpp_server", "llama_server")]
        rows.append([k, *cells(k, lambda e: e["tok_per_sec"]["median"], 1), p50, p99, *ratios])
    return rows


def structured_rows(d: Data) -> Rows:
    rows = [_cols(STRUCTURED_COLUMNS)]
    for name, label in STRUCTURED_SCENARIOS.items():
        per, ratios = d["results"][name], d["ratios"][name]
        rates = [
            _f(per[c]["tok_per_sec"]["median"]) if c in per else "-"
            for c in ("ox_free", "ox_json", "raw_json", "raw_free")
        ]
        counts = [n for sample in per["ox_json"]["tokens_per_sequence"][:1] for n in sample]
        tokens = str(counts[0]) if len(counts) == 1 else f"{min(counts)}-{max(counts)}"
        rows.append(
            [
                label,
                *rates,
                _f(ratios["ox_json_vs_ox_free"]["median"], 2),
                _f(ratios["ox_json_vs_raw_json"]["median"], 2),
                tokens,
            ]
        )
    return rows


def prefix_cache_rows(d: Data) -> Rows:
    res = d["results"]
    rows = [_cols("workload|contender|first token (ms)|total (ms)|first token: x faster than it")]
    titles = {"system": f"{d['settings']['system_prompt_tokens']}-token system prompt", "chat": "10-turn chat"}
    for workload, name in ((w, n) for w in ("system", "chat") for n in PREFIX_CONTENDERS):
        hit, ttft = res[workload]["ox_cached"]["ttft_secs"]["median"], res[workload][name]["ttft_secs"]["median"]
        ratio = "" if name == "ox_cached" else _f(ttft / hit, 2 if ttft / hit < 10 else 1)
        total = res[workload][name]["total_secs"]["median"]
        rows.append([titles[workload], PREFIX_CONTENDERS[name], _f(ttft * 1000, 0), _f(total * 1000, 0), ratio])
    return rows


def speculative_batch_rows(d: Data) -> Rows:
    med, ratios, rate = d["median_tok_per_sec"], d["ratios"], d["acceptance_rate"]
    rows = [_cols("workload|requests|plain batching tok/s|speculative batching tok/s|ratio|acceptance")]
    for task, k in ((t, k) for t in ("copying", "free") for k in map(str, d["concurrency"])):
        per = med[task][k]
        rows.append([task, k, _f(per["plain"]), _f(per["speculative"]), _f(ratios[task][k], 2), _f(rate[task][k], 2)])
    return rows


ENGINE_COLUMNS = "engine (8 slots)|engine (16 slots)|engine(8) / sequential|engine(8) / batched"
LOOKUP_COLUMNS = "its acceptance rate|llama-cpp-python prompt lookup|raw plain"
COEXISTENCE = {
    "nothing (oxillama_py Engine alone)": "engine_alone",
    "a second Engine": "engine_beside_engine",
    "a SpeculativeEngine": "engine_beside_speculative",
    "a second Engine, each computing on its own thread": "engine_beside_engine_unshared",
    "nothing (raw Llama alone)": "raw_alone",
    "a second raw Llama": "raw_beside_raw",
}
SERVER_COLUMNS = (
    "concurrent clients|oxillama_py server tok/s|llama-cpp-python server tok/s|llama-server (C++) tok/s|"
    "TTFT p50 ms (same order)|TTFT p99 ms (same order)|oxillama / llama-cpp-python|oxillama / llama-server"
)
STRUCTURED_COLUMNS = (
    "scenario|oxillama_py unconstrained|oxillama_py `json_schema=`|llama-cpp-python `LlamaGrammar`|"
    "llama-cpp-python unconstrained|oxillama_py json / unconstrained|json: oxillama_py / llama-cpp-python|"
    "tokens per JSON output"
)
STRUCTURED_SCENARIOS = {
    "one_greedy": "1 request, greedy",
    "one_sampled": "1 request, temperature 1.0",
    "eight_greedy": "8 requests, greedy (aggregate; llama-cpp-python one after another)",
}
PREFIX_CONTENDERS = {
    "ox_cached": "oxillama_py, prefix cache",
    "ox_cold": "oxillama_py, cache off",
    "raw_reuse": "llama-cpp-python, own prefix reuse",
    "raw_ramcache": "llama-cpp-python, LlamaRAMCache",
    "raw_cold": "llama-cpp-python, reset",
}


def _same_text(s: Data) -> str:
    differ = [f"{c} on {task}" for task, by in s["same_text_as_plain"].items() for c, same in by.items() if not same]
    if not differ:
        return "every contender's text equal to plain decoding's"
    return (
        "texts differing from plain decoding's: " + ", ".join(differ) + " (verifying a draft is a multi-token "
        "llama_decode, whose logits differ slightly from a single-token one; see docs/speculative.rst)"
    )


def readme_block(o: Data, b: Data, s: Data, c: Data) -> list[str]:
    build = "with OpenMP, as pip builds it" if c["machine"]["openmp_build"] else "without OpenMP"
    lag = b["checks"]["p99_loop_lag_ms_8"]["value"]
    return [
        f"Gemma 3 270M Q4_K_M, greedy, {_machine(o)}; medians of interleaved rounds "
        "(tokens per second; ratio = oxillama_py / raw llama-cpp-python).",
        "",
        f"**One request** ([`overhead.py`](benchmarks/overhead.py), {o['max_tokens']} tokens, {o['rounds']} rounds):",
        *_table_md(overhead_rows(o)),
        f"**Concurrent requests** ([`batching.py`](benchmarks/batching.py), {b['max_tokens']} tokens each, "
        f"aggregate tok/s; event-loop p99 lag with 8 requests: {lag:.1f} ms, target < 10 ms):",
        *_table_md(batching_rows(b)),
        "With 16 requests the default 8 slots decode 8 at a time and queue the rest; `max_concurrency=16` "
        "decodes all 16 together. Checks: " + _check_line(b["checks"]) + ".",
        "",
        *_md_image("batching", "aggregate throughput against concurrency"),
        "",
        f"**Speculative decoding** ([`speculative.py`](benchmarks/speculative.py), {s['max_tokens']} tokens, "
        f"tok/s; {_same_text(s)}):",
        *_table_md(speculative_rows(s)),
        *_checks(s["targets"]),
        *_md_image("speculative", "speculative decoding"),
        "",
        f"**A second model in the same process** ([`coexistence.py`](benchmarks/coexistence.py), "
        f"llama-cpp-python {build}, {c['max_tokens']} tokens, median of {c['rounds']} processes each):",
        *_table_md(coexistence_rows(c)),
        "Checks: " + _check_line(c["targets"]) + ".",
    ]


def batching_rst(b: Data) -> list[str]:
    lag = b["checks"]["p99_loop_lag_ms_8"]["value"]
    return [
        f"Aggregate tokens per second from ``benchmarks/batching.py`` (Gemma 3 270M Q4_K_M, greedy, "
        f"{b['max_tokens']} tokens per request, {_machine(b)}, median of {b['rounds']} interleaved rounds). "
        "*raw sequential* is llama-cpp-python's ``create_completion`` one prompt after another; *raw batched "
        "loop* is a minimal low-level llama.cpp loop decoding all sequences together, the ceiling. With "
        "16 requests and the default 8 slots, half of them queue; ``max_concurrency=16`` decodes them all "
        f"at once. The event loop's p99 lag with 8 requests was {lag:.1f} ms. Checks: {_check_line(b['checks'])}.",
        *_table_rst(batching_rows(b)),
        *_rst_image("batching", "aggregate tokens per second against concurrent requests"),
    ]


def speculative_rst(s: Data) -> list[str]:
    return [
        f"Tokens per second from ``benchmarks/speculative.py`` (Gemma 3 270M Q4_K_M, greedy, "
        f"{s['max_tokens']} tokens, {_machine(s)}, median of {s['rounds']} interleaved rounds), on a "
        "copying task (repeat a given passage) and on free-form text (an essay's opening; the model's greedy "
        "text turns repetitive after a few dozen tokens, and lookup finds drafts in it too). "
        "*llama-cpp-python prompt lookup* is "
        f"``Llama(draft_model=LlamaPromptLookupDecoding(...))``; {_same_text(s)}.",
        *_table_rst(speculative_rows(s)),
        *_checks(s["targets"]),
        *_rst_image("speculative", "tokens per second of plain and speculative decoding"),
    ]


def server_readme(d: Data) -> list[str]:
    quick = " (quick mode: a smoke run, too short to judge by)" if d["mode"] == "quick" else ""
    return [
        f"**OpenAI-compatible servers** ([`server.py`](benchmarks/server.py), streaming `/v1/completions` clients, "
        f"{d['max_tokens']} tokens each, greedy, {_machine(d)}, median of {d['rounds']} rounds{quick}; aggregate "
        "tok/s and time to first token). The oxillama_py server and llama.cpp's `llama-server` (built from the "
        f"llama.cpp in the same llama-cpp-python sdist) run {d['slots']} slots of {d['slot_ctx']} cells; "
        "llama-cpp-python's server has one slot by design and serves one request at a time:",
        *_table_md(server_rows(d)),
        *_checks(d["checks"]),
        *_md_image("server", "streaming clients against three servers"),
    ]


def structured_readme(d: Data) -> list[str]:
    quick = " (quick mode: a smoke run, too short to judge by)" if d["mode"] == "quick" else ""
    valid = sum(v["valid"] for v in d["validation"].values())
    total = sum(v["total"] for v in d["validation"].values())
    same = d["same_text"]["one_greedy"]["ox_json_equals_raw_json"]
    return [
        f"**Structured output** ([`structured.py`](benchmarks/structured.py), a JSON Schema with bounded strings, "
        f"integers and an enum array; {_machine(d)}; tok/s, median of {d['rounds']} interleaved rounds, "
        f"{d['batch_rounds']} with 8 requests{quick}). Both constrained sides use the same GBNF grammar, "
        "`Grammar.from_json_schema(schema).gbnf`; the unconstrained calls decode as many tokens as the "
        "JSON outputs have:",
        *_table_md(structured_rows(d)),
        f"Constrained outputs that parsed and validated against the schema (`jsonschema`): {valid} of {total}; "
        f"greedy JSON {'equal' if same else 'not equal'} to llama-cpp-python's. " + _checks(d["checks"])[0],
        "",
        *_md_image("structured", "constrained and unconstrained decoding"),
    ]


def _prefix_targets(d: Data) -> str:
    t, r = d["targets"], d["results"]["system"]["ratios"]
    cold, raw = t["ttft_cold_over_cached"], t["ttft_raw_reuse_over_cached"]
    return (
        f"time to first token with a hit {_f(r['ttft_cold_over_cached'])}x lower than cold "
        f"(target {_f(cold['target'], 0)}x: {cold['verdict']}), "
        f"{_f(r['ttft_raw_reuse_over_cached'], 2)}x llama-cpp-python's own reuse "
        f"(target {_f(raw['target'])}: {raw['verdict']})"
    )


def prefix_cache_readme(d: Data) -> list[str]:
    s = d["settings"]
    return [
        f"**Prefix cache** ([`prefix_cache.py`](benchmarks/prefix_cache.py); {_machine(d)}; medians of "
        f"{s['rounds']} interleaved rounds, {s['max_tokens']} greedy tokens per request): requests sharing a "
        f"{s['system_prompt_tokens']}-token system prompt, and turns 2-10 of a chat. "
        + _prefix_targets(d)
        + f"; greedy texts differing from a cold run: {len(d['text_mismatches'])}.",
        *_table_md(prefix_cache_rows(d)),
        *_md_image("prefix_cache", "prefix cache: time to first token and total"),
    ]


def prefix_cache_rst(d: Data) -> list[str]:
    s = d["settings"]
    return [
        f"Measured by ``benchmarks/prefix_cache.py`` ({_machine(d)}; medians of {s['rounds']} "
        f"interleaved rounds, {s['max_tokens']} greedy tokens per request): "
        + _prefix_targets(d)
        + f". Greedy texts of cache hits that differ from a cold run: {len(d['text_mismatches'])}.",
        *_table_rst(prefix_cache_rows(d)),
        *_rst_image("prefix_cache", "time to first token and total time, cache off and on, beside llama-cpp-python"),
    ]


def scale_rst(d: Data) -> list[str]:
    s, r = d["settings"], d["results"]
    tps = {name: r[name]["aggregate_tok_per_sec"]["median"] for name in r}
    ttft = [f"{_f(r[name]['ttft_p50_secs'] * 1000, 0)} ms" for name in ("process", "ray", "process16")]
    return [
        f"Measured by ``benchmarks/scale.py`` ({_machine(d)}): {s['clients']} streaming clients, {s['max_tokens']} "
        f"greedy tokens each, medians of {s['rounds']} rounds: one process with 2 llama.cpp threads and 8 slots "
        f"{_f(tps['process'])} tok/s, two Ray Serve replicas with 1 thread and 8 slots each {_f(tps['ray'])} tok/s: "
        f"ratio {_f(d['ratio_ray_over_process'], 2)} (target {d['target']['ratio']}: {d['target']['verdict']}). "
        f"One process with 16 slots, one batch of 16 where the replicas run two of 8, reaches "
        f"{_f(tps['process16'])} tok/s (ratio {_f(d['ratio_ray_over_process16'], 2)}). Time to first token "
        f"(p50): {ttft[0]}, {ttft[1]} and {ttft[2]}.",
        "",
        *_rst_image("scale", "aggregate tokens per second, one process against two Ray Serve replicas"),
    ]


def _speculative_batch_intro(d: Data) -> str:
    raw = d["llama_cpp_python_one_request"]["copying"]
    return (
        f"{d['max_tokens']} tokens a request, greedy, {_machine(d)}, median of {d['rounds']} interleaved rounds; "
        "aggregate tok/s of N concurrent requests on one engine with `EngineConfig(speculative=PromptLookup())`, "
        "each request with `speculative=False` (plain) or the default. For one copying request, llama-cpp-python "
        f"gives {raw['raw_plain']:.1f} tok/s plain and {raw['raw_lookup']:.1f} with its prompt lookup"
    )


def speculative_batch_readme(d: Data) -> list[str]:
    return [
        f"**Speculation inside the batch** ([`speculative_batch.py`](benchmarks/speculative_batch.py), "
        f"{_speculative_batch_intro(d)}):",
        *_table_md(speculative_batch_rows(d)),
        *_checks(d["targets"]),
        *_md_image("speculative_batch", "speculation inside continuous batching"),
    ]


def speculative_batch_rst(d: Data) -> list[str]:
    return [
        f"From ``benchmarks/speculative_batch.py`` ({_speculative_batch_intro(d).replace('`', '``')}).",
        *_table_rst(speculative_batch_rows(d)),
        *_checks(d["targets"]),
        *_rst_image("speculative_batch", "plain and speculative batching for 1, 2, 4 and 8 requests"),
    ]


README, DOCS = ROOT / "README.md", ROOT / "docs"
# (file, marker name, the JSON it reads, renderer)
TARGETS: list[tuple[Path, str, tuple[str, ...], Callable[..., list[str]]]] = [
    (README, "", ("overhead", "batching", "speculative", "coexistence"), readme_block),
    (README, "server", ("server",), server_readme),
    (README, "structured", ("structured",), structured_readme),
    (README, "prefix_cache", ("prefix_cache",), prefix_cache_readme),
    (DOCS / "batching.rst", "", ("batching",), batching_rst),
    (DOCS / "prefix-cache.rst", "", ("prefix_cache",), prefix_cache_rst),
    (DOCS / "speculative.rst", "", ("speculative",), speculative_rst),
    (README, "speculative_batch", ("speculative_batch",), speculative_batch_readme),
    (DOCS / "speculative.rst", "speculative_batch", ("speculative_batch",), speculative_batch_rst),
    (DOCS / "scaling.rst", "", ("scale",), scale_rst),
]


def render(text: str, start: str, end: str, block: list[str]) -> str:
    pattern = re.compile(re.escape(start) + r"\n.*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"markers {start!r} ... {end!r} not found")
    replacement = "\n".join([start, "", *block, "", end])
    return pattern.sub(lambda _: replacement, text, count=1)


def block(names: tuple[str, ...], renderer: Callable[..., list[str]], results: Path, rst: bool) -> list[str]:
    """The renderer's lines from its JSON, or a note saying which benchmark to run first."""
    missing = [n for n in names if not (results / f"{n}.json").is_file()]
    if missing:
        run = f"python benchmarks/{missing[0]}.py"
        return [f"Not measured yet: run ``{run}``."] if rst else [f"Not measured yet: run `{run}`."]
    return renderer(*(json.loads((results / f"{n}.json").read_text(encoding="utf-8")) for n in names))


def rendered(results: Path = RESULTS) -> list[tuple[Path, str, str]]:
    """Each target file with its current text and the text its JSON calls for (all of its blocks)."""
    current: dict[Path, str] = {}
    wanted: dict[Path, str] = {}
    for path, marker, names, renderer in TARGETS:
        if path not in current:
            current[path] = wanted[path] = path.read_text(encoding="utf-8")
        rst = path.suffix == ".rst"
        tag = f"FIGURES:{marker}" if marker else "FIGURES"
        start, end = (f".. {tag}", f".. /{tag}") if rst else (f"<!-- {tag} -->", f"<!-- /{tag} -->")
        wanted[path] = render(wanted[path], start, end, block(names, renderer, results, rst))
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
