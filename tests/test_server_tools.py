"""Tool calling through the server, driven by the client libraries people use, on the default model.

``openai`` (tools required / named / auto, streamed calls, a second turn with
the tool's answer), ``langchain-openai`` (``bind_tools``,
``with_structured_output`` by function calling and by JSON schema),
``pydantic-ai`` (an ``Agent`` with a pydantic ``output_type``), the OpenAI
Agents SDK (a function tool called and its result used) and ``instructor``
(``TOOLS`` and ``JSON_SCHEMA`` modes). Each library's requests are recorded
through an httpx hook, and what they send is checked to be what
``docs/server.rst`` says they send.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from server_process import ServerProcess, running_server

openai = pytest.importorskip("openai", reason="the server tests drive it with the openai client (test extra)")
jsonschema = pytest.importorskip("jsonschema", reason="validating tool-call arguments needs jsonschema (test extra)")
pydantic = pytest.importorskip("pydantic", reason="the client libraries' structured output is pydantic (test extra)")
pytest.importorskip("uvicorn", reason="the server extra is not installed")

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER_PARAMETERS},
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
            },
        },
    },
]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


class Weather(pydantic.BaseModel):
    city: str = pydantic.Field(description="the city", max_length=40)
    unit: str = "c"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server("--n-ctx", "8192", "--max-concurrency", "4") as srv:
        yield srv


class Recorder:
    """Every request body a client sent (an httpx event hook)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.clients: list[httpx.Client] = []

    def __call__(self, request: httpx.Request) -> None:
        if request.content:
            self.bodies.append(json.loads(request.content))

    async def async_hook(self, request: httpx.Request) -> None:
        self(request)

    def sync_client(self) -> httpx.Client:
        client = httpx.Client(event_hooks={"request": [self]}, timeout=300)
        self.clients.append(client)
        return client

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(event_hooks={"request": [self.async_hook]}, timeout=300)

    def fields(self) -> set[str]:
        return {key for body in self.bodies for key in body}

    def function_fields(self) -> set[str]:
        return {key for body in self.bodies for tool in body.get("tools", []) for key in tool["function"]}


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recording = Recorder()
    yield recording
    for client in recording.clients:
        client.close()


def model_name(server: ServerProcess) -> str:
    return str(server.health()["model"])


@pytest.fixture
def client(server: ServerProcess) -> Iterator[Any]:
    with openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0, timeout=300) as c:
        yield c


def check_call(call: Any, name: str) -> dict[str, Any]:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == name
    arguments: dict[str, Any] = json.loads(call.function.arguments)
    parameters = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
    jsonschema.validate(arguments, parameters)
    return arguments


# -- openai ------------------------------------------------------------------------------------------------


def test_openai_required_named_and_auto(server: ServerProcess, client: Any) -> None:
    model = model_name(server)
    required = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0
    )
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    check_call(choice.message.tool_calls[0], choice.message.tool_calls[0].function.name)
    named = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is 2 plus 3?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "add"}},
        parallel_tool_calls=True,  # a named function is called once all the same
        max_tokens=60,
        temperature=0,
    )
    assert named.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["add"]
    check_call(named.choices[0].message.tool_calls[0], "add")
    auto = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, max_tokens=60, temperature=0, seed=7
    )
    message = auto.choices[0].message
    if message.tool_calls:  # the model chose to call: constrained to the end
        assert auto.choices[0].finish_reason == "tool_calls"
        check_call(message.tool_calls[0], message.tool_calls[0].function.name)
    else:
        assert auto.choices[0].finish_reason in ("stop", "length") and message.content


def test_openai_streamed_tool_calls(server: ServerProcess, client: Any) -> None:
    model = model_name(server)
    stream = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0] for c in chunks if c.choices]
    calls = [d.delta.tool_calls[0] for d in deltas if d.delta.tool_calls]
    first = calls[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather" and first.function.arguments == ""
    assert all(c.id is None and c.function.name is None for c in calls[1:])  # then argument fragments only
    arguments = "".join(c.function.arguments for c in calls)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMETERS)
    assert deltas[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    whole = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=60,
        temperature=0,
    )
    assert whole.choices[0].message.tool_calls[0].function.arguments == arguments


def test_streamed_calls_start_with_null_content_and_carry_logprobs_and_ignore_stop(
    server: ServerProcess, client: Any
) -> None:
    """A streamed tool answer: content ``null`` in the role chunk, every token's value in some chunk,
    and a stop string that the JSON holds (``","``, ``"\\n"``) does not cut the call's arguments."""
    stream = client.chat.completions.create(
        model=model_name(server),
        messages=QUESTION,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=60,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stop=[",", "\n", '"'],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0] for c in chunks if c.choices]
    assert deltas[0].delta.role == "assistant" and deltas[0].delta.content is None
    scored = [entry for d in deltas if d.logprobs is not None for entry in d.logprobs.content]
    assert len(scored) == chunks[-1].usage.completion_tokens
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in scored)
    arguments = "".join(d.delta.tool_calls[0].function.arguments for d in deltas if d.delta.tool_calls)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMETERS)
    assert deltas[-1].finish_reason == "tool_calls"


