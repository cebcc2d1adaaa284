"""Log-probabilities: the library's ``logprobs=``/``prompt_logprobs=`` and both OpenAI endpoints, on the real model.

The reference is llama-cpp-python's own ``Llama(logits_all=True)``:
``create_completion(prompt, max_tokens=8, temperature=0, logprobs=5, echo=True)``
gives, for the same greedy tokens, the log-softmax of the raw logits at every
position; ours must equal it within 1e-3. Its quirks, compared like with like:

- with ``echo`` it drops the BOS it added and reports ``null`` for the first
  token of the prompt's text (OpenAI's convention), although it has a value
  (it follows the BOS): the server does the same; the library reports that
  value (``prompt_logprobs[1]``, only ``prompt_logprobs[0]``, the BOS, is
  ``None``), which is checked against the reference's raw scores instead;
- its ``top_logprobs`` maps texts to values (control tokens' texts are empty
  there, ``<eos>`` here; two tokens of one text collapse) and adds the chosen
  token: the values are compared where the texts agree;
- its values are numpy ``float32``; ours are Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from free_rows import price_rows_as_free
from server_process import ServerProcess, running_server

from oxillama_py import AsyncEngine, CompletionResult, Engine, TokenLogprob
from oxillama_py.bus import Step, Subscriber

openai = pytest.importorskip("openai", reason="the server tests drive it with the openai client (test extra)")

PROMPT = "The capital of France is"
TOL = 1e-3
MESSAGES = [{"role": "user", "content": "Name the capital of France."}]
LONG_PROMPT = " ".join(f"Item {i} is a {('red', 'green', 'blue')[i % 3]} box." for i in range(25))
"""216 tokens: its prompt rows are scored in several decode steps (64 rows each)."""


@pytest.fixture(scope="module")
def llama_reference(model_path: Path) -> dict[str, Any]:
    """llama-cpp-python's greedy completion of ``PROMPT`` with ``logprobs=5, echo=True``, and its raw first row."""
    from llama_cpp import Llama

    llm = Llama(str(model_path), logits_all=True, n_ctx=256, seed=0, verbose=False)
    try:
        out: Any = llm.create_completion(PROMPT, max_tokens=8, temperature=0, logprobs=5, echo=True)
        choice = out["choices"][0]
        prompt_ids = llm.tokenize(PROMPT.encode())
        first_row = Llama.logits_to_logprobs(np.asarray(llm.scores[0]))  # after BOS: predicts the first text token
        llm.reset()  # a reused Llama would decode only the new suffix
        # The long prompt's values as create_completion(echo=True) computes them (its own
        # logits_to_logprobs over each row), without its Python sort of the vocabulary per token.
        long_ids = llm.tokenize(LONG_PROMPT.encode())
        llm.eval(long_ids)
        long = [None] + [
            float(Llama.logits_to_logprobs(np.asarray(llm.scores[k - 1]))[long_ids[k]]) for k in range(2, len(long_ids))
        ]
        return {
            "text": choice["text"],
            "logprobs": choice["logprobs"],
            "prompt_ids": prompt_ids,
            "first_text_token": float(first_row[prompt_ids[1]]),
            "long": long,
        }
    finally:
        llm.close()


def close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(float(a) - float(b)) < TOL


def check_top(ours: dict[str, float], theirs: dict[str, float], k: int) -> None:
    """The alternatives agree where both name the same text; at most one of ``k`` may differ in text."""
    shared = set(ours) & set(theirs)
    assert len(shared) >= k - 1, (ours, theirs)
    for text in shared:
        assert close(ours[text], theirs[text]), (text, ours[text], theirs[text])


def check_sorted(lp: TokenLogprob, k: int) -> None:
    values = [t.logprob for t in lp.top_logprobs]
    assert len(values) == k and values == sorted(values, reverse=True)
    assert all(v <= 0.0 for v in values) and lp.logprob <= 0.0


# -- the library ---------------------------------------------------------------------------


