"""OpenAI's request bodies, checked field by field into one :class:`Job` before any decoding.

The other half of the OpenAI shapes, the answers, is :mod:`.responses`.

Known fields with a wrong type or value get a 400 naming the field; fields the
engine cannot honour (token-id prompts and the refused fields) get a 400 that
says so; which fields are known, which are no-ops here and which are refused
is :mod:`.fields`' table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ..options import GenerateKwargs
from .errors import bad_request
from .fields import CHAT_FIELDS, COMPLETION_FIELDS, check_fields, number, sampler_options
from .logprobs import chat_logprobs, completion_logprobs, logprob_options
from .tool_calls import ToolFields, message_tool_fields, parse_tool_fields

__all__ = ["Job", "parse_chat", "parse_completion"]

MAX_N = 16


@dataclass(frozen=True)
class Job:
    """One request, validated: what to decode and how to answer."""

    kind: Literal["chat", "completion"]
    model: str | None
    prompts: tuple[str, ...]
    """Completion prompts (one entry for a chat: unused)."""
    messages: tuple[dict[str, Any], ...]
    n: int
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    include_progress: bool
    echo: bool = False
    json: bool = False
    json_schema: dict[str, Any] | None = None
    sampling: GenerateKwargs = field(default_factory=lambda: GenerateKwargs())
    """The sampler fields given (penalties, ``logit_bias``, ``top_k``, ``min_p``), as engine options."""
    logprobs: int | None = None
    """How many alternatives each token's log-probability comes with; ``None``: no log-probabilities."""
    tools: ToolFields = field(default_factory=ToolFields)
    """``tools``, ``tool_choice``, ``parallel_tool_calls`` (:mod:`.tool_calls`)."""

    def generate_options(self) -> GenerateKwargs:
        """The engine's keyword options for this job."""
        options: GenerateKwargs = {"stop": list(self.stop)}
        if self.json_schema is not None:
            options["json_schema"] = self.json_schema
        elif self.json:
            options["json"] = True
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.top_p is not None:
            options["top_p"] = self.top_p
        if self.seed is not None:
            options["seed"] = self.seed
        options.update(self.sampling)
        options.update(logprob_options(self.logprobs, self.echo, self.max_tokens))
        return options


def parse_chat(body: object) -> Job:
    fields = _object(body)
    check_fields(fields, CHAT_FIELDS)
    messages = fields.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array of messages", "messages")
    checked = tuple(_message(i, m) for i, m in enumerate(messages))
    max_tokens = _opt_int(fields, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _opt_int(fields, "max_tokens", 1)
    tools = parse_tool_fields(fields)
    job = _job(fields, "chat", (), checked, max_tokens, logprobs=chat_logprobs(fields))
    if tools.constrains and (job.json or job.json_schema is not None):
        raise bad_request("'response_format' cannot be combined with 'tools' unless tool_choice is 'none'", "tools")
    return replace(job, tools=tools)


def parse_completion(body: object) -> Job:
    fields = _object(body)
    check_fields(fields, COMPLETION_FIELDS)
    prompt = fields.get("prompt")
    if isinstance(prompt, str):
        prompts: tuple[str, ...] = (prompt,)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = tuple(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (int, list)) for p in prompt):
        raise bad_request("prompts given as token ids are not supported; send text", "prompt")
    else:
        raise bad_request("'prompt' must be a string or a non-empty array of strings", "prompt")
    max_tokens = _opt_int(fields, "max_tokens", 0)
    echo = fields.get("echo", False)
    if not isinstance(echo, bool):
        raise bad_request("'echo' must be a boolean", "echo")
    logprobs = completion_logprobs(fields, echo, max_tokens)
    if fields.get("suffix") not in (None, ""):
        raise bad_request("'suffix' is not supported by this server", "suffix")
    best_of = _opt_int(fields, "best_of", 1, MAX_N)
    n = fields.get("n")
    if best_of is not None and best_of != (1 if n is None else n):
        raise bad_request("'best_of' is not supported by this server (leave it out or equal to n)", "best_of")
    return _job(fields, "completion", prompts, (), max_tokens, echo=echo, logprobs=logprobs)


def _job(
    fields: Mapping[str, Any],
    kind: Literal["chat", "completion"],
    prompts: tuple[str, ...],
    messages: tuple[dict[str, Any], ...],
    max_tokens: int | None,
    *,
    echo: bool = False,
    logprobs: int | None = None,
) -> Job:
    model = fields.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    n = _opt_int(fields, "n", 1, MAX_N)
    stream = fields.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    include_usage = include_progress = False
    options = fields.get("stream_options")
    if options is not None:
        if not stream:
            raise bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options")
        if not isinstance(options, dict):
            raise bad_request("'stream_options' must be an object", "stream_options")
        include_usage = _flag(options, "include_usage", "stream_options.include_usage")
        include_progress = _flag(options, "include_progress", "stream_options.include_progress")
    json_mode, json_schema = _response_format(fields.get("response_format"))
    return Job(
        kind=kind,
        model=model,
        prompts=prompts,
        messages=messages,
        n=n if n is not None else 1,
        max_tokens=max_tokens,
        temperature=number(fields, "temperature", 0.0, 2.0),
        top_p=number(fields, "top_p", 0.0, 1.0, low_open=True),
        seed=_opt_int(fields, "seed", 0, 2**32 - 1),
        stop=_stop(fields.get("stop")),
        stream=stream,
        include_usage=include_usage,
        include_progress=include_progress,
        echo=echo,
        json=json_mode,
        json_schema=json_schema,
        sampling=sampler_options(fields),
        logprobs=logprobs,
    )


def _response_format(value: object) -> tuple[bool, dict[str, Any] | None]:
    """OpenAI's ``response_format``: text, any JSON object, or JSON valid against a schema."""
    param = "response_format"
    if value is None:
        return False, None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise bad_request("'response_format' must be an object with a 'type'", param)
    kind = value["type"]
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise bad_request("'response_format.json_schema' must be an object with a 'schema' object", param)
        schema = spec.get("schema")
        return (True, None) if schema is None else (False, schema)
    raise bad_request(f"'response_format.type' {kind!r} is not one of text, json_object, json_schema", param)


def _object(body: object) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _message(index: int, message: object) -> dict[str, Any]:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise bad_request(f"{param} must be an object with 'role' and 'content'", param)
    role = message.get("role")
    if role not in ("system", "developer", "user", "assistant", "tool"):
        raise bad_request(f"{param}.role {role!r} is not supported (system, developer, user, assistant, tool)", param)
    extra = message_tool_fields(param, message)
    content = message.get("content")
    if content is None and "tool_calls" in extra:
        content = ""
    if isinstance(content, list):  # OpenAI's content parts: text only here
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{param}.content: only text parts are supported", f"{param}.content")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise bad_request(f"{param}.content must be a string", f"{param}.content")
    return {"role": role, "content": content, **extra}


def _flag(fields: Mapping[str, Any], name: str, param: str) -> bool:
    value = fields.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"'{param}' must be a boolean", param)
    return value


def _opt_int(fields: Mapping[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer", name)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"between {low} and {high}"
        raise bad_request(f"'{name}' must be {bound}, got {value}", name)
    return value


def _stop(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > 16:
            raise bad_request("'stop' takes at most 16 strings", "stop")
        if any(len(s) > 256 for s in stop):
            raise bad_request("a 'stop' string may be at most 256 characters long", "stop")
        return tuple(s for s in stop if s)
    raise bad_request("'stop' must be a string or an array of strings", "stop")