def test_openai_second_turn_with_the_tool_answer(server: ServerProcess, client: Any) -> None:
    model = model_name(server)
    first = client.chat.completions.create(
        model=model, messages=QUESTION, tools=TOOLS, tool_choice="required", max_tokens=60, temperature=0
    )
    message = first.choices[0].message
    call = message.tool_calls[0]
    history = [
        *QUESTION,
        message.model_dump(exclude_none=True),  # content None, as OpenAI sends it back
        {"role": "tool", "tool_call_id": call.id, "content": "18 C and sunny"},
    ]
    second = client.chat.completions.create(
        model=model, messages=history, tools=TOOLS, tool_choice="none", max_tokens=30, temperature=0
    )
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    streamed = client.chat.completions.create(
        model=model, messages=history, tools=TOOLS, max_tokens=60, temperature=0, stream=True
    )
    ends = [c.choices[0].finish_reason for c in streamed if c.choices and c.choices[0].finish_reason]
    assert ends and ends[0] in ("stop", "length", "tool_calls")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": "get_weather"}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "tools"),
    ],
)
def test_bad_tool_fields_are_400_naming_the_field(server: ServerProcess, extra: dict[str, Any], param: str) -> None:
    steps = server.health()["decode_steps"]
    response = httpx.post(server.api_url + "/chat/completions", json={"messages": QUESTION, **extra}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert server.health()["decode_steps"] == steps


# -- the client libraries ----------------------------------------------------------------------------------


def test_langchain_bind_tools_and_structured_output(server: ServerProcess, recorder: Recorder) -> None:
    langchain_openai = pytest.importorskip("langchain_openai", reason="langchain-openai is a test extra")
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "sunny"

    llm = langchain_openai.ChatOpenAI(
        model=model_name(server),
        base_url=server.api_url,
        api_key="unused",
        max_tokens=60,
        temperature=0,
        max_retries=0,
        http_client=recorder.sync_client(),
    )
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("What is the weather in Paris?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    assert isinstance(message.tool_calls[0]["args"]["city"], str)
    for method in ("function_calling", "json_schema"):
        weather = llm.with_structured_output(Weather, method=method).invoke("The weather in Paris, please.")
        assert isinstance(weather, Weather) and weather.city
    assert recorder.fields() <= LANGCHAIN_FIELDS, recorder.fields()
    assert recorder.function_fields() <= {"name", "description", "parameters"}


def test_pydantic_ai_agent_with_output_type(server: ServerProcess, recorder: Recorder) -> None:
    pytest.importorskip("pydantic_ai", reason="pydantic-ai-slim[openai] is a test extra")
    from pydantic_ai import Agent
    from pydantic_ai.providers.openai import OpenAIProvider

    try:
        from pydantic_ai.models.openai import OpenAIChatModel as ChatModel
    except ImportError:  # pydantic-ai before 1.0
        from pydantic_ai.models.openai import OpenAIModel as ChatModel  # type: ignore[assignment]

    async def main() -> Any:
        async with openai.AsyncOpenAI(
            base_url=server.api_url, api_key="unused", max_retries=0, http_client=recorder.async_client()
        ) as client:
            model = ChatModel(model_name(server), provider=OpenAIProvider(openai_client=client))
            agent = Agent(model, output_type=Weather)
            return await agent.run("What is the weather in Paris?", model_settings={"max_tokens": 80, "temperature": 0})

    result = asyncio.run(main())
    assert isinstance(result.output, Weather) and result.output.city
    assert recorder.bodies[0]["tool_choice"] == "required"  # the output comes back through a tool
    assert recorder.fields() <= PYDANTIC_AI_FIELDS, recorder.fields()


def test_openai_agents_function_tool(server: ServerProcess, recorder: Recorder) -> None:
    agents = pytest.importorskip("agents", reason="openai-agents is a test extra")
    agents.set_tracing_disabled(True)
    asked: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"18 C and sunny in {city}"

    async def main() -> Any:
        async with openai.AsyncOpenAI(
            base_url=server.api_url, api_key="unused", max_retries=0, http_client=recorder.async_client()
        ) as client:
            agent = agents.Agent(
                name="weather",
                instructions="Answer with the weather tool.",
                tools=[get_weather],
                model=agents.OpenAIChatCompletionsModel(model=model_name(server), openai_client=client),
                model_settings=agents.ModelSettings(max_tokens=60, temperature=0, tool_choice="required"),
                tool_use_behavior="stop_on_first_tool",  # the tool's answer is the agent's (a 270M model calls again)
            )
            return await agents.Runner.run(agent, "What is the weather in Paris?", max_turns=3)

    result = asyncio.run(main())
    assert len(asked) == 1 and asked[0]
    assert result.final_output == f"18 C and sunny in {asked[0]}"
    assert recorder.fields() <= AGENTS_FIELDS, recorder.fields()
    assert recorder.function_fields() <= {"name", "description", "parameters", "strict"}


def test_instructor_tools_and_json_schema_modes(server: ServerProcess, recorder: Recorder) -> None:
    instructor = pytest.importorskip("instructor", reason="instructor is a test extra")
    for mode in (instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA):
        client = instructor.from_openai(
            openai.OpenAI(base_url=server.api_url, api_key="unused", http_client=recorder.sync_client()), mode=mode
        )
        weather = client.chat.completions.create(
            model=model_name(server),
            response_model=Weather,
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            max_tokens=60,
            temperature=0,
            max_retries=0,
        )
        assert isinstance(weather, Weather) and weather.city
    assert recorder.fields() <= INSTRUCTOR_FIELDS, recorder.fields()


# What each library sent in these tests (top-level request fields); docs/server.rst lists them.
LANGCHAIN_FIELDS = {
    "model",
    "messages",
    "max_completion_tokens",
    "stream",
    "temperature",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
}
PYDANTIC_AI_FIELDS = {"model", "messages", "max_completion_tokens", "stream", "temperature", "tools", "tool_choice"}
AGENTS_FIELDS = {"model", "messages", "max_tokens", "temperature", "tools", "tool_choice"}
INSTRUCTOR_FIELDS = {"model", "messages", "max_tokens", "temperature", "tools", "tool_choice", "response_format"}