def test_library_equals_llama_cpp_python(engine: Engine, llama_reference: dict[str, Any]) -> None:
    """Generated and prompt log-probabilities equal llama-cpp-python's within 1e-3, with the same tokens."""
    result = engine.complete(PROMPT, 8, temperature=0, logprobs=5, prompt_logprobs=True)
    ref = llama_reference["logprobs"]
    n_text = len(llama_reference["prompt_ids"]) - 1  # the prompt's tokens after the BOS
    assert PROMPT + result.text == llama_reference["text"]
    assert result.logprobs is not None and len(result.logprobs) == len(result.token_ids) == 8
    for i, lp in enumerate(result.logprobs):
        assert lp.token_id == result.token_ids[i]
        assert lp.token == ref["tokens"][n_text + i]
        assert close(lp.logprob, ref["token_logprobs"][n_text + i])
        check_sorted(lp, 5)
        check_top({t.token: t.logprob for t in lp.top_logprobs}, ref["top_logprobs"][n_text + i], 5)
    prompt = result.prompt_logprobs
    assert prompt is not None and len(prompt) == result.prompt_tokens == n_text + 1
    assert prompt[0] is None  # the BOS: nothing predicts it
    assert prompt[1] is not None and close(prompt[1].logprob, llama_reference["first_text_token"])
    for j in range(2, len(prompt)):
        entry = prompt[j]
        assert entry is not None and entry.token_id == llama_reference["prompt_ids"][j]
        assert close(entry.logprob, ref["token_logprobs"][j - 1])
        check_top({t.token: t.logprob for t in entry.top_logprobs}, ref["top_logprobs"][j - 1], 5)


def test_long_prompt_scored_across_steps(engine: Engine, llama_reference: dict[str, Any]) -> None:
    """A prompt scored over several decode steps lines up with llama-cpp-python's one-batch values."""
    result = engine.complete(LONG_PROMPT, 1, temperature=0, logprobs=0, prompt_logprobs=True)
    assert result.prompt_logprobs is not None and result.prompt_tokens > 3 * 64
    ours = [lp.logprob for lp in result.prompt_logprobs[2:] if lp is not None]
    ref = llama_reference["long"][1 : len(ours) + 1]
    assert len(ours) == len(ref) == result.prompt_tokens - 2
    assert all(close(a, b) for a, b in zip(ours, ref, strict=True))


def test_sampled_and_constrained_logprobs_are_the_raw_distribution(engine: Engine) -> None:
    """``top_k=1`` sampling and a grammar choose among filtered tokens; the values stay the model's own."""
    raw = engine.logits(PROMPT).astype(np.float64)
    first = raw - (raw.max() + math.log(np.exp(raw - raw.max()).sum()))  # log-softmax of the next-token logits
    sampled = engine.complete(PROMPT, 4, temperature=0.8, top_k=1, seed=7, logprobs=2)
    assert sampled.logprobs is not None
    lead = sampled.logprobs[0]
    assert lead.token_id == int(np.argmax(raw)) and close(lead.logprob, first[lead.token_id])
    assert lead.logprob < -0.5  # not 0: top_k=1 left one candidate, the model was not that sure
    assert lead.top_logprobs[1].logprob < lead.logprob
    digits = engine.complete(PROMPT, 3, temperature=0, regex="[0-9]{3}", logprobs=1)
    assert digits.logprobs is not None and digits.text.isdigit()
    assert close(digits.logprobs[0].logprob, first[digits.token_ids[0]])
    assert digits.logprobs[0].logprob < digits.logprobs[0].top_logprobs[0].logprob  # the best was no digit


def test_score_a_prompt_with_max_tokens_zero(engine: Engine) -> None:
    result = engine.complete(PROMPT, 0, logprobs=0, prompt_logprobs=True)
    assert (result.text, result.token_ids, result.finish_reason, result.logprobs) == ("", (), "length", ())
    assert result.prompt_logprobs is not None and len(result.prompt_logprobs) == result.prompt_tokens
    assert all(lp is not None and lp.top_logprobs == () for lp in result.prompt_logprobs[1:])


