"""Reading a generic-format answer (:mod:`.generic`) as it is decoded: text deltas, calls and their arguments.

One reader serves both ends: fed the pieces of a stream, it says what to send
as they come (a call's id and name as soon as the name is whole, then the
arguments' JSON text fragment by fragment, a text answer's string decoded as
it arrives); fed a whole answer, it gives the result's text and calls. So a
streamed answer and a whole one can never disagree. An answer cut short by
``max_tokens`` keeps what was written (a call's arguments may then be
incomplete JSON, as OpenAI's are).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace

from ..results import CompletionResult, ToolCall
from .generic import CALL_ARGUMENTS, CALL_OPEN, CALLS_OPEN, RESPONSE_OPEN

__all__ = ["AnswerReader", "ArgumentsDelta", "CallStart", "TextDelta", "ToolEvent", "read_answer"]

_SPACE = " \t\r\n"


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ArgumentsDelta:
    index: int
    text: str


ToolEvent = TextDelta | CallStart | ArgumentsDelta


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class AnswerReader:
    """An incremental reader of one answer; :meth:`feed` each piece, then read :attr:`text` and :meth:`calls`."""

    def __init__(self) -> None:
        self._buffer = ""
        self._pos = 0
        self._state = "head"
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._text: list[str] = []
        self._calls: list[tuple[str, str, list[str]]] = []

    @property
    def text(self) -> str:
        return "".join(self._text)

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(call_id, name, "".join(parts)) for call_id, name, parts in self._calls)

    def feed(self, piece: str) -> list[ToolEvent]:
        """What ``piece`` adds to the answer."""
        self._buffer += piece
        events: list[ToolEvent] = []
        while self._step(events):
            pass
        if self._pos > 4096:  # keep the buffer short on long answers
            self._buffer, self._pos = self._buffer[self._pos :], 0
        return events

    # Each step consumes what it can and says whether another may make progress.
    def _step(self, events: list[ToolEvent]) -> bool:
        state = self._state
        if state == "head":
            return self._head()
        if state == "response":
            return self._response(events)
        if state == "call":
            return self._call_head(events)
        if state == "arguments":
            return self._arguments(events)
        if state == "after_call":
            return self._after_call()
        if state == "raw":
            rest = self._buffer[self._pos :]
            if rest:
                self._pos = len(self._buffer)
                self._emit_text(rest, events)
        return False

    def _skip_space(self) -> str:
        while self._pos < len(self._buffer) and self._buffer[self._pos] in _SPACE:
            self._pos += 1
        return self._buffer[self._pos :]

    def _expect(self, literal: str, state: str) -> bool:
        rest = self._skip_space()
        if rest.startswith(literal):
            self._pos += len(literal)
            self._state = state
            return True
        if not literal.startswith(rest):
            self._state = "done"  # not the format: stop reading (the grammar never lets this happen)
        return False

    def _head(self) -> bool:
        rest = self._skip_space()
        for literal, state in ((RESPONSE_OPEN, "response"), (CALLS_OPEN, "call")):
            if rest.startswith(literal):
                self._pos += len(literal)
                self._state = state
                return True
        if rest and not RESPONSE_OPEN.startswith(rest) and not CALLS_OPEN.startswith(rest):
            self._state = "raw"  # plain text (a model writing outside the format): it is the answer's text
            return True
        return False

    def _response(self, events: list[ToolEvent]) -> bool:
        buffer, start = self._buffer, self._pos
        i = start
        while i < len(buffer):
            c = buffer[i]
            if c == '"':
                self._emit_text(_decode(buffer[start:i]), events)
                self._pos = i + 1
                self._state = "done"
                return False
            if c == "\\":
                size = _escape_size(buffer, i)
                if size == 0:  # the escape is not whole yet
                    break
                i += size
            else:
                i += 1
        if i > start:
            self._emit_text(_decode(buffer[start:i]), events)
            self._pos = i
        return False

    def _emit_text(self, text: str, events: list[ToolEvent]) -> None:
        if text:
            self._text.append(text)
            events.append(TextDelta(text))

    def _call_head(self, events: list[ToolEvent]) -> bool:
        rest = self._skip_space()
        if not rest.startswith(CALL_OPEN):
            if not CALL_OPEN.startswith(rest):
                self._state = "done"
            return False
        end = rest.find('"', len(CALL_OPEN))
        if end < 0:
            return False
        name = rest[len(CALL_OPEN) : end]
        after = rest[end:]
        if not after.startswith(CALL_ARGUMENTS):
            if not CALL_ARGUMENTS.startswith(after):
                self._state = "done"
            return False
        self._pos += end + len(CALL_ARGUMENTS)
        call_id = new_call_id()
        self._calls.append((call_id, name, []))
        events.append(CallStart(len(self._calls) - 1, call_id, name))
        self._state, self._depth, self._in_string, self._escaped = "arguments", 0, False, False
        return True

    def _arguments(self, events: list[ToolEvent]) -> bool:
        buffer, start = self._buffer, self._pos
        i = start
        if self._depth == 0:  # leading space before the object is not part of the arguments
            while i < len(buffer) and buffer[i] in _SPACE:
                i += 1
            start = i
        done = False
        while i < len(buffer):
            c = buffer[i]
            i += 1
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth <= 0:
                    done = True
                    break
        if i > start:
            fragment = buffer[start:i]
            self._calls[-1][2].append(fragment)
            events.append(ArgumentsDelta(len(self._calls) - 1, fragment))
        self._pos = i
        if done:
            self._state = "after_call"
        return done

    def _after_call(self) -> bool:
        rest = self._skip_space()
        if not rest:
            return False
        if rest[0] != "}":
            self._state = "done"
            return False
        rest = rest[1:].lstrip(_SPACE)
        if not rest:
            return False
        if rest[0] == ",":
            self._pos = len(self._buffer) - len(rest) + 1
            self._state = "call"
            return True
        self._state = "done"  # "]}" ends the answer
        return False


def _escape_size(buffer: str, i: int) -> int:
    """The length of the JSON escape at ``i`` (a surrogate pair whole), or 0 if it is not all there yet."""
    if i + 1 >= len(buffer):
        return 0
    if buffer[i + 1] != "u":
        return 2
    if i + 6 > len(buffer):
        return 0
    if "d800" <= buffer[i + 2 : i + 6].lower() <= "dbff":  # a high surrogate: its low half must come too
        if i + 12 > len(buffer):
            return 0
        return 12 if buffer[i + 6 : i + 8] == "\\u" else 6
    return 6


def _decode(fragment: str) -> str:
    try:
        text: str = json.loads('"' + fragment + '"')
    except ValueError:
        return fragment
    return text


def read_answer(result: CompletionResult) -> CompletionResult:
    """A finished answer in the generic format: its text unwrapped and its calls parsed."""
    reader = AnswerReader()
    reader.feed(result.text)
    return replace(result, text=reader.text, tool_calls=reader.calls())