def test_speculative_rows_give_logprobs(own_engine: Engine) -> None:
    """A speculating call gives every emitted token its value, from the row that verified it."""
    engine = own_engine  # speculation, once set up, stays with its engine
    prompt = "a b c d e f g h i j a b c d e f g h i j a b c"
    plain = engine.complete(prompt, 8, temperature=0, logprobs=3, speculative=False)
    engine.complete(prompt, 1, temperature=0, speculative=True)  # sets speculation up...
    price_rows_as_free(engine)  # ...to draft whatever this CPU's step costs (free_rows.py)
    spec = engine.complete(prompt, 8, temperature=0, logprobs=3, speculative=True)
    assert spec.logprobs is not None and plain.logprobs is not None
    assert spec.speculative is not None and spec.speculative.accepted > 0  # rows verified drafts
    assert [lp.token_id for lp in spec.logprobs] == list(spec.token_ids)
    for lp in spec.logprobs:
        check_sorted(lp, 3)
        assert lp.token_id == lp.top_logprobs[0].token_id  # greedy: the verified token is the row's best
    assert spec.token_ids == plain.token_ids  # a copy: greedy is the same on both numeric paths
    for a, b in zip(spec.logprobs, plain.logprobs, strict=True):  # a multi-row decode moves logits a little
        assert abs(a.logprob - b.logprob) < 0.1


def test_chat_logprobs(engine: Engine) -> None:
    result = engine.chat(MESSAGES, 6, temperature=0, logprobs=4)
    assert result.logprobs is not None and [lp.token_id for lp in result.logprobs] == list(result.token_ids)
    assert "".join(lp.token for lp in result.logprobs) == result.text
    assert result.prompt_logprobs is None


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"logprobs": 21}, ValueError, "logprobs"),
        ({"logprobs": -1}, ValueError, "logprobs"),
        ({"logprobs": "5"}, TypeError, "logprobs"),
        ({"logprobs": True}, TypeError, "logprobs"),
        ({"prompt_logprobs": True}, ValueError, "prompt_logprobs"),
        ({"logprobs": 1, "prompt_logprobs": 1}, TypeError, "prompt_logprobs"),
    ],
)
def test_bad_logprob_options(engine: Engine, options: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        engine.complete(PROMPT, 2, **options)


def test_max_tokens_zero_needs_prompt_logprobs(engine: Engine) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        engine.complete(PROMPT, 0, logprobs=1)


class Steps(Subscriber):
    def __init__(self) -> None:
        self.steps: list[Step] = []

    async def on_step(self, step: Step) -> None:
        self.steps.append(step)


@pytest.mark.anyio
async def test_events_carry_logprobs(aengine: AsyncEngine) -> None:
    """Every token event carries its value; the prompt's come with the first step."""
    steps = Steps()
    call = await aengine.prepare([PROMPT], 5, subscribers=[steps], temperature=0, logprobs=2, prompt_logprobs=True)
    (result,) = await call.run()
    tokens = [token for step in steps.steps for token in step.tokens]
    assert [t.logprob for t in tokens] == list(result.logprobs or ())
    assert steps.steps[0].prompt_logprobs == result.prompt_logprobs
    assert all(step.prompt_logprobs is None for step in steps.steps[1:])
    batch = await aengine.complete_batch([PROMPT, "One, two,"], 3, temperature=0, logprobs=1)
    assert all(isinstance(r, CompletionResult) and len(r.logprobs or ()) == len(r.token_ids) for r in batch)


# -- the server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    pytest.importorskip("uvicorn", reason="the server extra is not installed")
    with running_server("--n-ctx", "2048", "--max-concurrency", "4") as srv:
        yield srv


@pytest.fixture(scope="module")
def model(server: ServerProcess) -> str:
    return str(server.health()["model"])


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Any]:
    with openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=300) as c:
        yield c


def test_server_completions_equal_llama_cpp_python(client: Any, model: str, llama_reference: dict[str, Any]) -> None:
    """``logprobs=5, echo=True`` through the openai client: llama-cpp-python's object, value for value."""
    out = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=5, echo=True)
    ours, ref = out.choices[0].logprobs, llama_reference["logprobs"]
    assert out.choices[0].text == llama_reference["text"]
    assert ours.tokens == ref["tokens"] and ours.text_offset == ref["text_offset"]
    assert ours.token_logprobs[0] is None and ours.top_logprobs[0] is None
    for i in range(1, len(ref["tokens"])):
        assert close(ours.token_logprobs[i], ref["token_logprobs"][i])
        check_top(ours.top_logprobs[i], ref["top_logprobs"][i], 5)
        assert ours.tokens[i] in ours.top_logprobs[i]  # the chosen token is always listed
    plain = client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2)
    n_text = len(llama_reference["prompt_ids"]) - 1
    assert plain.choices[0].logprobs.tokens == ref["tokens"][n_text:]
    assert plain.choices[0].logprobs.text_offset[0] == len(PROMPT)


def test_server_echo_scores_a_prompt_alone(server: ServerProcess, llama_reference: dict[str, Any]) -> None:
    """lm-evaluation-harness's log-likelihood call: ``echo``, ``logprobs: 1``, ``max_tokens: 0``."""
    body = {"prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0}
    out = httpx.post(server.api_url + "/completions", json=body, timeout=300).json()
    choice, ref = out["choices"][0], llama_reference["logprobs"]
    n_text = len(llama_reference["prompt_ids"]) - 1
    assert choice["text"] == PROMPT and out["usage"]["completion_tokens"] == 0
    assert choice["logprobs"]["tokens"] == ref["tokens"][:n_text]
    assert choice["logprobs"]["token_logprobs"][0] is None
    assert all(close(a, b) for a, b in zip(choice["logprobs"]["token_logprobs"][1:], ref["token_logprobs"][1:n_text]))
    refused = httpx.post(server.api_url + "/completions", json={**body, "echo": False}, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"


def test_server_chat_logprobs(client: Any, model: str, engine: Engine) -> None:
    """``logprobs=True, top_logprobs=5``: OpenAI's content list, the library's values."""
    out = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=5
    )
    content = out.choices[0].logprobs.content
    expected = engine.chat(MESSAGES, 6, temperature=0, logprobs=5)
    assert expected.logprobs is not None and len(content) == len(expected.logprobs)
    for entry, lp in zip(content, expected.logprobs, strict=True):
        assert entry.token == lp.token and bytes(entry.bytes) == lp.token_bytes and close(entry.logprob, lp.logprob)
        assert [t.token for t in entry.top_logprobs] == [t.token for t in lp.top_logprobs]
        assert all(close(a.logprob, b.logprob) for a, b in zip(entry.top_logprobs, lp.top_logprobs, strict=True))
    plain = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2, temperature=0)
    assert plain.choices[0].logprobs is None


def test_server_streams_logprobs_per_chunk(client: Any, model: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2, stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert "".join(e.token for e in streamed) == text and streamed
    assert all(len(e.top_logprobs) == 2 for e in streamed)
    whole_chat = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    assert [e.token for e in whole_chat.choices[0].logprobs.content] == [e.token for e in streamed]
    whole = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3, echo=True)
    parts = list(
        client.completions.create(
            model=model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3, echo=True, stream=True
        )
    )
    joined: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "text_offset": []}
    for part in parts:
        if part.choices and part.choices[0].logprobs:
            for key, values in joined.items():
                values.extend(getattr(part.choices[0].logprobs, key))
    expected = whole.choices[0].logprobs
    assert joined["tokens"] == expected.tokens and joined["text_offset"] == expected.text_offset
    assert all(
        (a is None and b is None) or close(a, b)
        for a, b in zip(joined["token_logprobs"], expected.token_logprobs, strict=True)
    )


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", {"messages": MESSAGES, "top_logprobs": 2}, "top_logprobs"),
        ("/chat/completions", {"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("/chat/completions", {"messages": MESSAGES, "logprobs": 1}, "logprobs"),
        ("/completions", {"prompt": "x", "logprobs": 6}, "logprobs"),
        ("/completions", {"prompt": "x", "logprobs": True}, "logprobs"),
    ],
)
def test_server_refuses_bad_logprobs(server: ServerProcess, path: str, body: dict[str, Any], param: str) -> None:
    response = httpx.post(server.api_url + path, json={"max_tokens": 1, **body}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
